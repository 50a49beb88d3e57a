"""The ``sftp://`` destination: deliver a batch to a print site's ``lgwan-gateway serve``.

Split out of :mod:`gateway.relay` (which re-exports :class:`SftpDestination`); the
protocol is described in that module's docstring. paramiko is not imported here:
the SSH/SFTP client side is :class:`gateway.relay.Link`.

The forwarder's stop calls :meth:`SftpDestination.interrupt`: a print site that
accepts the connection but never answers (or stops answering mid-delivery)
would otherwise hold ``serve``'s SIGTERM for up to ``connect_timeout_seconds``;
the connection in use is cut at once and the delivery fails ``interrupted``
(retryable: it is delivered again at the next start).

The same kept connection reads back the print site's erasure certificates,
``/receipts/<batch>.erasure.json`` (the forwarder account may read them there):
:meth:`SftpDestination.fetch_certificates`, one login for all of a pass's batches.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from typing import Any, BinaryIO, TypeVar

from gateway.certificates import MAX_CERTIFICATE_BYTES, certificate_file_name
from gateway.config import GatewayConfig
from gateway.destinations import Delivery, DeliveryError, SourceChangedError
from gateway.errors import ConfigError
from gateway.relay import (
    AGE,
    BLOCK_BYTES,
    HASH_BYTES_PER_SECOND,
    INBOX,
    PART,
    RECEIPT,
    RECEIPTS,
    Link,
    LinkError,
    Peer,
    _describe,
    check_receipt,
    connect,
    load_pinned_key,
    load_private_key_file,
)
from gateway.routes import Route, TenantSection
from gateway.state import BatchRecord

T = TypeVar("T")

# -- the sftp:// destination --------------------------------------------------------------------


class SftpDestination:
    """Deliver batches to a print site's ``lgwan-gateway serve`` as its forwarder account."""

    one_at_a_time = True
    """One link, one batch at a time: the forwarder sends its batches in turn (their
    FORWARDING time is then the transfer, not a wait for the link)."""

    def __init__(self, route: Route, tenant: TenantSection, config: GatewayConfig) -> None:
        """Load the pinned keys and the forwarding key of a tenant's ``sftp://`` route.

        Raises:
            ConfigError: the path is not the print site's ``/inbox``, a pinned key
                is missing or malformed, or the forwarding key is missing, not
                Ed25519 or readable by others (exit 78).
        """
        file = str(config.source) if config.source else "(defaults)"
        name = next((n for n, t in config.tenants.items() if t is tenant), "?")
        prefix = f"tenants.{name}"
        if route.path.rstrip("/") not in ("", INBOX):
            raise ConfigError(
                file,
                f"{prefix}.forward",
                f"the print site's forwarder account uploads into {INBOX}",
            )
        self._route = route
        self._peer = Peer(
            host=route.host,
            port=route.port,
            user=route.user,
            host_key=load_pinned_key(tenant.host_key, file, f"{prefix}.host_key"),
            timeout=float(config.forwarder.connect_timeout_seconds),
        )
        self._receipt_key = load_pinned_key(tenant.receipt_key, file, f"{prefix}.receipt_key")
        self._key = load_private_key_file(config, tenant.forward_key, f"{prefix}.forward_key")
        self._inbox = INBOX
        self._lock = threading.Lock()
        self._link: Link | None = None
        self._cut_lock = threading.Lock()
        self._socket: socket.socket | None = None
        self._interrupted = False

    def __repr__(self) -> str:
        """The route only (nothing secret)."""
        return f"SftpDestination({self._route.describe()})"

    def deliver(self, batch: BatchRecord, source: Callable[[], BinaryIO]) -> Delivery:
        """Deliver ``batch`` (its bytes from ``source()``) exactly once; see the module docstring.

        Raises:
            DeliveryError: retryable (down, dropped, busy, full) or not (host key,
                login, receipt invalid, ``conflict``, ``source_changed``).
        """
        return self._over_link(lambda link: self._deliver(link, batch, source))

    def fetch_certificates(self, batch_ids: Sequence[str]) -> Mapping[str, bytes]:
        """The print site's ``/receipts/<batch>.erasure.json`` of each batch that has one.

        One connection (the kept one) and one listing of ``/receipts`` for all of
        them (so the print site's audit log is not filled with refused opens); nothing
        while a delivery holds the link (the poll must not wait a transfer out). A file larger than
        :data:`~gateway.certificates.MAX_CERTIFICATE_BYTES` comes back cut to one
        byte more than that, for the check to refuse.

        Raises:
            DeliveryError: the print site cannot be reached or refused (as :meth:`deliver`).
        """
        if not batch_ids or not self._lock.acquire(blocking=False):
            return {}  # nothing asked, or a delivery holds the link: the next poll asks
        self._lock.release()
        return self._over_link(lambda link: _fetch(link, batch_ids))

    def interrupt(self) -> None:
        """Cut the connection in use and refuse new work until :meth:`resume` (another thread).

        A delivery or certificate poll under way fails with the retryable
        ``interrupted``; so does every later one until :meth:`resume`.
        """
        with self._cut_lock:
            self._interrupted = True
            sock = self._socket
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def resume(self) -> None:
        """Take work again after :meth:`interrupt` (the forwarder started again)."""
        with self._cut_lock:
            self._interrupted = False

    def _opened(self, sock: socket.socket) -> None:
        """The socket of a new connection: remember it for :meth:`interrupt` (or cut it now)."""
        with self._cut_lock:
            self._socket = sock
            cut = self._interrupted
        if cut:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _check_interrupted(self) -> None:
        if self._interrupted:
            raise DeliveryError(True, "interrupted", "the gateway is stopping")

    def _over_link(self, work: Callable[[Link], T]) -> T:
        """Run ``work`` over the kept connection (opened, or replaced once when found dead)."""
        with self._lock:
            for attempt in range(2):
                self._check_interrupted()
                reused = self._link is not None and self._link.active
                try:
                    if not reused:
                        self._close_link()
                        self._link = connect(self._peer, self._key, opened=self._opened)
                    assert self._link is not None
                    return work(self._link)
                except LinkError as exc:
                    self._close_link()
                    self._check_interrupted()
                    if reused and attempt == 0 and exc.reason == "connection_lost":
                        continue  # the kept connection had died (idle timeout): a fresh one
                    raise DeliveryError(exc.retryable, exc.reason, str(exc)) from None
                except DeliveryError:
                    raise  # the connection is fine: keep it
                except BaseException:
                    self._close_link()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Close the kept connection (the next delivery opens a new one); idempotent."""
        with self._lock:
            self._close_link()

    def _close_link(self) -> None:
        with self._cut_lock:
            self._socket = None
        if self._link is not None:
            link, self._link = self._link, None
            link.close()

    def _deliver(self, link: Link, batch: BatchRecord, source: Callable[[], BinaryIO]) -> Delivery:
        present = self._receipted(link, batch)
        if present is not None:
            return present
        part = f"{self._inbox}/{batch.batch_id}{PART}"
        final = f"{self._inbox}/{batch.batch_id}{AGE}"
        remote = link.size(part)
        offset = remote if remote is not None and remote <= batch.size else 0
        digest = hashlib.sha256()
        with source() as stream:
            _hash_prefix(stream, offset, digest)
            try:
                link.upload(part, _blocks(stream, digest), offset=offset)
            except LinkError as exc:
                return self._after_failure(link, batch, exc)
        if digest.hexdigest() != batch.sha256:
            with suppress(LinkError):
                link.remove(part)
            raise SourceChangedError("the gateway's copy no longer has the receipted SHA-256")
        try:
            timeout = self._peer.timeout + batch.size / HASH_BYTES_PER_SECOND
            link.rename(part, final, timeout=timeout)
        except LinkError as exc:
            return self._after_failure(link, batch, exc)
        delivered = self._receipted(link, batch, already=False)
        if delivered is None:
            raise DeliveryError(True, "receipt_pending", "the print site has not signed a receipt")
        return delivered

    def _after_failure(self, link: Link, batch: BatchRecord, exc: LinkError) -> Delivery:
        """An upload or rename failed: perhaps because the print site has the batch already."""
        if link.active:
            present = self._receipted(link, batch, already=False)
            if present is not None:
                return present
        raise exc

    def _receipted(
        self, link: Link, batch: BatchRecord, *, already: bool = True
    ) -> Delivery | None:
        """The delivery the print site's signed receipt attests; None without a receipt.

        Raises:
            DeliveryError: the receipt is invalid, or attests a different file (``conflict``).
        """
        data = link.read_small(f"{RECEIPTS}/{batch.batch_id}{RECEIPT}")
        if data is None:
            return None
        body = check_receipt(data, self._receipt_key, batch.batch_id)
        if body["sha256"] != batch.sha256 or body["size"] != batch.size:
            raise DeliveryError(
                False,
                "conflict",
                f"the print site holds a different {batch.batch_id} "
                f"(SHA-256 {str(body['sha256'])[:16]}…); nothing was overwritten",
            )
        location = (
            f"sftp://{self._peer.user}@{self._peer.address}{self._inbox}/{batch.batch_id}{AGE}"
        )
        return Delivery(location=location, sha256=batch.sha256, already=already)


def _fetch(link: Link, batch_ids: Sequence[str]) -> dict[str, bytes]:
    """Read the certificates listed in the print site's /receipts (one listing, no blind opens)."""
    present = link.listdir(RECEIPTS)
    found: dict[str, bytes] = {}
    for batch_id in batch_ids:
        name = certificate_file_name(batch_id)
        if name not in present:
            continue
        path = f"{RECEIPTS}/{name}"
        try:
            data = link.read_small(path, MAX_CERTIFICATE_BYTES)
        except LinkError as exc:
            if exc.reason != "receipt_invalid":  # anything but "too large"
                raise
            chunks: list[bytes] = []
            link.download(path, chunks.append, offset=0, size=MAX_CERTIFICATE_BYTES + 1)
            data = b"".join(chunks)
        if data is not None:
            found[batch_id] = data
    return found


def _hash_prefix(stream: BinaryIO, length: int, digest: Any) -> None:
    """Hash the first ``length`` bytes of ``stream`` (already at the peer)."""
    left = length
    while left:
        data = stream.read(min(BLOCK_BYTES, left))
        if not data:
            raise SourceChangedError("the gateway's copy is shorter than the part already sent")
        digest.update(data)
        left -= len(data)


def _blocks(stream: BinaryIO, digest: Any) -> Iterator[bytes]:
    """The rest of ``stream`` in blocks, hashed on the way (a local read error is retryable)."""
    while True:
        try:
            data = stream.read(BLOCK_BYTES)
        except OSError as exc:
            raise LinkError(
                f"reading the gateway's copy failed: {_describe(exc)}",
                reason="source_unreadable",
                retryable=True,
            ) from None
        if not data:
            return
        digest.update(data)
        yield data
