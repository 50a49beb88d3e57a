"""The 7-Zip form of a batch: decrypt the sealed envelope, verify it, re-pack as AES-256 7z.

For a contractor whose only tool is 7-Zip. The passphrase is proven by
actually opening the sealed envelope: every member is checked against the
manifest inside (a listed, regular file of the listed size and SHA-256) while
it is written into a private directory (0700, files 0600), and the envelope's
own SHA-256 must be the one the ledger recorded at ``seal``. The archive is
then built with py7zr (used only here): AES-256 with encrypted headers, so
not even the file names show without the passphrase, no compression, and a
``SHA256SUMS`` of the plaintext files inside. :func:`scrub` overwrites the
plaintext copies (best effort: file systems may keep old blocks) and removes them.
"""

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import py7zr
from py7zr.exceptions import ArchiveError, PasswordRequired
from py7zr.io import Py7zIO, WriterFactory

from client.config import WORK_FACTOR_RANGE
from client.errors import ClientError
from client.i18n import _
from envelope import DecryptingReader, EnvelopeError, NoMatchError
from envelope.manifest import MANIFEST_NAME, MAX_MANIFEST_BYTES, FileEntry, Manifest, parse

ARCHIVE_SUFFIX = ".7z"
SUMS_NAME = "SHA256SUMS"
FILTERS = [{"id": py7zr.FILTER_COPY}, {"id": py7zr.FILTER_CRYPTO_AES256_SHA256}]
"""No compression (print data is often already dense; it keeps timing simple), AES-256."""
_BLOCK = 1 << 20
_MAX_PADDING = 2 * tarfile.RECORDSIZE

Progress = Callable[[int], None]


@contextmanager
def archive_of(
    envelope_path: Path,
    secret: str,
    batch_id: str,
    work_dir: Path,
    *,
    envelope_sha256: str,
    sealed_files: Sequence[Mapping[str, object]],
    progress: Progress | None = None,
) -> Iterator[Path]:
    """Yield the verified ``<batch>.7z``, built in a private directory under ``work_dir``.

    The plaintext files are scrubbed as soon as the archive is built (or on
    failure); the directory with the encrypted archive is removed on exit.

    Raises:
        ClientError: as :func:`extract_verified`, :func:`check_files`,
            :func:`build_archive` and :func:`verify_archive`.
    """
    temp = Path(tempfile.mkdtemp(prefix=".dvd-", dir=work_dir))  # mode 0700
    try:
        files_dir = temp / "files"
        files_dir.mkdir(mode=0o700)
        archive = temp / f"{batch_id}{ARCHIVE_SUFFIX}"
        try:
            manifest = extract_verified(
                envelope_path,
                secret,
                batch_id,
                files_dir,
                envelope_sha256=envelope_sha256,
                progress=progress,
            )
            check_files(manifest, sealed_files)
            build_archive(files_dir, manifest, archive, secret)
        finally:
            scrub(files_dir)
        verify_archive(archive, secret, manifest)
        yield archive
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def extract_verified(
    envelope_path: Path,
    secret: str,
    batch_id: str,
    dest: Path,
    *,
    envelope_sha256: str,
    progress: Progress | None = None,
) -> Manifest:
    """Decrypt the sealed batch into the empty private directory ``dest``, verifying all.

    Args:
        envelope_path: the sealed ``<batch>.age``.
        secret: the canonical passphrase.
        batch_id: the batch the envelope must hold.
        dest: an empty directory (0700) for the plaintext files.
        envelope_sha256: the SHA-256 the ledger recorded for the envelope.
        progress: called with ciphertext bytes read.

    Returns:
        The manifest from inside the envelope.

    Raises:
        ClientError: wrong passphrase, a damaged or changed envelope, or a
            member that is not a listed regular file matching the manifest.
    """
    try:
        source = envelope_path.open("rb")
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot open: {reason}").format(
                path=envelope_path, reason=exc.strerror or exc
            )
        ) from None
    with source:
        hashing = _HashingReader(source, progress)
        buffered = io.BufferedReader(hashing, _BLOCK)
        try:
            reader = DecryptingReader(buffered, secret, max_work_factor=WORK_FACTOR_RANGE[1])
            with tarfile.open(fileobj=reader, mode="r|", bufsize=_BLOCK) as tar:
                manifest = _read_manifest(tar)
                if manifest.batch_id != batch_id:
                    raise ClientError(
                        _("{name} holds batch {batch}").format(
                            name=envelope_path.name, batch=manifest.batch_id
                        )
                    )
                expected = {f.name: f for f in manifest.files}
                while (member := tar.next()) is not None:
                    _extract_member(tar, member, expected, dest)
                if expected:
                    raise ClientError(
                        _("{count} file(s) of the manifest are missing").format(count=len(expected))
                    )
            _drain(reader)
            while buffered.read(_BLOCK):  # hash to the very end of the file
                pass
        except NoMatchError:
            raise ClientError(
                _("the passphrase does not open batch {batch}").format(batch=batch_id),
                hint=_("check it against the password notice for this batch id"),
            ) from None
        except (EnvelopeError, tarfile.TarError) as exc:
            raise ClientError(
                _("{name}: damaged or changed envelope: {reason}").format(
                    name=envelope_path.name, reason=exc
                )
            ) from None
    if hashing.digest.hexdigest() != envelope_sha256:
        raise ClientError(
            _("{name}: the envelope differs from the one sealed").format(name=envelope_path.name)
        )
    return manifest


