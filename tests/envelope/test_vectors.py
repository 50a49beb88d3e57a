"""The 143 C2SP CCTV age vectors (tests/data/age), each asserting its exact failure class.

Routes (every vector takes exactly one; see ``route``):

- ``passphrase``: the vector carries a passphrase -> :func:`envelope.decrypt`.
- ``decrypt``: header/armor failures and "no match" without a passphrase ->
  :func:`envelope.decrypt` with an unrelated passphrase (generic format faults
  are classified before any recipient work; X25519/hybrid stanzas are unknown
  types to us, hence "no match").
- ``layers``: success / HMAC / payload vectors (and any armor failure that
  would only surface after the header) that need an X25519 or hybrid
  identity -> our header (format), MAC and STREAM layers driven directly
  with the vector's ``file key``.

Counts today: passphrase 26, decrypt 58 (27 header, 22 armor, 9 no match),
layers 44 (24 success, 19 payload, 1 HMAC), unclassifiable 15.
- ``unclassifiable``: header failures that only an X25519/hybrid recipient
  implementation can detect (listed in ``UNCLASSIFIABLE`` with the reason).
  We still run them through the generic layers, which must accept them, and
  through decrypt, which must say "no match".
"""

from __future__ import annotations

import hashlib
import io
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from envelope import (
    ArmorError,
    EnvelopeError,
    HeaderError,
    HmacError,
    NoMatchError,
    PayloadError,
    decrypt,
    read_header,
)
from envelope.armor import DETECT_WINDOW, ArmorReader, looks_armored
from envelope.format import BufferedSource, parse_header, verify_mac
from envelope.stream import NONCE_SIZE, StreamReader, payload_key

VECTORS_DIR = Path(__file__).resolve().parents[1] / "data" / "age"
NOT_VECTORS = {"README.md", "SOURCE.txt"}
KNOWN_KEYS = {"expect", "payload", "passphrase", "identity", "armored", "file key", "comment"}
KNOWN_KEYS |= {"compressed"}
UNRELATED_PASSPHRASE = "not-the-vector-passphrase"

EXPECTED: dict[str, type[EnvelopeError] | None] = {
    "success": None,
    "no match": NoMatchError,
    "HMAC failure": HmacError,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "armor failure": ArmorError,
}

_X25519 = "X25519 recipient rule, checked only by an X25519 implementation (we have scrypt only)"
_HYBRID = "mlkem768x25519 recipient rule, checked only by a hybrid implementation (scrypt only)"
UNCLASSIFIABLE: dict[str, str] = {
    "x25519_extra_argument": f"{_X25519}: argument count",
    "x25519_identity": f"{_X25519}: all-zero shared secret",
    "x25519_long_file_key": f"{_X25519}: wrapped file key length",
    "x25519_long_share": f"{_X25519}: share length",
    "x25519_low_order": f"{_X25519}: all-zero shared secret",
    "x25519_not_canonical_share": f"{_X25519}: base64 of the share argument",
    "x25519_short_share": f"{_X25519}: share length",
    "hybrid_extra_argument": f"{_HYBRID}: argument count",
    "hybrid_identity": f"{_HYBRID}: all-zero X25519 shared secret",
    "hybrid_long_file_key": f"{_HYBRID}: wrapped file key length",
    "hybrid_long_share": f"{_HYBRID}: enc length",
    "hybrid_low_order": f"{_HYBRID}: all-zero X25519 shared secret",
    "hybrid_not_canonical_enc": f"{_HYBRID}: base64 of the enc argument",
    "hybrid_short_share": f"{_HYBRID}: enc length",
    "hybrid_x25519_arg": f"{_HYBRID}: X25519 stanza carrying a hybrid enc",
}


@dataclass(frozen=True)
class Vector:
    """One parsed vector file."""

    name: str
    expect: str
    passphrases: tuple[str, ...]
    file_key: bytes
    payload: str | None
    armored: bool
    data: bytes


@cache
def load(name: str) -> Vector:
    """Parse a vector: ``key: value`` lines, a blank line, the (maybe zlib) age file."""
    head, _, body = (VECTORS_DIR / name).read_bytes().partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    unknown = set(fields) - KNOWN_KEYS
    assert not unknown, f"{name}: unknown keys {unknown} (README: such files are not ours)"
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return Vector(
        name=name,
        expect=fields["expect"][0],
        passphrases=tuple(fields.get("passphrase", ())),
        file_key=bytes.fromhex(fields["file key"][0]),
        payload=fields.get("payload", [None])[0],
        armored=fields.get("armored") == ["yes"],
        data=body,
    )


NAMES = sorted(p.name for p in VECTORS_DIR.iterdir() if p.name not in NOT_VECTORS)


def route(v: Vector) -> str:
    """Which of our entry points can classify this vector (see the module docstring)."""
    if v.passphrases:
        return "passphrase"
    if v.name in UNCLASSIFIABLE:
        return "unclassifiable"
    if v.expect in ("header failure", "no match") or (
        v.expect == "armor failure" and _armor_fault_before_stanzas(v)
    ):
        return "decrypt"
    return "layers"


