"""Fuzzing the envelope readers with mutated age files (issue 8 §1, envelope).

Valid envelopes (work factor 10, 0 B to 128.5 KiB of plaintext in 1 to 3
STREAM chunks, built deterministically so CI is reproducible) are
mutated by bit flips, byte overwrites, truncations, insertions, deletions,
header line edits (work factors huge, negative and odd), huge lines, stanzas
and argument lists, and ASCII-armor variants. For every case:

- ``envelope.decrypt`` / ``DecryptingReader`` raise only ``EnvelopeError``
  subclasses; every released byte is a prefix of the true plaintext; a change
  in the header or nonce releases nothing; a change in payload chunk k releases
  nothing past chunk k-1; success means the full, true plaintext (and, for a
  binary file, an unchanged file);
- ``gateway.envelope_check.check_envelope`` never raises and returns a verdict
  with the file's true size and SHA-256 (ok whenever decryption succeeded);
- scrypt never runs with a work factor above ``max_work_factor``;
- traced Python allocation stays under 8 MiB per case (scrypt's own memory is
  OpenSSL's and not traced).

``LGWAN_FUZZ_EXAMPLES`` (default 10,000) sets the total number of cases; the
last test checks that at least that many ran.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import os
import random
import re
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import envelope
import envelope.recipient
from envelope import DecryptingReader, EnvelopeError, HeaderError, NoMatchError, read_header
from envelope import decrypt as envelope_decrypt
from envelope.armor import ARMOR_BEGIN, ARMOR_END
from envelope.stream import CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, NONCE_SIZE
from gateway.envelope_check import CheckResult, QuarantineReason, check_envelope

PW = "FUZZ-PASS-PHRA-SE00"
SEED_WF = 10
MAX_WF = 12
MEMORY_BOUND = 8 << 20
TOTAL = int(os.environ.get("LGWAN_FUZZ_EXAMPLES", "10000"))
PERCENT = {"bytes": 50, "header": 30, "armor": 18, "huge": 2}
EXAMPLES = {name: -(-TOTAL * pct // 100) for name, pct in PERCENT.items()}  # rounded up
RAN: Counter[str] = Counter()
SIZES = (0, 1, 1000, CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE + 500)


def _fuzz_settings(name: str, *, shrink: bool = True) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.generate, *([Phase.shrink] if shrink else [])],
    )


class Seed:
    """A valid envelope and what it holds (a plain class: its repr stays short)."""

    def __init__(
        self, plaintext: bytes, data: bytes, payload_start: int, header_lines: tuple[bytes, ...]
    ) -> None:
        self.plaintext = plaintext
        self.data = data
        self.payload_start = payload_start
        self.header_lines = header_lines

    def __repr__(self) -> str:
        return f"<seed of {len(self.plaintext)} plaintext bytes>"


def _make_seed(size: int) -> Seed:
    """Encrypt ``size`` deterministic bytes with deterministic randomness (reproducible CI)."""
    rng = random.Random(size)  # noqa: S311 (reproducible test data, not secrets)
    plaintext = rng.randbytes(size)
    with mock.patch("os.urandom", rng.randbytes):
        out = io.BytesIO()
        envelope.encrypt(io.BytesIO(plaintext), out, PW, work_factor=SEED_WF)
    data = out.getvalue()
    header_length = read_header(io.BytesIO(data)).header_length
    lines = tuple(data[:header_length].splitlines(keepends=True))
    return Seed(plaintext, data, header_length + NONCE_SIZE, lines)


SEEDS = tuple(_make_seed(size) for size in SIZES)


@dataclass
class ScryptLog:
    """Every scrypt computation of a case: its work factors."""

    factors: list[int] = field(default_factory=list)


SCRYPT = ScryptLog()
_REAL_WRAP_KEY = envelope.recipient._wrap_key
_WRAP_CACHE: dict[tuple[str, bytes, int], bytes] = {}


def _logged_wrap_key(passphrase: str, salt: bytes, work_factor: int) -> bytes:
    """Record the work factor, refuse one above the max, memoize (speed only)."""
    SCRYPT.factors.append(work_factor)
    assert work_factor <= MAX_WF, f"scrypt ran with work factor {work_factor} > {MAX_WF}"
    key = (passphrase, salt, work_factor)
    if key not in _WRAP_CACHE:
        _WRAP_CACHE[key] = _REAL_WRAP_KEY(passphrase, salt, work_factor)
    return _WRAP_CACHE[key]


@pytest.fixture(autouse=True, scope="module")
def _log_scrypt() -> Iterator[None]:
    with mock.patch.object(envelope.recipient, "_wrap_key", _logged_wrap_key):
        yield


class PrefixSink:
    """A write-only sink that checks released plaintext against the truth as it arrives."""

    def __init__(self, truth: bytes) -> None:
        self._truth = memoryview(truth)
        self.released = 0
        self.mismatch = False

    def write(self, data: memoryview | bytes) -> int:
        n = len(data)
        if self._truth[self.released : self.released + n] != data:
            self.mismatch = True
        self.released += n
        return n


@dataclass(frozen=True)
class Outcome:
    """What one decryption attempt did."""

    error: EnvelopeError | None
    released: int
    peak: int


def _decrypt(data: bytes, truth: bytes, mode: tuple[str, int]) -> Outcome:
    """Decrypt ``data`` one of three ways, tracing allocation; only EnvelopeError is caught."""
    sink = PrefixSink(truth)
    how, size = mode
    tracemalloc.reset_peak()
    error: EnvelopeError | None = None
    try:
        if how == "decrypt":
            envelope_decrypt(io.BytesIO(data), sink, PW, max_work_factor=MAX_WF)  # type: ignore[arg-type]
        else:
            reader = DecryptingReader(io.BytesIO(data), PW, max_work_factor=MAX_WF)
            buffer = bytearray(size)
            while True:
                if how == "read":
                    piece = reader.read(size)
                else:
                    piece = bytes(buffer[: reader.readinto(buffer)])
                if not piece:
                    break
                sink.write(piece)
    except EnvelopeError as exc:
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    assert not sink.mismatch, "released bytes that are not the true plaintext"
    return Outcome(error, sink.released, peak)


def _check(data: bytes) -> tuple[CheckResult, int]:
    """Run the gateway's envelope check (it must not raise), tracing allocation."""
    tracemalloc.reset_peak()
    result = check_envelope(io.BytesIO(data), min_work_factor=1, max_work_factor=MAX_WF)
    peak = tracemalloc.get_traced_memory()[1]
    assert isinstance(result, CheckResult)
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    return result, peak


