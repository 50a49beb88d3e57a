"""Completion of an upload and the gateway's signed receipt for it.

The rename of ``/inbox/X.age.part`` to ``/inbox/X.age`` is the completion event.
:meth:`Completer.complete` then, in this order:

1. refuses a batch id the state database already knows (any tenant) — the
   ``.part`` is quarantined, a second upload of a batch never completes;
2. renames the file without ever replacing one (after this no session can
   write to it any more);
3. streams it once for its size and SHA-256;
4. records the batch as RECEIVED (a database failure renames it back to
   ``.part``, so the ward can simply retry);
5. writes ``/receipts/X.receipt.json``: a custody record of kind ``receipt``
   signed with the gateway key, body :data:`RECEIPT_FIELDS`;
6. audits ``upload_completed`` and ``receipt_signed`` and notifies the
   forwarding queue.

A crash between 2 and 4 leaves ``X.age`` without a database row, and one
between 4 and 5 a row without a receipt; :meth:`Completer.recover` (run when
the server starts) renames the first back to ``.part`` and signs the missing
receipts, so no completed file ever exists without its record and receipt. A
crash between 4 and 6 may also have lost the ``upload_completed`` record: for
a batch without its receipt, recovery reads the log and writes the record
from the database row when it is missing (``reason`` ``recovered_after_crash``).

A receipt that could not be written while the gateway runs (a full disk: the
ward's rename fails, "try again later") does not wait for a restart: the
forwarder calls :func:`ensure_receipt` for every RECEIVED batch it looks at, which
signs a receipt still missing :data:`RECEIPT_GRACE_SECONDS` after the batch was
recorded — once there is room again, the ward's next ``send`` finds it.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import KIND_RECEIPT, dumps_record, fingerprint, sign_record
from gateway import audit_query
from gateway.audit import AuditLog
from gateway.errors import GatewayError
from gateway.policy import Area, NameKind, batch_of, file_name, name_kind
from gateway.state import BatchRecord, BatchState, DuplicateBatchError, StateError, StateStore
from gateway.storage import Storage, StorageError

if TYPE_CHECKING:
    from gateway.app import BatchQueue

RECEIPT_FIELDS = (
    "batch_id",
    "tenant",
    "uploader",
    "file",
    "size",
    "sha256",
    "received_at",
    "gateway_key",
)
"""The body of a receipt, exactly these fields."""
RECEIPT_GRACE_SECONDS = 10.0
"""How long a RECEIVED batch may lack its receipt before :func:`ensure_receipt` signs it.

The completion writes the receipt within milliseconds of the database row; a
receipt still missing after this long is one whose writing failed."""


class CompletionError(GatewayError):
    """A completion was refused or failed.

    Attributes:
        reason: snake_case cause for the audit log.
        refused: True when the client asked for something not allowed
            (permission denied); False for a failure worth retrying.
    """

    def __init__(self, reason: str, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.refused = refused


def receipt_body(batch: BatchRecord, gateway_key: str) -> dict[str, object]:
    """The receipt statement for a received batch.

    Args:
        batch: The batch as recorded.
        gateway_key: ``SHA256:`` fingerprint of the signing key.
    """
    return {
        "batch_id": batch.batch_id,
        "tenant": batch.tenant,
        "uploader": batch.uploader,
        "file": batch.file_name,
        "size": batch.size,
        "sha256": batch.sha256,
        "received_at": batch.received_at.isoformat(timespec="seconds"),
        "gateway_key": gateway_key,
    }


def sign_receipt(batch: BatchRecord, key: Ed25519PrivateKey) -> bytes:
    """The receipt file's bytes: the signed record in its one byte form."""
    body = receipt_body(batch, fingerprint(key.public_key()))
    return dumps_record(sign_record(KIND_RECEIPT, body, key))


def write_receipt(
    storage: Storage,
    audit: AuditLog,
    batch: BatchRecord,
    key: Ed25519PrivateKey,
    fields: Mapping[str, object],
) -> None:
    """Write ``/receipts/<batch>.receipt.json`` (atomically) and audit ``receipt_signed``.

    Raises:
        StorageError: the receipts area cannot be written (a full disk).
    """
    name = file_name(batch.batch_id, NameKind.RECEIPT)
    storage.write_file(batch.tenant, Area.RECEIPTS, name, sign_receipt(batch, key))
    audit.emit(
        "receipt_signed",
        **{**fields, "path": f"/receipts/{name}"},
        gateway_key=fingerprint(key.public_key()),
    )


