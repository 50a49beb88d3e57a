"""The paramiko adapter, SFTP half: the virtual filesystem of one logged-in account.

paramiko is imported only by gateway/sftp_server.py, gateway/sftp_protocol.py and
gateway/sftp_fs.py (server side), gateway/relay.py (client side). :mod:`gateway.sftp_server`
holds the SSH transport, login and channel decisions and starts
:class:`gateway.sftp_protocol.SFTPProtocol` (the hardened request loop) for the ``sftp``
subsystem, which hands requests to :class:`_SFTP` here.

- SFTP: every handler returns a status code, never raises; exceptions become
  codes in one place, :func:`_to_sftp_code`. Paths go through
  :mod:`gateway.policy`, files through :mod:`gateway.storage`.
- Pull confirmation: a contractor removing ``/outbox/<batch>.age`` confirms it
  has pulled and verified the batch. The ``on_pulled(batch_id, tenant, user)``
  hook (from the composition root) records that; only after it returns are the
  outbox's envelope and receipt copy deleted. Without a hook the removal is
  refused, and a hook that raises refuses it too (the files stay).
- Erasure certificates (pull mode): a contractor may create
  ``/outbox/<batch>.erasure.json`` once. The bytes are held in memory
  (at most :data:`~gateway.certificates.MAX_CERTIFICATE_BYTES`) and nothing is
  stored until the client closes the file; then the forwarder's
  :meth:`~gateway.certificate_intake.CertificateIntake.accept_upload` checks and
  publishes it, and the close is answered with the outcome — an invalid
  certificate gets an SFTP failure and is never stored (audited
  ``erasure_certificate_rejected``, incident raised once). A session that ends
  without closing the file stores nothing.
"""

import os
import stat
import time
from typing import TYPE_CHECKING, Any

import paramiko

from gateway import policy
from gateway.certificates import MAX_CERTIFICATE_BYTES, CertificateError
from gateway.policy import Area, NameKind, Op, PolicyError, VirtualPath
from gateway.receipts import CompletionError
from gateway.storage import StorageError, StoredFile, Upload

if TYPE_CHECKING:
    from gateway.sftp_server import _Interface

SFTP_OK: int = paramiko.SFTP_OK
SFTP_PERMISSION_DENIED: int = paramiko.SFTP_PERMISSION_DENIED
SFTP_FAILURE: int = paramiko.SFTP_FAILURE
SFTP_NO_SUCH_FILE: int = paramiko.SFTP_NO_SUCH_FILE
SFTP_OP_UNSUPPORTED: int = paramiko.SFTP_OP_UNSUPPORTED

MAX_OPEN_HANDLES = 16
"""Files open at once in one SFTP session."""
MAX_READ_BYTES = 256 * 1024
"""Largest single SFTP read served."""

_PERMISSION = frozenset(
    {"symlink", "hard_link", "not_regular", "bad_name", "not_directory", "permission", "bad_tenant"}
)


class _Status(int):
    """An SFTP status code carrying the message sent to the client."""

    message: str

    def __new__(cls, code: int, message: str) -> "_Status":
        status = super().__new__(cls, code)
        status.message = message
        return status


def _to_sftp_code(exc: BaseException) -> _Status:
    """Map any failure to an SFTP status code and a message safe to show the client."""
    if isinstance(exc, PolicyError):
        return _Status(SFTP_PERMISSION_DENIED, f"permission denied: {exc}")
    if isinstance(exc, CompletionError):
        code = SFTP_PERMISSION_DENIED if exc.refused else SFTP_FAILURE
        return _Status(code, str(exc))
    if isinstance(exc, CertificateError):
        return _Status(SFTP_FAILURE, f"erasure certificate refused: {exc}")
    if isinstance(exc, StorageError):
        if exc.reason == "not_found":
            return _Status(SFTP_NO_SUCH_FILE, str(exc))
        if exc.reason in _PERMISSION:
            return _Status(SFTP_PERMISSION_DENIED, f"permission denied: {exc}")
        return _Status(SFTP_FAILURE, str(exc))
    return _Status(SFTP_FAILURE, "internal error")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, str) else "internal_error"


