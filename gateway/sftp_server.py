"""The paramiko adapter: SSH transport, two-step login and the SFTP virtual filesystem.

The only module (with :mod:`gateway.server`'s use of ``Transport`` methods)
that speaks paramiko. Deny by default everywhere:

- Transport: key exchange, ciphers, MACs and host-key types restricted to
  :data:`KEX`, :data:`CIPHERS`, :data:`MACS`, :data:`HOST_KEY_TYPES`; strict key
  exchange (the Terrapin counter-measure) is on by default in paramiko ≥ 3.4
  and audited per connection as ``strict_kex``.
- Login, two steps: ``get_allowed_auths`` offers only ``password`` until the
  password step passed for that user, then only ``publickey``; the password
  step answers AUTH_PARTIALLY_SUCCESSFUL (audited ``password_accepted``; every
  refusal ``login_failed`` with method and reason); the key step answers AUTH_SUCCESSFUL
  only for the same user and the account's key. The key callback runs before
  paramiko has verified the signature, so it records nothing as logged in:
  :meth:`gateway.server.DropServer.confirm_login` does that once paramiko
  reports the transport authenticated.
- Login of a ``forwarder`` account (another gateway delivering here), one step:
  ``get_allowed_auths`` offers it only ``publickey``; the key step answers
  AUTH_SUCCESSFUL only for its key, from a source in its (non-empty) allow list,
  while it is not locked (:meth:`gateway.accounts.Accounts.check_key_login`);
  its password step always refuses (``key_only``). The key step then stands in
  for the password step in the connection's bookkeeping (``password_user``).
- Pull confirmation: a contractor removing ``/outbox/<batch>.age`` confirms it
  has pulled and verified the batch. The ``on_pulled(batch_id, tenant, user)``
  hook (from the composition root) records that; only after it returns are the
  outbox's envelope and receipt copy deleted. Without a hook the removal is
  refused, and a hook that raises refuses it too (the files stay).
- Channels: only ``session`` channels with the ``sftp`` subsystem; shell, exec,
  pty, X11, agent and port forwarding are refused and audited (``channel_refused``).
- SFTP: every handler returns a status code, never raises; exceptions become
  codes in one place, :func:`_to_sftp_code`. Paths go through
  :mod:`gateway.policy`, files through :mod:`gateway.storage`.
"""

import base64
import contextlib
import hashlib
import io
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.sftp import CMD_EXTENDED, CMD_NAME, CMD_REALPATH

from custody import keys
from gateway import policy
from gateway.audit import AuditLog
from gateway.policy import Area, NameKind, Op, PolicyError, VirtualPath
from gateway.receipts import CompletionError
from gateway.storage import StorageError, StoredFile, Upload

if TYPE_CHECKING:
    from gateway.server import Connection, DropServer

KEX = ("mlkem768x25519-sha256", "curve25519-sha256@libssh.org")
CIPHERS = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
MACS = (
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512",
    "hmac-sha2-256",
)
HOST_KEY_TYPES = ("ssh-ed25519",)
AUTH_FAILED: int = paramiko.AUTH_FAILED
AUTH_SUCCESSFUL: int = paramiko.AUTH_SUCCESSFUL
AUTH_PARTIALLY_SUCCESSFUL: int = paramiko.AUTH_PARTIALLY_SUCCESSFUL
OPEN_PROHIBITED: int = paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
OPEN_SUCCEEDED: int = paramiko.OPEN_SUCCEEDED
SFTP_OK: int = paramiko.SFTP_OK
SFTP_PERMISSION_DENIED: int = paramiko.SFTP_PERMISSION_DENIED
SFTP_FAILURE: int = paramiko.SFTP_FAILURE
SFTP_NO_SUCH_FILE: int = paramiko.SFTP_NO_SUCH_FILE
SFTP_OP_UNSUPPORTED: int = paramiko.SFTP_OP_UNSUPPORTED