def _run(
    name: str, seed: Seed, data: bytes, first_change: int | None, mode: tuple[str, int]
) -> tuple[Outcome, CheckResult]:
    """One fuzz case: decrypt and check ``data`` and assert the common properties.

    ``first_change`` is the offset of the first byte that differs from the
    seed's binary form, or None when that is not known (armor).
    """
    RAN[name] += 1
    SCRYPT.factors.clear()
    tracemalloc.start()
    try:
        outcome = _decrypt(data, seed.plaintext, mode)
        result, check_peak = _check(data)
    finally:
        tracemalloc.stop()
    assert outcome.peak < MEMORY_BOUND, f"decrypt allocated {outcome.peak} bytes"
    assert check_peak < MEMORY_BOUND, f"check_envelope allocated {check_peak} bytes"
    if outcome.error is None:
        assert outcome.released == len(seed.plaintext)
        if first_change is not None:
            assert data == seed.data, "a changed binary envelope decrypted"
            assert result.ok, result.message
    elif first_change is not None:
        assert outcome.released <= _release_bound(seed, first_change)
    return outcome, result


def _release_bound(seed: Seed, first_change: int) -> int:
    """The most plaintext a file first changed at ``first_change`` may release."""
    if first_change >= len(seed.data):  # data appended: every chunk authenticated
        return len(seed.plaintext)
    if first_change < seed.payload_start:  # header or nonce: nothing authenticates
        return 0
    return (first_change - seed.payload_start) // ENCRYPTED_CHUNK_SIZE * CHUNK_SIZE