def _attributes(name: str, mode: int, size: int = 0, mtime: float = 0) -> paramiko.SFTPAttributes:
    attr = paramiko.SFTPAttributes()
    attr.filename = name
    attr.st_mode = mode
    attr.st_size = size
    attr.st_mtime = attr.st_atime = int(mtime)
    return attr


_DIR_MODE = stat.S_IFDIR | 0o500
_MODES = {NameKind.PART: stat.S_IFREG | 0o200, NameKind.RECEIPT: stat.S_IFREG | 0o400}
_COMPLETE_MODE = stat.S_IFREG | 0o400


def _file_attributes(stored: StoredFile) -> paramiko.SFTPAttributes:
    kind = policy.name_kind(stored.name)
    mode = _MODES.get(kind, _COMPLETE_MODE) if kind else _COMPLETE_MODE
    return _attributes(stored.name, mode, stored.size, stored.mtime)


class _SFTP(paramiko.SFTPServerInterface):  # type: ignore[misc]  # paramiko is untyped
    """The virtual filesystem of one logged-in account (see :mod:`gateway.policy`)."""

    def __init__(self, server: "_Interface", *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.conn = server.conn
        self.gateway = server.gateway
        self.on_pulled = server.on_pulled
        account = server.conn.account
        if account is None or not server.conn.logged_in:
            raise PermissionError("SFTP before login")
        self.user, self.role, self.tenant = account.name, account.role, account.tenant
        self.handles = 0
        self.protocol_errors = 0
        self.started = time.monotonic()

    def audit(self, event: str, **fields: object) -> None:
        """Emit an audit event with this session's common fields."""
        self.gateway.audit.emit(event, **{**self.conn.fields(), **fields})

    def refuse(self, op: str, path: str, exc: BaseException) -> _Status:
        """Audit a refusal (``sftp_refused``) and return its status code."""
        status = _to_sftp_code(exc)
        try:
            self.audit("sftp_refused", op=op, path=path, reason=_reason(exc))
        except Exception:
            return _Status(SFTP_FAILURE, "internal error")
        return status

    def session_started(self) -> None:
        try:
            self.gateway.storage.ensure_tenant(self.tenant)
            self.audit("session_opened", role=self.role)
        except Exception:
            self.conn.close("internal_error")

    def session_ended(self) -> None:
        with self.conn.lock:
            self.conn.sftp_sessions -= 1
        try:
            elapsed = int((time.monotonic() - self.started) * 1000)
            self.audit("session_closed", elapsed_ms=elapsed, protocol_errors=self.protocol_errors)
        except Exception:  # noqa: S110 - the log reports its own breakage on the next emit
            pass

    def _parse(self, raw: str) -> VirtualPath:
        return policy.parse(self.role, raw)

    # -- paths -------------------------------------------------------------------------------

    def resolve(self, raw: str) -> str | _Status:
        """REALPATH: the canonical virtual path, or a refusal."""
        try:
            return str(self._parse(raw))
        except Exception as exc:
            return self.refuse("realpath", raw, exc)

    def list_folder(self, path: str) -> list[paramiko.SFTPAttributes] | int:
        try:
            vpath = self._parse(path)
            policy.check(self.role, Op.LIST, vpath)
            if vpath.is_file:
                raise PolicyError("not_directory", "not a directory")
            if vpath.area is None:
                areas = policy.AREAS_BY_ROLE[self.role]
                entries = [_attributes(a.value, _DIR_MODE) for a in areas]
            else:
                area = vpath.area
                stored = self.gateway.storage.list_files(self.tenant, area)
                entries = [_file_attributes(f) for f in stored if policy.visible(area, f.name)]
            self.audit("sftp_listed", path=str(vpath), count=len(entries))
            return entries
        except Exception as exc:
            return self.refuse("list", path, exc)

    def stat(self, path: str) -> paramiko.SFTPAttributes | int:
        try:
            vpath = self._parse(path)
            policy.check(self.role, Op.STAT, vpath)
            if vpath.area is None:
                attr = _attributes("/", _DIR_MODE)
            elif vpath.name is None:
                attr = _attributes(vpath.area.value, _DIR_MODE)
            else:
                stored = self.gateway.storage.stat(self.tenant, vpath.area, vpath.name)
                attr = _file_attributes(stored)
            self.audit("sftp_stat", path=str(vpath), size_bytes=attr.st_size)
            return attr
        except Exception as exc:
            return self.refuse("stat", path, exc)

    def lstat(self, path: str) -> paramiko.SFTPAttributes | int:
        return self.stat(path)

    def open(
        self, path: str, flags: int, attr: paramiko.SFTPAttributes
    ) -> paramiko.SFTPHandle | int:
        try:
            vpath = self._parse(path)
            if self.handles >= MAX_OPEN_HANDLES:
                raise PolicyError("too_many_handles", "too many open files")
            access = flags & os.O_ACCMODE
            if access == os.O_RDONLY:
                handle = self._open_read(vpath, flags)
            elif access == os.O_WRONLY:
                handle = self._open_write(vpath, flags)
            else:
                raise PolicyError("read_write", "open files for reading or for writing, not both")
            self.handles += 1
            return handle
        except Exception as exc:
            return self.refuse("open", path, exc)

    def _open_read(self, vpath: VirtualPath, flags: int) -> "_ReadHandle":
        policy.check(self.role, Op.READ, vpath)
        if flags & (os.O_CREAT | os.O_TRUNC | os.O_APPEND) or vpath.area is None or not vpath.name:
            raise PolicyError("not_permitted", "read-only file")
        reader = self.gateway.storage.open_read(self.tenant, vpath.area, vpath.name)
        self.audit("sftp_opened", path=str(vpath), mode="read", file_size_bytes=reader.size)
        return _ReadHandle(self, vpath, reader)

    def _open_write(self, vpath: VirtualPath, flags: int) -> "_WriteHandle | _CertificateHandle":
        policy.check(self.role, Op.WRITE, vpath)
        batch_id = vpath.batch_id
        if vpath.name is None or batch_id is None:
            raise PolicyError("not_permitted", "not a file")
        if policy.check_certificate_upload(self.role, vpath) is not None:
            return self._open_certificate(vpath, batch_id, flags)
        self.gateway.completer.check_new_upload(self.tenant, batch_id)
        upload = self.gateway.storage.open_upload(
            self.tenant,
            vpath.name,
            create=bool(flags & os.O_CREAT),
            truncate=bool(flags & os.O_TRUNC),
            exclusive=bool(flags & os.O_EXCL),
        )
        self.audit(
            "sftp_opened", path=str(vpath), batch=batch_id, mode="write", offset_bytes=upload.size
        )
        return _WriteHandle(self, vpath, upload, append=bool(flags & os.O_APPEND))

    def _open_certificate(
        self, vpath: VirtualPath, batch_id: str, flags: int
    ) -> "_CertificateHandle":
        """Open ``/outbox/<batch>.erasure.json`` for its one upload (see the module docstring).

        Raises:
            PolicyError: not a creation, or no certificate is taken for this batch.
            StorageError: it was uploaded already (``exists``: an SFTP failure).
        """
        if not flags & os.O_CREAT:
            raise PolicyError(
                "not_permitted", "an erasure certificate is created once, not changed"
            )
        self.gateway.forwarder.certificates.check_upload(self.tenant, batch_id)
        if self.gateway.storage.exists(self.tenant, Area.OUTBOX, vpath.name or ""):
            raise StorageError("exists", "the erasure certificate was uploaded already")
        self.audit("sftp_opened", path=str(vpath), batch=batch_id, mode="write", offset_bytes=0)
        return _CertificateHandle(self, vpath, batch_id)

    def accept_certificate(self, batch_id: str, data: bytes) -> None:
        """A certificate upload was closed: check and publish it (raises when refused)."""
        intake = self.gateway.forwarder.certificates
        intake.accept_upload(self.tenant, self.user, batch_id, data)

    def remove(self, path: str) -> int:
        try:
            vpath = self._parse(path)
            policy.check(self.role, Op.REMOVE, vpath)
            if vpath.area is None or vpath.name is None:
                raise PolicyError("not_permitted", "not a file")
            pulled = policy.check_pull_confirmation(self.role, vpath)
            if pulled is not None:
                self._confirm_pull(vpath, pulled)
            else:
                self.gateway.storage.remove(self.tenant, vpath.area, vpath.name)
            self.audit(
                "sftp_removed", path=str(vpath), batch=vpath.batch_id, confirmation=bool(pulled)
            )
            return SFTP_OK
        except Exception as exc:
            return self.refuse("remove", path, exc)

    def _confirm_pull(self, vpath: VirtualPath, batch_id: str) -> None:
        """A contractor's removal of ``/outbox/<batch>.age``: record the pull, then delete.

        Raises:
            PolicyError: no hook is wired, or the hook refused.
            StorageError: the envelope is not in the outbox.
        """
        hook = self.on_pulled
        if hook is None:
            raise PolicyError("not_permitted", "this gateway does not take pull confirmations")
        storage = self.gateway.storage
        storage.stat(self.tenant, Area.OUTBOX, vpath.name or "")
        hook(batch_id, self.tenant, self.user)
        for kind in (NameKind.COMPLETE, NameKind.RECEIPT):
            try:
                storage.remove(self.tenant, Area.OUTBOX, policy.file_name(batch_id, kind))
            except StorageError as exc:
                if exc.reason != "not_found":  # already gone: the confirmation stands
                    raise

    def rename(self, oldpath: str, newpath: str) -> int:
        try:
            source, target = self._parse(oldpath), self._parse(newpath)
            batch_id = policy.check_completion(self.role, source, target)
            self.gateway.completer.complete(self.tenant, self.user, batch_id, self.conn.fields())
            self.audit("sftp_renamed", path=str(source), target=str(target), batch=batch_id)
            return SFTP_OK
        except Exception as exc:
            return self.refuse("rename", oldpath, exc)

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        return self.rename(oldpath, newpath)

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        try:
            vpath = self._parse(path)
            policy.check(self.role, Op.SETSTAT, vpath)
            return self.check_harmless(attr)
        except Exception as exc:
            return self.refuse("setstat", path, exc)

    @staticmethod
    def check_harmless(attr: paramiko.SFTPAttributes) -> int:
        """Accept (and ignore) permission and time changes; refuse size and ownership.

        Raises:
            PolicyError: the attributes would truncate the file or change its owner.
        """
        if attr.st_size is not None or attr.st_uid is not None or attr.st_gid is not None:
            raise PolicyError("setstat_refused", "only permissions and times may be set")
        return SFTP_OK

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> int:
        return self.refuse("mkdir", path, PolicyError("not_permitted", "no directories here"))

    def rmdir(self, path: str) -> int:
        return self.refuse("rmdir", path, PolicyError("not_permitted", "no directories here"))

    def symlink(self, target_path: str, path: str) -> int:
        return self.refuse("symlink", path, PolicyError("not_permitted", "no symbolic links"))

    def readlink(self, path: str) -> int:
        return self.refuse("readlink", path, PolicyError("not_permitted", "no symbolic links"))


class _Handle(paramiko.SFTPHandle):  # type: ignore[misc]  # paramiko is untyped
    """Common bookkeeping of an open file: bytes moved, time open, first failure."""

    mode = "read"

    def __init__(self, sftp: _SFTP, vpath: VirtualPath) -> None:
        super().__init__()
        self.sftp = sftp
        self.vpath = vpath
        self.moved = 0
        self.failures = 0
        self.opened = time.monotonic()
        self.closed = False

    def fail(self, op: str, exc: BaseException) -> int:
        """Audit the first failure of this handle; count the rest (pipelined requests)."""
        self.failures += 1
        if self.failures == 1:
            return self.sftp.refuse(op, str(self.vpath), exc)
        return _to_sftp_code(exc)

    def finish(self, file_size: int) -> None:
        """Audit ``sftp_closed`` once."""
        if self.closed:
            return
        self.closed = True
        self.sftp.handles -= 1
        self.sftp.audit(
            "sftp_closed",
            path=str(self.vpath),
            batch=self.vpath.batch_id,
            mode=self.mode,
            size_bytes=self.moved,
            file_size_bytes=file_size,
            elapsed_ms=int((time.monotonic() - self.opened) * 1000),
            failed_requests=self.failures,
        )

    def read(self, offset: int, length: int) -> bytes | int:
        return self.fail("read", PolicyError("not_permitted", "file is write-only"))

    def write(self, offset: int, data: bytes) -> int:
        return self.fail("write", PolicyError("not_permitted", "file is read-only"))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        try:
            policy.check(self.sftp.role, Op.SETSTAT, self.vpath)
            return self.sftp.check_harmless(attr)
        except Exception as exc:
            return self.fail("setstat", exc)


class _WriteHandle(_Handle):
    mode = "write"

    def __init__(self, sftp: _SFTP, vpath: VirtualPath, upload: Upload, *, append: bool) -> None:
        super().__init__(sftp, vpath)
        self.upload = upload
        self.append = append

    def write(self, offset: int, data: bytes) -> int:
        try:
            self.upload.write(offset, data, append=self.append)
            self.moved += len(data)
            return SFTP_OK
        except Exception as exc:
            return self.fail("write", exc)

    def stat(self) -> paramiko.SFTPAttributes | int:
        name = self.vpath.name or ""
        return _attributes(name, _MODES[NameKind.PART], self.upload.size, time.time())

    def close(self) -> None:
        try:
            self.upload.close()
        finally:
            self.finish(self.upload.size)


class _CertificateHandle(_Handle):
    """An erasure certificate being uploaded: held in memory, judged on close."""

    mode = "write"

    def __init__(self, sftp: _SFTP, vpath: VirtualPath, batch_id: str) -> None:
        super().__init__(sftp, vpath)
        self.batch_id = batch_id
        self.data = bytearray()

    def write(self, offset: int, data: bytes) -> int:
        try:
            if offset < 0 or offset > len(self.data):
                raise StorageError("hole", "writes must continue from the stored size")
            if offset + len(data) > MAX_CERTIFICATE_BYTES:
                raise StorageError(
                    "upload_too_large",
                    f"an erasure certificate is at most {MAX_CERTIFICATE_BYTES} bytes",
                )
            self.data[offset : offset + len(data)] = data
            self.moved += len(data)
            return SFTP_OK
        except Exception as exc:
            return self.fail("write", exc)

    def stat(self) -> paramiko.SFTPAttributes | int:
        return _attributes(
            self.vpath.name or "", _MODES[NameKind.PART], len(self.data), time.time()
        )

    def commit(self) -> int:
        """The client closed the file: check and publish the certificate; the status to answer."""
        if self.closed:
            return SFTP_FAILURE
        try:
            if self.failures:
                raise StorageError("incomplete", "a write failed; the certificate was not stored")
            self.sftp.accept_certificate(self.batch_id, bytes(self.data))
            return SFTP_OK
        except Exception as exc:
            return self.sftp.refuse("close", str(self.vpath), exc)
        finally:
            self.finish(len(self.data))

    def close(self) -> None:
        """The session ended without closing the file: nothing is stored."""
        self.finish(len(self.data))


class _ReadHandle(_Handle):
    def __init__(self, sftp: _SFTP, vpath: VirtualPath, reader: Any) -> None:
        super().__init__(sftp, vpath)
        self.reader = reader

    def read(self, offset: int, length: int) -> bytes | int:
        try:
            data: bytes = self.reader.read(offset, min(length, MAX_READ_BYTES))
            self.moved += len(data)
            return data
        except Exception as exc:
            return self.fail("read", exc)

    def stat(self) -> paramiko.SFTPAttributes | int:
        kind = self.vpath.kind
        mode = _MODES.get(kind, _COMPLETE_MODE) if kind else _COMPLETE_MODE
        return _attributes(self.vpath.name or "", mode, self.reader.size, time.time())

    def close(self) -> None:
        try:
            self.reader.close()
        finally:
            self.finish(self.reader.size)
