"""Tests for envelope.age and its layers (format, stream, recipient, armor).

Work factors are kept low (2..12) for speed, except where the default is the point.
"""

from __future__ import annotations

import base64
import io
import os
import tarfile
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envelope import (
    ArmorError,
    DecryptingReader,
    EncryptingWriter,
    EnvelopeError,
    HeaderError,
    HmacError,
    NoMatchError,
    PayloadError,
    decrypt,
    encrypt,
    read_header,
)
from envelope.format import (
    BufferedSource,
    Stanza,
    b64decode,
    b64encode,
    parse_header,
    serialize_header,
    verify_mac,
)
from envelope.stream import (
    CHUNK_SIZE,
    ENCRYPTED_CHUNK_SIZE,
    MAX_COUNTER,
    StreamReader,
    StreamWriter,
    chunk_nonce,
)

PW = "TEST-PASS-PHRA-SE00"
WF = 2
BOUNDARY_SIZES = [0, 1, 65535, 65536, 65537, 2 * 65536 - 1, 2 * 65536, 2 * 65536 + 1, 3 * 65536 + 7]


def _encrypt(data: bytes, work_factor: int = WF) -> bytes:
    """Encrypt ``data`` with the test passphrase."""
    out = io.BytesIO()
    encrypt(io.BytesIO(data), out, PW, work_factor=work_factor)
    return out.getvalue()


def _attempt(ct: bytes, **kwargs: int) -> tuple[type[EnvelopeError] | None, bytes]:
    """decrypt(); the error class (None on success) and what reached dst."""
    dst = io.BytesIO()
    try:
        decrypt(io.BytesIO(ct), dst, PW, **kwargs)
    except EnvelopeError as exc:
        return type(exc), dst.getvalue()
    return None, dst.getvalue()


def _header_end(ct: bytes | bytearray) -> int:
    """Offset of the first byte after the header's MAC line."""
    return ct.index(b"\n", ct.index(b"\n---") + 1) + 1