SERVER_VERSION = "SSH-2.0-lgwan-gateway"
"""Our identification string (no library version disclosed)."""

MAX_CHANNELS_PER_CONNECTION = 8
"""Session channels a connection may open in its lifetime."""
MAX_SFTP_SESSIONS_PER_CONNECTION = 2
"""SFTP subsystems running at once on one connection."""
MAX_OPEN_HANDLES = 16
"""Files open at once in one SFTP session."""
MAX_READ_BYTES = 256 * 1024
"""Largest single SFTP read served."""
HANDSHAKE_SLACK_SECONDS = 5.0
"""paramiko's own banner/handshake timeouts are the login grace plus this."""

_QUIET_GLOBAL_REQUESTS = frozenset({"keepalive@openssh.com", "no-more-sessions@openssh.com"})
_PERMISSION = frozenset(
    {"symlink", "hard_link", "not_regular", "bad_name", "not_directory", "permission", "bad_tenant"}
)

logging.getLogger("paramiko").addHandler(logging.NullHandler())

PullHook = Callable[[str, str, str], None]
"""``on_pulled(batch_id, tenant, user)``: a contractor confirmed a pull (see the module docstring).

Called before the outbox copy is deleted; it must be idempotent (a confirmation
may be repeated after a lost answer). Raising :class:`~gateway.policy.PolicyError`
refuses the confirmation (permission denied); any other exception fails it (the
contractor retries later). Either way the outbox files stay.
"""


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


def server_host_key(key: Ed25519PrivateKey) -> paramiko.PKey:
    """The host key as paramiko needs it."""
    pem = keys.private_key_to_openssh(key).decode("ascii")
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem))


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _Transport(paramiko.Transport):  # type: ignore[misc]  # paramiko is untyped
    """A server Transport that remembers which key exchange was agreed (for the audit)."""

    negotiated_kex: str | None = None

    def _parse_kex_init(self, m: Any) -> None:
        super()._parse_kex_init(m)
        engine = type(self.kex_engine)
        self.negotiated_kex = next((n for n, c in self._kex_info.items() if c is engine), None)


def start_transport(
    sock: Any, conn: "Connection", server: "DropServer", *, on_pulled: PullHook | None = None
) -> paramiko.Transport:
    """Start the SSH server side on an accepted socket (runs in paramiko's thread).

    Args:
        sock: The accepted socket.
        conn: Its connection record.
        server: The drop server.
        on_pulled: The pull-confirmation hook; None refuses every confirmation.
    """
    transport = _Transport(sock)
    transport.local_version = SERVER_VERSION
    options = transport.get_security_options()
    options.kex = tuple(k for k in KEX if k in options.kex)
    options.ciphers = CIPHERS
    options.digests = MACS
    options.key_types = HOST_KEY_TYPES
    options.compression = ("none",)
    # Safety nets only: the reaper in gateway.server enforces login_grace_seconds itself.
    slack = float(server.gateway.config.server.login_grace_seconds) + HANDSHAKE_SLACK_SECONDS
    transport.banner_timeout = slack
    transport.handshake_timeout = slack
    transport.add_server_key(server.host_key)
    conn.transport = transport
    # With an event, start_server returns at once; the key exchange runs in paramiko's thread.
    interface = _Interface(conn, server, on_pulled=on_pulled)
    transport.start_server(event=threading.Event(), server=interface)
    return transport


def note_negotiated(conn: "Connection", audit: AuditLog) -> None:
    """Audit ``connection_opened`` once the key exchange is done (idempotent)."""
    transport = conn.transport
    with conn.lock:  # emitted under the lock: nothing about a connection is logged before this
        if conn.negotiated or transport is None or not transport.is_active():
            return
        if not transport.initial_kex_done:
            return
        conn.negotiated = True
        cipher = transport.remote_cipher
        audit.emit(
            "connection_opened",
            **conn.fields(),
            client_version=transport.remote_version,
            kex=getattr(transport, "negotiated_kex", None),
            host_key_type=transport.host_key_type,
            cipher=cipher,
            mac=None if "gcm" in cipher else transport.remote_mac,
            strict_kex=bool(transport.agreed_on_strict_kex),
        )


