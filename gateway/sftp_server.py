"""The paramiko adapter: SSH transport, two-step login and channel decisions.

paramiko is imported only by gateway/sftp_server.py, gateway/sftp_protocol.py and
gateway/sftp_fs.py (server side), gateway/relay.py (client side) (plus
:mod:`gateway.server`'s use of ``Transport`` methods). The SFTP wire protocol lives in
:mod:`gateway.sftp_protocol`, the virtual filesystem in :mod:`gateway.sftp_fs`; their
public names are re-exported here. Deny by default everywhere:

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
- SFTP (:mod:`gateway.sftp_fs`): every handler returns a status code, never raises;
  exceptions become codes in one place, :func:`_to_sftp_code`. Paths go through
  :mod:`gateway.policy`, files through :mod:`gateway.storage`. Malformed, oversized,
  out-of-order and unknown packets and foreign handles are refused on the wire
  (:mod:`gateway.sftp_protocol`).
"""

import base64
import contextlib
import hashlib
import io
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.auth_handler import AuthHandler

from custody import keys
from gateway import policy, sftp_buffers
from gateway.audit import AuditLog
from gateway.sftp_fs import (
    _SFTP,
    MAX_OPEN_HANDLES,
    MAX_READ_BYTES,
    SFTP_FAILURE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
)
from gateway.sftp_fs import (
    _to_sftp_code as _to_sftp_code,  # re-exported for the tests
)
from gateway.sftp_protocol import MAX_PACKET_BYTES, SFTPProtocol

if TYPE_CHECKING:
    from gateway.server import Connection, DropServer

MAX_PASSWORD_FAILURES = 6
"""Failed password steps after which a connection is closed (gateway.server's reaper does it)."""

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

SERVER_VERSION = "SSH-2.0-lgwan-gateway"
"""Our identification string (no library version disclosed)."""

MAX_CHANNELS_PER_CONNECTION = 8
"""Session channels a connection may open in its lifetime."""
MAX_SFTP_SESSIONS_PER_CONNECTION = 2
"""SFTP subsystems running at once on one connection."""
HANDSHAKE_SLACK_SECONDS = 5.0
"""paramiko's own banner/handshake timeouts are the login grace plus this."""

_QUIET_GLOBAL_REQUESTS = frozenset({"keepalive@openssh.com", "no-more-sessions@openssh.com"})

logging.getLogger("paramiko").addHandler(logging.NullHandler())

PullHook = Callable[[str, str, str], None]
"""``on_pulled(batch_id, tenant, user)``: a contractor confirmed a pull (see the module docstring).

Called before the outbox copy is deleted; it must be idempotent (a confirmation
may be repeated after a lost answer). Raising :class:`~gateway.policy.PolicyError`
refuses the confirmation (permission denied); any other exception fails it (the
contractor retries later). Either way the outbox files stay.
"""


def server_host_key(key: Ed25519PrivateKey) -> paramiko.PKey:
    """The host key as paramiko needs it."""
    pem = keys.private_key_to_openssh(key).decode("ascii")
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem))


def _fingerprint(key: paramiko.PKey) -> str:
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _AuthHandler(AuthHandler):  # type: ignore[misc]  # paramiko is untyped
    """paramiko's server-side login handler; a change of user name is audited before the cut.

    paramiko disconnects a client that names another user in mid-login without
    asking the server interface: the attempt is recorded here (``login_failed``,
    reason ``user_changed``) so that the audit log holds every attempt.
    """

    def _parse_userauth_request(self, m: Any) -> None:
        if self.auth_username is not None and not self.transport.is_authenticated():
            try:
                username = m.get_text()
            except UnicodeDecodeError:
                username = None
            m.rewind()
            interface = self.transport.server_object
            if username != self.auth_username and isinstance(interface, _Interface):
                interface.user_changed(username)
        super()._parse_userauth_request(m)