def _with_work_factor(ct: bytes, factor: str) -> bytes:
    """``ct`` with the scrypt work factor argument replaced (MAC left stale)."""
    first, _, rest = ct.partition(b"\n-> scrypt ")
    salt, _, rest = rest.partition(b" ")
    return first + b"\n-> scrypt " + salt + b" " + factor.encode() + rest[rest.index(b"\n") :]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.sampled_from(BOUNDARY_SIZES), st.integers(0, 4 * CHUNK_SIZE)),
    piece=st.integers(1, 3 * CHUNK_SIZE),
    read_size=st.integers(1, 3 * CHUNK_SIZE),
)
def test_round_trip_around_chunk_boundaries(size: int, piece: int, read_size: int) -> None:
    """Any size, written in any pieces and read in any sizes, comes back exactly."""
    data = os.urandom(size)
    out = io.BytesIO()
    with EncryptingWriter(out, PW, work_factor=WF) as writer:
        for i in range(0, size, piece):
            assert writer.write(data[i : i + piece]) == len(data[i : i + piece])
    ct = out.getvalue()
    chunks = max(1, -(-size // CHUNK_SIZE))
    assert len(ct) == _header_end(ct) + 16 + size + 16 * chunks
    reader = DecryptingReader(io.BytesIO(ct), PW)
    parts = []
    while part := reader.read(read_size):
        assert len(part) <= read_size
        parts.append(part)
    assert b"".join(parts) == data
    assert _attempt(ct) == (None, data)


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_encrypt_chunk_layout_at_boundaries(size: int) -> None:
    """encrypt() writes one tag per started chunk (one for empty) and round-trips."""
    data = os.urandom(size)
    ct = _encrypt(data)
    assert len(ct) - _header_end(ct) - 16 == size + 16 * max(1, -(-size // CHUNK_SIZE))
    assert _attempt(ct) == (None, data)


@pytest.mark.parametrize("work_factor", [1, 2, 5, 9, 12])
def test_work_factor_is_encoded_exactly(work_factor: int) -> None:
    """The scrypt stanza carries exactly the requested work factor in decimal."""
    ct = _encrypt(b"x", work_factor)
    assert ct.split(b"\n")[1].split(b" ")[3] == str(work_factor).encode()
    assert read_header(io.BytesIO(ct)).work_factor == work_factor


def test_default_work_factor_is_18() -> None:
    """encrypt() without a work factor writes 18, never a timed choice."""
    out = io.BytesIO()
    encrypt(io.BytesIO(b"x"), out, PW)
    assert read_header(io.BytesIO(out.getvalue())).work_factor == 18


@pytest.mark.parametrize("factor", ["30", "40", "99"])
def test_huge_work_factor_is_refused_before_any_work(factor: str) -> None:
    """A work factor above max_work_factor fails instantly, with no scrypt run."""
    ct = _with_work_factor(_encrypt(b"secret"), factor)
    start = time.perf_counter()
    assert _attempt(ct, max_work_factor=20) == (HeaderError, b"")
    assert time.perf_counter() - start < 0.5


def test_max_work_factor_bound_is_inclusive() -> None:
    """max_work_factor equal to the file's factor decrypts; one less refuses."""
    ct = _encrypt(b"data", 12)
    assert _attempt(ct, max_work_factor=12) == (None, b"data")
    assert _attempt(ct, max_work_factor=11) == (HeaderError, b"")


@pytest.mark.parametrize("bad", [0, 31, -1])
def test_out_of_range_work_factors_are_rejected(bad: int) -> None:
    """encrypt() and decrypt() reject work factors outside 1..30 as usage errors."""
    with pytest.raises(ValueError, match="work_factor"):
        encrypt(io.BytesIO(b""), io.BytesIO(), PW, work_factor=bad)
    with pytest.raises(ValueError, match="max_work_factor"):
        decrypt(io.BytesIO(_encrypt(b"")), io.BytesIO(), PW, max_work_factor=bad)


def test_empty_passphrase_is_refused() -> None:
    """An empty passphrase is a usage error on both sides."""
    with pytest.raises(ValueError, match="passphrase"):
        encrypt(io.BytesIO(b""), io.BytesIO(), "", work_factor=WF)
    with pytest.raises(ValueError, match="passphrase"):
        decrypt(io.BytesIO(_encrypt(b"")), io.BytesIO(), "")


def test_wrong_passphrase_is_no_match_and_not_echoed() -> None:
    """A wrong passphrase raises NoMatchError whose message does not contain it."""
    with pytest.raises(NoMatchError) as info:
        decrypt(io.BytesIO(_encrypt(b"x")), io.BytesIO(), "WRONG-SECRET-42")
    assert "WRONG-SECRET-42" not in str(info.value) and PW not in str(info.value)


@pytest.mark.parametrize("size", [0, 100, 2 * CHUNK_SIZE, 2 * CHUNK_SIZE + 5])
def test_writer_exception_leaves_no_final_chunk(size: int) -> None:
    """A with-block left by an exception writes no final chunk: decrypt fails."""
    out = io.BytesIO()
    with pytest.raises(RuntimeError), EncryptingWriter(out, PW, work_factor=WF) as writer:
        writer.write(os.urandom(size))
        raise RuntimeError("producer failed")
    assert writer.closed
    assert _attempt(out.getvalue())[0] is PayloadError


def test_writer_abort_and_close_rules() -> None:
    """abort() writes nothing more; writes after close fail; close is idempotent."""
    out = io.BytesIO()
    writer = EncryptingWriter(out, PW, work_factor=WF)
    writer.write(b"partial")
    writer.abort()
    assert _attempt(out.getvalue())[0] is PayloadError
    with pytest.raises(ValueError):
        writer.write(b"more")
    out = io.BytesIO()
    writer = EncryptingWriter(out, PW, work_factor=WF)
    writer.close()
    writer.close()
    assert _attempt(out.getvalue()) == (None, b"")


class _DiskFull(io.BytesIO):
    """An output that fails every write once ``full`` is set."""

    full = False

    def write(self, data: object) -> int:
        """Fail like a full disk once ``full`` is set."""
        if self.full:
            raise OSError("disk full")
        return super().write(data)  # type: ignore[arg-type]


def test_writer_failed_write_keeps_file_incomplete() -> None:
    """After dst fails mid-write, further writes and close() refuse to finish the file."""
    out = _DiskFull()
    writer = EncryptingWriter(out, PW, work_factor=WF)
    out.full = True
    with pytest.raises(OSError):
        writer.write(os.urandom(3 * CHUNK_SIZE))
    out.full = False
    with pytest.raises(ValueError):
        writer.write(b"more")
    with pytest.raises(ValueError, match="incomplete"):
        writer.close()
    assert _attempt(out.getvalue())[0] is PayloadError


@pytest.mark.parametrize("chunk", [0, 1, 2])
def test_flipped_payload_byte_releases_only_earlier_chunks(chunk: int) -> None:
    """Tampering with chunk k is a PayloadError after exactly chunks 0..k-1 were released."""
    data = os.urandom(2 * CHUNK_SIZE + 1000)
    ct = bytearray(_encrypt(data))
    ct[_header_end(ct) + 16 + chunk * ENCRYPTED_CHUNK_SIZE + 5] ^= 0x01
    assert _attempt(bytes(ct)) == (PayloadError, data[: chunk * CHUNK_SIZE])


def test_every_header_byte_flip_is_detected() -> None:
    """Flipping any bit of the header or nonce fails before any plaintext is released."""
    ct = _encrypt(b"hello")
    for i in range(_header_end(ct) + 16):
        bad = bytearray(ct)
        bad[i] ^= 0x02
        error, released = _attempt(bytes(bad))
        assert error in (HeaderError, HmacError, NoMatchError, PayloadError, ArmorError), i
        assert released == b""


def test_flipped_mac_is_hmac_error() -> None:
    """A different but well-formed MAC is reported as an HMAC failure."""
    ct = _encrypt(b"hello")
    at = ct.index(b"\n--- ") + 5
    bad = ct[:at] + (b"B" if ct[at : at + 1] == b"A" else b"A") + ct[at + 1 :]
    assert _attempt(bad) == (HmacError, b"")


@pytest.mark.parametrize("cut", [1, 16, ENCRYPTED_CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE + 17])
def test_truncation_and_trailing_data_are_payload_errors(cut: int) -> None:
    """Cutting the payload or appending bytes is a PayloadError; only whole chunks get out."""
    data = os.urandom(CHUNK_SIZE + 100)
    ct = _encrypt(data)
    error, released = _attempt(ct[:-cut])
    assert error is PayloadError and released in (b"", data[:CHUNK_SIZE])
    assert _attempt(ct + b"\x00" * cut) == (PayloadError, data[:CHUNK_SIZE])


def test_eof_only_after_verified_end() -> None:
    """A full final chunk followed by garbage: data, then PayloadError, never b""."""
    data = os.urandom(CHUNK_SIZE)
    reader = DecryptingReader(io.BytesIO(_encrypt(data) + b"junk"), PW)
    assert reader.read(CHUNK_SIZE) == data
    with pytest.raises(PayloadError):
        reader.read(1)
    with pytest.raises(PayloadError):
        reader.read(1)


def test_reader_readinto_and_header() -> None:
    """readinto fills caller buffers and .header describes the file."""
    data = os.urandom(70000)
    reader = DecryptingReader(io.BytesIO(_encrypt(data, 3)), PW)
    assert reader.header.work_factor == 3 and reader.header.is_scrypt
    buf = bytearray(50000)
    got = bytearray()
    while n := reader.readinto(buf):
        got += buf[:n]
    assert got == data and reader.read() == b""


def test_read_header_on_good_input() -> None:
    """read_header reports stanza, work factor, header length and no armor."""
    ct = _encrypt(b"abc", 7)
    info = read_header(io.BytesIO(ct))
    assert info.stanzas[0][0] == "scrypt" and info.stanzas[0][1][1] == "7"
    assert (info.work_factor, info.header_length, info.armored) == (7, _header_end(ct), False)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        "被保険者番号,氏名\r\n".encode("cp932"),
        b"age-encryption.org/v1\n",
        b"age-encryption.org/v1\n--- " + b"A" * 43 + b"\n" + b"\x00" * 16,
        b"age-encryption.org/v1\n-> scrypt c2FsdHNhbHRzYWx0c2FsdA 10\n" + b"A" * 43 + b"\n--- ",
    ],
)
def test_read_header_rejects_bad_input(data: bytes) -> None:
    """Empty files, plaintext, truncated or stanza-less headers are header errors."""
    with pytest.raises(HeaderError):
        read_header(io.BytesIO(data))


def test_read_header_rejects_missing_nonce_and_reports_foreign_stanzas() -> None:
    """No nonce is a header error; an X25519 header is reported as not scrypt."""
    ct = _encrypt(b"")
    with pytest.raises(HeaderError):
        read_header(io.BytesIO(ct[: _header_end(ct) + 15]))
    x = Stanza("X25519", ("c2hhcmU",), b"k" * 32)
    info = read_header(io.BytesIO(serialize_header((x,), b"k" * 16) + b"n" * 16))
    assert (info.is_scrypt, info.work_factor) == (False, None)


def test_oversized_header_is_refused_with_bounded_reading() -> None:
    """A stanza line of several MiB is a HeaderError after reading at most ~256 KiB + a block."""
    src = io.BytesIO(b"age-encryption.org/v1\n-> x " + b"a" * (8 << 20))
    with pytest.raises(HeaderError, match="exceeds"):
        read_header(src)
    assert src.tell() <= (256 + 128) * 1024


def _armor(ct: bytes) -> bytes:
    """ASCII-armor ``ct`` the way age does."""
    text = base64.b64encode(ct)
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return (
        b"-----BEGIN AGE ENCRYPTED FILE-----\n"
        + b"\n".join(lines)
        + (b"\n-----END AGE ENCRYPTED FILE-----\n")
    )


def test_armored_files_decrypt_and_strict_armor_is_enforced() -> None:
    """Armored input is detected and decrypted; a stray line break is an ArmorError."""
    data = os.urandom(3 * CHUNK_SIZE + 3)
    armored = _armor(_encrypt(data))
    assert _attempt(armored) == (None, data)
    assert read_header(io.BytesIO(armored)).armored
    broken = armored.replace(b"\n", b"\n\n", 5)
    assert _attempt(broken)[0] is ArmorError


@pytest.mark.parametrize(
    "armored",
    [
        b" \n" * 515 + b"-----BEGIN AGE ENCRYPTED FILE-----\n",
        b"-----BEGIN AGE ENCRYPTED FILE-----\n" + b"QUFB" * (4 << 20),
        b"-----BEGIN AGE ENCRYPTED FILE-----\nQUFB\n-----END AGE ENCRYPTED FILE-----\n"
        + b" " * 2000,
    ],
    ids=["leading-whitespace", "endless-line", "trailing-whitespace"],
)
def test_hostile_armor_is_refused_with_bounded_reading(armored: bytes) -> None:
    """Too much whitespace or an endless line is an ArmorError after a bounded read."""
    src = io.BytesIO(armored)
    with pytest.raises(ArmorError):
        read_header(src)
    assert src.tell() <= 256 * 1024


def test_tarfile_streams_through_writer_and_reader() -> None:
    """tarfile "w|" into EncryptingWriter and "r|" from DecryptingReader round-trip."""
    files = {"manifest.json": b"{}", "a.csv": os.urandom(200_000), "empty.txt": b""}
    out = io.BytesIO()
    with (
        EncryptingWriter(out, PW, work_factor=WF) as enc,
        tarfile.open(mode="w|", fileobj=enc) as tar,
    ):
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    got = {}
    reader = DecryptingReader(io.BytesIO(out.getvalue()), PW)
    with tarfile.open(mode="r|", fileobj=reader) as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            assert extracted is not None
            got[member.name] = extracted.read()
    assert got == files
    rest = reader.read()  # tarfile stops at the end marker: drain to authenticate the end
    assert rest.count(0) == len(rest) and reader.read() == b""


def test_chunk_nonce_layout_and_overflow() -> None:
    """Chunk nonces are an 11-byte counter plus flag; the counter cannot overflow."""
    assert chunk_nonce(1, last=False) == bytes(10) + b"\x01\x00"
    assert chunk_nonce(MAX_COUNTER, last=True) == b"\xff" * 11 + b"\x01"
    with pytest.raises(PayloadError, match="overflow"):
        chunk_nonce(MAX_COUNTER + 1, last=False)


@given(pieces=st.lists(st.integers(0, 2 * CHUNK_SIZE + 1), max_size=4))
@settings(max_examples=20, deadline=None)
def test_stream_writer_output_is_independent_of_write_sizes(pieces: list[int]) -> None:
    """The same plaintext gives the same STREAM bytes however it was split into writes."""
    key = os.urandom(32)
    data = os.urandom(sum(pieces))
    whole, split = io.BytesIO(), io.BytesIO()
    one = StreamWriter(key, whole)
    one.write(data)
    one.close()
    many = StreamWriter(key, split)
    at = 0
    for size in pieces:
        many.write(data[at : at + size])
        at += size
    many.close()
    assert whole.getvalue() == split.getvalue()
    reader = StreamReader(key, BufferedSource(io.BytesIO(whole.getvalue())))
    assert b"".join(bytes(c) for c in iter(reader.next_chunk, memoryview(b""))) == data


printable = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@given(
    stanzas=st.lists(
        st.builds(
            Stanza, printable, st.lists(printable, max_size=3).map(tuple), st.binary(max_size=200)
        ),
        min_size=1,
        max_size=3,
    ),
    key=st.binary(min_size=16, max_size=16),
)
def test_header_serialize_parse_round_trip(stanzas: list[Stanza], key: bytes) -> None:
    """Any valid header parses back to the same stanzas, its MAC verifying, bytes exact."""
    raw = serialize_header(tuple(stanzas), key)
    src = BufferedSource(io.BytesIO(raw + b"payload"))
    header = parse_header(src)
    assert list(header.stanzas) == stanzas and header.length == len(raw)
    verify_mac(header, key)
    assert src.read(100) == b"payload"


B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@given(st.binary(max_size=100))
def test_base64_is_canonical_only(data: bytes) -> None:
    """b64decode inverts b64encode and rejects padding and non-zero trailing bits."""
    text = b64encode(data)
    assert b64decode(text) == data
    assert b64decode(base64.b64encode(data), padded=True) == data
    if len(data) % 3:
        with pytest.raises(ValueError):
            b64decode(text + b"=")
        sextet = B64_ALPHABET.index(text[-1:])
        tweaked = text[:-1] + B64_ALPHABET[sextet ^ 1 : (sextet ^ 1) + 1]
        with pytest.raises(ValueError):
            b64decode(tweaked)


def test_stanza_serialize_rejects_invalid_arguments() -> None:
    """Spaces, empty strings and non-ASCII cannot be serialized as stanza arguments."""
    for args in [("a b",), ("",), ("é",)]:
        with pytest.raises(ValueError):
            Stanza("t", args, b"").serialize()
