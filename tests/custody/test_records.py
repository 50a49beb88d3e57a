"""Signed records: signing, verification, the one byte form and tampering."""

import base64
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from custody.canonical import canonical_json
from custody.errors import CustodyError, RecordError, SignatureError
from custody.keys import fingerprint
from custody.records import (
    DOMAIN_PREFIX,
    KIND_CHECKPOINT,
    KIND_RECEIPT,
    KIND_STATUS,
    dumps_record,
    loads_record,
    sign_record,
    verify_record,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
BODY: dict[str, object] = {"batch": "B-20250701-0001", "files": 2, "名前": "新宿区"}
VECTOR = (
    '{"alg":"ed25519","body":{"batch":"B-20250701-0001","files":2,"名前":"新宿区"},'
    '"kind":"receipt","sig":"ENh6DqMQC5qiKsVvq7dilg6wSGQsESj69DTTHggTjjShqDFD/nq6bqMwdXJ6t'
    'loUSeYee8HjjM2wKgkQitaDCw==","signer":"SHA256:lbmsoA0yIEcEiVDRnMWuzm+nV+3ZEEpVIURqFoeSspg"}\n'
).encode()
"""KEY's receipt for BODY; Ed25519 is deterministic, so this pins the whole format."""
SIGNED = sign_record(KIND_RECEIPT, BODY, KEY)
SIGNED_BYTES = dumps_record(SIGNED)


def test_known_answer_vector() -> None:
    """Signing a fixed body with a fixed key gives exactly the pinned bytes."""
    assert SIGNED_BYTES == VECTOR
    assert verify_record(loads_record(VECTOR), KEY.public_key(), kind=KIND_RECEIPT) == BODY


def test_signature_covers_prefix_and_canonical_signed_fields() -> None:
    """sig is Ed25519 over DOMAIN_PREFIX + canonical_json of kind, body, signer and alg."""
    doc = sign_record(KIND_STATUS, {"state": "forwarded"}, KEY)
    assert set(doc) == {"kind", "body", "signer", "alg", "sig"}
    assert doc["signer"] == fingerprint(KEY.public_key()) and doc["alg"] == "ed25519"
    signed = {name: doc[name] for name in ("kind", "body", "signer", "alg")}
    sig = base64.b64decode(str(doc["sig"]), validate=True)
    KEY.public_key().verify(sig, DOMAIN_PREFIX + canonical_json(signed))
    assert DOMAIN_PREFIX == b"lgwan-custody/v1\n"


def test_returned_record_is_independent_of_the_body() -> None:
    """Changing the caller's body after signing does not change the record."""
    body: dict[str, object] = {"files": ["a.pdf"]}
    doc = sign_record(KIND_RECEIPT, body, KEY)
    files = body["files"]
    assert isinstance(files, list)
    files.append("b.pdf")
    assert verify_record(doc, KEY.public_key(), kind=KIND_RECEIPT) == {"files": ["a.pdf"]}


def test_returned_body_is_a_copy() -> None:
    """Mutating the returned body does not alter the record it came from."""
    doc = sign_record(KIND_RECEIPT, {"n": [1]}, KEY)
    body = verify_record(doc, KEY.public_key(), kind=KIND_RECEIPT)
    body["n"] = 2
    assert verify_record(doc, KEY.public_key(), kind=KIND_RECEIPT) == {"n": [1]}


def test_wrong_kind_is_refused() -> None:
    """A receipt cannot be accepted as a checkpoint (no replay across kinds)."""
    with pytest.raises(SignatureError, match="kind"):
        verify_record(SIGNED, KEY.public_key(), kind=KIND_CHECKPOINT)


def test_relabelled_kind_is_refused() -> None:
    """Rewriting the kind field to the expected one breaks the signature."""
    doc = dict(SIGNED, kind=KIND_CHECKPOINT)
    with pytest.raises(SignatureError, match="bad signature"):
        verify_record(doc, KEY.public_key(), kind=KIND_CHECKPOINT)


def test_other_key_is_refused_by_fingerprint() -> None:
    """A record signed by another key names another signer and is refused."""
    with pytest.raises(SignatureError, match="signed by"):
        verify_record(SIGNED, OTHER_KEY.public_key(), kind=KIND_RECEIPT)


def test_forged_signer_field_is_refused() -> None:
    """Claiming the pinned key's fingerprint over another key's signature fails."""
    doc = sign_record(KIND_RECEIPT, BODY, OTHER_KEY)
    doc["signer"] = fingerprint(KEY.public_key())
    with pytest.raises(SignatureError, match="bad signature"):
        verify_record(doc, KEY.public_key(), kind=KIND_RECEIPT)


def test_changed_body_is_refused() -> None:
    """Changing one value of the body breaks the signature."""
    doc = dict(SIGNED, body=dict(BODY, files=3))
    with pytest.raises(SignatureError):
        verify_record(doc, KEY.public_key(), kind=KIND_RECEIPT)


def _with(**changes: object) -> dict[str, object]:
    doc = dict(SIGNED)
    doc.update(changes)
    return doc


def _without(name: str) -> dict[str, object]:
    return {k: v for k, v in SIGNED.items() if k != name}


_SIG = str(SIGNED["sig"])


@pytest.mark.parametrize(
    "make",
    [
        lambda: _without("sig"),
        lambda: _without("signer"),
        lambda: _without("body"),
        lambda: _with(extra=1),
        lambda: _with(body=[1]),
        lambda: _with(body={"x": 1.5}),
        lambda: _with(kind=7),
        lambda: _with(kind="Receipt"),
        lambda: _with(kind=""),
        lambda: _with(signer=None),
        lambda: _with(alg="rsa"),
        lambda: _with(sig=7),
        lambda: _with(sig="not base64!"),
        lambda: _with(sig=_SIG[:-4]),
        lambda: _with(sig=base64.b64encode(b"\x00" * 65).decode()),
        lambda: _with(sig=_SIG[:-3] + chr(ord(_SIG[-3]) + 1) + "=="),
        lambda: [SIGNED],
    ],
    ids=[
        "no-sig", "no-signer", "no-body", "extra-field", "body-list", "body-float",
        "kind-int", "kind-uppercase", "kind-empty", "signer-null", "alg-rsa", "sig-int",
        "sig-not-b64", "sig-short", "sig-65-bytes", "sig-noncanonical-b64", "not-object",
    ],
)  # fmt: skip
def test_malformed_records_are_record_errors(make: Callable[[], object]) -> None:
    """Missing/extra fields, wrong types, foreign alg and bad signature encodings are malformed."""
    with pytest.raises(RecordError):
        verify_record(make(), KEY.public_key(), kind=KIND_RECEIPT)  # type: ignore[arg-type]


def test_sign_refuses_bad_kind_and_body() -> None:
    """A malformed kind or a body outside canonical JSON cannot be signed."""
    with pytest.raises(RecordError):
        sign_record("Bad Kind", BODY, KEY)
    with pytest.raises(RecordError):
        sign_record(KIND_RECEIPT, {"size": 1.5}, KEY)
    with pytest.raises(RecordError):
        sign_record(KIND_RECEIPT, [("a", 1)], KEY)  # type: ignore[arg-type]


def test_dumps_refuses_unsigned_record() -> None:
    """dumps_record only writes well-formed records."""
    with pytest.raises(RecordError):
        dumps_record(_without("sig"))


def test_loads_accepts_with_or_without_final_newline() -> None:
    """The stored form is canonical JSON plus one optional newline."""
    assert loads_record(SIGNED_BYTES) == SIGNED
    assert loads_record(SIGNED_BYTES.rstrip(b"\n")) == SIGNED


@pytest.mark.parametrize(
    "data",
    [
        SIGNED_BYTES + b"\n",
        b" " + SIGNED_BYTES,
        SIGNED_BYTES.replace(b'":', b'": ', 1),
        SIGNED_BYTES.replace(b"{", b'{"alg":"ed25519",', 1),
        SIGNED_BYTES.replace("新宿区".encode(), b"\\u65b0\\u5bbf\\u533a"),
        b"[]\n",
        b"",
    ],
    ids=["two-newlines", "leading-space", "inner-space", "duplicate-key", "escaped-utf8",
         "array", "empty"],
)  # fmt: skip
def test_loads_refuses_non_canonical_or_malformed(data: bytes) -> None:
    """Any byte form other than dumps_record's is refused, even if it means the same."""
    with pytest.raises(RecordError):
        loads_record(data)


def test_loads_size_cap() -> None:
    """A record over max_bytes is refused."""
    with pytest.raises(RecordError, match="exceeds"):
        loads_record(SIGNED_BYTES, max_bytes=len(SIGNED_BYTES) - 1)


@pytest.mark.parametrize("flip", [0x01, 0x20, 0x80])
def test_every_position_flipped_is_detected(flip: int) -> None:
    """Flipping a bit at every byte position of a stored record is detected (exhaustive)."""
    undetected = []
    for position in range(len(SIGNED_BYTES)):
        mutated = bytearray(SIGNED_BYTES)
        mutated[position] ^= flip
        try:
            verify_record(loads_record(bytes(mutated)), KEY.public_key(), kind=KIND_RECEIPT)
        except CustodyError:
            continue
        undetected.append(position)
    assert undetected == []


@given(
    position=st.integers(min_value=0, max_value=len(SIGNED_BYTES) - 1),
    value=st.integers(min_value=0, max_value=255),
)
def test_any_single_byte_change_is_detected(position: int, value: int) -> None:
    """Replacing any one byte of a stored record makes loading or verification fail."""
    if SIGNED_BYTES[position] == value:
        value ^= 0x01
    mutated = SIGNED_BYTES[:position] + bytes([value]) + SIGNED_BYTES[position + 1 :]
    with pytest.raises(CustodyError):
        verify_record(loads_record(mutated), KEY.public_key(), kind=KIND_RECEIPT)


_SAFE_INTS = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)


@given(st.dictionaries(st.text(max_size=8), _SAFE_INTS | st.text(max_size=8), max_size=5))
def test_sign_verify_round_trip(body: dict[str, object]) -> None:
    """Any JSON body survives sign, dumps, loads and verify unchanged."""
    doc = sign_record(KIND_STATUS, body, KEY)
    assert (
        verify_record(loads_record(dumps_record(doc)), KEY.public_key(), kind=KIND_STATUS) == body
    )
