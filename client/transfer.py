"""SFTP to the gateway — the only place the ward side uses paramiko.

:func:`connect` opens one SSH connection with the gateway's host key **pinned**
(an unknown or changed key is refused before any secret is sent; never trust
on first use), the same restricted algorithms the gateway offers, and the
gateway's two-step login: the password first, then the ward's Ed25519 key.
:class:`Session` offers the few SFTP operations ``send`` needs.

Failures are mapped here, once, to two kinds: :class:`TemporaryError` (exit
75) when the gateway cannot be reached, stops answering or the connection
drops — safe to run the command again — and :class:`ClientError` (exit 1) when
the gateway answered and refused.
"""

import base64
import errno
import hashlib
import io
import logging
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.errors import ClientError, TemporaryError
from client.i18n import _
from custody.keys import FINGERPRINT_PREFIX, fingerprint, private_key_to_openssh
from custody.keys import ssh_public_key_blob as _blob

KEX_ALGORITHMS = ("mlkem768x25519-sha256", "curve25519-sha256@libssh.org")
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
"""The client's algorithm lists: the gateway's set (contract), nothing weaker."""

AUTH_TIMEOUT_MIN_SECONDS = 30.0
"""The gateway verifies passwords with argon2id and delays failures: allow time."""
WINDOW_BYTES = 8 << 20
MAX_PACKET_BYTES = 32768
GATEWAY_TEMPORARY = "try again later"
"""How the gateway's SFTP failure messages mark a condition that clears by itself (a full disk)."""


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway is and how to recognise it (nothing secret)."""

    host: str
    port: int
    user: str
    host_key: Ed25519PublicKey
    timeout: float

    @property
    def address(self) -> str:
        """``host:port`` for messages."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def connect(endpoint: Endpoint, password: str, key: Ed25519PrivateKey) -> "Session":
    """Connect, check the pinned host key, log in with password then key, open SFTP.

    Raises:
        TemporaryError: unreachable, timed out, or the connection dropped.
        ClientError: a changed or unknown host key (the fingerprint seen is in
            the message), no common algorithm, login refused, SFTP refused.
    """
    logging.getLogger("paramiko").addHandler(logging.NullHandler())
    logging.getLogger("paramiko").propagate = False
    where = endpoint.address
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=endpoint.timeout)
    except OSError as exc:
        raise TemporaryError(
            _("cannot reach the gateway at {where}: {reason}").format(
                where=where, reason=_reason(exc)
            ),
            hint=_("check the line to the gateway; the command is safe to run again"),
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_BYTES, default_max_packet_size=MAX_PACKET_BYTES
    )
    try:
        _restrict(transport, endpoint.timeout)
        session = Session(endpoint, transport)
        with session.mapped(_("connection")):
            transport.start_client(timeout=endpoint.timeout)
        if not transport.is_active() or not getattr(transport, "initial_kex_done", False):
            raise TemporaryError(
                _(
                    "the gateway at {where} did not complete the SSH handshake within {seconds} s"
                ).format(where=where, seconds=f"{endpoint.timeout:g}"),
                hint=_("check the line to the gateway; the command is safe to run again"),
            )
        session.check_host_key()
        session.login(password, key)
        session.open_sftp()
    except BaseException:
        transport.close()
        raise
    return session


