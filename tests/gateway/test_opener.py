"""open_batch against hostile envelopes: nothing is released unless everything verifies."""

import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from envelope import EncryptingWriter, passphrase
from envelope.manifest import FileEntry, Manifest, dumps
from gateway.opener import OpenError, batch_of_name, open_batch

BATCH = "20260715-KAIGO-7F3KQ2"
CSV = "番号,氏名\r\n1,山田\r\n".encode("cp932")


def _entry(name: str, data: bytes, records: int = 1) -> FileEntry:
    return FileEntry(name, len(data), hashlib.sha256(data).hexdigest(), records)


def _manifest(*entries: FileEntry, batch: str = BATCH) -> bytes:
    return dumps(
        Manifest(batch, "KAIGO", datetime(2026, 7, 15, tzinfo=UTC), "tester", tuple(entries))
    )


Member = tuple[str, bytes] | tarfile.TarInfo


def _envelope(path: Path, secret: str, members: list[Member]) -> Path:
    """Write an envelope holding exactly ``members`` (name, data) or raw TarInfo entries."""
    with (
        path.open("wb") as sink,
        EncryptingWriter(sink, secret, work_factor=10) as writer,
        tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            name, data = member
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _open(path: Path, out: Path, secret: str) -> Path:
    return open_batch(path, out, secret, max_work_factor=20, csv_encoding="cp932").directory


@pytest.fixture
def secret() -> str:
    """A fresh canonical passphrase."""
    return passphrase.generate()


def test_valid_envelope_is_released(tmp_path: Path, secret: str) -> None:
    """A well-formed envelope opens into out/<batch>/ with exactly the listed files."""
    env = _envelope(
        tmp_path / f"{BATCH}.age",
        secret,
        [("manifest.json", _manifest(_entry("a.csv", CSV, 1))), ("a.csv", CSV)],
    )
    directory = _open(env, tmp_path / "out", secret)
    assert directory == tmp_path / "out" / BATCH
    assert (directory / "a.csv").read_bytes() == CSV
    assert [p.name for p in (tmp_path / "out").iterdir()] == [BATCH]


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


HOSTILE: dict[str, Callable[[], list[Member]]] = {
    "path traversal member": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        ("../a.csv", CSV),
    ],
    "absolute member": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        ("/tmp/a.csv", CSV),
    ],
    "symlink member": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        _symlink("a.csv", "/etc/passwd"),
    ],
    "member not in manifest": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        ("a.csv", CSV),
        ("extra.txt", b"x"),
    ],
    "missing member": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV), _entry("b.bin", b"b"))),
        ("a.csv", CSV),
    ],
    "manifest not first": lambda: [
        ("a.csv", CSV),
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
    ],
    "content differs from hash": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        ("a.csv", CSV.replace(b"1", b"2")),
    ],
    "record count differs": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV, records=5))),
        ("a.csv", CSV),
    ],
    "unsafe name in manifest": lambda: [
        ("manifest.json", _manifest(FileEntry("../evil", 1, "0" * 64, 1))),
        ("../evil", b"x"),
    ],
    "duplicate member": lambda: [
        ("manifest.json", _manifest(_entry("a.csv", CSV))),
        ("a.csv", CSV),
        ("a.csv", CSV),
    ],
    "manifest is not json": lambda: [("manifest.json", b"\xff not json")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_envelope_releases_nothing(tmp_path: Path, secret: str, case: str) -> None:
    """Every hostile archive shape is refused and leaves the output directory empty."""
    env = _envelope(tmp_path / f"{BATCH}.age", secret, HOSTILE[case]())
    out = tmp_path / "out"
    with pytest.raises(OpenError):
        _open(env, out, secret)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "a.csv").exists() and not Path("/tmp/a.csv").exists()


def test_truncated_envelope_releases_nothing(tmp_path: Path, secret: str) -> None:
    """An envelope cut short (final chunk missing) is refused even after files were extracted."""
    data = bytes(range(256)) * 1024
    env = _envelope(
        tmp_path / f"{BATCH}.age",
        secret,
        [("manifest.json", _manifest(_entry("d.bin", data))), ("d.bin", data)],
    )
    raw = env.read_bytes()
    env.write_bytes(raw[: len(raw) - 200])
    with pytest.raises(OpenError, match="tampered"):
        _open(env, tmp_path / "out", secret)
    assert list((tmp_path / "out").iterdir()) == []


def test_work_factor_above_maximum_is_refused(tmp_path: Path, secret: str) -> None:
    """open refuses an envelope whose scrypt work factor exceeds the configured maximum."""
    env = tmp_path / f"{BATCH}.age"
    with env.open("wb") as sink, EncryptingWriter(sink, secret, work_factor=12) as writer:
        writer.write(b"x")
    with pytest.raises(OpenError):
        open_batch(env, tmp_path / "out", secret, max_work_factor=11, csv_encoding="cp932")
    assert list((tmp_path / "out").iterdir()) == []


def test_plaintext_file_is_refused(tmp_path: Path, secret: str) -> None:
    """A plaintext CSV renamed to .age is refused as damaged, not opened."""
    env = tmp_path / f"{BATCH}.age"
    env.write_bytes(CSV)
    with pytest.raises(OpenError, match="damaged"):
        _open(env, tmp_path / "out", secret)


def test_admit_sees_the_manifest_before_any_file_is_written(tmp_path: Path, secret: str) -> None:
    """A refusal from ``admit`` propagates and leaves nothing: no batch dir, no temp dir."""
    path = _envelope(
        tmp_path / "x.age",
        secret,
        [("manifest.json", _manifest(_entry("a.csv", CSV))), ("a.csv", CSV)],
    )
    seen: list[str] = []

    class RefusedError(Exception):
        pass

    def admit(manifest: Manifest) -> None:
        seen.append(manifest.batch_id)
        raise RefusedError

    out = tmp_path / "out"
    with pytest.raises(RefusedError):
        open_batch(path, out, secret, max_work_factor=20, csv_encoding="cp932", admit=admit)
    assert seen == [BATCH]
    assert list(out.iterdir()) == []


def test_created_directories_are_private_whatever_the_umask(tmp_path: Path, secret: str) -> None:
    """Every directory open creates is 0700 and every released file 0600, even under umask 0."""
    path = _envelope(
        tmp_path / "x.age",
        secret,
        [("manifest.json", _manifest(_entry("a.csv", CSV))), ("a.csv", CSV)],
    )
    old = os.umask(0)
    try:
        released = _open(path, tmp_path / "work" / "deep" / "er", secret)
    finally:
        os.umask(old)
    for directory in (tmp_path / "work", tmp_path / "work" / "deep", released.parent, released):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE((released / "a.csv").stat().st_mode) == 0o600


def test_batch_of_name_reads_only_batch_like_names() -> None:
    """``<batch>.age`` names claim their batch; anything else claims none."""
    assert batch_of_name(Path(f"/spool/{BATCH}.age")) == BATCH
    assert batch_of_name(Path("copy.age")) is None
    assert batch_of_name(Path(f"{BATCH}.age.part")) is None
