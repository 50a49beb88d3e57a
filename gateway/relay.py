"""SFTP from this gateway to another one: the ``sftp://`` destination and the pull client.

The gateway's only client-side paramiko (paramiko is imported only by
gateway/sftp_server.py and gateway/sftp_fs.py (server side), gateway/relay.py
(client side); and ``client/transfer.py`` on the ward side). :func:`connect`
opens one SSH connection with the peer's host key **pinned** (an unknown or
changed key is refused before anything is sent; the fingerprint seen is in the
error), the server's own restricted algorithm lists, TCP_NODELAY, and logs in
with a key alone (a ``forwarder`` account) or with a password and then the key
(a ``contractor``). :class:`Link` offers the few SFTP operations the
destination and ``pull`` need.

:class:`SftpDestination` (in :mod:`gateway.relay_destination`, re-exported
here) delivers a batch to a print site that runs
``lgwan-gateway serve`` with a ``forwarder`` account for us (issue 4, §4):

1. the print site's ``/receipts/<batch>.receipt.json`` already there, signed by
   the pinned receipt key: same size and SHA-256 → delivered (``already``);
   different → ``conflict`` (never an overwrite);
2. upload ``/inbox/<batch>.age.part``, resuming from its remote size (only our
   forwarder account writes there, and a batch never changes, so the prefix is
   ours), pipelined; the whole local file is hashed on the way and must match
   the batch record before the rename;
3. rename to ``<batch>.age`` (the print site hashes it and signs a receipt);
4. fetch and verify the receipt: its size and SHA-256 must be the batch's.

Every failure is a :class:`~gateway.destinations.DeliveryError`: network
trouble, timeouts and a print site that is busy or full are retryable; a changed
host key, a refused login, an invalid receipt and a conflict are not.

The destination keeps its connection open between deliveries (one login, one
of the forwarder account's ``max_sessions_per_account``, no handshake per
batch); a connection found dead is replaced once, transparently.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import socket
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from paramiko.sftp import CMD_DATA, CMD_READ, CMD_STATUS, int64

from custody import KIND_RECEIPT, keys, loads_record, verify_record
from custody.errors import CustodyError, KeyFormatError
from gateway.config import GatewayConfig, load_private_key
from gateway.errors import ConfigError, GatewayError
from gateway.sftp_server import CIPHERS, HOST_KEY_TYPES, KEX, MACS

if TYPE_CHECKING:
    from gateway.relay_destination import SftpDestination as SftpDestination

WINDOW_BYTES = 8 << 20
MAX_PACKET_BYTES = 32768
BLOCK_BYTES = 1 << 20
"""Size of each pipelined write (paramiko splits it into 32 KiB SFTP requests)."""
READS_IN_FLIGHT = 64
"""Read requests a download keeps outstanding (a sliding window of 64 × 32 KiB).

Not paramiko's ``prefetch``/``readv``: when their request thread falls behind
the reader (a busy machine), the in-flight set runs empty, which they take for
the end of the prefetch, and the rest is read again synchronously — every byte
twice, one round trip per 32 KiB.
"""
MAX_RECEIPT_BYTES = 64 * 1024
AUTH_TIMEOUT_MIN_SECONDS = 30.0
"""The peer verifies passwords with argon2id and delays failures: allow time."""
HASH_BYTES_PER_SECOND = 32 << 20
"""Slowest hashing rate assumed of the peer when it completes an upload (rename timeout)."""
INBOX, RECEIPTS = "/inbox", "/receipts"
AGE, PART, RECEIPT = ".age", ".age.part", ".receipt.json"

logging.getLogger("paramiko").addHandler(logging.NullHandler())


class LinkError(GatewayError):
    """The peer could not be reached, or it refused (exit 75 when retryable, else 1).

    Attributes:
        reason: snake_case cause (``unreachable``, ``host_key_changed``, ``login_refused``, …).
        retryable: True when running again later may succeed.
    """

    def __init__(self, message: str, *, reason: str, retryable: bool, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason
        self.retryable = retryable
        self.exit_code = 75 if retryable else 1


@dataclass(frozen=True)
class Peer:
    """Where the other gateway is and how to recognise it (nothing secret)."""

    host: str
    port: int
    user: str
    host_key: Ed25519PublicKey
    timeout: float

    @property
    def address(self) -> str:
        """``host:port`` for messages."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def connect(
    peer: Peer,
    key: Ed25519PrivateKey,
    password: str | None = None,
    *,
    opened: Callable[[socket.socket], None] | None = None,
) -> Link:
    """Connect, check the pinned host key, log in (``password`` first when given), open SFTP.

    ``opened`` is handed the TCP socket as soon as it is connected, so another
    thread can cut the connection (``shutdown``) while the handshake or the
    login waits for a peer that does not answer (the forwarder's stop).

    Raises:
        LinkError: unreachable or dropped (retryable); a changed host key, no
            common algorithm, login or SFTP refused (not retryable).
    """
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.timeout)
    except OSError as exc:
        raise LinkError(
            f"cannot reach {peer.address}: {_describe(exc)}", reason="unreachable", retryable=True
        ) from None
    if opened is not None:
        opened(sock)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(
        sock, default_window_size=WINDOW_BYTES, default_max_packet_size=MAX_PACKET_BYTES
    )
    link = Link(peer, transport)
    try:
        _restrict(transport, peer.timeout)
        with link.mapped("connecting"):
            transport.start_client(timeout=peer.timeout)
        if not transport.is_active() or not getattr(transport, "initial_kex_done", False):
            raise LinkError(
                f"{peer.address} did not complete the SSH handshake", reason="handshake",
                retryable=True,
            )  # fmt: skip
        link.check_host_key()
        link.login(key, password)
        link.open_sftp()
    except BaseException:
        transport.close()
        raise
    return link


