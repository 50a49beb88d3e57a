"""Where a verified batch goes: the destinations of the ``[tenants.<name>]`` routes.

Every destination has one method, :meth:`Destination.deliver`, that is
*idempotent*: delivering a batch the destination already holds with the same
SHA-256 returns ``Delivery(already=True)`` and changes nothing, and a different
file under the batch's name is a conflict (``DeliveryError("conflict")``),
never an overwrite. So after a crash the forwarder simply delivers again:
exactly once at the destination.

- ``file:///path`` — :class:`FileDestination`: the print-site spool
  (:class:`gateway.spool.Spool`), atomic and verified there. The spool
  directory must exist (a mounted share: a missing directory means the share
  is not mounted, and the batch must not land on the local disk underneath).
- ``pull`` — :class:`PullDestination`: the envelope moves into the tenant's
  ``/outbox`` with a copy of its signed receipt; the contractor's
  ``lgwan-gateway pull`` fetches it and its confirmation marks it PULLED.
- ``sftp://…`` — ``gateway.relay.SftpDestination`` (paramiko lives there).

:func:`make_destination` builds the one for a route, :func:`build_routes` every
tenant's. The sftp:// destination is :class:`Interruptible` (the forwarder's
stop cuts its connection). A destination that can also bring back the print site's erasure
certificates is a :class:`CertificateSource` (file:// reads them from the
spool, sftp:// from the print site's ``/receipts``); the route's pinned
``receipt_key`` (:attr:`TenantRoute.certificate_key`) verifies them.
"""

import errno
import hashlib
import io
import os
import stat
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import keys, loads_record
from custody.errors import CustodyError, KeyFormatError
from gateway.certificates import MAX_CERTIFICATE_BYTES
from gateway.config import GatewayConfig
from gateway.errors import ConfigError, GatewayError
from gateway.policy import Area, NameKind, file_name
from gateway.routes import Route, RouteKind, TenantSection, parse_route
from gateway.spool import Spool, SpoolBusyError, SpoolConflictError, SpoolError
from gateway.state import BatchRecord
from gateway.storage import Reader, Storage, StorageError

SOURCE_BUFFER_BYTES = 1 << 20
"""Read size of the gateway's copy while it is checked or sent."""
CHANNEL = "lgwan"
"""The spool channel of forwarded batches."""

Source = Callable[[], BinaryIO]
"""Opens the gateway's copy of the batch for reading (the destination closes it)."""


