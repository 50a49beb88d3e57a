"""Erasure certificates at the gateway: check the print site's signed certificate, publish it.

After ``lgwan-gateway erase`` the print site holds a データ消去証明書 / erasure
certificate: a custody record of kind ``erasure-certificate`` signed with the
print site's Ed25519 key, whose body :mod:`custody.erasure_certificate`
defines (exactly :data:`CERTIFICATE_FIELDS`; ``items`` lists every erased copy
as ``{"kind", "path", "size", "sha256"}``, the hashes taken before erasure).

:func:`check_certificate` accepts one only when it is at most
:data:`MAX_CERTIFICATE_BYTES` (the same limit everywhere), the signature
verifies with the pinned key *and* it is a certificate (its signed ``kind``),
its body passes the shared check (:func:`custody.check_erasure_body`: fields,
types, batch-id syntax, the signer's fingerprint, an ``envelope`` item,
``opened`` exactly when plaintext is listed — the ward applies the same), it
names this batch and tenant, and every whole copy of the envelope
(``envelope``, ``retained``, ``quarantine``) has the size and SHA-256 the
gateway receipted for the batch, every partial one (``staging``) no more
bytes. Plaintext the gateway cannot check: it never saw the files; the ward does.

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
import secrets
import threading
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import KIND_ERASURE_CERTIFICATE, fingerprint, loads_record, verify_record
from custody.erasure_certificate import (
    CERTIFICATE_FIELDS,
    ITEM_FIELDS,
    ITEM_KINDS,
    KIND_STAGING,
    MAX_CERTIFICATE_BYTES,
    WHOLE_ENVELOPE_KINDS,
    BodyError,
    ErasureBody,
    check_erasure_body,
)
from custody.errors import CustodyError
from gateway.audit import AuditLog, local_now
from gateway.envelope_check import Text, _, english
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

INCIDENT_KIND = "certificate_rejected"
"""The incident raised (once per batch) for a certificate that failed the check."""

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
    what = _("the erasure certificate for {batch}").format(batch=batch.batch_id)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(
            "too_large",
            _("{what} is larger than {limit} bytes").format(what=what, limit=MAX_CERTIFICATE_BYTES),
        )
    try:
        doc = loads_record(data, max_bytes=MAX_CERTIFICATE_BYTES)
    except CustodyError as exc:
        raise CertificateError(
            "malformed", _("{what} is not a signed record: {reason}").format(what=what, reason=exc)
        ) from None
    if doc["kind"] != KIND_ERASURE_CERTIFICATE:
        raise CertificateError(
            "wrong_kind",
            _("{what} is a {kind} record, not an erasure certificate").format(
                what=what, kind=_short(doc["kind"])
            ),
        )
    expected = fingerprint(key)
    if doc["signer"] != expected:
        raise CertificateError(
            "wrong_key",
            _("{what} is signed by {signer}, not the pinned key {expected}").format(
                what=what, signer=_short(doc["signer"]), expected=expected
            ),
            hint=_(
                "if the print site replaced its signing key, pin the new one as the"
                " tenant's receipt_key; otherwise the certificate is forged"
            ),
        )
    try:
        body = verify_record(doc, key, kind=KIND_ERASURE_CERTIFICATE)
    except CustodyError as exc:
        raise CertificateError(
            "bad_signature", _("{what} does not verify: {reason}").format(what=what, reason=exc)
        ) from None
    _check_body(body, expected, batch, what)
    return body


def _check_body(body: Mapping[str, object], signer: str, batch: BatchRecord, what: Text) -> None:
    try:
        parsed = check_erasure_body(body, signer=signer)
    except BodyError as exc:
        reason = "no_envelope" if exc.code == "no_envelope" else "bad_body"
        raise CertificateError(
            reason, _("{what}: {problem}").format(what=what, problem=body_problem(exc))
        ) from None
    if parsed.batch_id != batch.batch_id:
        raise CertificateError(
            "other_batch",
            _("{what} certifies batch {batch}").format(what=what, batch=_short(parsed.batch_id)),
        )
    if parsed.tenant != batch.tenant:
        raise CertificateError(
            "other_tenant",
            _("{what} is for tenant {tenant}, not {expected}").format(
                what=what, tenant=_short(parsed.tenant), expected=batch.tenant
            ),
        )
    _check_copies(parsed, batch, what)


def _check_copies(body: ErasureBody, batch: BatchRecord, what: Text) -> None:
    """Whole copies are the received envelope; partial ones are no larger."""
    for item in body.of_kind(*WHOLE_ENVELOPE_KINDS):
        if item.sha256 != batch.sha256 or item.size != batch.size:
            raise CertificateError(
                "envelope_mismatch",
                _(
                    "{what} erased an envelope of {size} bytes, SHA-256 {sha256}…,"
                    " not the batch received ({expected_size} bytes, {expected_sha256}…)"
                ).format(
                    what=what,
                    size=item.size,
                    sha256=item.sha256[:16],
                    expected_size=batch.size,
                    expected_sha256=batch.sha256[:16],
                ),
            )
    for item in body.of_kind(KIND_STAGING):
        if item.size > batch.size:
            raise CertificateError(
                "envelope_mismatch",
                _(
                    "{what} erased a partial copy of {size} bytes, larger than the batch"
                    " received ({expected_size} bytes)"
                ).format(what=what, size=item.size, expected_size=batch.size),
            )


def body_problem(error: BodyError) -> Text:
    """What :func:`custody.check_erasure_body` found, in the chosen language (and English)."""
    messages = {
        "fields": _("the body has fields {fields}, expected {expected}"),
        "text": _("{field} is not text: {value}"),
        "batch_id": _("batch_id {value} is not a batch id"),
        "channel": _("channel {value} is not one of {choices}"),
        "opened": _("opened is not true or false"),
        "time": _("{field} is not an ISO 8601 time with a UTC offset: {value}"),
        "time_order": _("finished_at is before started_at"),
        "printsite_key": _("printsite_key {value} is not the signer's {signer}"),
        "items": _("items is not a non-empty list"),
        "item_fields": _("item {number} has fields {fields}, expected {expected}"),
        "item_kind": _("item {number}: unknown kind {value}"),
        "item_path": _("item {number}: path is not text"),
        "item_size": _("item {number}: size is not a byte count: {value}"),
        "item_sha256": _("item {number}: sha256 is not 64 hex digits: {value}"),
        "no_envelope": _("no envelope item (the spool's sealed batch)"),
        "plaintext_not_opened": _(
            "item {number}: plaintext listed but the certificate says not opened"
        ),
        "opened_without_plaintext": _("the certificate says opened but lists no plaintext item"),
    }
    template = messages.get(error.code)
    return template.format(**error.values) if template is not None else Text(str(error), str(error))


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
            raise CertificateError(
                "unknown_batch", _("this gateway has no batch {batch}").format(batch=batch_id)
            )
        body = check_certificate(data, key, batch)
        if batch.state not in DELIVERED and batch.state is not BatchState.ERASED:
            raise CertificateError(
                "not_delivered",
                _("batch {batch} is {state}: it was never delivered to be erased").format(
                    batch=batch_id, state=batch.state.value
                ),
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
            _(
                "a different erasure certificate is stored as /{area}/{name}; nothing was replaced"
            ).format(area=area.value, name=name),
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
    for _attempt in range(3):  # FORWARDED → PULLED may happen meanwhile (a pull confirmation)
        if batch.state is BatchState.ERASED:
            return False
        if batch.state not in DELIVERED:
            raise CertificateError(
                "not_delivered",
                _("batch {batch} is {state}").format(batch=batch.batch_id, state=batch.state.value),
            )
        try:
            _moved, event = store.transition(  # due at once: a retained inbox copy goes now
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
    raise StateError(_("batch {batch} kept changing state; try again").format(batch=batch.batch_id))


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
    detail = english(error)  # records stay English whatever the language
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