class Link:
    """One logged-in SFTP session to the other gateway. Close it (or use ``with``)."""

    def __init__(self, peer: Peer, transport: paramiko.Transport) -> None:
        """Use :func:`connect`."""
        self.peer = peer
        self._transport = transport
        self._sftp: Any = None

    @property
    def active(self) -> bool:
        """Whether the connection is still up."""
        return bool(self._transport.is_active())

    def check_host_key(self) -> None:
        """Refuse any host key but the pinned one (the fingerprint seen goes in the error)."""
        remote = self._transport.get_remote_server_key()
        blob: bytes = remote.asbytes()
        if remote.get_name() == HOST_KEY_TYPES[0] and blob == keys.ssh_public_key_blob(
            self.peer.host_key
        ):
            return
        seen = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        raise LinkError(
            f"{self.peer.address} presented host key {seen} ({remote.get_name()}), but "
            f"{keys.fingerprint(self.peer.host_key)} is pinned; refusing to connect",
            reason="host_key_changed",
            retryable=False,
            hint="if the other side replaced its host key, get the new one in writing and "
            "update the pinned host_key; otherwise someone may be in between",
        )

    def login(self, key: Ed25519PrivateKey, password: str | None) -> None:
        """Log in with the key alone, or with ``password`` then the key."""
        user, transport = self.peer.user, self._transport
        pem = keys.private_key_to_openssh(key).decode("ascii")
        pkey = paramiko.Ed25519Key(file_obj=io.StringIO(pem))
        refused = LinkError(
            f"{self.peer.address} refused the login of {user!r} "
            f"(key {keys.fingerprint(key.public_key())})",
            reason="login_refused",
            retryable=False,
            hint="check the account, its allow list and that its key is the one registered",
        )
        with self.mapped("login"):
            try:
                if password is not None:
                    transport.auth_password(user, password, fallback=False)
                transport.auth_publickey(user, pkey)
            except paramiko.AuthenticationException:
                raise refused from None
        if not transport.is_authenticated():
            raise refused

    def open_sftp(self) -> None:
        """Open the SFTP subsystem."""
        with self.mapped("opening SFTP"):
            self._sftp = paramiko.SFTPClient.from_transport(self._transport)
            if self._sftp is None:
                raise LinkError("SFTP refused", reason="sftp_refused", retryable=False)
            self._sftp.get_channel().settimeout(self.peer.timeout)

    def size(self, path: str) -> int | None:
        """The size of a remote file, or None when it does not exist."""
        with self.mapped(f"stat {path}"):
            try:
                return int(self._sftp.stat(path).st_size)
            except FileNotFoundError:
                return None

    def listdir(self, path: str) -> dict[str, int]:
        """Names and sizes of the files in a remote directory."""
        with self.mapped(f"list {path}"):
            return {a.filename: int(a.st_size or 0) for a in self._sftp.listdir_attr(path)}

    def read_small(self, path: str, max_bytes: int = MAX_RECEIPT_BYTES) -> bytes | None:
        """A small remote file whole; None when it does not exist."""
        with self.mapped(f"reading {path}"):
            try:
                handle = self._sftp.open(path, "r")
            except FileNotFoundError:
                return None
            with handle:
                data: bytes = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise LinkError(f"{path} is too large", reason="receipt_invalid", retryable=False)
        return data

    def upload(self, path: str, blocks: Iterator[bytes], *, offset: int) -> None:
        """Write ``blocks`` to ``path`` from ``offset`` (0 creates or empties it), pipelined."""
        with self.mapped(f"upload to {path}"):
            handle = self._sftp.open(path, "a" if offset else "w")
            try:
                if handle.tell() != offset:
                    raise LinkError(
                        f"{path} is {handle.tell()} bytes, expected {offset}",
                        reason="resume_mismatch",
                        retryable=True,
                    )
                _write_checked(handle, blocks)
            except BaseException:
                with suppress(Exception):
                    handle.close()
                raise
            handle.close()

    def download(self, path: str, sink: Callable[[bytes], None], *, offset: int, size: int) -> None:
        """Read ``path`` from ``offset`` to ``size``, prefetched, handing each block to ``sink``."""
        with self.mapped(f"download of {path}"), self._sftp.open(path, "r") as handle:
            _pipelined_read(self._sftp, handle, path, sink, offset=offset, size=size)

    def rename(self, source: str, target: str, *, timeout: float) -> None:
        """Rename on the peer, waiting up to ``timeout`` (it hashes the file first)."""
        channel = self._sftp.get_channel()
        with self.mapped(f"rename of {source}"):
            channel.settimeout(timeout)
            try:
                self._sftp.rename(source, target)
            finally:
                channel.settimeout(self.peer.timeout)

    def remove(self, path: str) -> None:
        """Remove a remote file."""
        with self.mapped(f"remove of {path}"):
            self._sftp.remove(path)

    @contextmanager
    def mapped(self, what: str) -> Iterator[None]:
        """Map paramiko and socket failures during ``what`` to :class:`LinkError`."""
        try:
            yield
        except LinkError:
            raise
        except paramiko.IncompatiblePeer as exc:
            raise LinkError(
                f"{what}: no SSH algorithm in common with {self.peer.address} ({exc})",
                reason="incompatible",
                retryable=False,
            ) from None
        except (EOFError, TimeoutError, paramiko.SSHException, paramiko.SFTPError, OSError) as exc:
            lost = isinstance(exc, EOFError | TimeoutError | ConnectionError)
            if lost or not self._transport.is_active():
                raise LinkError(
                    f"{what}: the connection to {self.peer.address} was lost ({_describe(exc)})",
                    reason="connection_lost",
                    retryable=True,
                ) from None
            raise LinkError(
                f"{what}: {self.peer.address} refused: {_describe(exc)}",
                reason="refused",
                retryable=True,  # a full disk or quota at the peer clears up
            ) from None

    def close(self) -> None:
        """Close SFTP and the connection (quietly when already lost)."""
        try:
            if self._sftp is not None:
                self._sftp.close()
        except (EOFError, paramiko.SSHException, OSError):
            pass
        finally:
            self._transport.close()

    def __enter__(self) -> Link:
        """Return self."""
        return self

    def __exit__(self, *_exc: object) -> None:
        """Close."""
        self.close()

    def __repr__(self) -> str:
        """Name the peer only."""
        return f"Link({self.peer.user}@{self.peer.address})"