class Session:
    """One logged-in SFTP session to the gateway. Close it (or use ``with``)."""

    def __init__(self, endpoint: Endpoint, transport: paramiko.Transport) -> None:
        """Use :func:`connect`."""
        self._endpoint = endpoint
        self._transport = transport
        self._sftp: Any = None

    @property
    def host_key_fingerprint(self) -> str:
        """The ``SHA256:`` fingerprint of the (pinned, verified) host key."""
        return fingerprint(self._endpoint.host_key)

    def check_host_key(self) -> None:
        """Refuse any host key but the pinned one.

        Raises:
            ClientError: the key differs, naming the fingerprint seen.
        """
        remote = self._transport.get_remote_server_key()
        blob: bytes = remote.asbytes()
        if remote.get_name() == HOST_KEY_TYPES[0] and blob == _blob(self._endpoint.host_key):
            return
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
        seen = FINGERPRINT_PREFIX + digest
        raise ClientError(
            _(
                "the gateway at {where} presented host key {seen} ({type}), but {pinned} is "
                "pinned; refusing to connect"
            ).format(
                where=self._endpoint.address,
                seen=seen,
                type=remote.get_name(),
                pinned=self.host_key_fingerprint,
            ),
            hint=_(
                "if the contractor replaced the gateway's key, get the new key in writing "
                "(credential notice or client config) and update gateway.host_key; otherwise "
                "someone may be between you and the gateway — tell the contractor"
            ),
        )

    def login(self, password: str, key: Ed25519PrivateKey) -> None:
        """Two-step login: the password, then the key.

        Raises:
            ClientError: either step refused.
            TemporaryError: the connection dropped.
        """
        user, transport = self._endpoint.user, self._transport
        with self.mapped(_("login")):
            try:
                remaining = transport.auth_password(user, password, fallback=False)
            except paramiko.BadAuthenticationType as exc:
                raise ClientError(
                    _(
                        "the gateway does not accept a password for {user} (it offers: {types})"
                    ).format(user=repr(user), types=", ".join(exc.allowed_types) or _("nothing"))
                ) from None
            except paramiko.AuthenticationException:
                if not transport.is_active():  # the gateway went away: mapped() says 75
                    raise EOFError("the connection closed during login") from None
                raise ClientError(
                    _(
                        "login refused for {user}: wrong password, or the account is locked "
                        "or not allowed from this address"
                    ).format(user=repr(user)),
                    hint=_(
                        "repeated failures lock the account; check the credential notice "
                        "or ask the contractor"
                    ),
                ) from None
            if remaining and "publickey" in remaining:
                pkey = paramiko.Ed25519Key(
                    file_obj=io.StringIO(private_key_to_openssh(key).decode("ascii"))
                )
                try:
                    transport.auth_publickey(user, pkey)
                except paramiko.AuthenticationException:
                    if not transport.is_active():
                        raise EOFError("the connection closed during login") from None
                    raise ClientError(
                        _(
                            "login refused for {user}: the gateway does not accept the key {key}"
                        ).format(user=repr(user), key=fingerprint(key.public_key())),
                        hint=_(
                            "use the key whose public half the contractor registered "
                            "(identity.private_key or --key)"
                        ),
                    ) from None
        if not transport.is_authenticated():
            raise ClientError(
                _("login for {user} was not completed by the gateway").format(user=repr(user))
            )

    def open_sftp(self) -> None:
        """Open the SFTP subsystem.

        Raises:
            ClientError: refused; TemporaryError: the connection dropped.
        """
        with self.mapped(_("opening SFTP")):
            self._sftp = paramiko.SFTPClient.from_transport(self._transport)
            if self._sftp is None:
                raise ClientError(_("the gateway refused the SFTP session"))
            self._sftp.get_channel().settimeout(self._endpoint.timeout)

    def size(self, path: str) -> int | None:
        """The size of a remote file, or None when it does not exist."""
        with self.mapped(_("stat {path}").format(path=path)):
            try:
                return int(self._sftp.stat(path).st_size)
            except FileNotFoundError:
                return None

    def read(self, path: str, max_bytes: int) -> bytes | None:
        """Read a small remote file whole; None when it does not exist.

        Raises:
            ClientError: refused, or longer than ``max_bytes``.
        """
        with self.mapped(_("reading {path}").format(path=path)):
            try:
                handle = self._sftp.open(path, "r")
            except FileNotFoundError:
                return None
            with handle:
                data: bytes = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ClientError(
                _("{path} on the gateway is larger than {max} bytes").format(
                    path=path, max=max_bytes
                )
            )
        return data

    def upload(
        self,
        path: str,
        blocks: Iterable[bytes],
        *,
        offset: int,
        sent: Callable[[int], None] | None = None,
    ) -> None:
        """Write ``blocks`` to ``path`` from ``offset`` (0 creates it), pipelined.

        Raises:
            ClientError: refused (permission, quota, disk full) or the remote
                file is not ``offset`` bytes long when resuming.
            TemporaryError: the connection dropped.
        """
        with self.mapped(_("upload to {path}").format(path=path)):
            handle = self._sftp.open(path, "a" if offset else "w")
            try:
                if handle.tell() != offset:
                    raise ClientError(
                        _("{path} on the gateway is {size} bytes, expected {offset}").format(
                            path=path, size=handle.tell(), offset=offset
                        ),
                        hint=_("another upload of this batch may be running; run send again"),
                    )
                _write_checked(handle, blocks, sent)
            except BaseException:
                with suppress(Exception):
                    handle.close()
                raise
            handle.close()

    def rename(self, source: str, target: str, *, timeout: float) -> None:
        """Rename on the gateway, waiting up to ``timeout`` (it hashes the file first)."""
        channel = self._sftp.get_channel()
        with self.mapped(_("rename {path}").format(path=source)):
            channel.settimeout(timeout)
            try:
                self._sftp.rename(source, target)
            finally:
                channel.settimeout(self._endpoint.timeout)

    def remove(self, path: str) -> None:
        """Remove a remote file."""
        with self.mapped(_("remove {path}").format(path=path)):
            self._sftp.remove(path)

    @contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        """Map paramiko and socket failures during ``what`` to our two kinds."""
        try:
            yield
        except ClientError:
            raise
        except paramiko.IncompatiblePeer as exc:
            raise ClientError(
                _(
                    "{what}: no SSH algorithm in common with the gateway at {where} ({reason})"
                ).format(what=what, where=self._endpoint.address, reason=exc),
                hint=_(
                    "the gateway must offer curve25519/ML-KEM, AES-GCM/CTR and an ssh-ed25519 key"
                ),
            ) from None
        except (EOFError, TimeoutError, paramiko.SSHException, OSError) as exc:
            if isinstance(exc, EOFError | TimeoutError | ConnectionError) or (
                not self._transport.is_active()
            ):
                raise TemporaryError(
                    _(
                        "{what}: the connection to the gateway at {where} was lost ({reason})"
                    ).format(what=what, where=self._endpoint.address, reason=_reason(exc)),
                    hint=_("the command is safe to run again; an interrupted upload resumes"),
                ) from None
            if GATEWAY_TEMPORARY in str(exc):  # its disk is full: not a refusal (exit 75)
                raise TemporaryError(
                    _("{what}: the gateway cannot take it now: {reason}").format(
                        what=what, reason=_reason(exc)
                    ),
                    hint=_("the command is safe to run again; an interrupted upload resumes"),
                ) from None
            raise ClientError(
                _("{what}: the gateway refused: {reason}").format(what=what, reason=_reason(exc))
            ) from None

    def close(self) -> None:
        """Close SFTP and the connection (a connection already lost closes quietly)."""
        try:
            if self._sftp is not None:
                self._sftp.close()
        except (EOFError, paramiko.SSHException, OSError):
            pass
        finally:
            self._transport.close()

    def __enter__(self) -> Self:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close."""
        self.close()

    def __repr__(self) -> str:
        """Name the endpoint only."""
        return f"Session({self._endpoint.user}@{self._endpoint.address})"


def _write_checked(
    handle: Any, blocks: Iterable[bytes], sent: Callable[[int], None] | None
) -> None:
    """Write pipelined, then read the status of every write before returning.

    paramiko does not wait for the answers to pipelined writes when a file is
    closed, so a write the gateway refused (quota, size limit, full disk) would
    go unnoticed. The last request is therefore written unpipelined: paramiko
    then reads every outstanding answer first and raises on the first refusal.
    """
    handle.set_pipelined(True)
    pending = b""
    for block in blocks:
        if pending:
            handle.write(pending)
            if sent is not None:
                sent(len(pending))
        pending = block
    if not pending:
        return
    split = max(0, len(pending) - MAX_PACKET_BYTES)
    if split:
        handle.write(pending[:split])
    handle.set_pipelined(False)
    handle.write(pending[split:])
    if sent is not None:
        sent(len(pending))


def _restrict(transport: paramiko.Transport, timeout: float) -> None:
    """Offer only the contract's algorithms; set the handshake timeouts."""
    options = transport.get_security_options()
    options.kex = tuple(name for name in KEX_ALGORITHMS if name in options.kex)
    options.ciphers = CIPHERS
    options.digests = MACS
    options.key_types = HOST_KEY_TYPES
    options.compression = ("none",)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = max(timeout, AUTH_TIMEOUT_MIN_SECONDS)


def _reason(exc: BaseException) -> str:
    """A short, secret-free description of a transport or SFTP failure."""
    if isinstance(exc, socket.gaierror):
        return _("name not resolved ({reason})").format(reason=exc.strerror)
    if isinstance(exc, TimeoutError):
        return _("timed out")
    if isinstance(exc, EOFError):
        return _("closed by the gateway")
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return _("permission denied")
    if isinstance(exc, FileNotFoundError):
        return _("no such file")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
