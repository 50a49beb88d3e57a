"""check_envelope: the quarantine rules, decided without a passphrase, never raising on content."""

import base64
import hashlib
import io
import os
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import EncryptingWriter, passphrase
from envelope.format import b64encode
from envelope.manifest import FileEntry, Manifest, dumps
from envelope.stream import ENCRYPTED_CHUNK_SIZE
from gateway.envelope_check import CheckResult, QuarantineReason, check_envelope

BATCH = "20260715-KAIGO-7F3KQ2"
CSV = "番号,氏名,住所\r\n1,山田太郎,東京都新宿区\r\n".encode("cp932")
SECRET = passphrase.generate()


def sealed_envelope(
    batch: str = BATCH, *, secret: str = SECRET, work_factor: int = 10, padding: int = 0
) -> bytes:
    """A real sealed batch: age(tar(manifest.json, print.csv[, padding.bin])) as the ward seals it.

    ``padding`` adds a file of that many random bytes (to make multi-chunk envelopes).
    """
    files = [("print.csv", CSV, 1)]
    if padding:
        files.append(("padding.bin", os.urandom(padding), 1))
    entries = tuple(
        FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), records)
        for name, data, records in files
    )
    manifest = dumps(
        Manifest(batch, batch.split("-")[1], datetime(2026, 7, 15, tzinfo=UTC), "tester", entries)
    )
    sink = io.BytesIO()
    with (
        EncryptingWriter(sink, secret, work_factor=work_factor) as writer,
        tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in [("manifest.json", manifest), *((n, d) for n, d, _r in files)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return sink.getvalue()


def foreign_header(*stanzas: tuple[str, list[str], bytes]) -> bytes:
    """An age v1 header written by hand (any stanza types), a nonce and one short chunk."""
    lines = [b"age-encryption.org/v1\n"]
    for kind, args, body in stanzas:
        lines.append(" ".join(["->", kind, *args]).encode() + b"\n")
        text = b64encode(body)
        chunks = [text[i : i + 64] for i in range(0, len(text), 64)]
        if not chunks or len(chunks[-1]) == 64:
            chunks.append(b"")
        lines.extend(c + b"\n" for c in chunks)
    lines.append(b"--- " + b64encode(os.urandom(32)) + b"\n")
    return b"".join(lines) + os.urandom(16) + os.urandom(16 + 40)


def x25519_file() -> bytes:
    """An age file to an X25519 recipient (as `age -r age1…` writes), header built by hand."""
    return foreign_header(("X25519", [b64encode(os.urandom(32)).decode()], os.urandom(32)))


def _zip() -> bytes:
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w") as archive:
        archive.writestr("print.csv", CSV)
    return sink.getvalue()


def _check(data: bytes, low: int = 10, high: int = 20, **kw: object) -> CheckResult:
    return check_envelope(
        io.BytesIO(data),
        min_work_factor=low,
        max_work_factor=high,
        **kw,  # type: ignore[arg-type]
    )


ENVELOPE = sealed_envelope()
HEADER_END = ENVELOPE.index(b"\n", ENVELOPE.index(b"\n--- ") + 1) + 1


def test_sealed_envelope_is_accepted() -> None:
    """A batch sealed at an acceptable work factor passes, with its size, hash and header facts."""
    result = _check(ENVELOPE, expected_size=len(ENVELOPE))
    assert result.ok and result.reason is None and result.message == "accepted"
    assert result.size == len(ENVELOPE)
    assert result.sha256 == hashlib.sha256(ENVELOPE).hexdigest()
    assert result.work_factor == 10 and result.stanzas == ("scrypt",)


def test_default_work_factor_envelope_is_accepted_from_a_path(tmp_path: Path) -> None:
    """An envelope at the production work factor 18 passes the bounds 18-20, read by path."""
    data = sealed_envelope(work_factor=18)
    path = tmp_path / f"{BATCH}.age"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    result = check_envelope(
        path,
        min_work_factor=18,
        max_work_factor=20,
        expected_size=len(data),
        expected_sha256=digest,
    )
    assert result.ok and result.work_factor == 18


def _armored(data: bytes) -> bytes:
    text = base64.b64encode(data)
    body = b"\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return b"-----BEGIN AGE ENCRYPTED FILE-----\n" + body + b"\n-----END AGE ENCRYPTED FILE-----\n"


HOSTILE = {
    "plaintext csv renamed .age": (CSV * 50, QuarantineReason.NOT_AGE, "plain text"),
    "zip archive": (_zip(), QuarantineReason.NOT_AGE, "ZIP"),
    "pdf document": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", QuarantineReason.NOT_AGE, "PDF"),
    "empty file": (b"", QuarantineReason.NOT_AGE, "empty"),
    "random binary": (bytes(range(256)) * 4, QuarantineReason.NOT_AGE, "unknown"),
    "armored age file": (_armored(ENVELOPE), QuarantineReason.ARMORED, ""),
    "x25519 recipient": (x25519_file(), QuarantineReason.NOT_SCRYPT, "X25519"),
    "scrypt beside x25519": (
        foreign_header(
            ("scrypt", [b64encode(os.urandom(16)).decode(), "18"], os.urandom(32)),
            ("X25519", [b64encode(os.urandom(32)).decode()], os.urandom(32)),
        ),
        QuarantineReason.NOT_SCRYPT,
        "only stanza",
    ),
    "unknown version": (
        b"age-encryption.org/v2\n-> scrypt x 18\n\n--- x\n" + bytes(64),
        QuarantineReason.MALFORMED_HEADER,
        "version",
    ),
    "header cut inside the stanza": (ENVELOPE[:40], QuarantineReason.TRUNCATED, "truncated"),
    "header without the nonce": (
        ENVELOPE[: HEADER_END + 8],
        QuarantineReason.TRUNCATED,
        "nonce",
    ),
    "payload cut inside the first chunk's tag": (
        ENVELOPE[: HEADER_END + 16 + 10],
        QuarantineReason.TRUNCATED,
        "payload",
    ),
    "payload cut inside a later chunk's tag": (
        sealed_envelope(padding=ENCRYPTED_CHUNK_SIZE)[: HEADER_END + 16 + ENCRYPTED_CHUNK_SIZE + 7],
        QuarantineReason.TRUNCATED,
        "tag",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_get_their_reason(case: str) -> None:
    """Each file that is not a sealed batch is refused with the reason that names its fault."""
    data, reason, words = HOSTILE[case]
    result = _check(data)
    assert not result.ok
    assert result.reason is reason, result.message
    assert words in result.message
    assert result.size == len(data) and result.sha256 == hashlib.sha256(data).hexdigest()


def test_work_factor_below_minimum_is_refused() -> None:
    """An envelope sealed with less scrypt work than the minimum is refused as too weak."""
    result = _check(ENVELOPE, low=11, high=20)
    assert result.reason is QuarantineReason.WORK_FACTOR_LOW
    assert result.work_factor == 10 and "10 < 11" in result.message


def test_work_factor_above_maximum_is_refused() -> None:
    """An envelope asking for more scrypt work than the maximum is refused (denial of service)."""
    result = _check(ENVELOPE, low=1, high=9)
    assert result.reason is QuarantineReason.WORK_FACTOR_HIGH


def test_truncation_at_a_chunk_boundary_is_caught_by_the_expected_size() -> None:
    """A file cut exactly after a full chunk looks whole; the expected size still refuses it."""
    data = sealed_envelope(padding=3 * ENCRYPTED_CHUNK_SIZE)
    cut = data[: HEADER_END + 16 + 2 * ENCRYPTED_CHUNK_SIZE]
    assert _check(cut).ok  # structurally plausible: no key, no way to tell
    result = _check(cut, expected_size=len(data))
    assert result.reason is QuarantineReason.SIZE_MISMATCH


def test_expected_hash_mismatch_is_refused() -> None:
    """A well-formed envelope whose SHA-256 differs from the receipt is refused."""
    other = sealed_envelope()
    result = _check(other, expected_sha256=hashlib.sha256(ENVELOPE).hexdigest())
    assert result.reason is QuarantineReason.SHA256_MISMATCH


def test_flipped_payload_byte_passes_the_keyless_check_but_not_the_hash() -> None:
    """Tampering inside the payload needs the key to see; the expected SHA-256 catches it."""
    tampered = bytearray(ENVELOPE)
    tampered[-5] ^= 1
    assert _check(bytes(tampered)).ok
    digest = hashlib.sha256(ENVELOPE).hexdigest()
    assert not _check(bytes(tampered), expected_sha256=digest).ok


class _Recording(io.RawIOBase):
    """A stream that records the largest read asked of it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)
        self.largest = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        self.largest = max(self.largest, size if size >= 0 else 1 << 62)
        return self._data.read(size)


def test_reads_in_bounded_blocks() -> None:
    """The whole file is read, but never in one piece: memory stays constant."""
    data = sealed_envelope(padding=3 << 20)
    stream = _Recording(data)
    result = check_envelope(stream, min_work_factor=10, max_work_factor=20)  # type: ignore[arg-type]
    assert result.ok and result.size == len(data)
    assert 0 < stream.largest <= 1 << 20


def test_bad_bounds_are_a_programming_error() -> None:
    """Reversed or out-of-range work factor bounds raise instead of deciding anything."""
    with pytest.raises(ValueError, match="work factor bounds"):
        _check(ENVELOPE, low=20, high=18)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600), st.sampled_from([b"", b"age-encryption.org/v1\n", ENVELOPE[:150]]))
def test_never_raises_on_arbitrary_bytes(tail: bytes, head: bytes) -> None:
    """Whatever the bytes, the result is a verdict, never an exception."""
    result = _check(head + tail)
    assert result.size == len(head + tail)
    assert result.ok or result.reason in QuarantineReason