seeds = st.sampled_from(SEEDS)
READ_SIZES = [1000, 4096, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE]
modes = st.tuples(st.sampled_from(["decrypt", "read", "readinto"]), st.sampled_from(READ_SIZES))
INTERESTING = [0x00, 0xFF, 0x0A, 0x0D, 0x20, 0x2D, 0x3D, 0x2B, 0x2F, 0x41, 0x80]


@functools.cache
def positions(seed: Seed) -> st.SearchStrategy[int]:
    """Offsets in the seed, biased to the header, the nonce and chunk boundaries."""
    n = len(seed.data)
    chunks = max(1, (n - seed.payload_start) // ENCRYPTED_CHUNK_SIZE + 1)
    boundary = st.builds(
        lambda k, d: min(n - 1, max(0, seed.payload_start + k * ENCRYPTED_CHUNK_SIZE + d)),
        st.integers(0, chunks),
        st.integers(-20, 20),
    )
    return st.one_of(st.integers(0, seed.payload_start + 8), boundary, st.integers(0, n - 1))


@st.composite
def byte_mutations(draw: st.DrawFn, seed: Seed) -> tuple[bytes, int]:
    """One or more byte-level changes; returns the data and the first changed offset."""
    data = bytearray(seed.data)
    first = len(data)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        at = min(draw(positions(seed)), len(data))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(data):
            data[at] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(1, 4096))]
        first = min(first, at)
    return bytes(data), _first_difference(seed.data, bytes(data), first)


def _first_difference(a: bytes, b: bytes, hint: int) -> int:
    """The first offset where ``a`` and ``b`` differ (none differ before ``hint``)."""
    limit = min(hint, len(a), len(b))
    if a[:limit] != b[:limit]:  # cannot happen: every change is at or after ``hint``
        raise AssertionError("mutation changed bytes before its position")
    end = min(len(a), len(b))
    for block in range(limit, end, 4096):
        stop = min(block + 4096, end)
        if a[block:stop] != b[block:stop]:
            return next(i for i in range(block, end) if a[i] != b[i])
    return end if len(a) != len(b) else len(a)


@given(seed=seeds, mode=modes, data=st.data())
@_fuzz_settings("bytes")
def test_byte_mutations_fail_cleanly(
    seed: Seed, mode: tuple[str, int], data: st.DataObject
) -> None:
    """Bit flips, overwrites, truncations, insertions, deletions and duplications."""
    mutated, first = data.draw(byte_mutations(seed))
    _run("bytes", seed, mutated, first, mode)


WORK_FACTORS = [
    *map(str, range(-2, 34)),
    *("00", "01", "010", "+10", "1e1", "0x0a", "10.0", "１０", "٩", "99", "100", "255", "256"),
    *(str(2**k + d) for k in (31, 32, 63, 64, 128) for d in (-1, 0, 10)),
    "9" * 400,
]
ARG_WORDS = st.sampled_from(["AAAAAAAAAAAAAAAAAAAAAA", "AAAAAAAAAAAAAAAAAAAAAA==", "-", "scrypt"])
HEADER_LINES = [
    b"age-encryption.org/v1\n",
    b"age-encryption.org/v2\n",
    b"-> scrypt\n",
    b"-> X25519 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    b"-> scrypt AAAAAAAAAAAAAAAAAAAAAA 10 extra\n",
    b"->\n",
    b"-> \n",
    b"\n",
    b"---\n",
    b"--- \n",
    b"--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n",
    b"--- AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n",
    b"A" * 64 + b"\n",
    b"A" * 65 + b"\n",
    b"AAAA====\n",
]