def _armor_fault_before_stanzas(v: Vector) -> bool:
    """True when the armor fault shows up before the header is complete."""
    try:
        parse_header(_source(v.data))
    except ArmorError:
        return True
    return False


def _source(data: bytes) -> BufferedSource:
    """Our input stack for ``data``: buffered, through armor when it looks armored."""
    source = BufferedSource(io.BytesIO(data))
    if looks_armored(source.peek(DETECT_WINDOW)):
        source = BufferedSource(ArmorReader(source))
    return source


def run_decrypt(data: bytes, passphrase: str) -> tuple[type[EnvelopeError] | None, str]:
    """decrypt(); the error class (None on success) and SHA-256 of what reached dst."""
    dst = io.BytesIO()
    try:
        decrypt(io.BytesIO(data), dst, passphrase)
    except EnvelopeError as exc:
        return type(exc), hashlib.sha256(dst.getvalue()).hexdigest()
    return None, hashlib.sha256(dst.getvalue()).hexdigest()


def run_layers(v: Vector) -> tuple[type[EnvelopeError] | None, str]:
    """Header parse, MAC and STREAM with the vector's file key; class and released hash."""
    released = hashlib.sha256()
    try:
        source = _source(v.data)
        header = parse_header(source)
        nonce = source.read(NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise HeaderError("no nonce")
        verify_mac(header, v.file_key)
        reader = StreamReader(payload_key(v.file_key, nonce), source)
        while chunk := reader.next_chunk():
            released.update(chunk)
    except EnvelopeError as exc:
        return type(exc), released.hexdigest()
    return None, released.hexdigest()


def _check_payload(v: Vector, released: str) -> None:
    """The plaintext released before any failure hashes to the vector's ``payload``."""
    if v.payload is not None:
        assert released == v.payload
    elif EXPECTED[v.expect] is not PayloadError:
        assert released == hashlib.sha256(b"").hexdigest()


def test_all_143_vectors_are_vendored_and_routed() -> None:
    """All 143 vectors are present, each with a known class and one route."""
    assert len(NAMES) == 143
    assert all(load(n).expect in EXPECTED for n in NAMES)
    routes = [route(load(n)) for n in NAMES]
    counts = {r: routes.count(r) for r in set(routes)}
    assert counts == {"passphrase": 26, "decrypt": 58, "layers": 44, "unclassifiable": 15}


def test_unclassifiable_list_is_exact() -> None:
    """Exactly the header failures our generic layers accept are listed, each with a reason."""
    accepted = {
        n
        for n in NAMES
        if load(n).expect == "header failure"
        and not load(n).passphrases
        and run_layers(load(n))[0] is None
    }
    assert accepted == set(UNCLASSIFIABLE)
    assert all(UNCLASSIFIABLE.values())


@pytest.mark.parametrize("name", [n for n in NAMES if route(load(n)) == "passphrase"])
def test_passphrase_vector(name: str) -> None:
    """decrypt() with the vector's passphrase fails with its class and releases its payload."""
    v = load(name)
    for passphrase in v.passphrases:
        error, released = run_decrypt(v.data, passphrase)
        assert error is EXPECTED[v.expect]
        _check_payload(v, released)


@pytest.mark.parametrize("name", [n for n in NAMES if route(load(n)) == "decrypt"])
def test_generic_failure_vector(name: str) -> None:
    """decrypt() with any passphrase classifies generic faults and unknown stanzas exactly."""
    v = load(name)
    error, released = run_decrypt(v.data, UNRELATED_PASSPHRASE)
    assert error is EXPECTED[v.expect]
    _check_payload(v, released)


@pytest.mark.parametrize("name", [n for n in NAMES if route(load(n)) == "layers"])
def test_layers_vector(name: str) -> None:
    """With the file key, our header/MAC/STREAM layers give the class and payload hash."""
    v = load(name)
    assert looks_armored(v.data[:DETECT_WINDOW]) == v.armored
    error, released = run_layers(v)
    assert error is EXPECTED[v.expect]
    _check_payload(v, released)
    assert run_decrypt(v.data, UNRELATED_PASSPHRASE)[0] is NoMatchError


@pytest.mark.parametrize("name", sorted(UNCLASSIFIABLE))
def test_unclassifiable_vector(name: str) -> None:
    """A recipient-specific header fault: generic layers accept it, decrypt says no match."""
    v = load(name)
    assert route(v) == "unclassifiable" and v.expect == "header failure"
    assert run_layers(v)[0] is None
    assert run_decrypt(v.data, UNRELATED_PASSPHRASE)[0] is NoMatchError


@pytest.mark.parametrize("name", [n for n in NAMES if route(load(n)) == "passphrase"])
def test_read_header_on_scrypt_vectors(name: str) -> None:
    """read_header() rejects every malformed scrypt header without a passphrase."""
    v = load(name)
    if v.expect == "header failure" and name != "scrypt_work_factor_23":
        with pytest.raises(HeaderError):
            read_header(io.BytesIO(v.data))
        return
    info = read_header(io.BytesIO(v.data))
    assert info.armored == v.armored
    assert info.is_scrypt == (name != "scrypt_uppercase")
    assert info.work_factor == {"scrypt_uppercase": None, "scrypt_work_factor_23": 23}.get(name, 10)