# -- helpers -------------------------------------------------------------------------------------


def check_receipt(data: bytes, receipt_key: Ed25519PublicKey, batch_id: str) -> dict[str, object]:
    """Verify a receipt signed by ``receipt_key`` for ``batch_id``; return its body.

    Raises:
        LinkError: not a valid receipt of that key for that batch (``receipt_invalid``).
    """
    try:
        body = verify_record(loads_record(data), receipt_key, kind=KIND_RECEIPT)
    except CustodyError as exc:
        raise LinkError(
            f"the receipt for {batch_id} is not valid: {exc}",
            reason="receipt_invalid",
            retryable=False,
            hint="check the pinned receipt_key; otherwise the receipt was tampered with",
        ) from None
    size, sha256 = body.get("size"), body.get("sha256")
    if (
        body.get("batch_id") != batch_id
        or not isinstance(size, int)
        or isinstance(size, bool)
        or not isinstance(sha256, str)
    ):
        raise LinkError(
            f"the receipt for {batch_id} does not describe that batch",
            reason="receipt_invalid",
            retryable=False,
        )
    return body


def load_pinned_key(text: str, file: str, name: str) -> Ed25519PublicKey:
    """A pinned ``ssh-ed25519 AAAA…`` line from the configuration.

    Raises:
        ConfigError: empty or not one ssh-ed25519 line.
    """
    if not text.strip():
        raise ConfigError(file, name, 'is not set (give the "ssh-ed25519 AAAA…" line)')
    try:
        return keys.load_public_key(text)
    except KeyFormatError as exc:
        raise ConfigError(file, name, str(exc)) from None


