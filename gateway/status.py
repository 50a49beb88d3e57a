"""Signed status records: what the gateway states about a batch, for the ward to read.

On every state change the gateway writes ``/receipts/<batch>.status.json`` in
the tenant's receipts area (atomically, replacing the previous one): a custody
record of kind ``status`` signed with the gateway's signing key (the same key
as its receipts), body exactly :data:`STATUS_FIELDS`::

    {"batch_id", "tenant", "state", "at", "reason", "seq", "gateway_key"}

``state`` is a :class:`~gateway.pipeline.BatchState` value (``erased`` once
the print site's erasure certificate is published beside it as
``/receipts/<batch>.erasure.json``, see :mod:`gateway.certificates`), ``at`` the time of
the change (ISO 8601 with offset, milliseconds), ``reason`` why (the quarantine
reason, ``conflict``, …) or null, ``seq`` the change's number in the batch's
history (1 = received; increasing, so a client can tell a newer statement from
an older one), ``gateway_key`` the signer's ``SHA256:`` fingerprint.

A record states the batch's *current* state as the state database holds it
(``state``, ``updated_at``, ``reason`` and ``seq`` of its latest event), so the
forwarder may change a state several times in one pass and write the record
once — before any slow step (a delivery) and at the end of the pass. The
database remembers the last ``seq`` written (``status_seq``): a record never
goes backwards, and a batch whose record lags its state stays on the
forwarder's list (:meth:`~gateway.state.StateStore.pending_batches`) until
:meth:`StatusWriter.catch_up` has written it (after a crash, a full disk …).
"""

import threading
import zlib

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import KIND_STATUS, dumps_record, fingerprint, sign_record
from gateway.policy import STATUS_SUFFIX, Area, NameKind, file_name
from gateway.state import BatchRecord, StateStore
from gateway.storage import Storage

__all__ = [
    "STATUS_FIELDS",
    "STATUS_SUFFIX",
    "StatusWriter",
    "sign_status",
    "status_body",
    "status_file_name",
]

STATUS_FIELDS = ("batch_id", "tenant", "state", "at", "reason", "seq", "gateway_key")
"""The body of a status record, exactly these fields."""


_LOCK_STRIPES = 64


def status_file_name(batch_id: str) -> str:
    """``<batch>.status.json`` for a valid batch id.

    Raises:
        PolicyError: ``batch_id`` is not a batch id.
    """
    return file_name(batch_id, NameKind.STATUS)


def status_body(batch: BatchRecord, gateway_key: str) -> dict[str, object]:
    """The statement of ``batch``'s current state (its latest event).

    Args:
        batch: The batch as stored.
        gateway_key: ``SHA256:`` fingerprint of the signing key.
    """
    return {
        "batch_id": batch.batch_id,
        "tenant": batch.tenant,
        "state": batch.state.value,
        "at": batch.updated_at.isoformat(timespec="milliseconds"),
        "reason": batch.reason,
        "seq": batch.seq,
        "gateway_key": gateway_key,
    }


def sign_status(batch: BatchRecord, key: Ed25519PrivateKey) -> bytes:
    """The status file's bytes: the signed record in its one byte form."""
    body = status_body(batch, fingerprint(key.public_key()))
    return dumps_record(sign_record(KIND_STATUS, body, key))


class StatusWriter:
    """Writes the signed status records of batches into their tenants' receipts areas."""

    def __init__(self, storage: Storage, store: StateStore, signing_key: Ed25519PrivateKey) -> None:
        """Bind the storage, the state database and the signing key."""
        self._storage = storage
        self._store = store
        self._key = signing_key
        self._locks = tuple(threading.Lock() for _ in range(_LOCK_STRIPES))
        """One batch's record is written by one thread at a time; other batches' meanwhile."""

    def publish(self, batch_id: str) -> bool:
        """Write the record of the batch's current state (as stored) if the written one lags.

        Returns:
            True when a record was written.

        Raises:
            StorageError: the receipts area cannot be written.
            StateError: the database failed.
        """
        with self._locks[zlib.crc32(batch_id.encode()) % _LOCK_STRIPES]:
            batch = self._store.get_batch(batch_id)
            if batch is None or batch.status_seq >= batch.seq:
                return False
            self._storage.write_file(
                batch.tenant,
                Area.RECEIPTS,
                status_file_name(batch.batch_id),
                sign_status(batch, self._key),
            )
            self._store.update_batch(batch.batch_id, status_seq=batch.seq)
        return True

    def catch_up(self, batch: BatchRecord) -> bool:
        """:meth:`publish` when ``batch`` (as last read) says its record lags; True if written."""
        if batch.status_seq >= batch.seq:
            return False
        return self.publish(batch.batch_id)