class DeliveryError(GatewayError):
    """A delivery failed.

    Attributes:
        retryable: True when trying again later may succeed (the destination is
            down, full, busy); False when it cannot without someone acting (a
            conflict, the gateway's copy no longer matching its receipt).
        reason: snake_case cause for the state, the status record and the audit log.
        detail: one line for the operator (never a secret).
    """

    def __init__(self, retryable: bool, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.retryable = retryable
        self.reason = reason
        self.detail = detail


class SourceChangedError(DeliveryError):
    """The gateway's copy no longer has the receipted size or SHA-256 (it is quarantined)."""

    def __init__(self, detail: str) -> None:
        super().__init__(False, "source_changed", detail)


@dataclass(frozen=True)
class Delivery:
    """A verified delivery.

    Attributes:
        location: where the batch now is, for the audit log (no secret).
        sha256: SHA-256 of the delivered envelope, as verified at the destination.
        already: the destination held this very batch before (nothing was written).
    """

    location: str
    sha256: str
    already: bool


class Destination(Protocol):
    """Delivers a verified batch somewhere, idempotently."""

    def deliver(self, batch: BatchRecord, source: Source) -> Delivery:
        """Deliver ``batch`` (its bytes from ``source``) and verify it there.

        Raises:
            DeliveryError: it is not delivered (``retryable`` says whether to try again).
        """
        ...


@runtime_checkable
class CertificateSource(Protocol):
    """A destination that can read back the print site's erasure certificates."""

    def fetch_certificates(self, batch_ids: Sequence[str]) -> Mapping[str, bytes]:
        """The ``<batch>.erasure.json`` files the print site holds for these batches.

        Batches without one are left out. A file larger than
        :data:`~gateway.certificates.MAX_CERTIFICATE_BYTES` is returned cut to
        one byte more than that (so the check refuses it as too large).

        Raises:
            DeliveryError: the print site cannot be read now (``retryable`` says
                whether trying again later may help).
        """
        ...


@runtime_checkable
class Interruptible(Protocol):
    """A destination whose network work another thread can cut short.

    :meth:`gateway.forwarder.Forwarder.stop` interrupts every such destination, so a
    peer that accepted the connection but never answers cannot hold the stop for
    the whole connect timeout; :meth:`~gateway.forwarder.Forwarder.start` resumes them.
    """

    def interrupt(self) -> None:
        """Cut the work under way (it fails retryably) and refuse new work until resumed."""
        ...

    def resume(self) -> None:
        """Take work again."""
        ...


class _CopyReader(io.RawIOBase):
    """The gateway's inbox copy of a batch as a stream: stops on request, checks what it gave.

    With ``verify``, reaching the end with a size or SHA-256 other than the
    receipted ones (or reading past the receipted size) raises
    :class:`SourceChangedError`, so nothing that differs from the receipt can
    complete a delivery.
    """

    def __init__(
        self, reader: Reader, batch: BatchRecord, stopping: threading.Event, verify: bool
    ) -> None:
        self._reader = reader
        self._batch = batch
        self._stopping = stopping
        self._verify = verify
        self._offset = 0
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: "memoryview | bytearray") -> int:  # type: ignore[override]
        if self._stopping.is_set():
            raise DeliveryError(True, "interrupted", "the gateway is stopping")
        try:
            data = self._reader.read(self._offset, len(buffer))
        except StorageError as exc:
            raise DeliveryError(True, "source_unreadable", str(exc)) from None
        size = len(data)
        if self._verify:
            self._check(data)
        buffer[:size] = data
        self._offset += size
        return size

    def _check(self, data: bytes) -> None:
        expected = self._batch.size
        if self._offset + len(data) > expected:
            raise SourceChangedError(f"the gateway's copy is longer than the receipted {expected}")
        self._digest.update(data)
        if data:
            return
        if self._offset != expected:
            raise SourceChangedError(f"the gateway's copy has {self._offset} bytes, not {expected}")
        if self._digest.hexdigest() != self._batch.sha256:
            raise SourceChangedError("the gateway's copy no longer has the receipted SHA-256")

    def close(self) -> None:
        self._reader.close()
        super().close()


def open_source(
    storage: Storage, batch: BatchRecord, stopping: threading.Event, *, verify: bool
) -> Source:
    """The :data:`Source` of a batch's inbox copy (see :class:`_CopyReader`).

    Opening raises :class:`DeliveryError`: ``source_missing`` when the copy is
    gone, ``source_unreadable`` for other storage failures (both retryable).
    """

    def opener() -> BinaryIO:
        try:
            reader = storage.open_read(batch.tenant, Area.INBOX, batch.file_name)
        except StorageError as exc:
            reason = "source_missing" if exc.reason == "not_found" else "source_unreadable"
            raise DeliveryError(True, reason, f"/inbox/{batch.file_name}: {exc}") from None
        raw = _CopyReader(reader, batch, stopping, verify)
        return io.BufferedReader(raw, buffer_size=SOURCE_BUFFER_BYTES)

    return opener


def receipt_bytes(storage: Storage, batch: BatchRecord) -> bytes:
    """The batch's signed receipt file, as stored in its tenant's /receipts.

    Raises:
        DeliveryError: (retryable) the receipt is missing or unreadable.
    """
    name = file_name(batch.batch_id, NameKind.RECEIPT)
    try:
        reader = storage.open_read(batch.tenant, Area.RECEIPTS, name)
    except StorageError as exc:
        raise DeliveryError(True, "receipt_missing", f"/receipts/{name}: {exc}") from None
    try:
        data = reader.read(0, 1 << 20)
    finally:
        reader.close()
    return data