def negotiation_failure(conn: "Connection") -> dict[str, object]:
    """What is known about a connection that never finished its key exchange."""
    transport = conn.transport
    if transport is None:
        return {}
    error = transport.get_exception()
    return {
        "client_version": transport.remote_version or None,
        "error": None if error is None else f"{type(error).__name__}: {error}",
    }


class _Interface(paramiko.ServerInterface):  # type: ignore[misc]  # paramiko is untyped
    """Login and channel decisions for one connection; every callback fails closed."""

    def __init__(
        self, conn: "Connection", server: "DropServer", *, on_pulled: PullHook | None = None
    ) -> None:
        self.conn = conn
        self.server = server
        self.gateway = server.gateway
        self.on_pulled = on_pulled

    def _audit(self, event: str, **fields: object) -> None:
        self.gateway.audit.emit(event, **{**self.conn.fields(), **fields})

    def _prologue(self) -> None:
        self.conn.touch()
        note_negotiated(self.conn, self.gateway.audit)

    # -- authentication ----------------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        if self.conn.password_user == username or self._key_only(username):
            return "publickey"
        return "password"

    def _key_only(self, username: str) -> bool:
        """Whether ``username`` is a forwarder account (which logs in by key alone)."""
        try:
            account = self.gateway.accounts.get(username)
        except Exception:
            return False
        return account is not None and account.role == policy.ROLE_FORWARDER

    def check_auth_none(self, username: str) -> int:
        return AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        try:
            self._prologue()
            if not isinstance(password, str):
                self._audit("login_failed", user=username, method="password", reason="not_utf8")
                return AUTH_FAILED
            decision = self.gateway.accounts.check_password(username, password, self.conn.ip)
            if not decision.ok:
                self._audit(
                    "login_failed", user=username, method="password", reason=decision.reason
                )
                if decision.reason == "bad_password" and decision.locked_until is not None:
                    self._audit("account_locked_out", user=username, until=decision.locked_until)
                return AUTH_FAILED
            account = self.gateway.accounts.get(username)
            if account is None or account.role not in policy.ROLES:
                self._audit("login_failed", user=username, method="password", reason="unknown_user")
                return AUTH_FAILED
            with self.conn.lock:
                self.conn.password_user = username
                self.conn.account = account
            self._audit("password_accepted", user=username, method="password")
            return AUTH_PARTIALLY_SUCCESSFUL
        except Exception as exc:
            self._fail_closed(exc, "login_failed", user=username, method="password")
            return AUTH_FAILED

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # Runs before paramiko verifies the signature: decide, never record a login.
        try:
            self._prologue()
            conn = self.conn
            second_step = (
                conn.password_user == username
                and conn.account is not None
                and conn.account.role != policy.ROLE_FORWARDER
            )
            if not second_step:
                if self._key_only(username):
                    return self._forwarder_key(username, key)
                return self._key_refused(username, "password_step_missing")
            if key.get_name() not in HOST_KEY_TYPES:
                return self._key_refused(username, "key_type")
            offered = _fingerprint(key)
            if not self.gateway.accounts.check_public_key(username, offered):
                return self._key_refused(username, "wrong_key", key_fingerprint=offered)
            if not self.server.has_room(username):
                self._audit("connection_refused", user=username, reason="max_sessions_per_account")
                return AUTH_FAILED
            with conn.lock:
                conn.key_fingerprint = offered
            return AUTH_SUCCESSFUL
        except Exception as exc:
            self._fail_closed(exc, "login_failed", user=username, method="publickey")
            return AUTH_FAILED

    def _forwarder_key(self, username: str, key: paramiko.PKey) -> int:
        """The one login step of a forwarder: its key, from its allow list, not locked."""
        if key.get_name() not in HOST_KEY_TYPES:
            return self._key_refused(username, "key_type")
        offered = _fingerprint(key)
        decision = self.gateway.accounts.check_key_login(username, offered, self.conn.ip)
        if not decision.ok:
            return self._key_refused(username, decision.reason, key_fingerprint=offered)
        account = self.gateway.accounts.get(username)
        if account is None or account.role != policy.ROLE_FORWARDER:
            return self._key_refused(username, "unknown_user")
        if not self.server.has_room(username):
            self._audit("connection_refused", user=username, reason="max_sessions_per_account")
            return AUTH_FAILED
        with self.conn.lock:
            self.conn.password_user = username  # the key step is this account's first step
            self.conn.account = account
            self.conn.key_fingerprint = offered
        return AUTH_SUCCESSFUL

    def _key_refused(self, username: str, reason: str, **fields: object) -> int:
        with self.conn.lock:
            self.conn.key_fingerprint = None
        self._audit("login_failed", user=username, method="publickey", reason=reason, **fields)
        return AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> int:
        return AUTH_FAILED

    def _fail_closed(self, exc: Exception, event: str, **fields: object) -> None:
        """Audit an unexpected failure (its type only) and cut the connection."""
        with contextlib.suppress(Exception):  # the log reports its own breakage on the next emit
            self._audit(event, **fields, reason="internal_error", error=type(exc).__name__)
        self.conn.close("internal_error")

    # -- channels ----------------------------------------------------------------------------

    def _refuse_channel(self, request: str, **fields: object) -> None:
        try:
            self._audit("channel_refused", request=request, **fields)
        except Exception:
            self.conn.close("internal_error")

    def check_channel_request(self, kind: str, chanid: int) -> int:
        prohibited = OPEN_PROHIBITED
        try:
            self.conn.touch()
            if kind != "session":
                self._refuse_channel(kind)
                return prohibited
            if not self.server.confirm_login(self.conn):
                return prohibited
            with self.conn.lock:
                if self.conn.channels >= MAX_CHANNELS_PER_CONNECTION:
                    refused = True
                else:
                    self.conn.channels += 1
                    refused = False
            if refused:
                self._refuse_channel(kind, reason="too_many_channels")
                return prohibited
            return OPEN_SUCCEEDED
        except Exception:
            self.conn.close("internal_error")
            return prohibited

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        try:
            self.conn.touch()
            if name != "sftp":
                self._refuse_channel("subsystem", subsystem=name)
                return False
            if not self.conn.logged_in:
                self._refuse_channel("subsystem", subsystem=name, reason="not_logged_in")
                return False
            with self.conn.lock:
                busy = self.conn.sftp_sessions >= MAX_SFTP_SESSIONS_PER_CONNECTION
                if not busy:
                    self.conn.sftp_sessions += 1
            if busy:
                self._refuse_channel("subsystem", subsystem=name, reason="too_many_sessions")
                return False
            handler = _SFTPServer(channel, name, self, sftp_si=_SFTP)
            self.conn.threads.append(handler)
            handler.start()
            return True
        except Exception:
            self.conn.close("internal_error")
            return False

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self._refuse_channel("shell")
        return False

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self._refuse_channel("exec", command_bytes=len(command))
        return False

    def check_channel_pty_request(self, channel: paramiko.Channel, *args: object) -> bool:
        self._refuse_channel("pty")
        return False

    def check_channel_x11_request(self, channel: paramiko.Channel, *args: object) -> bool:
        self._refuse_channel("x11")
        return False

    def check_channel_forward_agent_request(self, channel: paramiko.Channel) -> bool:
        self._refuse_channel("agent")
        return False

    def check_channel_env_request(
        self, channel: paramiko.Channel, name: bytes, value: bytes
    ) -> bool:
        return False  # OpenSSH clients send LANG and such routinely: refused, not audited

    def check_channel_window_change_request(self, channel: paramiko.Channel, *args: object) -> bool:
        return False

    def check_channel_direct_tcpip_request(
        self, chanid: int, origin: tuple[str, int], destination: tuple[str, int]
    ) -> int:
        self._refuse_channel("direct-tcpip", destination=f"{destination[0]}:{destination[1]}")
        return int(OPEN_PROHIBITED)

    def check_port_forward_request(self, address: str, port: int) -> bool:
        self._refuse_channel("tcpip-forward", address=f"{address}:{port}")
        return False

    def check_global_request(self, kind: str, msg: paramiko.Message) -> bool:
        if kind not in _QUIET_GLOBAL_REQUESTS:
            self._refuse_channel(kind)
        return False