class _Transport(paramiko.Transport):  # type: ignore[misc]  # paramiko is untyped
    """A server Transport that remembers which key exchange was agreed (for the audit)."""

    negotiated_kex: str | None = None

    def _parse_kex_init(self, m: Any) -> None:
        super()._parse_kex_init(m)
        engine = type(self.kex_engine)
        self.negotiated_kex = next((n for n, c in self._kex_info.items() if c is engine), None)

    def _parse_newkeys(self, m: Any) -> None:
        if self.server_mode and getattr(self, "auth_handler", None) is None:
            self.auth_handler = _AuthHandler(self)
        super()._parse_newkeys(m)


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
    sftp_buffers.install()  # before the transport can open a channel
    transport = _Transport(sftp_buffers.ReadAheadSocket(sock))
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

    def user_changed(self, username: str | None) -> None:
        """The client named another user in mid-login: paramiko cuts it; audit the attempt."""
        with contextlib.suppress(Exception):  # the log reports its own breakage on the next emit
            self._audit("login_failed", user=username, method="any", reason="user_changed")
        with self.conn.lock:
            self.conn.password_failures += 1

    def check_auth_password(self, username: str, password: str) -> int:
        try:
            self._prologue()
            with self._busy():
                return self._password_step(username, password)
        except Exception as exc:
            self._fail_closed(exc, "login_failed", user=username, method="password")
            return AUTH_FAILED

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """A login step is running (the connection is not idle: see DropServer._idle_victim)."""
        with self.conn.lock:
            self.conn.busy += 1
        try:
            yield
        finally:
            with self.conn.lock:
                self.conn.busy -= 1

    def _password_refused(self, username: str, reason: str) -> int:
        self._audit("login_failed", user=username, method="password", reason=reason)
        with self.conn.lock:
            self.conn.password_failures += 1
        return AUTH_FAILED

    def _password_step(self, username: str, password: str) -> int:
        conn = self.conn
        if conn.password_failures >= MAX_PASSWORD_FAILURES:
            return self._password_refused(username, "too_many_attempts")  # closing: no hash
        if not isinstance(password, str):
            return self._password_refused(username, "not_utf8")
        gate = self.server.login_gate
        if not gate.enter(conn.ip, lambda: conn.close_reason is not None):
            return self._password_refused(username, "connection_closing")
        try:
            decision = self.gateway.accounts.check_password(username, password, conn.ip)
        finally:
            gate.leave()
        if not decision.ok:
            gate.failed(conn.ip)
            self._password_refused(username, decision.reason)
            if decision.reason == "bad_password" and decision.locked_until is not None:
                self._audit("account_locked_out", user=username, until=decision.locked_until)
            return AUTH_FAILED
        account = self.gateway.accounts.get(username)
        if account is None or account.role not in policy.ROLES:
            return self._password_refused(username, "unknown_user")
        with conn.lock:
            conn.password_user = username
            conn.account = account
        self._audit("password_accepted", user=username, method="password")
        return AUTH_PARTIALLY_SUCCESSFUL

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        # Runs before paramiko verifies the signature: decide, never record a login.
        try:
            self._prologue()
            with self._busy():
                return self._key_step(username, key)
        except Exception as exc:
            self._fail_closed(exc, "login_failed", user=username, method="publickey")
            return AUTH_FAILED

    def _key_step(self, username: str, key: paramiko.PKey) -> int:
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
            handler = SFTPProtocol(channel, name, self, sftp_si=_SFTP)
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


__all__ = [
    "CIPHERS",
    "HOST_KEY_TYPES",
    "KEX",
    "MACS",
    "MAX_OPEN_HANDLES",
    "MAX_PACKET_BYTES",
    "MAX_READ_BYTES",
    "SFTP_FAILURE",
    "SFTP_NO_SUCH_FILE",
    "SFTP_OK",
    "SFTP_OP_UNSUPPORTED",
    "SFTP_PERMISSION_DENIED",
    "PullHook",
    "negotiation_failure",
    "note_negotiated",
    "server_host_key",
    "start_transport",
]
