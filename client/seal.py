"""``lgwan-client seal``: validate print files, build the manifest, encrypt, print the notice.

Order of effects, so a failure at any point leaves nothing half-made: the
envelope is written to a hidden temporary file beside its destination, the
password notice is rendered, and only then is the envelope renamed to
``<batch>.age``. Any failure removes what was written.
"""

import hashlib
import os
import queue
import stat
import tarfile
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import ledger
from client.config import ClientConfig
from client.durable import fsync_dir
from client.errors import ClientError, UsageError
from client.i18n import _
from client.notice import render_password_notice
from envelope import EncryptingWriter, EnvelopeError, passphrase
from envelope.manifest import (
    MANIFEST_NAME,
    FileEntry,
    Manifest,
    check_file_name,
    check_notice_type,
    dumps,
    new_batch_id,
)
from envelope.printdata import count_records

AGE_SUFFIX = ".age"
NOTICE_SUFFIX = ".notice.pdf"
_AGE_MAGIC = (b"age-encryption.org/", b"-----BEGIN AGE ENCRYPTED FILE-----")
_BLOCK = 1 << 20

Progress = Callable[[int], None]


@dataclass(frozen=True)
class SealResult:
    """What ``seal`` produced."""

    manifest: Manifest
    envelope_path: Path
    notice_path: Path


def validate_inputs(
    paths: Sequence[Path], encoding: str, progress: Progress | None = None
) -> list[FileEntry]:
    """Check every input file and describe it for the manifest.

    Args:
        paths: the print files named on the command line.
        encoding: CSV encoding from the configuration.
        progress: called with the number of bytes read, for a progress bar.

    Returns:
        One manifest entry per file, in the given order.

    Raises:
        UsageError: no files, a missing/non-regular/empty file, an age file,
            an unsafe or duplicate name.
        ClientError: a CSV that does not parse (names file and row).
    """
    if not paths:
        raise UsageError(_("no print files given"), hint=_("name one or more files to seal"))
    entries: list[FileEntry] = []
    seen: set[str] = set()
    for path in paths:
        try:
            name = check_file_name(path.name)
        except EnvelopeError as exc:
            raise UsageError(
                _("{path}: the file name cannot go into a batch: {reason}").format(
                    path=path, reason=exc
                )
            ) from None
        if name.casefold() in seen:
            raise UsageError(
                _("{path}: two input files are both named {name}").format(
                    path=path, name=repr(name)
                )
            )
        seen.add(name.casefold())
        entries.append(_describe(path, name, encoding, progress))
    return entries