class FileDestination:
    """``file:///path``: the print-site spool directory."""

    def __init__(self, route: Route, storage: Storage) -> None:
        """Deliver into the spool at ``route.path``; receipts are read from ``storage``."""
        self.root = Path(route.path)
        self._storage = storage
        self._location = route.describe()

    def deliver(self, batch: BatchRecord, source: Source) -> Delivery:
        """Stream the batch into the spool (see :meth:`gateway.spool.Spool.deliver`).

        The arrival record's ``source`` is the body of the gateway's signed receipt.

        Raises:
            DeliveryError: ``conflict`` (not retryable); ``destination_missing``,
                ``destination_busy``, ``destination_error``, ``io_error`` (retryable);
                a :class:`SourceChangedError` from ``source``.
        """
        if not self.root.is_dir():
            raise DeliveryError(
                True, "destination_missing", f"{self._location} is not a directory (not mounted?)"
            )
        detail = _receipt_body(receipt_bytes(self._storage, batch))
        spool = Spool(self.root)
        already = os.path.lexists(spool.path_of(batch.batch_id))
        try:
            with source() as stream:
                arrival = spool.deliver(
                    batch.batch_id,
                    stream,
                    tenant=batch.tenant,
                    channel=CHANNEL,
                    expected_size=batch.size,
                    expected_sha256=batch.sha256,
                    source_detail=detail,
                )
        except DeliveryError:
            raise
        except SpoolConflictError as exc:
            raise DeliveryError(False, "conflict", str(exc)) from None
        except SpoolBusyError as exc:
            raise DeliveryError(True, "destination_busy", str(exc)) from None
        except SpoolError as exc:
            raise DeliveryError(True, "destination_error", str(exc)) from None
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            raise DeliveryError(True, "io_error", f"{self._location}: {name}") from None
        return Delivery(f"{self._location}/{arrival.path.name}", arrival.sha256, already)

    def fetch_certificates(self, batch_ids: Sequence[str]) -> Mapping[str, bytes]:
        """``<spool>/<batch>.erasure.json`` of each batch that has one (:class:`CertificateSource`).

        A symlink or anything but a regular file is never followed or read.

        Raises:
            DeliveryError: ``destination_missing`` (the share is not mounted) or
                ``io_error`` (both retryable).
        """
        if not self.root.is_dir():
            raise DeliveryError(
                True, "destination_missing", f"{self._location} is not a directory (not mounted?)"
            )
        found: dict[str, bytes] = {}
        for batch_id in batch_ids:
            path = self.root / file_name(batch_id, NameKind.ERASURE)
            try:
                data = read_regular(path, MAX_CERTIFICATE_BYTES + 1)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "EIO")
                raise DeliveryError(True, "io_error", f"{self._location}: {name}") from None
            if data is not None:
                found[batch_id] = data
        return found


