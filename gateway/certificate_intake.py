"""Erasure certificates arriving at the ASP gateway: polled from print sites, or uploaded.

A batch FORWARDED or PULLED waits for its print site's erasure certificate
(:mod:`gateway.certificates`). It comes back one of two ways, always verified
with the tenant route's pinned ``receipt_key`` (:attr:`TenantRoute.certificate_key`;
a route without one takes no certificates):

- **polled** by the forwarder (:meth:`CertificateIntake.poll`, at start-up and
  on every rescan) through the route's destination when it is a
  :class:`~gateway.destinations.CertificateSource`: file:// reads
  ``<spool>/<batch>.erasure.json`` (size-capped, symlinks never followed),
  sftp:// reads the print site's ``/receipts/<batch>.erasure.json`` over its
  one kept connection — only for routes that have batches waiting;
- **uploaded** in pull mode by the print site's ``lgwan-gateway pull`` as
  ``/outbox/<batch>.erasure.json`` (create-once; :mod:`gateway.sftp_fs` holds the
  bytes until the file is closed and then calls :meth:`CertificateIntake.accept_upload`).
  An accepted upload stays in ``/outbox`` as the acknowledgment ``pull`` reads back.

Accepted certificates are published (:func:`~gateway.certificates.publish_certificate`:
``/receipts/<batch>.erasure.json``, ERASED, status record). A certificate that
fails the check is never published: ``erasure_certificate_rejected`` and the
incident, once per batch (:func:`~gateway.certificates.reject_certificate`);
a polled one is then not looked at again until it changes (or the gateway restarts).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit import AuditLog, local_now
from gateway.certificates import (
    CertificateError,
    certificate_file_name,
    publish_certificate,
    reject_certificate,
    store_once,
)
from gateway.destinations import CertificateSource, DeliveryError, TenantRoute
from gateway.envelope_check import english
from gateway.pipeline import DELIVERED
from gateway.policy import Area, PolicyError
from gateway.state import BatchRecord, StateError, StateStore
from gateway.status import StatusWriter
from gateway.storage import Storage, StorageError

Clock = Callable[[], datetime]


class CertificateIntake:
    """Takes erasure certificates in for the batches this gateway forwarded."""

    def __init__(
        self,
        store: StateStore,
        storage: Storage,
        status: StatusWriter,
        audit: AuditLog,
        routes: Mapping[str, TenantRoute],
        *,
        clock: Clock = local_now,
    ) -> None:
        """Bind the parts; ``routes`` are the forwarder's (keys and destinations by tenant)."""
        self._store = store
        self._storage = storage
        self._status = status
        self._audit = audit
        self._routes = routes
        self._clock = clock
        self._lock = threading.Lock()
        self._rejected: set[tuple[str, str]] = set()
        """(batch, SHA-256) of polled certificates refused already (not audited again)."""
        self._failing: dict[str, str] = {}
        """Tenant → reason of the last failed poll audited (audited again only when it changes)."""

    # -- polling -----------------------------------------------------------------------------

    def poll(self, stopping: threading.Event | None = None) -> int:
        """Look for the certificates of every FORWARDED or PULLED batch; publish the good ones.

        Routes without a ``receipt_key``, or whose destination cannot read
        certificates (pull: they are uploaded), are skipped; so are routes
        without waiting batches (no connection is opened for them).

        Returns:
            How many certificates were published.
        """
        waiting: dict[str, list[BatchRecord]] = {}
        for batch in self._store.list_batches(states=DELIVERED):  # never the whole history
            waiting.setdefault(batch.tenant, []).append(batch)
        published = 0
        for tenant, batches in sorted(waiting.items()):
            if stopping is not None and stopping.is_set():
                break
            route = self._routes.get(tenant)
            if route is None or route.certificate_key is None:
                continue
            source = route.destination
            if not isinstance(source, CertificateSource):
                continue
            try:
                found = source.fetch_certificates([b.batch_id for b in batches])
            except DeliveryError as exc:
                self._poll_failed(tenant, route, exc)
                continue
            self._failing.pop(tenant, None)
            for batch in batches:
                data = found.get(batch.batch_id)
                if data is not None and self._take(batch, data, route):
                    published += 1
        return published

    def _take(self, batch: BatchRecord, data: bytes, route: TenantRoute) -> bool:
        """Publish one polled certificate; refuse (once per content) a bad one."""
        assert route.certificate_key is not None
        mark = (batch.batch_id, hashlib.sha256(data).hexdigest())
        if mark in self._rejected:
            return False
        via = route.route.kind.value
        try:
            return publish_certificate(
                self._store, self._storage, self._status, self._audit, batch.batch_id, data,
                route.certificate_key, clock=self._clock,
            )  # fmt: skip
        except CertificateError as exc:
            self._rejected.add(mark)
            reject_certificate(self._store, self._audit, batch, exc, via=via, clock=self._clock)
        except (StorageError, StateError) as exc:  # retried on the next pass
            self._audit.emit(
                "forwarder_failed",
                batch=batch.batch_id,
                tenant=batch.tenant,
                error=f"publishing the erasure certificate: {english(exc)}",
            )
        return False

    def _poll_failed(self, tenant: str, route: TenantRoute, exc: DeliveryError) -> None:
        """Audit a failed poll once per cause (a print site that is down stays quiet)."""
        if self._failing.get(tenant) == exc.reason:
            return
        self._failing[tenant] = exc.reason
        self._audit.emit(
            "forwarder_failed",
            tenant=tenant,
            destination=route.route.describe(),
            reason=exc.reason,
            error=f"reading erasure certificates: {english(exc)}",
        )

    # -- uploads (pull mode) -----------------------------------------------------------------

    def check_upload(self, tenant: str, batch_id: str) -> Ed25519PublicKey:
        """May a contractor of ``tenant`` upload the certificate of ``batch_id``? Its key if so.

        Raises:
            PolicyError: the tenant's route has no ``receipt_key``, or the batch is
                not one of the tenant's (``not_permitted``).
        """
        route = self._routes.get(tenant)
        if route is None or route.certificate_key is None:
            raise PolicyError(
                "not_permitted", "this gateway takes no erasure certificates for the tenant"
            )
        batch = self._store.get_batch(batch_id)
        if batch is None or batch.tenant != tenant:
            raise PolicyError("not_permitted", "no such batch")
        return route.certificate_key

    def accept_upload(self, tenant: str, user: str, batch_id: str, data: bytes) -> bool:
        """A contractor closed ``/outbox/<batch>.erasure.json``: check, publish, acknowledge.

        The certificate is published like a polled one; then it is stored in
        ``/outbox`` (create-once) for ``pull`` to read back, and
        ``certificate_uploaded`` is audited.

        Returns:
            True when this upload published the certificate (False: it was already).

        Raises:
            PolicyError: as :meth:`check_upload`.
            CertificateError: the certificate failed (audited, incident raised once).
            StorageError: it could not be stored (the contractor tries again).
        """
        key = self.check_upload(tenant, batch_id)
        batch = self._store.get_batch(batch_id)
        assert batch is not None  # checked above; batches are never deleted
        with self._lock:
            try:
                published = publish_certificate(
                    self._store, self._storage, self._status, self._audit, batch_id, data, key,
                    clock=self._clock,
                )  # fmt: skip
            except CertificateError as exc:
                reject_certificate(
                    self._store, self._audit, batch, exc, via="upload", clock=self._clock
                )
                raise
            store_once(self._storage, tenant, Area.OUTBOX, certificate_file_name(batch_id), data)
        self._audit.emit(
            "certificate_uploaded",
            batch=batch_id,
            tenant=tenant,
            user=user,
            size_bytes=len(data),
            published=published,
        )
        return published