@st.composite
def header_edits(draw: st.DrawFn, seed: Seed) -> tuple[bytes, str | None]:
    """Edit the seed's header lines; returns the file and the new work factor text, if set."""
    lines = list(seed.header_lines)  # version, "-> scrypt salt wf", body, "--- mac"
    new_wf: str | None = None
    op = draw(
        st.sampled_from(["wf", "salt", "type", "args", "body", "mac", "lines", "ends", "stanza"])
    )
    words = lines[1][:-1].split(b" ")
    if op == "wf":
        new_wf = draw(st.sampled_from(WORK_FACTORS) | st.integers(-(2**70), 2**70).map(str))
        lines[1] = b" ".join([*words[:3], new_wf.encode()]) + b"\n"
    elif op == "salt":
        salt = draw(st.binary(min_size=0, max_size=24))
        text = base64.b64encode(salt)
        text = text if draw(st.booleans()) else text.rstrip(b"=")
        lines[1] = b" ".join([*words[:2], text, words[3]]) + b"\n"
    elif op == "type":
        kind = draw(st.sampled_from([b"Scrypt", b"SCRYPT", b"scrypt2", b"X25519", b"scrypt\x00"]))
        lines[1] = b" ".join([words[0], kind, *words[2:]]) + b"\n"
    elif op == "args":
        extra = draw(st.lists(ARG_WORDS, min_size=0, max_size=3))
        keep = draw(st.integers(1, 4))
        lines[1] = b" ".join([*words[:keep], *(w.encode() for w in extra)]) + b"\n"
    elif op == "body":
        body = draw(st.binary(min_size=0, max_size=60))
        text = base64.b64encode(body)
        text = text if draw(st.booleans()) else text.rstrip(b"=")
        lines[2] = text + b"\n" if len(text) < 64 else text[:64] + b"\n" + text[64:] + b"\n"
    elif op == "mac":
        mac = base64.b64encode(draw(st.binary(min_size=30, max_size=34))).rstrip(b"=")
        lines[3] = draw(st.sampled_from([b"--- ", b"---  ", b"--- x", b"-- "])) + mac + b"\n"
    elif op == "lines":
        at = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "dup", "swap", "insert"]))
        if action == "drop":
            del lines[at]
        elif action == "dup":
            lines.insert(at, lines[at])
        elif action == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        else:
            lines.insert(at, draw(st.sampled_from(HEADER_LINES)))
    elif op == "ends":
        at = draw(st.integers(0, len(lines) - 1))
        lines[at] = lines[at][:-1] + draw(st.sampled_from([b"\r", b" ", b"\t", b"\x00"])) + b"\n"
    else:  # a second stanza: scrypt must be alone
        stanza = draw(st.sampled_from([lines[1] + lines[2], HEADER_LINES[3] + b"\n"]))
        lines.insert(draw(st.sampled_from([1, 3])), stanza)
    return b"".join(lines) + seed.data[len(b"".join(seed.header_lines)) :], new_wf


@given(seed=seeds, mode=modes, data=st.data())
@_fuzz_settings("header")
def test_header_line_edits_fail_cleanly(
    seed: Seed, mode: tuple[str, int], data: st.DataObject
) -> None:
    """Header line edits; odd and huge work factors are refused before any scrypt work."""
    mutated, new_wf = data.draw(header_edits(seed))
    first = _first_difference(seed.data, mutated, 0)
    outcome, result = _run("header", seed, mutated, first, mode)
    if new_wf is None:
        return
    canonical = re.fullmatch(r"[1-9][0-9]?", new_wf) is not None and int(new_wf) <= 30
    if not canonical:
        assert isinstance(outcome.error, HeaderError)
        assert SCRYPT.factors == []
        assert result.reason is QuarantineReason.MALFORMED_HEADER
    elif int(new_wf) > MAX_WF:
        assert isinstance(outcome.error, HeaderError)
        assert "exceeds the maximum" in str(outcome.error)
        assert SCRYPT.factors == []
        assert result.reason is QuarantineReason.WORK_FACTOR_HIGH
    elif int(new_wf) != SEED_WF:
        assert isinstance(outcome.error, NoMatchError)  # scrypt at that factor: a wrong key
        assert SCRYPT.factors == [int(new_wf)]
        assert result.ok
    else:
        assert outcome.error is None