# -- SFTP --------------------------------------------------------------------------------------


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


class _SFTPServer(paramiko.SFTPServer):  # type: ignore[misc]  # paramiko is untyped
    """paramiko's SFTP loop with our status messages, REALPATH errors and activity tracking."""

    def __init__(self, channel: paramiko.Channel, name: str, server: _Interface, **kw: Any) -> None:
        super().__init__(channel, name, server, **kw)
        self._conn = server.conn

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        self._conn.touch()
        with self._conn.lock:
            self._conn.busy += 1  # a long request (hashing at completion) is not idleness
        try:
            if t == CMD_REALPATH:
                self._realpath(request_number, msg)
            elif t == CMD_EXTENDED:
                self._extended(request_number, msg)
            else:
                super()._process(t, request_number, msg)
        except UnicodeDecodeError:
            sftp: _SFTP = self.server
            sftp.refuse("request", "", PolicyError("not_utf8", "path is not UTF-8"))
            self._send_status(request_number, SFTP_PERMISSION_DENIED)
        finally:
            with self._conn.lock:
                self._conn.busy -= 1
            self._conn.touch()

    def _realpath(self, request_number: int, msg: paramiko.Message) -> None:
        sftp: _SFTP = self.server
        resolved = sftp.resolve(msg.get_text())
        if isinstance(resolved, int):
            self._send_status(request_number, resolved)
        else:
            self._response(request_number, CMD_NAME, 1, resolved, "", paramiko.SFTPAttributes())

    def _extended(self, request_number: int, msg: paramiko.Message) -> None:
        sftp: _SFTP = self.server
        tag = msg.get_text()
        if tag == "posix-rename@openssh.com":
            old, new = msg.get_text(), msg.get_text()
            self._send_status(request_number, sftp.rename(old, new))
            return
        if tag == "check-file":
            sftp.refuse("check_file", "", PolicyError("not_permitted", "check-file is not offered"))
        self._send_status(request_number, SFTP_OP_UNSUPPORTED)

    def _send_status(self, request_number: int, code: int, desc: str | None = None) -> None:
        if desc is None and isinstance(code, _Status):
            desc = code.message
        super()._send_status(request_number, int(code), desc)


class _SFTP(paramiko.SFTPServerInterface):  # type: ignore[misc]  # paramiko is untyped
    """The virtual filesystem of one logged-in account (see :mod:`gateway.policy`)."""

    def __init__(self, server: _Interface, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.conn = server.conn
        self.gateway = server.gateway
        self.on_pulled = server.on_pulled
        account = server.conn.account
        if account is None or not server.conn.logged_in:
            raise PermissionError("SFTP before login")
        self.user, self.role, self.tenant = account.name, account.role, account.tenant
        self.handles = 0
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
            self.audit("session_closed", elapsed_ms=elapsed)
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

    def _open_write(self, vpath: VirtualPath, flags: int) -> "_WriteHandle":
        policy.check(self.role, Op.WRITE, vpath)
        batch_id = vpath.batch_id
        if vpath.name is None or batch_id is None:
            raise PolicyError("not_permitted", "not a file")
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


__all__ = [
    "CIPHERS",
    "HOST_KEY_TYPES",
    "KEX",
    "MACS",
    "PullHook",
    "negotiation_failure",
    "note_negotiated",
    "server_host_key",
    "start_transport",
]