def read_regular(path: Path, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of a regular file, never through a symlink; None when absent.

    Symlinks, directories, FIFOs and the like count as absent: they are not
    certificates, and opening them could block or escape the directory.

    Raises:
        OSError: the file exists but cannot be read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class PullDestination:
    """``pull``: the batch waits in its tenant's ``/outbox`` for the contractor."""

    def __init__(self, storage: Storage) -> None:
        """Publish within ``storage``."""
        self._storage = storage

    def deliver(self, batch: BatchRecord, source: Source) -> Delivery:
        """Put the receipt copy, then the envelope, into ``/outbox`` (the envelope last).

        The envelope is moved, not copied: the gateway keeps one copy. Once it is
        in /outbox, the same batch delivered again is ``already``.

        Raises:
            DeliveryError: ``conflict`` (another file of that name in /outbox),
                ``receipt_missing`` or ``storage_error`` (retryable).
        """
        storage, tenant = self._storage, batch.tenant
        name = file_name(batch.batch_id, NameKind.COMPLETE)
        location = f"/outbox/{name}"
        try:
            storage.ensure_tenant(tenant)
            receipt = receipt_bytes(storage, batch)
            if storage.exists(tenant, Area.OUTBOX, name):
                size, sha256 = storage.digest(tenant, Area.OUTBOX, name)
                if (size, sha256) != (batch.size, batch.sha256):
                    raise DeliveryError(False, "conflict", f"{location} holds another file")
                _remove_quietly(storage, tenant, Area.INBOX, batch.file_name)
                return Delivery(location, sha256, True)
            storage.write_file(
                tenant, Area.OUTBOX, file_name(batch.batch_id, NameKind.RECEIPT), receipt
            )
            storage.move(tenant, Area.INBOX, batch.file_name, Area.OUTBOX, name)
        except StorageError as exc:
            raise DeliveryError(True, "storage_error", f"{location}: {exc}") from None
        return Delivery(location, batch.sha256, False)


def _remove_quietly(storage: Storage, tenant: str, area: Area, name: str) -> None:
    try:
        storage.remove(tenant, area, name)
    except StorageError as exc:
        if exc.reason != "not_found":
            raise


def _receipt_body(data: bytes) -> dict[str, object]:
    """The body of a stored receipt (it is the gateway's own file: not re-verified here)."""
    try:
        body = loads_record(data).get("body")
    except CustodyError as exc:
        raise DeliveryError(True, "receipt_invalid", str(exc)) from None
    if not isinstance(body, dict):
        raise DeliveryError(True, "receipt_invalid", "the receipt has no body")
    return body


def make_destination(
    route: Route, tenant: TenantSection, config: GatewayConfig, storage: Storage
) -> Destination | None:
    """The destination of a tenant's route (None for a tenant without ``forward``).

    Raises:
        ConfigError: an sftp:// route whose keys are missing or unusable (from
            ``gateway.relay``).
    """
    if route.kind is RouteKind.FILE:
        return FileDestination(route, storage)
    if route.kind is RouteKind.PULL:
        return PullDestination(storage)
    if route.kind is RouteKind.SFTP:
        # Imported here: paramiko stays out of this module (and out of file:// gateways).
        from gateway.relay import SftpDestination

        return SftpDestination(route, tenant, config)
    return None


@dataclass(frozen=True)
class TenantRoute:
    """A tenant's configured route and its destination (None without a route).

    ``certificate_key`` is the print site's pinned signing key (the table's
    ``receipt_key``), which verifies its erasure certificates; None when the
    table has none (file:// and pull routes may leave it empty: their batches
    then never become ERASED here).
    """

    route: Route
    section: TenantSection
    destination: Destination | None
    certificate_key: Ed25519PublicKey | None = None


def build_routes(config: GatewayConfig, storage: Storage) -> dict[str, TenantRoute]:
    """The destination of every ``[tenants.<name>]`` table.

    Raises:
        ConfigError: a destination cannot be built (sftp:// keys), or a
            ``receipt_key`` is not one ``ssh-ed25519`` line.
        ValueError: a route that does not parse (the config loader checked them).
    """
    routes: dict[str, TenantRoute] = {}
    file = str(config.source) if config.source else "(defaults)"
    for tenant, section in config.tenants.items():
        route = parse_route(section.forward)
        destination = make_destination(route, section, config, storage)
        key = _certificate_key(section.receipt_key, file, f"tenants.{tenant}.receipt_key")
        routes[tenant] = TenantRoute(route, section, destination, key)
    return routes


def _certificate_key(text: str, file: str, name: str) -> Ed25519PublicKey | None:
    if not text.strip():
        return None
    try:
        return keys.load_public_key(text)
    except KeyFormatError as exc:
        raise ConfigError(file, name, str(exc)) from None