def load_private_key_file(config: GatewayConfig, value: str, name: str) -> Ed25519PrivateKey:
    """A configured Ed25519 private key, refused when group or others may read it.

    Raises:
        ConfigError: missing, unreadable, mode not 0600-like, or not Ed25519.
    """
    return load_private_key(config, name, value)


def _write_checked(handle: Any, blocks: Iterator[bytes]) -> None:
    """Write pipelined, then read the status of every write before returning.

    paramiko does not wait for the answers to pipelined writes when a file is
    closed, so a refused write (quota, size limit, full disk) would go unnoticed.
    The last request is therefore written unpipelined: paramiko then reads every
    outstanding answer first and raises on the first refusal.
    """
    handle.set_pipelined(True)
    pending = b""
    for block in blocks:
        if pending:
            handle.write(pending)
        pending = block
    if not pending:
        return
    split = max(0, len(pending) - MAX_PACKET_BYTES)
    if split:
        handle.write(pending[:split])
    handle.set_pipelined(False)
    handle.write(pending[split:])
    handle.flush()


class _Replies:
    """Collects the answers to pipelined read requests (paramiko's async-response protocol)."""

    def __init__(self) -> None:
        self.answers: dict[int, tuple[int, Any]] = {}

    def _async_response(self, t: int, msg: Any, num: int) -> None:
        self.answers[num] = (t, msg)


def _pipelined_read(
    sftp: Any, handle: Any, path: str, sink: Callable[[bytes], None], *, offset: int, size: int
) -> None:
    """Read ``[offset, size)`` of an open remote file with READS_IN_FLIGHT requests outstanding.

    Uses paramiko's request/response internals (as its own ``SFTPFile`` does):
    requests go out in order, answers are matched by request number (a server
    may answer out of order), each block goes to ``sink`` in file order.
    """
    replies = _Replies()
    pending: deque[tuple[int, int, int]] = deque()
    ahead = offset
    while pending or ahead < size:
        while ahead < size and len(pending) < READS_IN_FLIGHT:
            length = min(MAX_PACKET_BYTES, size - ahead)
            num = sftp._async_request(replies, CMD_READ, handle.handle, int64(ahead), length)
            pending.append((num, ahead, length))
            ahead += length
        num, at, length = pending.popleft()
        while num not in replies.answers:
            sftp._read_response()
        kind, msg = replies.answers.pop(num)
        data = b""
        if kind == CMD_DATA:
            data = msg.get_string()
        elif kind == CMD_STATUS:
            with suppress(EOFError):  # the file ended early: a short read, below
                sftp._convert_status(msg)  # raises for a refusal or failure
        if len(data) != length:
            raise LinkError(
                f"{path} ended at {at + len(data)} bytes, expected {size}",
                reason="short_read",
                retryable=True,
            )
        sink(data)


def _restrict(transport: paramiko.Transport, timeout: float) -> None:
    """Offer only the server's own algorithm lists; set the handshake timeouts."""
    options = transport.get_security_options()
    options.kex = tuple(name for name in KEX if name in options.kex)
    options.ciphers = CIPHERS
    options.digests = MACS
    options.key_types = HOST_KEY_TYPES
    options.compression = ("none",)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = max(timeout, AUTH_TIMEOUT_MIN_SECONDS)


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a transport or SFTP failure."""
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "closed by the peer"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def __getattr__(name: str) -> Any:
    """Re-export :class:`gateway.relay_destination.SftpDestination` (imported lazily:
    that module imports this one)."""
    if name == "SftpDestination":
        from gateway.relay_destination import SftpDestination

        return SftpDestination
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