def build_archive(files_dir: Path, manifest: Manifest, archive: Path, secret: str) -> None:
    """Write ``archive`` (a new file): the manifest's files plus their SHA256SUMS.

    Raises:
        ClientError: a print file is itself named SHA256SUMS, or writing failed.
    """
    if any(f.name == SUMS_NAME for f in manifest.files):
        raise ClientError(
            _("the batch holds a file named {name}; use the age format").format(name=SUMS_NAME)
        )
    sums = "".join(f"{f.sha256}  {f.name}\n" for f in manifest.files).encode("utf-8")
    fd = os.open(archive, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with (
            os.fdopen(fd, "w+b") as sink,
            py7zr.SevenZipFile(
                sink, "w", password=secret, header_encryption=True, filters=FILTERS
            ) as seven,
        ):
            for entry in manifest.files:
                seven.write(files_dir / entry.name, entry.name)
            seven.writef(io.BytesIO(sums), SUMS_NAME)
    except (OSError, ValueError, ArchiveError) as exc:
        raise ClientError(
            _("{name}: cannot build the 7z archive: {reason}").format(name=archive.name, reason=exc)
        ) from None


def verify_archive(archive: Path, secret: str, manifest: Manifest) -> None:
    """Open the archive with the passphrase and check every member's SHA-256.

    Raises:
        ClientError: a missing, extra or different member.
    """
    wanted: dict[str, str] = {f.name: f.sha256 for f in manifest.files}
    sums = "".join(f"{f.sha256}  {f.name}\n" for f in manifest.files).encode("utf-8")
    wanted[SUMS_NAME] = hashlib.sha256(sums).hexdigest()
    factory = _Hashes()
    try:
        with py7zr.SevenZipFile(archive, "r", password=secret) as seven:
            names = seven.getnames()
            seven.extractall(factory=factory)  # noqa: S202 - hashes only, writes nothing
    except (OSError, ArchiveError, PasswordRequired, ValueError, TypeError) as exc:
        raise ClientError(
            _("{name}: the archive does not read back: {reason}").format(
                name=archive.name, reason=exc
            )
        ) from None
    if sorted(names) != sorted(wanted):
        raise ClientError(
            _("{name}: the archive lists other files than the manifest").format(name=archive.name)
        )
    for name, sha in wanted.items():
        if name not in factory.made or factory.made[name].digest.hexdigest() != sha:
            raise ClientError(
                _("{name}: {file}: SHA-256 differs inside the archive").format(
                    name=archive.name, file=name
                )
            )


def check_files(manifest: Manifest, sealed_files: Sequence[Mapping[str, object]]) -> None:
    """The manifest's files must be the ones the ledger recorded at ``seal``.

    Raises:
        ClientError: names, sizes or SHA-256s differ.
    """
    inside = sorted((f.name, f.size, f.sha256) for f in manifest.files)
    recorded = sorted(
        (str(f.get("name")), f.get("size"), str(f.get("sha256"))) for f in sealed_files
    )
    if inside != recorded:
        raise ClientError(_("the envelope's manifest differs from the ledger's sealed entry"))


def scrub(directory: Path) -> None:
    """Overwrite every regular file in ``directory`` with zeros, then remove them and it.

    Best effort and never raises: the caller is already cleaning up.
    """
    try:
        children = list(directory.iterdir())
    except OSError:
        children = []
    for child in children:
        try:
            if child.is_file() and not child.is_symlink():
                _zero(child)
            child.unlink()
        except OSError:
            continue
    with contextlib.suppress(OSError):
        directory.rmdir()


def _zero(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        left = os.fstat(fd).st_size
        zeros = bytes(min(_BLOCK, left))
        while left > 0:
            left -= os.write(fd, zeros[: min(_BLOCK, left)])
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_manifest(tar: tarfile.TarFile) -> Manifest:
    first = tar.next()
    if first is None or first.name != MANIFEST_NAME or not first.isreg():
        raise ClientError(
            _("the first member of the envelope is not {name}").format(name=MANIFEST_NAME)
        )
    if first.size > MAX_MANIFEST_BYTES:
        raise ClientError(_("the manifest in the envelope is too large"))
    handle = tar.extractfile(first)
    assert handle is not None  # a regular member always has a file object
    return parse(handle.read())


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, expected: dict[str, FileEntry], dest: Path
) -> None:
    """Write one listed regular file into ``dest``; check its size and SHA-256."""
    entry = expected.pop(member.name, None)
    if not member.isreg() or entry is None:
        raise ClientError(
            _("the envelope holds a member not in its manifest ({name})").format(
                name=repr(member.name[:60])
            )
        )
    if member.size != entry.size:
        raise ClientError(_("{name}: size differs from the manifest").format(name=member.name))
    handle = tar.extractfile(member)
    assert handle is not None
    # member.name is a manifest name: check_file_name() allowed one safe component only.
    target = dest / member.name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    digest = hashlib.sha256()
    with os.fdopen(fd, "wb") as sink:
        while block := handle.read(_BLOCK):
            digest.update(block)
            sink.write(block)
    if digest.hexdigest() != entry.sha256:
        raise ClientError(
            _("{name}: content differs from the manifest (SHA-256)").format(name=member.name)
        )
    os.utime(target, (member.mtime, member.mtime))


def _drain(reader: DecryptingReader) -> None:
    """Read to the end of the payload (authenticating it); only tar padding may follow."""
    total = 0
    while block := reader.read(_BLOCK):
        total += len(block)
        if total > _MAX_PADDING or block.count(0) != len(block):
            raise ClientError(_("data follows the archive inside the envelope"))


class _HashingReader(io.RawIOBase):
    """A raw reader hashing everything it passes on, reporting progress."""

    def __init__(self, inner: BinaryIO, progress: Progress | None) -> None:
        super().__init__()
        self._inner = inner
        self._progress = progress
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        if self._progress is not None and data:
            self._progress(len(data))
        return len(data)


class _HashWriter(Py7zIO):
    """Where py7zr "extracts" a member during verification: it is only hashed."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self._size = 0

    def write(self, s: bytes | bytearray) -> int:
        self.digest.update(s)
        self._size += len(s)
        return len(s)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self._size


class _Hashes(WriterFactory):
    """Gives py7zr a hashing writer per member name."""

    def __init__(self) -> None:
        self.made: dict[str, _HashWriter] = {}

    def create(self, filename: str) -> Py7zIO:
        self.made[filename] = writer = _HashWriter()
        return writer