def _describe(path: Path, name: str, encoding: str, progress: Progress | None) -> FileEntry:
    """Hash, size and count one input file in a single pass."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise UsageError(_("{path}: no such file").format(path=path)) from None
    except IsADirectoryError:
        raise UsageError(_("{path}: not a regular file").format(path=path)) from None
    except OSError as exc:
        raise UsageError(
            _("{path}: cannot open: {reason}").format(path=path, reason=exc.strerror)
        ) from None
    with handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(_("{path}: not a regular file").format(path=path))
        if info.st_size == 0:
            raise UsageError(_("{path}: the file is empty").format(path=path))
        head = handle.read(64)
        if head.lstrip().startswith(_AGE_MAGIC):
            raise UsageError(
                _("{path}: already an age file").format(path=path),
                hint=_("seal the original print data"),
            )
        handle.seek(0)
        digest = _BackgroundDigest()
        size = 0

        def take(block: bytes) -> None:
            nonlocal size
            digest.update(block)
            size += len(block)
            if progress is not None:
                progress(len(block))

        try:
            records = count_records(handle, name, encoding, on_bytes=take)
        except EnvelopeError as exc:
            raise ClientError(
                _("the print file cannot be read: {reason}").format(reason=exc),
                hint=_("check the file is {encoding} CSV").format(encoding=encoding),
            ) from None
    return FileEntry(name=name, size=size, sha256=digest.hexdigest(), records=records)


def seal(
    paths: Sequence[Path],
    notice_type: str,
    config: ClientConfig,
    *,
    out_dir: Path | None = None,
    notice_dir: Path | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> SealResult:
    """Seal print files into ``<out_dir>/<batch>.age`` and print the password notice.

    When the ward's private key (``identity.private_key``) exists, a signed
    ``sealed`` entry is recorded in the hand-over ledger; without a key, seal
    works as before and records nothing (the ledger only holds signed entries).

    Raises:
        UsageError: bad notice type, bad inputs, notice dir inside the out dir.
        ClientError: an input changed while sealing, writing failed, or the
            ledger could not record the batch (envelope and notice are then removed).
        ConfigError: the ward's key exists but is unusable (checked before any work).
    """
    try:
        check_notice_type(notice_type)
    except EnvelopeError as exc:
        raise UsageError(
            _("invalid notice type {value}: {reason}").format(value=repr(notice_type), reason=exc)
        ) from None
    key_path = config.path(config.identity.private_key)
    ward_key = ledger.load_key(key_path, "identity.private_key") if key_path.exists() else None
    out = (out_dir or config.path(config.seal.out_dir)).absolute()
    notices = (notice_dir or config.path(config.seal.notice_dir)).absolute()
    _check_dirs(out, notices)
    entries = validate_inputs(paths, config.seal.csv_encoding, progress)
    created = (now or datetime.now().astimezone()).astimezone()
    manifest = Manifest(
        batch_id=new_batch_id(notice_type, created),
        notice_type=notice_type,
        created_at=created.replace(microsecond=0),
        created_by=config.handler_name(),
        files=tuple(entries),
    )
    secret = passphrase.generate()
    final = out / f"{manifest.batch_id}{AGE_SUFFIX}"
    notice = notices / f"{manifest.batch_id}{NOTICE_SUFFIX}"
    if final.exists() or notice.exists():
        raise ClientError(
            _("batch {batch} already exists; run seal again").format(batch=manifest.batch_id)
        )
    linked = False
    temp = out / f".{manifest.batch_id}{AGE_SUFFIX}.tmp"
    try:
        with _exclusive(temp) as sink:
            hashing = _HashingSink(sink)
            envelope = cast(BinaryIO, hashing)
            _write_envelope(envelope, manifest, paths, secret, config.seal.work_factor, progress)
            sink.flush()
            os.fsync(sink.fileno())
        render_password_notice(
            notice,
            batch_id=manifest.batch_id,
            notice_type=notice_type,
            file_count=len(manifest.files),
            record_total=manifest.record_total,
            created_at=manifest.created_at,
            passphrase=secret,
            ward_name=config.ward.name,
            created_by=manifest.created_by,
        )
        os.link(temp, final)  # fails rather than replacing an existing batch
        linked = True
        if ward_key is not None:
            _record_sealed(config, ward_key, manifest, hashing)
    except BaseException:
        notice.unlink(missing_ok=True)
        if linked:
            final.unlink(missing_ok=True)
        raise
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(out)
    return SealResult(manifest=manifest, envelope_path=final, notice_path=notice)


def _record_sealed(
    config: ClientConfig, key: Ed25519PrivateKey, manifest: Manifest, envelope: "_HashingSink"
) -> None:
    """Record the ``sealed`` ledger entry (never the passphrase)."""
    files = [
        {"name": f.name, "size": f.size, "sha256": f.sha256, "records": f.records}
        for f in manifest.files
    ]
    with ledger.Ledger.open(config.path(config.ledger.path), key) as book:
        book.record(
            ledger.EVENT_SEALED,
            batch=manifest.batch_id,
            notice_type=manifest.notice_type,
            handler=manifest.created_by,
            file_count=len(manifest.files),
            record_total=manifest.record_total,
            envelope_sha256=envelope.sha256(),
            envelope_size=envelope.size,
            files=files,
        )


def _check_dirs(out: Path, notices: Path) -> None:
    """Create the output directories; keep notices out of the data directory."""
    out_r, notices_r = out.resolve(), notices.resolve()
    if notices_r == out_r or out_r in notices_r.parents:
        raise UsageError(
            _("the notice directory {notices} is inside the output directory {out}").format(
                notices=notices, out=out
            ),
            hint=_("password notices must never travel with the data: choose another --notice-dir"),
        )
    for directory in (out, notices):
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ClientError(
                _("{path}: cannot create directory: {reason}").format(
                    path=directory, reason=exc.strerror
                )
            ) from None


def _exclusive(path: Path) -> BinaryIO:
    """Open a new file for writing, refusing to follow or replace anything."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise ClientError(
            _("{path} exists: another seal is running or one crashed").format(path=path)
        ) from None
    return os.fdopen(fd, "wb")


