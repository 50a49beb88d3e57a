"""Open files of :mod:`gateway.storage`: :class:`Upload` (writing) and :class:`Reader` (reading).

Split out of :mod:`gateway.storage`, which creates them (``open_upload``,
``open_read``) and re-exports both names; see that module's docstring.
"""

import os
import threading
from typing import TYPE_CHECKING

from gateway.storage import StorageError, _os_error, _write_all

if TYPE_CHECKING:
    from gateway.storage import Storage


class Upload:
    """An inbox file open for writing at offsets, within the limits.

    Writes may overwrite or extend the file but never leave a hole, so the file
    is always a contiguous prefix of what the client sent.
    """

    def __init__(self, storage: "Storage", tenant: str, name: str, fd: int) -> None:
        self.tenant = tenant
        self.name = name
        self._storage = storage
        self._fd = fd
        self._lock = threading.Lock()
        self._superseded = False
        self.credit = 0
        """Bytes reserved (quota, free space) and not written yet: see Storage._reserve."""
        self.size = os.fstat(fd).st_size

    def write(self, offset: int, data: bytes, *, append: bool = False) -> None:
        """Write ``data`` at ``offset`` (at the end when ``append``).

        Raises:
            StorageError: the handle is closed or superseded; the write would
                leave a hole; the upload, quota or free-space limit would be
                exceeded; or the disk is full. The file keeps its valid prefix.
        """
        with self._lock:
            if self._fd < 0:
                raise StorageError("closed", "the file is closed")
            if self._superseded:
                raise StorageError("superseded", "another session took over this upload")
            if append:
                offset = self.size
            if offset < 0 or offset > self.size:
                raise StorageError("hole", "writes must continue from the stored size")
            end = offset + len(data)
            if end > self._storage.limits.max_upload_bytes:
                raise StorageError("upload_too_large", "the upload exceeds the maximum upload size")
            grow = max(0, end - self.size)
            if grow > self.credit:
                self._storage._reserve(self, self._fd, grow - self.credit)
            try:
                _write_all(self._fd, offset, data)
            except OSError as exc:
                self.credit = 0
                self._storage._unreserve(self.tenant)
                self.size = os.fstat(self._fd).st_size
                raise _os_error(exc) from None
            self.credit -= grow
            self.size = max(self.size, end)

    def truncate(self) -> None:
        """Empty the file (an upload started over)."""
        with self._lock:
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                raise _os_error(exc) from None
            self.size = 0
            self.credit = 0
        self._storage._unreserve(self.tenant)

    def supersede(self) -> None:
        """Make later writes fail: another session or the completion took over."""
        with self._lock:
            self._superseded = True

    def close(self) -> None:
        """Flush to disk and close; idempotent. The file stays as it is (resumable)."""
        with self._lock:
            if self._fd < 0:
                return
            fd, self._fd = self._fd, -1
            unreserve, self.credit = self.credit > 0, 0
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        self._storage._release(self)
        if unreserve:
            self._storage._unreserve(self.tenant)  # recount without the unused credit


class Reader:
    """A regular file open for reading at offsets."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.size = os.fstat(fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes at ``offset`` (empty at the end, and past it)."""
        if self._fd < 0:
            raise StorageError("closed", "the file is closed")
        if offset >= self.size or length <= 0:
            return b""  # also keeps offsets beyond off_t (2^63 and up) away from pread
        try:
            return os.pread(self._fd, length, offset)
        except OSError as exc:
            raise _os_error(exc) from None

    def close(self) -> None:
        """Close; idempotent."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