def ensure_receipt(
    storage: Storage,
    audit: AuditLog,
    batch: BatchRecord,
    key: Callable[[], Ed25519PrivateKey],
    now: datetime,
) -> bool:
    """Whether the RECEIVED ``batch`` has its receipt, signing one its completion could not write.

    A receipt missing for less than :data:`RECEIPT_GRACE_SECONDS` may still be
    on its way (False); one missing longer is signed now with ``key()`` and
    audited ``receipt_signed`` with ``reason`` ``receipt_missing``.

    Raises:
        StorageError: still no room for it (the caller tries again later).
    """
    name = file_name(batch.batch_id, NameKind.RECEIPT)
    if storage.exists(batch.tenant, Area.RECEIPTS, name):
        return True
    if (now - batch.received_at).total_seconds() < RECEIPT_GRACE_SECONDS:
        return False
    fields = {"tenant": batch.tenant, "batch": batch.batch_id, "reason": "receipt_missing"}
    write_receipt(storage, audit, batch, key(), fields)
    return True


def _now() -> datetime:
    return datetime.now().astimezone()


class Completer:
    """Turns a finished ``.part`` upload into a received, receipted batch."""

    def __init__(
        self,
        storage: Storage,
        store: StateStore,
        signing_key: Ed25519PrivateKey,
        audit: AuditLog,
        queue: "BatchQueue",
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """Bind the parts a completion touches."""
        self._storage = storage
        self._store = store
        self._key = signing_key
        self._audit = audit
        self._queue = queue
        self._clock = clock

    def check_new_upload(self, tenant: str, batch_id: str) -> None:
        """Refuse writing ``X.age.part`` when batch X is already received or completed.

        Raises:
            CompletionError: reason ``batch_exists``.
        """
        if self._store.get_batch(batch_id) is not None or self._storage.exists(
            tenant, Area.INBOX, file_name(batch_id, NameKind.COMPLETE)
        ):
            raise CompletionError(
                "batch_exists", f"batch {batch_id} has already been received", refused=True
            )

    def complete(
        self, tenant: str, uploader: str, batch_id: str, context: Mapping[str, object]
    ) -> BatchRecord:
        """Complete the upload of ``batch_id`` by ``uploader`` (steps in the module docstring).

        Args:
            tenant: The uploader's tenant.
            uploader: The account name.
            batch_id: The batch id from the file name.
            context: Audit fields of the session (user, tenant, source, session).

        Returns:
            The recorded batch.

        Raises:
            CompletionError: refused (duplicate, empty) or failed (storage,
                database, receipt); the upload stays resumable unless refused
                as a duplicate.
            StorageError: the ``.part`` is missing or unusable.
        """
        part = file_name(batch_id, NameKind.PART)
        final = file_name(batch_id, NameKind.COMPLETE)
        fields = {**context, "batch": batch_id, "path": f"/inbox/{final}"}
        if self._store.get_batch(batch_id) is not None:
            self._reject(tenant, part, fields, "duplicate_batch")
        if self._storage.stat(tenant, Area.INBOX, part).size == 0:
            raise CompletionError("empty_upload", "the upload is empty", refused=True)
        started = time.monotonic()
        self._storage.publish(tenant, Area.INBOX, part, final)
        try:
            size, sha256 = self._storage.digest(tenant, Area.INBOX, final)
        except StorageError:
            self._storage.publish(tenant, Area.INBOX, final, part)
            raise
        now = self._clock()
        batch = BatchRecord(
            batch_id=batch_id,
            tenant=tenant,
            uploader=uploader,
            file_name=final,
            size=size,
            sha256=sha256,
            state=BatchState.RECEIVED,
            received_at=now,
            updated_at=now,
        )
        try:
            self._store.insert_batch(batch)
        except DuplicateBatchError:
            self._reject(tenant, final, fields, "duplicate_batch")
        except StateError:
            self._storage.publish(tenant, Area.INBOX, final, part)
            raise CompletionError(
                "state_error", "the gateway could not record the batch; retry", refused=False
            ) from None
        elapsed_ms = int((time.monotonic() - started) * 1000)
        self._audit.emit(
            "upload_completed", **fields, size_bytes=size, sha256=sha256, elapsed_ms=elapsed_ms
        )
        self._write_receipt(batch, fields)
        self._queue.notify(batch_id)
        return batch

    def _reject(self, tenant: str, name: str, fields: Mapping[str, object], reason: str) -> None:
        """Quarantine a file that can never complete, audit it and refuse."""
        try:
            moved = self._storage.quarantine(tenant, Area.INBOX, name, reason)
        except StorageError:
            moved = None
        self._audit.emit("upload_rejected", **fields, reason=reason, quarantined_as=moved)
        raise CompletionError(
            reason, "a batch with this id has already been received", refused=True
        )

    def _write_receipt(self, batch: BatchRecord, fields: Mapping[str, object]) -> None:
        try:
            write_receipt(self._storage, self._audit, batch, self._key, fields)
        except StorageError as exc:
            raise CompletionError(
                "receipt_failed",
                "the batch was received but its receipt could not be written yet "
                "(it is signed once the gateway has room); try again later",
                refused=False,
            ) from exc

    def recover(self) -> int:
        """Repair what a crash mid-completion left behind; return how many files were fixed.

        ``X.age`` without a database row goes back to ``X.age.part`` (or to
        quarantine when a new ``.part`` exists); a RECEIVED batch without its
        receipt gets one.
        """
        fixed = 0
        for tenant in self._storage.tenants():
            for stored in self._storage.list_files(tenant, Area.INBOX):
                batch_id = batch_of(stored.name)
                if name_kind(stored.name) is not NameKind.COMPLETE or batch_id is None:
                    continue
                if self._store.get_batch(batch_id) is not None:
                    continue
                fields = {"tenant": tenant, "batch": batch_id, "path": f"/inbox/{stored.name}"}
                part = file_name(batch_id, NameKind.PART)
                try:
                    self._storage.publish(tenant, Area.INBOX, stored.name, part)
                    moved = None
                except StorageError:
                    moved = self._storage.quarantine(
                        tenant, Area.INBOX, stored.name, "completion_interrupted"
                    )
                self._audit.emit(
                    "upload_rejected",
                    **fields,
                    reason="completion_interrupted",
                    quarantined_as=moved,
                )
                fixed += 1
            unsigned = [
                batch
                for batch in self._store.list_batches(tenant, states={BatchState.RECEIVED})
                if not self._storage.exists(
                    tenant, Area.RECEIPTS, file_name(batch.batch_id, NameKind.RECEIPT)
                )
            ]
            self._audit_unlogged_completions(unsigned)
            for batch in unsigned:
                self._write_receipt(batch, {"tenant": tenant, "batch": batch.batch_id})
                fixed += 1
        return fixed

    def _audit_unlogged_completions(self, batches: Sequence[BatchRecord]) -> None:
        """Audit ``upload_completed`` for recorded batches the log lacks it for.

        A crash between the database commit and the audit write (step 4 to 6)
        leaves a RECEIVED batch without its receipt and maybe without its
        ``upload_completed`` record. Only then (rare: a crash) is the log read
        once for those batches; each one missing gets the record from the
        database row, with ``reason`` ``recovered_after_crash``.
        """
        if not batches:
            return
        wanted = {batch.batch_id for batch in batches}
        logged = {
            record.get("batch")
            for record in audit_query.search(self._audit.path, event="upload_completed")
            if record.get("batch") in wanted
        }
        for batch in batches:
            if batch.batch_id not in logged:
                self._audit.emit(
                    "upload_completed",
                    user=batch.uploader,
                    tenant=batch.tenant,
                    batch=batch.batch_id,
                    path=f"/inbox/{batch.file_name}",
                    size_bytes=batch.size,
                    sha256=batch.sha256,
                    reason="recovered_after_crash",
                )