def _write_envelope(
    sink: BinaryIO,
    manifest: Manifest,
    paths: Sequence[Path],
    secret: str,
    work_factor: int,
    progress: Progress | None,
) -> None:
    """Stream a tar of the manifest and the files into one age envelope."""
    mtime = int(manifest.created_at.timestamp())
    with (
        EncryptingWriter(sink, secret, work_factor=work_factor) as writer,
        # typeshed omits copybufsize from the stream-mode overloads; tarfile accepts it.
        tarfile.open(  # type: ignore[call-overload]
            fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=_BLOCK, copybufsize=_BLOCK
        ) as tar,
    ):
        body = dumps(manifest)
        tar.addfile(_member(MANIFEST_NAME, len(body), mtime), _BytesReader(body))
        for path, entry in zip(paths, manifest.files, strict=True):
            with path.open("rb") as handle:
                checked = _CheckedReader(handle, entry, progress)
                tar.addfile(_member(entry.name, entry.size, mtime), checked)
                checked.finish()


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o600
    info.uname = info.gname = ""
    return info


class _BackgroundDigest:
    """SHA-256 computed on a second thread, so hashing overlaps encryption and I/O.

    hashlib releases the GIL while it hashes, so on two cores the three hashes
    ``seal`` needs cost little wall time. Blocks are queued as immutable bytes.
    """

    _DONE = b""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=8)
        self._thread = threading.Thread(target=self._run, name="seal-sha256", daemon=True)
        self._thread.start()
        self._hex: str | None = None
        # An abandoned digest (a failed seal) still ends its thread.
        weakref.finalize(self, self._queue.put, self._DONE)

    def _run(self) -> None:
        while block := self._queue.get():
            self._digest.update(block)

    def update(self, block: bytes) -> None:
        """Queue ``block`` (empty blocks are ignored)."""
        if block:
            self._queue.put(block)

    def hexdigest(self) -> str:
        """Wait for the queued blocks and return the hex digest."""
        if self._hex is None:
            self._queue.put(self._DONE)
            self._thread.join()
            self._hex = self._digest.hexdigest()
        return self._hex


class _HashingSink:
    """Passes writes to the envelope file while hashing and counting them."""

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._digest = _BackgroundDigest()
        self.size = 0

    def write(self, data: bytes) -> int:
        written = self._sink.write(data)
        count = len(data) if written is None else written
        self._digest.update(bytes(memoryview(data)[:count]))  # the caller reuses its buffer
        self.size += count
        return count

    def flush(self) -> None:
        self._sink.flush()

    def sha256(self) -> str:
        """Hex SHA-256 of everything written."""
        return self._digest.hexdigest()


class _BytesReader:
    """Minimal readable over bytes (tarfile only calls ``read``)."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + size
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


class _CheckedReader:
    """Reads a print file for the tar while re-hashing it against its manifest entry."""

    def __init__(self, handle: BinaryIO, entry: FileEntry, progress: Progress | None) -> None:
        self._handle = handle
        self._entry = entry
        self._digest = _BackgroundDigest()
        self._size = 0
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        block = self._handle.read(size)
        if 0 < size != len(block):  # shorter than when it was validated
            raise self.changed()
        self._digest.update(block)
        self._size += len(block)
        if self._progress is not None:
            self._progress(len(block))
        return block

    def finish(self) -> None:
        """Raise if the file changed since it was validated."""
        rest = self._handle.read(1)
        if rest or self._size != self._entry.size or self._digest.hexdigest() != self._entry.sha256:
            raise self.changed()

    def changed(self) -> ClientError:
        """The error for a file that changed since validation."""
        return ClientError(
            _("{name}: the file changed while it was being sealed").format(name=self._entry.name),
            hint=_("wait until the file is complete, then seal again"),
        )
