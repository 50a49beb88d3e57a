"""Erasure certificates at the gateway: check the print site's signed certificate, publish it.

After ``lgwan-gateway erase`` the print site holds a データ消去証明書 / erasure
certificate: a custody record of kind ``erasure-certificate`` signed with the
print site's Ed25519 key, body exactly :data:`CERTIFICATE_FIELDS`::

    {"batch_id", "tenant", "channel", "items", "method", "started_at",
     "finished_at", "handler", "approver", "opened", "printsite_key"}

``items`` lists every erased copy as ``{"kind", "path", "size", "sha256"}``
(:data:`ITEM_FIELDS`; ``kind`` one of :data:`ITEM_KINDS`), the hashes taken
before erasure.

:func:`check_certificate` accepts one only when the signature verifies with the
pinned key *and* it is a certificate (its signed ``kind``), its body has exactly
those fields, well typed, it names this batch and tenant and the signer's
fingerprint, and it erased at least one ``envelope`` whose every copy has the
size and SHA-256 the gateway receipted for the batch.

:func:`publish_certificate` then stores it once as the tenant's
``/receipts/<batch>.erasure.json`` (create-once: an identical file already there
is fine, a different one is a ``conflict``), moves the batch FORWARDED|PULLED →
ERASED, writes its status record (state ``erased``) and audits
``erasure_certificate_received``. It is idempotent, so every path that brings a
certificate may simply bring it again: ``erase`` at a print site that received
the batch through its own ``serve`` (its own key), and at the ASP gateway the
forwarder's polling of file:// and sftp:// print sites and the contractor's
upload to ``/outbox`` in pull mode (the route's pinned ``receipt_key``, see
:mod:`gateway.certificate_intake`). A certificate that fails is never published:
:func:`reject_certificate` audits ``erasure_certificate_rejected`` and raises the
incident (kind ``certificate_rejected``) once per batch.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import KIND_ERASURE_CERTIFICATE, fingerprint, loads_record, verify_record
from custody.errors import CustodyError
from gateway.audit import AuditLog, local_now
from gateway.errors import GatewayError
from gateway.pipeline import DELIVERED, BatchState
from gateway.policy import ERASURE_SUFFIX, Area, NameKind, file_name
from gateway.state import BatchRecord, StateError, StateStore, TransitionConflictError
from gateway.status import StatusWriter
from gateway.storage import Storage, StorageError

__all__ = [
    "CERTIFICATE_FIELDS",
    "ERASURE_SUFFIX",
    "INCIDENT_KIND",
    "ITEM_FIELDS",
    "ITEM_KINDS",
    "MAX_CERTIFICATE_BYTES",
    "CertificateError",
    "certificate_file_name",
    "check_certificate",
    "publish_certificate",
    "reject_certificate",
    "store_once",
]

MAX_CERTIFICATE_BYTES = 256 * 1024
"""Largest erasure certificate accepted, in bytes."""
CERTIFICATE_FIELDS = (
    "batch_id",
    "tenant",
    "channel",
    "items",
    "method",
    "started_at",
    "finished_at",
    "handler",
    "approver",
    "opened",
    "printsite_key",
)
"""The body of an erasure certificate, exactly these fields."""
ITEM_FIELDS = ("kind", "path", "size", "sha256")
"""Each erased item, exactly these fields."""
ITEM_KINDS = ("envelope", "plaintext", "staging", "quarantine", "retained", "receipt-copy")
"""What an erased item was."""
CHANNELS = ("lgwan", "dvd")
INCIDENT_KIND = "certificate_rejected"
"""The incident raised (once per batch) for a certificate that failed the check."""

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_PUBLISH_LOCK = threading.Lock()
"""Serialises publications in this process (the file is create-once across processes)."""

Clock = Callable[[], datetime]


class CertificateError(GatewayError):
    """An erasure certificate was refused (never published).

    Attributes:
        reason: snake_case cause for the audit log (``bad_signature``,
            ``wrong_key``, ``wrong_kind``, ``other_batch``, ``other_tenant``,
            ``envelope_mismatch``, ``conflict``, …).
    """

    def __init__(self, reason: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason


def certificate_file_name(batch_id: str) -> str:
    """``<batch>.erasure.json`` for a valid batch id.

    Raises:
        PolicyError: ``batch_id`` is not a batch id.
    """
    return file_name(batch_id, NameKind.ERASURE)


def check_certificate(data: bytes, key: Ed25519PublicKey, batch: BatchRecord) -> dict[str, object]:
    """Verify an erasure certificate for ``batch`` signed by ``key``; return its body.

    Args:
        data: The certificate file's bytes (canonical JSON plus a newline).
        key: The print site's pinned signing key.
        batch: The batch as this gateway recorded it (tenant, size, SHA-256).

    Raises:
        CertificateError: too large, not a signed record, another kind, another
            signer, a bad signature, a body that is not exactly a certificate,
            another batch or tenant, no ``envelope`` item, or an envelope item
            whose size or SHA-256 is not the batch's.
    """
    what = f"the erasure certificate for {batch.batch_id}"
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateError("too_large", f"{what} is larger than {MAX_CERTIFICATE_BYTES} bytes")
    try:
        doc = loads_record(data, max_bytes=MAX_CERTIFICATE_BYTES)
    except CustodyError as exc:
        raise CertificateError("malformed", f"{what} is not a signed record: {exc}") from None
    if doc["kind"] != KIND_ERASURE_CERTIFICATE:
        raise CertificateError(
            "wrong_kind", f"{what} is a {_short(doc['kind'])} record, not an erasure certificate"
        )
    expected = fingerprint(key)
    if doc["signer"] != expected:
        raise CertificateError(
            "wrong_key",
            f"{what} is signed by {_short(doc['signer'])}, not the pinned key {expected}",
            hint="if the print site replaced its signing key, pin the new one as the "
            "tenant's receipt_key; otherwise the certificate is forged",
        )
    try:
        body = verify_record(doc, key, kind=KIND_ERASURE_CERTIFICATE)
    except CustodyError as exc:
        raise CertificateError("bad_signature", f"{what} does not verify: {exc}") from None
    _check_body(body, expected, batch, what)
    return body


def _check_body(body: Mapping[str, object], signer: str, batch: BatchRecord, what: str) -> None:
    names = set(body)
    if names != set(CERTIFICATE_FIELDS):
        missing = sorted(set(CERTIFICATE_FIELDS) - names)
        extra = sorted(_short(n) for n in names - set(CERTIFICATE_FIELDS))
        raise CertificateError("bad_body", f"{what}: fields missing {missing}, unexpected {extra}")
    if body["batch_id"] != batch.batch_id:
        raise CertificateError("other_batch", f"{what} certifies batch {_short(body['batch_id'])}")
    if body["tenant"] != batch.tenant:
        raise CertificateError(
            "other_tenant", f"{what} is for tenant {_short(body['tenant'])}, not {batch.tenant}"
        )
    if body["printsite_key"] != signer:
        raise CertificateError("bad_body", f"{what}: printsite_key is not the signer's {signer}")
    if body["channel"] not in CHANNELS:
        raise CertificateError("bad_body", f"{what}: channel {_short(body['channel'])}")
    for name in ("method", "handler", "approver"):
        if not isinstance(body[name], str) or not body[name]:
            raise CertificateError("bad_body", f"{what}: {name} must be non-empty text")
    if not isinstance(body["opened"], bool):
        raise CertificateError("bad_body", f"{what}: opened must be true or false")
    started = _moment(body["started_at"], f"{what}: started_at")
    finished = _moment(body["finished_at"], f"{what}: finished_at")
    if finished < started:
        raise CertificateError("bad_body", f"{what}: finished_at is before started_at")
    items = body["items"]
    if not isinstance(items, list) or not items:
        raise CertificateError("bad_body", f"{what}: items must be a non-empty list")
    for number, item in enumerate(items, start=1):
        _check_item(item, f"{what}: item {number}")
    envelopes = [i for i in items if isinstance(i, dict) and i["kind"] == "envelope"]
    if not envelopes:
        raise CertificateError("no_envelope", f"{what} lists no erased envelope")
    for item in envelopes:
        if item["sha256"] != batch.sha256 or item["size"] != batch.size:
            raise CertificateError(
                "envelope_mismatch",
                f"{what} erased an envelope of {item['size']} bytes, SHA-256 "
                f"{str(item['sha256'])[:16]}…, not the batch received "
                f"({batch.size} bytes, {batch.sha256[:16]}…)",
            )


def _check_item(item: object, where: str) -> None:
    if not isinstance(item, dict) or set(item) != set(ITEM_FIELDS):
        raise CertificateError("bad_body", f"{where} must have exactly {list(ITEM_FIELDS)}")
    if item["kind"] not in ITEM_KINDS:
        raise CertificateError("bad_body", f"{where}: kind {_short(item['kind'])}")
    if not isinstance(item["path"], str) or not item["path"]:
        raise CertificateError("bad_body", f"{where}: path must be non-empty text")
    size = item["size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CertificateError("bad_body", f"{where}: size must be a whole number of bytes")
    if not isinstance(item["sha256"], str) or not _SHA256_RE.fullmatch(item["sha256"]):
        raise CertificateError("bad_body", f"{where}: sha256 must be 64 lower-case hex digits")


def _moment(value: object, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or moment.utcoffset() is None:
        raise CertificateError("bad_body", f"{where} must be ISO 8601 with a UTC offset")
    return moment


def publish_certificate(
    store: StateStore,
    storage: Storage,
    status: StatusWriter,
    audit: AuditLog,
    batch_id: str,
    data: bytes,
    key: Ed25519PublicKey,
    *,
    clock: Clock = local_now,
) -> bool:
    """Check a certificate and publish it to the ward; the batch becomes ERASED.

    In order: :func:`check_certificate` against the batch as stored; the batch
    must be FORWARDED, PULLED or already ERASED; the tenant's
    ``/receipts/<batch>.erasure.json`` is written once (atomically, never
    replacing a file); FORWARDED|PULLED → ERASED (audited
    ``batch_state_changed``); the status record; ``erasure_certificate_received``.
    A crash anywhere is repaired by publishing the same certificate again.

    Args:
        store: The state database that knows the batch.
        storage: The confined storage (the tenant's receipts area).
        status: Writes the batch's signed status record.
        audit: The audit log.
        batch_id: The batch the certificate is for.
        data: The certificate file's bytes.
        key: The print site's signing key (its own at the print site; the
            route's pinned ``receipt_key`` at an ASP gateway).
        clock: Current timezone-aware time.

    Returns:
        True when this call published it (or finished an interrupted
        publication); False when it was published before.

    Raises:
        CertificateError: the certificate fails the check, the batch is unknown
            or not delivered, or a different certificate is published already.
        StorageError: the receipts area cannot be written (try again).
        StateError: the state database failed.
    """
    with _PUBLISH_LOCK:
        batch = store.get_batch(batch_id)
        if batch is None:
            raise CertificateError("unknown_batch", f"this gateway has no batch {batch_id}")
        body = check_certificate(data, key, batch)
        if batch.state not in DELIVERED and batch.state is not BatchState.ERASED:
            raise CertificateError(
                "not_delivered",
                f"batch {batch_id} is {batch.state.value}: it was never delivered to be erased",
            )
        name = certificate_file_name(batch_id)
        wrote = store_once(storage, batch.tenant, Area.RECEIPTS, name, data)
        moved = _erase(store, audit, batch, clock)
        status.publish(batch_id)
    if moved:
        items = body["items"]
        audit.emit(
            "erasure_certificate_received",
            batch=batch_id,
            tenant=batch.tenant,
            signer=fingerprint(key),
            items=len(items) if isinstance(items, list) else 0,
            opened=body["opened"],
            certificate_sha256=hashlib.sha256(data).hexdigest(),
        )
    return wrote or moved


def store_once(storage: Storage, tenant: str, area: Area, name: str, data: bytes) -> bool:
    """Write ``/<area>/<name>`` unless it exists; True when written.

    The file is written under a hidden temporary name and linked into place,
    which refuses an existing file even when another process publishes at once.

    Raises:
        CertificateError: a different file is there (``conflict``).
    """
    existing = _read(storage, tenant, area, name)
    if existing is None:
        temp = f".{name}.{secrets.token_hex(8)}"
        storage.write_file(tenant, area, temp, data)
        try:
            storage.publish(tenant, area, temp, name)
        except StorageError as exc:
            _remove_quietly(storage, tenant, area, temp)
            if exc.reason != "exists":
                raise
            existing = _read(storage, tenant, area, name)
        else:
            return True
    if existing != data:
        raise CertificateError(
            "conflict",
            f"a different erasure certificate is stored as /{area.value}/{name}; "
            "nothing was replaced",
        )
    return False


def _read(storage: Storage, tenant: str, area: Area, name: str) -> bytes | None:
    try:
        reader = storage.open_read(tenant, area, name)
    except StorageError as exc:
        if exc.reason == "not_found":
            return None
        raise
    try:
        return reader.read(0, MAX_CERTIFICATE_BYTES + 1)
    finally:
        reader.close()


def _remove_quietly(storage: Storage, tenant: str, area: Area, name: str) -> None:
    with suppress(StorageError):
        storage.remove(tenant, area, name)


def _erase(store: StateStore, audit: AuditLog, batch: BatchRecord, clock: Clock) -> bool:
    """FORWARDED|PULLED → ERASED (audited); False when it is ERASED already.

    Raises:
        CertificateError: the batch left the delivered states otherwise.
        StateError: the database failed, or the batch kept moving under us.
    """
    for _ in range(3):  # FORWARDED → PULLED may happen meanwhile (a pull confirmation)
        if batch.state is BatchState.ERASED:
            return False
        if batch.state not in DELIVERED:
            raise CertificateError(
                "not_delivered", f"batch {batch.batch_id} is {batch.state.value}"
            )
        try:
            _, event = store.transition(  # due at once: a retained inbox copy goes now
                batch.batch_id, batch.state, BatchState.ERASED, None, clock(), next_attempt_at=None
            )
        except TransitionConflictError:
            again = store.get_batch(batch.batch_id)
            if again is None:
                break
            batch = again
            continue
        audit.emit(
            "batch_state_changed",
            batch=batch.batch_id,
            tenant=batch.tenant,
            reason=None,
            event_seq=event.seq,
            **{"from": batch.state.value, "to": BatchState.ERASED.value},
        )
        return True
    raise StateError(f"batch {batch.batch_id} kept changing state; try again")


def reject_certificate(
    store: StateStore,
    audit: AuditLog,
    batch: BatchRecord,
    error: CertificateError,
    *,
    via: str,
    clock: Clock = local_now,
) -> bool:
    """A certificate for ``batch`` failed: audit it, raise the incident once.

    Audits ``erasure_certificate_rejected`` (batch, tenant, reason, detail, via)
    every time it is called, and the first time for the batch also
    ``incident_raised`` (kind :data:`INCIDENT_KIND`), recorded in the state
    database so it is never raised twice.

    Args:
        store: The state database.
        audit: The audit log.
        batch: The batch the certificate claimed to be for.
        error: Why it failed.
        via: Where it came from (``file``, ``sftp``, ``upload``, ``erase``).
        clock: Current timezone-aware time.

    Returns:
        True when the incident was raised now (first time for the batch).
    """
    detail = str(error)
    audit.emit(
        "erasure_certificate_rejected",
        batch=batch.batch_id,
        tenant=batch.tenant,
        reason=error.reason,
        detail=detail,
        via=via,
    )
    if INCIDENT_KIND in store.incidents(batch.batch_id):
        return False
    audit.emit(
        "incident_raised",
        kind=INCIDENT_KIND,
        batch=batch.batch_id,
        tenant=batch.tenant,
        reason=error.reason,
        detail=detail,
    )
    return store.add_incident(batch.batch_id, INCIDENT_KIND, clock(), detail)


def _short(value: object) -> str:
    """Quote an untrusted value for a message, bounded in length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
