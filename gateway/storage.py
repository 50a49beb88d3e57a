"""Confined storage: the only module that touches the drop service's files on disk.

Layout under the configured root::

    tenants/<tenant>/inbox/      uploads: <batch>.age.part, then <batch>.age
    tenants/<tenant>/receipts/   signed receipts: <batch>.receipt.json
    tenants/<tenant>/outbox/     forwarded batches a contractor may pull (and remove:
                                 its confirmation, see gateway.sftp_server)
    quarantine/                  files taken out of a tenant's reach

Every access walks from a directory descriptor opened at start-up, one validated
component at a time, with ``O_NOFOLLOW``: a symlink planted anywhere in the tree
(a tenant directory, an area, a file) is refused, never followed, and no path is
ever resolved outside the root. Callers name files by (tenant, area, name); disk
paths never leave this module and never appear in error messages.

Uploads (:class:`Upload`; it and :class:`Reader` live in :mod:`gateway.storage_files`,
re-exported here) are written at offsets and always stay a contiguous
prefix (no holes), so a resumed upload continues from the stored size. Each write
is checked against the per-file limit, the tenant's quota and the free-space
reserve before a byte is written.
"""

import errno
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.policy import TENANT_RE, Area, PolicyError, check_tenant

if TYPE_CHECKING:
    from gateway.storage_files import Reader as Reader
    from gateway.storage_files import Upload as Upload

TENANTS_DIR = "tenants"
QUARANTINE_DIR = "quarantine"
DIR_MODE = 0o700
FILE_MODE = 0o600
HASH_CHUNK_BYTES = 1 << 20
CREDIT_BYTES = 1 << 20
"""Quota and free space an upload reserves ahead of its writes (see Storage._reserve)."""
MAX_COMPONENT_BYTES = 255
QUOTA_AREAS = (Area.INBOX, Area.OUTBOX)
"""Areas whose files count against a tenant's quota (receipts are the gateway's)."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_ERRNO_REASONS = {
    errno.ENOENT: ("not_found", "no such file"),
    errno.ELOOP: ("symlink", "symbolic links are not allowed"),
    errno.EEXIST: ("exists", "the file already exists"),
    errno.ENOSPC: ("disk_full", "the gateway's disk is full; try again later"),
    errno.EDQUOT: ("disk_full", "the gateway's disk is full; try again later"),
    errno.ENOTDIR: ("not_directory", "not a directory"),
    errno.EISDIR: ("not_regular", "not a regular file"),
    errno.EACCES: ("permission", "permission denied"),
    errno.EPERM: ("permission", "permission denied"),
    errno.ENXIO: ("not_regular", "not a regular file"),
}


class StorageError(GatewayError):
    """A storage operation failed or was refused.

    Attributes:
        reason: snake_case cause for the audit log (``not_found``, ``symlink``,
            ``quota_exceeded``, ``disk_full``, …).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    """Size limits enforced on every write."""

    max_upload_bytes: int
    tenant_quota_bytes: int
    reserve_free_bytes: int


@dataclass(frozen=True)
class StoredFile:
    """A regular file in an area."""

    name: str
    size: int
    mtime: float


def _os_error(exc: OSError) -> StorageError:
    reason, message = _ERRNO_REASONS.get(exc.errno or 0, ("io_error", "storage I/O error"))
    return StorageError(reason, message)