def _armor(data: bytes, eol: bytes, columns: int, lead: bytes, trail: bytes) -> bytes:
    text = base64.b64encode(data)
    rows = [text[i : i + columns] for i in range(0, len(text), columns)]
    return lead + ARMOR_BEGIN + eol + b"".join(r + eol for r in rows) + ARMOR_END + trail


@st.composite
def armor_variants(draw: st.DrawFn, seed: Seed) -> tuple[bytes, bool]:
    """The seed armored in a valid or invalid way, maybe mutated; and whether it is canonical."""
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r", b"\n\n"]))
    columns = draw(st.sampled_from([64, 64, 64, 4, 60, 63, 65, 76]))
    lead = draw(st.sampled_from([b"", b"\n", b" \t\r\n", b"\n" * 1025, b"x\n", b" "]))
    trail = draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n \n\t", b" " * 1024, b"\nx", b"\0"]))
    armored = _armor(seed.data, eol, columns, lead, trail)
    valid = (
        eol in (b"\n", b"\r\n")
        and columns == 64
        and lead in (b"", b"\n", b" \t\r\n")
        and trail in (b"", b"\n", b"\r\n", b"\n \n\t")
    )
    if draw(st.booleans()):
        mutated = bytearray(armored)
        at = draw(st.integers(0, len(mutated) - 1))
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        if op == "flip":
            mutated[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del mutated[at:]
        elif op == "insert":
            mutated[at:at] = draw(st.sampled_from([b"=", b"\n", b" ", b"A", b"\r\n", b"-----"]))
        else:
            del mutated[at]
        valid = valid and bytes(mutated) == armored
        armored = bytes(mutated)
    return armored, valid


@given(seed=seeds, mode=modes, data=st.data())
@_fuzz_settings("armor")
def test_armor_variants_fail_cleanly(
    seed: Seed, mode: tuple[str, int], data: st.DataObject
) -> None:
    """Armored files: canonical ones decrypt, the gateway quarantines all of them."""
    armored, valid = data.draw(armor_variants(seed))
    outcome, result = _run("armor", seed, armored, None, mode)
    if valid:
        assert outcome.error is None
    assert not result.ok


def _huge(seed: Seed, kind: str, count: int) -> bytes:
    """A hostile header (or armor) as large as the readers' bounds, or larger."""
    version, stanza, body, mac = seed.header_lines
    rest = seed.data[len(b"".join(seed.header_lines)) :]
    if kind == "long line":
        return version + b"-> a " + b"b" * count + b"\n" + body + mac + rest
    if kind == "many stanzas":
        return version + b"-> a b c\n\n" * count + mac + rest
    if kind == "many args":
        return version + b"-> a" + b" aa" * count + b"\n\n" + mac + rest
    if kind == "many scrypt args":
        return version + stanza[:-1] + b" 1" * count + b"\n" + body + mac + rest
    if kind == "mac words":
        return version + stanza + body + b"---" + b" aa" * count + b"\n" + rest
    if kind == "huge body":
        return version + b"-> a\n" + (b"A" * 64 + b"\n") * count + b"\n" + mac + rest
    if kind == "huge scrypt body":
        return version + stanza + (b"A" * 64 + b"\n") * count + body + mac + rest
    if kind == "long armor line":
        return ARMOR_BEGIN + b"\n" + b"A" * count + b"\n" + ARMOR_END + b"\n"
    if kind == "many armor lines":
        return ARMOR_BEGIN + b"\n" + (b"A" * 64 + b"\n") * count + ARMOR_END + b"\n"
    return b"\n" * count + ARMOR_BEGIN + b"\n"  # "leading whitespace"


HUGE_KINDS = [
    "long line",
    "many stanzas",
    "many args",
    "many scrypt args",
    "mac words",
    "huge body",
    "huge scrypt body",
    "long armor line",
    "many armor lines",
    "leading whitespace",
]


@given(
    seed=st.sampled_from(SEEDS[:3]),
    kind=st.sampled_from(HUGE_KINDS),
    count=st.sampled_from([1, 100, 5000, 30_000, 300_000]),
    mode=modes,
)
@_fuzz_settings("huge", shrink=False)  # each case is large: report it as found
def test_huge_lines_and_stanzas_are_bounded(
    seed: Seed, kind: str, count: int, mode: tuple[str, int]
) -> None:
    """Hostile sizes: the readers refuse them within the memory bound."""
    data = _huge(seed, kind, count * 10 if kind.startswith("long") else count)
    outcome, result = _run("huge", seed, data, None, mode)
    assert outcome.error is not None
    assert not result.ok


@pytest.mark.parametrize("factor", [str(f) for f in range(MAX_WF + 1, 31)] + ["31", "99"])
def test_work_factor_above_max_is_refused_before_scrypt(factor: str) -> None:
    """Every work factor above the max (up to the ceiling and past it): no scrypt at all."""
    seed = SEEDS[1]
    words = seed.header_lines[1].split(b" ")
    stanza = b" ".join([*words[:3], factor.encode()]) + b"\n"
    data = seed.header_lines[0] + stanza + b"".join(seed.header_lines[2:])
    data += seed.data[len(b"".join(seed.header_lines)) :]
    SCRYPT.factors.clear()
    with pytest.raises(HeaderError):
        envelope_decrypt(io.BytesIO(data), io.BytesIO(), PW, max_work_factor=MAX_WF)
    assert SCRYPT.factors == []


MAC_LINE = b"--- " + b"A" * 43 + b"\n"
REGRESSION_HEADERS = {
    "stanza count": b"-> a b c\n\n" * 26_000 + MAC_LINE,  # 9 MiB traced before the fix
    "stanza arguments": b"-> a" + b" aa" * 87_000 + b"\n\n" + MAC_LINE,  # 10 MiB before
    "MAC line words": b"-> a\n\n---" + b" aa" * 87_000 + b"\n",  # 4.3 MiB before
}


@pytest.mark.parametrize("shape", sorted(REGRESSION_HEADERS))
def test_regression_hostile_header_shapes_are_refused_early(shape: str) -> None:
    """Regression: a 256 KiB header of tiny words or stanzas is refused within 2 MiB."""
    data = b"age-encryption.org/v1\n" + REGRESSION_HEADERS[shape] + bytes(64)
    tracemalloc.start()
    try:
        with pytest.raises(HeaderError, match=r"more than|malformed MAC line"):
            read_header(io.BytesIO(data))
        peak = tracemalloc.get_traced_memory()[1]
        result = check_envelope(io.BytesIO(data), min_work_factor=1, max_work_factor=MAX_WF)
        check_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.reason is QuarantineReason.MALFORMED_HEADER
    assert peak < 2 << 20
    assert check_peak < 3 << 20


def test_seeds_round_trip() -> None:
    """The unmutated seeds decrypt fully, pass the gateway check and match their sizes."""
    for seed in SEEDS:
        outcome, result = _run("seeds", seed, seed.data, len(seed.data), ("decrypt", 0))
        assert outcome.error is None, outcome.error
        assert result.ok
        assert SCRYPT.factors == [SEED_WF]


def test_zz_case_count() -> None:
    """At least LGWAN_FUZZ_EXAMPLES (default 10,000) cases ran, when the whole file ran."""
    if set(PERCENT) - set(RAN):
        pytest.skip("only part of the fuzz file was selected")
    total = sum(RAN[name] for name in PERCENT)
    print(f"envelope fuzz cases: {dict(RAN)}, total {total}")
    assert total >= TOTAL