def _check_name(name: str) -> str:
    """A single path component: no separators, NUL, dot names or overlong names."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\x00" in name
        or len(name.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES
    ):
        raise StorageError("bad_name", "not a valid file name")
    return name


class Storage:
    """The confined storage tree under one root directory.

    Thread-safe: uploads, listings and completions from many sessions may run at
    once. Call :meth:`close` when done.
    """

    def __init__(self, root: Path, limits: Limits) -> None:
        """Open (creating if missing) the storage tree at ``root``.

        Raises:
            StorageError: the root or its top-level directories are unusable.
        """
        self.limits = limits
        self._lock = threading.Lock()
        self._usage: dict[str, int] = {}
        self._writers: dict[tuple[str, str], Upload] = {}
        try:
            root.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            self._root_fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise _os_error(exc) from None
        for name in (TENANTS_DIR, QUARANTINE_DIR):
            self._mkdir(self._root_fd, name)

    def close(self) -> None:
        """Release the root descriptor (open uploads keep their own)."""
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1

    # -- directories -------------------------------------------------------

    def ensure_tenant(self, tenant: str) -> None:
        """Create the tenant's area directories if they are missing.

        Raises:
            StorageError: a bad tenant name, or a planted symlink in the way.
        """
        with self._dir(TENANTS_DIR) as tenants:
            self._mkdir(tenants, self._tenant(tenant))
            with self._open_dir(tenants, tenant) as tdir:
                for area in Area:
                    self._mkdir(tdir, area.value)

    def tenants(self) -> list[str]:
        """Names of the tenant directories (anything else under ``tenants/`` is skipped)."""
        with self._dir(TENANTS_DIR) as tenants:
            try:
                with os.scandir(tenants) as entries:
                    names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            except OSError as exc:
                raise _os_error(exc) from None
        return sorted(n for n in names if TENANT_RE.fullmatch(n))

    @contextmanager
    def _area(self, tenant: str, area: Area) -> Iterator[int]:
        """Yield a descriptor of tenants/<tenant>/<area>, refusing symlinks on the way."""
        with (
            self._dir(TENANTS_DIR) as tenants,
            self._open_dir(tenants, self._tenant(tenant)) as tdir,
            self._open_dir(tdir, area.value) as adir,
        ):
            yield adir

    @contextmanager
    def _dir(self, name: str) -> Iterator[int]:
        if self._root_fd < 0:
            raise StorageError("closed", "storage is closed")
        with self._open_dir(self._root_fd, name) as fd:
            yield fd

    @staticmethod
    @contextmanager
    def _open_dir(parent: int, name: str) -> Iterator[int]:
        try:
            fd = os.open(_check_name(name), _DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise _os_error(exc) from None
        try:
            yield fd
        finally:
            os.close(fd)

    @staticmethod
    def _mkdir(parent: int, name: str) -> None:
        try:
            os.mkdir(_check_name(name), DIR_MODE, dir_fd=parent)
        except FileExistsError:
            pass
        except OSError as exc:
            raise _os_error(exc) from None

    @staticmethod
    def _tenant(tenant: str) -> str:
        try:
            return check_tenant(tenant)
        except PolicyError as exc:
            raise StorageError(exc.reason, str(exc)) from None

    # -- reading -----------------------------------------------------------

    def list_files(self, tenant: str, area: Area) -> list[StoredFile]:
        """The regular files of an area, sorted by name (symlinks and others skipped)."""
        with self._area(tenant, area) as adir:
            return self._scan(adir)

    @staticmethod
    def _scan(adir: int) -> list[StoredFile]:
        found: list[StoredFile] = []
        try:
            with os.scandir(adir) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while listing (the forwarder deletes)
                        continue
                    if stat.S_ISREG(info.st_mode):
                        found.append(StoredFile(entry.name, info.st_size, info.st_mtime))
        except OSError as exc:
            raise _os_error(exc) from None
        return sorted(found, key=lambda f: f.name)

    def stat(self, tenant: str, area: Area, name: str) -> StoredFile:
        """Size and modification time of a regular file.

        Raises:
            StorageError: missing (``not_found``), a symlink or not a regular file.
        """
        with self._area(tenant, area) as adir:
            return self._stat_in(adir, name)

    @staticmethod
    def _stat_in(adir: int, name: str) -> StoredFile:
        try:
            info = os.stat(_check_name(name), dir_fd=adir, follow_symlinks=False)
        except OSError as exc:
            raise _os_error(exc) from None
        if stat.S_ISLNK(info.st_mode):
            raise StorageError("symlink", "symbolic links are not allowed")
        if not stat.S_ISREG(info.st_mode):
            raise StorageError("not_regular", "not a regular file")
        return StoredFile(name, info.st_size, info.st_mtime)

    def exists(self, tenant: str, area: Area, name: str) -> bool:
        """True when the name exists in the area (as anything, even a symlink)."""
        with self._area(tenant, area) as adir:
            try:
                os.stat(_check_name(name), dir_fd=adir, follow_symlinks=False)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise _os_error(exc) from None
            return True

    def open_read(self, tenant: str, area: Area, name: str) -> "Reader":
        """Open a regular file for reading.

        Raises:
            StorageError: missing, a symlink, or not a regular file.
        """
        with self._area(tenant, area) as adir:
            fd = self._open_regular(adir, name, os.O_RDONLY)
        from gateway.storage_files import Reader

        return Reader(fd)

    def digest(self, tenant: str, area: Area, name: str) -> tuple[int, str]:
        """Stream a file once: its size and hex SHA-256."""
        reader = self.open_read(tenant, area, name)
        try:
            hasher = hashlib.sha256()
            size = 0
            while chunk := reader.read(size, HASH_CHUNK_BYTES):
                hasher.update(chunk)
                size += len(chunk)
            return size, hasher.hexdigest()
        finally:
            reader.close()

    @staticmethod
    def _open_regular(adir: int, name: str, flags: int, mode: int = FILE_MODE) -> int:
        try:
            fd = os.open(_check_name(name), flags | _FILE_FLAGS, mode, dir_fd=adir)
        except OSError as exc:
            raise _os_error(exc) from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StorageError("not_regular", "not a regular file")
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- writing -----------------------------------------------------------

    def open_upload(
        self, tenant: str, name: str, *, create: bool, truncate: bool, exclusive: bool
    ) -> "Upload":
        """Open (or create) an upload in the tenant's inbox for writing at offsets.

        An upload of the same name still held open by another session is
        superseded: its later writes fail, so a reconnecting client can resume
        at once after a dropped connection.

        Raises:
            StorageError: missing without ``create``, exists with ``exclusive``,
                a symlink, a file with other hard links, or not a regular file.
        """
        flags = os.O_WRONLY
        flags |= os.O_CREAT if create else 0
        flags |= os.O_EXCL if exclusive else 0
        with self._area(tenant, Area.INBOX) as adir:
            fd = self._open_regular(adir, name, flags)
        try:
            if os.fstat(fd).st_nlink != 1:  # a planted hard link would let writes escape
                raise StorageError("hard_link", "the file has other links; refused")
            from gateway.storage_files import Upload

            upload = Upload(self, tenant, name, fd)
        except BaseException:
            os.close(fd)
            raise
        with self._lock:
            previous = self._writers.get((tenant, name))
            self._writers[(tenant, name)] = upload
            self._usage.pop(tenant, None)
        if previous is not None:
            previous.supersede()  # waits for its write in flight, if any
        if truncate:
            upload.truncate()
        return upload

    def _release(self, upload: "Upload") -> None:
        with self._lock:
            if self._writers.get((upload.tenant, upload.name)) is upload:
                del self._writers[(upload.tenant, upload.name)]

    def _reserve(self, upload: "Upload", fd: int, grow: int) -> None:
        """Reserve room for ``grow`` more bytes of ``upload`` (added to its ``credit``).

        A writer reserves :data:`CREDIT_BYTES` beyond what it needs when that still
        fits, and spends the credit on its next writes without coming back here
        (one free-space check and one pass through the storage-wide lock per
        credit, not per 32 KiB write). Near a limit it reserves exactly ``grow``,
        so every refusal is exact for a single writer; concurrent writers may be
        refused up to one credit each early, never let past a limit. A tenant's
        usage is its stored bytes plus the credit its open uploads hold, and the
        free space every open upload's credit; closing an upload drops its credit.

        Raises:
            StorageError: ``disk_reserve`` or ``quota_exceeded``.
        """
        limits = self.limits
        try:
            vfs = os.fstatvfs(fd)
        except OSError as exc:
            raise _os_error(exc) from None
        with self._lock:
            # Free space is shared by every open upload: what they hold is not on disk yet.
            held = sum(writer.credit for writer in self._writers.values())
            free = vfs.f_bavail * vfs.f_frsize - limits.reserve_free_bytes - held
            if free < grow:
                raise StorageError("disk_reserve", "the gateway's disk is full; try again later")
            used = self._usage.get(upload.tenant)
            if used is None:
                used = self._tenant_usage(upload.tenant) + self._credits(upload.tenant)
            room = min(free, limits.tenant_quota_bytes - used)
            if room < grow:
                self._usage[upload.tenant] = used
                raise StorageError("quota_exceeded", "the upload exceeds the tenant's quota")
            reserved = grow + CREDIT_BYTES if room >= grow + CREDIT_BYTES else grow
            self._usage[upload.tenant] = used + reserved
            upload.credit += reserved

    def _credits(self, tenant: str) -> int:
        """What the tenant's open uploads have reserved and not written (under the lock)."""
        return sum(w.credit for (owner, _), w in self._writers.items() if owner == tenant)

    def _unreserve(self, tenant: str) -> None:
        with self._lock:
            self._usage.pop(tenant, None)

    def usage(self, tenant: str) -> int:
        """Bytes the tenant holds at the gateway (its inbox and outbox files)."""
        with self._lock:
            used = self._tenant_usage(tenant)
            self._usage[tenant] = used + self._credits(tenant)
            return used

    def _tenant_usage(self, tenant: str) -> int:
        total = 0
        for area in QUOTA_AREAS:
            with self._area(tenant, area) as adir:
                total += sum(f.size for f in self._scan(adir))
        return total

    def remove(self, tenant: str, area: Area, name: str) -> None:
        """Remove a regular file (never a symlink's target).

        Raises:
            StorageError: missing, a symlink or not a regular file.
        """
        with self._area(tenant, area) as adir:
            self._stat_in(adir, name)
            try:
                os.unlink(name, dir_fd=adir)
            except OSError as exc:
                raise _os_error(exc) from None
            _fsync_dir(adir)
        self._supersede(tenant, name)
        self._unreserve(tenant)

    def _supersede(self, tenant: str, name: str) -> None:
        with self._lock:
            writer = self._writers.pop((tenant, name), None)
        if writer is not None:
            writer.supersede()

    def publish(self, tenant: str, area: Area, source: str, target: str) -> None:
        """Rename ``source`` to ``target`` within an area, never replacing a file.

        Any session still writing ``source`` is superseded first, so the file
        cannot change after this returns.

        Raises:
            StorageError: ``target`` exists (``exists``), ``source`` is missing
                or not a regular file.
        """
        self._supersede(tenant, source)
        with self._area(tenant, area) as adir:
            self._stat_in(adir, source)
            _check_name(target)
            try:
                os.link(source, target, src_dir_fd=adir, dst_dir_fd=adir, follow_symlinks=False)
            except OSError as exc:
                raise _os_error(exc) from None
            try:
                os.unlink(source, dir_fd=adir)
            except OSError as exc:
                raise _os_error(exc) from None
            _fsync_dir(adir)

    def move(
        self, tenant: str, source_area: Area, source: str, target_area: Area, target: str
    ) -> None:
        """Move a file from one of the tenant's areas to another, never replacing a file.

        Used to publish a batch into ``/outbox`` (pull mode) without a copy. Any
        session still writing ``source`` is superseded first.

        Raises:
            StorageError: ``target`` exists (``exists``), ``source`` is missing
                or not a regular file.
        """
        self._supersede(tenant, source)
        with (
            self._area(tenant, source_area) as sdir,
            self._area(tenant, target_area) as tdir,
        ):
            self._stat_in(sdir, source)
            _check_name(target)
            try:
                os.link(source, target, src_dir_fd=sdir, dst_dir_fd=tdir, follow_symlinks=False)
            except OSError as exc:
                raise _os_error(exc) from None
            try:
                os.unlink(source, dir_fd=sdir)
            except OSError as exc:
                raise _os_error(exc) from None
            _fsync_dir(tdir)
            _fsync_dir(sdir)
        self._unreserve(tenant)

    def write_file(self, tenant: str, area: Area, name: str, data: bytes) -> None:
        """Write a small file atomically (temporary file, fsync, rename, fsync dir).

        Replaces an existing file of that name. The temporary name is unique, so
        writers in other processes (``serve``'s forwarder and ``erase`` both write
        status records) never rename each other's half-written file into place;
        a failed write (a full disk) leaves no temporary file behind.
        """
        temp = _check_name(f".{_check_name(name)}.{secrets.token_hex(8)}.tmp")
        with self._area(tenant, area) as adir:
            fd = self._open_regular(adir, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                try:
                    _write_all(fd, 0, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temp, name, src_dir_fd=adir, dst_dir_fd=adir)
            except OSError as exc:
                with suppress(OSError):
                    os.unlink(temp, dir_fd=adir)
                raise _os_error(exc) from None
            _fsync_dir(adir)

    def quarantine(self, tenant: str, area: Area, name: str, label: str) -> str:
        """Move a file out of the tenant's reach into ``quarantine/``.

        Returns:
            The quarantined file's name (``<tenant>--<label>--<UTC stamp>--<name>``).
        """
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = _check_name(f"{self._tenant(tenant)}--{label}--{stamp}--{name}")
        self._supersede(tenant, name)
        with self._area(tenant, area) as adir, self._dir(QUARANTINE_DIR) as qdir:
            self._stat_in(adir, name)
            try:
                os.rename(name, target, src_dir_fd=adir, dst_dir_fd=qdir)
            except OSError as exc:
                raise _os_error(exc) from None
            _fsync_dir(qdir)
            _fsync_dir(adir)
        self._unreserve(tenant)
        return target


def _write_all(fd: int, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def _fsync_dir(fd: int) -> None:
    with suppress(OSError):
        os.fsync(fd)


def __getattr__(name: str) -> Any:
    """Re-export :class:`~gateway.storage_files.Upload` and :class:`~gateway.storage_files.Reader`
    (imported lazily: that module imports this one)."""
    if name in ("Upload", "Reader"):
        from gateway import storage_files

        return getattr(storage_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
