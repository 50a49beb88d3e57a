"""The forwarder: a dispatcher thread handing received batches to delivery threads.

The state database is the queue (:meth:`gateway.state.StateStore.pending_batches`).
What detects a batch — the completion (:meth:`Forwarder.notify`), the file
watcher, the start-up pass and the rescan every ``rescan_seconds`` — only wakes
the dispatcher, which asks the database what is due and hands each due batch to
a delivery thread (:mod:`gateway.forward_workers`: several batches at once, each
by one thread at a time). Each step is a transition from the state it expects.

For each due batch its thread takes as many steps as it can now
(:func:`gateway.pipeline.next_step`): the envelope check → VERIFIED or QUARANTINED
(``incident_raised`` kind ``quarantine``); a delivery (:mod:`gateway.destinations`)
→ FORWARDED, or FAILED_RETRYING with a jittered back-off doubling from
``backoff_initial_ms`` to ``backoff_max_seconds`` and, past ``max_attempts`` or
``max_age_minutes``, ``incident_raised`` kind ``forward_failed`` (it keeps
retrying: data is never dropped); then the inbox copy is deleted after
``retention_seconds`` (``batch_deleted``). A tenant without a route keeps its
batches RECEIVED (``incident_raised`` kind ``no_route``). The dispatcher also
polls the print sites' erasure certificates (:mod:`gateway.certificate_intake`)
at start-up and every rescan; receipts a full disk kept from being written are
signed here (:func:`gateway.receipts.ensure_receipt`); :meth:`Forwarder.stop`
cuts the links of interruptible destinations (SIGTERM never waits).

Every transition is audited (``batch_state_changed``) and stated in a signed
status record (:mod:`gateway.status`). A batch found FORWARDING at start-up was
interrupted: FAILED_RETRYING (``interrupted``), delivered again — destinations
are idempotent, so it arrives exactly once.
"""

import functools
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway import pipeline
from gateway.audit import AuditLog, local_now
from gateway.certificate_intake import CertificateIntake
from gateway.config import GatewayConfig, load_private_key
from gateway.destinations import (
    DeliveryError,
    Destination,
    Interruptible,
    SourceChangedError,
    TenantRoute,
    build_routes,
    open_source,
)
from gateway.envelope_check import CheckResult, check_envelope
from gateway.forward_workers import Turns, WakeQueue, Workers, is_due, next_wait
from gateway.pipeline import BatchState, Situation, Step
from gateway.policy import Area, PolicyError
from gateway.receipts import ensure_receipt
from gateway.routes import RouteKind
from gateway.state import BatchRecord, StateError, StateStore
from gateway.status import StatusWriter
from gateway.storage import Storage, StorageError

JOIN_SECONDS = 30.0
"""How long :meth:`Forwarder.stop` waits for the worker."""
ERROR_PAUSE_SECONDS = 1.0
"""Pause of the worker after an unexpected error (so it cannot spin)."""
MAX_STEPS = 8
"""Most steps taken for one batch in one pass (a guard; a batch needs at most five)."""

Clock = Callable[[], datetime]
Jitter = Callable[[], float]
Checker = Callable[..., CheckResult]


def _jitter() -> float:
    return secrets.SystemRandom().uniform(0.5, 1.0)


class Forwarder:
    """The forwarding worker; :meth:`start` it with the server, :meth:`stop` it on SIGTERM."""

    def __init__(
        self,
        config: GatewayConfig,
        store: StateStore,
        storage: Storage,
        audit: AuditLog,
        status: StatusWriter,
        queue: WakeQueue,
        *,
        routes: Mapping[str, TenantRoute] | None = None,
        clock: Clock = local_now,
        jitter: Jitter = _jitter,
        checker: Checker = check_envelope,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        """Bind the parts; ``routes`` default to :func:`build_routes` of ``config``.

        Args:
            config: The gateway configuration ([forwarder], [envelope], [tenants]).
            store: The state database (the queue).
            storage: The confined storage (inboxes, outboxes, quarantine).
            audit: The audit log.
            status: Writes the signed status records.
            queue: What wakes the worker (completions, the watcher, :meth:`stop`).
            routes: Destinations by tenant (tests may give their own).
            clock: Current timezone-aware time.
            jitter: A random factor in [0.5, 1.0] for the back-off.
            checker: The envelope check (:func:`gateway.envelope_check.check_envelope`).
            signing_key: Signs a receipt the completion could not write (loaded
                from ``[keys] signing_key`` when first needed if not given).
        """
        self._config = config
        self._signing_key = signing_key
        self._cfg = config.forwarder
        self._envelope = config.envelope
        self._store = store
        self._storage = storage
        self._audit = audit
        self._status = status
        self._routes = dict(build_routes(config, storage) if routes is None else routes)
        self._clock = clock
        self._jitter = jitter
        self._checker = checker
        self._queue = queue
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.certificates = CertificateIntake(
            store, storage, status, audit, self._routes, clock=clock
        )
        """Erasure certificates: polled here, uploaded through :mod:`gateway.sftp_fs`."""
        self._next_poll = 0.0
        self._workers: Workers | None = None
        self._turns = Turns(route.destination for route in self._routes.values())

    # -- lifecycle ---------------------------------------------------------------------------

    def notify(self, batch_id: str) -> None:
        """A batch may have work (the id is a hint: the database decides). Wakes the worker."""
        self._queue.notify(batch_id)

    def start(self) -> None:
        """Start the dispatcher and its delivery threads (first every unfinished batch is due)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        for destination in self._interruptible():
            destination.resume()
        self._workers = Workers(self._work, self._after)
        self._workers.start()
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = JOIN_SECONDS) -> None:
        """Stop the worker: a delivery in progress is interrupted and retried at the next start."""
        self._stopping.set()
        for destination in self._interruptible():
            destination.interrupt()  # a peer that never answers must not hold the stop
        self._queue.notify("")
        deadline = time.monotonic() + timeout
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        workers, self._workers = self._workers, None
        if workers is not None:
            workers.stop(max(0.0, deadline - time.monotonic()))

    def _interruptible(self) -> list[Interruptible]:
        destinations: list[object] = [route.destination for route in self._routes.values()]
        return [d for d in destinations if isinstance(d, Interruptible)]

    def _run(self) -> None:
        self._guarded(self.recover)
        while not self._stopping.is_set():
            # The database is read after each wake-up: a notify that comes while it
            # is being read leaves the queue set, so the next wait returns at once.
            delay = self._guarded(lambda: self.run_once(wait=False))
            self._guarded(self._poll_when_due)
            timeout = float(self._cfg.rescan_seconds)
            if delay is None:
                timeout = ERROR_PAUSE_SECONDS
            elif delay != float("inf"):
                timeout = min(timeout, delay)
            self._queue.wait(max(timeout, 0.0))

    def _guarded(self, step: Callable[[], float]) -> float | None:
        """Run ``step``; an unexpected error is audited and the worker carries on."""
        try:
            return step()
        except Exception as exc:
            self._audit.emit("forwarder_failed", error=f"{type(exc).__name__}: {exc}")
            return None

    def _poll_when_due(self) -> float:
        """Poll for erasure certificates at start-up and then once every rescan interval."""
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + float(self._cfg.rescan_seconds)
            self.poll_certificates()
        return 0.0

    def poll_certificates(self) -> int:
        """One certificate pass (:meth:`CertificateIntake.poll`); returns how many published."""
        published = self.certificates.poll(self._stopping)
        if published:
            self._queue.notify("")
        return published

    # -- the queue ---------------------------------------------------------------------------

    def recover(self) -> float:
        """Make every unfinished batch due now (start-up); return 0."""
        for batch in self._store.pending_batches():
            if batch.next_attempt_at is not None:
                self._store.update_batch(batch.batch_id, next_attempt_at=None)
        return 0.0

    def run_once(self, *, wait: bool = True) -> float:
        """Process every due batch, oldest due first: on the delivery threads once started
        (:mod:`gateway.forward_workers`), else one after another in this thread.

        Args:
            wait: Return only once every batch handed out now was processed.

        Returns:
            Seconds until the next batch is due (``inf`` when none is waiting).
        """
        now = self._clock()
        due = [b for b in self._store.pending_batches() if is_due(b, now)]
        due.sort(key=lambda b: (b.next_attempt_at or b.received_at, b.received_at))
        workers = self._workers
        handed: list[threading.Event] = []
        for batch in due:
            if self._stopping.is_set():
                return 0.0
            if workers is None:
                self._work(batch)
            elif (done := workers.submit(batch)) is not None:
                handed.append(done)
        if wait:
            for done in handed:
                done.wait()
        busy = set() if workers is None else workers.busy()
        return next_wait(self._store.pending_batches(), due, busy, self._clock())

    def _work(self, batch: BatchRecord) -> None:
        """Process one batch as stored now; one broken batch must not stop the others."""
        if self._stopping.is_set():
            return
        try:
            fresh = self._store.get_batch(batch.batch_id)  # it may have waited in the queue
            if fresh is not None and is_due(fresh, self._clock()):
                self.process(fresh)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self._audit.emit(
                "forwarder_failed", batch=batch.batch_id, tenant=batch.tenant, error=error
            )
            self._schedule(batch.batch_id, self._backoff(1))

    def _after(self, batch: BatchRecord, failed: bool) -> None:
        """A delivery thread let go of ``batch``: wake the dispatcher if it must look again."""
        if failed:  # an error its own handling could not report: retry later, never spin
            self._stopping.wait(ERROR_PAUSE_SECONDS)
        after = self._store.get_batch(batch.batch_id)
        if failed or (after is not None and after.next_attempt_at is not None):
            self._queue.notify("")  # scheduled: the dispatcher learns when to look again

    def process(self, batch: BatchRecord) -> BatchRecord:
        """Take ``batch`` as far through the pipeline as it can go now; return it as left.

        The status record is written before a delivery starts and once at the end
        (it states the batch's state as stored, so intermediate states need no
        record of their own).
        """
        for _ in range(MAX_STEPS):
            if self._stopping.is_set():
                break
            tenant = self._routes.get(batch.tenant)
            kind = RouteKind.NONE if tenant is None else tenant.route.kind
            step = pipeline.next_step(
                Situation(
                    batch.state,
                    has_route=kind is not RouteKind.NONE,
                    pull=kind is RouteKind.PULL,
                    copy_cleared=batch.cleared_at is not None,
                )
            )
            if step is Step.NONE:
                break
            after = self._take(step, batch, tenant)
            if after is None:
                break
            batch = after
        self._state_status(batch.batch_id)
        return batch

    def _take(
        self, step: Step, batch: BatchRecord, tenant: TenantRoute | None
    ) -> BatchRecord | None:
        """Do one step; the batch afterwards, or None when it waits (scheduled or done)."""
        if step is Step.NO_ROUTE:
            self._incident("no_route", batch, "the tenant has no forward route in gateway.toml")
            self._schedule(batch.batch_id, float(self._cfg.rescan_seconds))
            return None
        if step is Step.VERIFY:
            if not self._receipted(batch):  # the completion notifies once it is written
                return None
            return self._verify(batch)
        if step is Step.RESUME:
            return self._move(
                batch, BatchState.FAILED_RETRYING, "interrupted", next_attempt_at=None
            )
        if step is Step.CLEAR:
            return self._clear(batch)
        if tenant is None or tenant.destination is None:  # next_step saw a route: cannot happen
            return None
        if step is Step.PUBLISH:
            return self._publish(batch, tenant, tenant.destination)
        if step is Step.RETRY and not is_due(batch, self._clock()):
            return None
        return self._send(batch, tenant, tenant.destination)

    # -- steps -------------------------------------------------------------------------------

    def _receipted(self, batch: BatchRecord) -> bool:
        """Whether the batch's receipt is written: only then is its reception complete.

        A batch leaves RECEIVED only once it has its receipt. One whose receipt
        is still missing after the grace period (a crash, or a full disk while
        it was written) gets it here (:func:`gateway.receipts.ensure_receipt`);
        until then the batch is looked at again on every wake-up (the
        completion's notify comes right after the receipt) and every rescan.
        """
        try:
            return ensure_receipt(
                self._storage, self._audit, batch, self._receipt_key, self._clock()
            )
        except StorageError as exc:
            self._audit.emit("forwarder_failed", batch=batch.batch_id, tenant=batch.tenant,
                       error=f"signing the missing receipt: {exc}")  # fmt: skip
            self._schedule(batch.batch_id, float(self._cfg.rescan_seconds))
            return False

    def _receipt_key(self) -> Ed25519PrivateKey:
        if self._signing_key is None:
            keys = self._config.keys
            self._signing_key = load_private_key(self._config, "keys.signing_key", keys.signing_key)
        return self._signing_key

    def _verify(self, batch: BatchRecord) -> BatchRecord | None:
        try:
            with open_source(self._storage, batch, self._stopping, verify=False)() as stream:
                result = self._checker(
                    stream,
                    min_work_factor=self._envelope.min_work_factor,
                    max_work_factor=self._envelope.max_work_factor,
                    expected_size=batch.size,
                    expected_sha256=batch.sha256,
                )
        except DeliveryError as exc:
            if exc.reason == "source_missing":
                now = self._clock()
                moved = self._move(batch, BatchState.QUARANTINED, "missing", cleared_at=now)
                self._incident("quarantine", moved, "the gateway's copy has disappeared")
                return None
            self._schedule(batch.batch_id, self._backoff(1))
            return None
        if result.ok:
            return self._move(batch, BatchState.VERIFIED, None, next_attempt_at=None)
        reason = result.reason.value if result.reason else "rejected"
        moved = self._move(batch, BatchState.QUARANTINED, reason)
        self._quarantine_copy(moved, result.message)
        return None

    def _send(
        self, batch: BatchRecord, tenant: TenantRoute, destination: Destination
    ) -> BatchRecord | None:
        """Deliver now; or, while the destination (sftp://) is busy with another batch, leave
        this one as it is: the batch in its turn wakes the dispatcher when it is done."""
        send = functools.partial(self._deliver, batch, tenant, destination)
        return self._turns.take(destination, send, lambda: self._queue.notify(""))

    def _deliver(
        self, batch: BatchRecord, tenant: TenantRoute, destination: Destination
    ) -> BatchRecord | None:
        tries = batch.attempts + 1
        batch = self._move(batch, BatchState.FORWARDING, None, attempts=tries, next_attempt_at=None)
        self._state_status(batch.batch_id)
        started = time.monotonic()
        try:
            delivery = destination.deliver(
                batch, open_source(self._storage, batch, self._stopping, verify=True)
            )
        except SourceChangedError as exc:
            moved = self._move(batch, BatchState.QUARANTINED, exc.reason)
            self._quarantine_copy(moved, exc.detail)
            return None
        except DeliveryError as exc:
            self._failed(batch, tenant, exc)
            return None
        except Exception as exc:  # a destination bug: retry, and say so
            failure = DeliveryError(True, "internal_error", f"{type(exc).__name__}: {exc}")
            self._failed(batch, tenant, failure)
            return None
        elapsed_ms = int((time.monotonic() - started) * 1000)
        forwarded = self._move(batch, BatchState.FORWARDED, None, next_attempt_at=None)
        self._audit.emit(
            "batch_forwarded",
            batch=batch.batch_id,
            tenant=batch.tenant,
            destination=tenant.route.describe(),
            location=delivery.location,
            size_bytes=batch.size,
            sha256=delivery.sha256,
            already=delivery.already,
            elapsed_ms=elapsed_ms,
        )
        return forwarded

    def _failed(self, batch: BatchRecord, tenant: TenantRoute, exc: DeliveryError) -> None:
        """A delivery failed: schedule the retry (FAILED_RETRYING unless pull), audit, alert.

        A retryable failure waits the back-off of its attempt; one that needs
        someone to act (a conflict) waits the maximum. Either way it is retried.
        """
        maximum = float(self._cfg.backoff_max_seconds)
        now = self._clock()
        if batch.state is BatchState.FORWARDING:
            attempts = batch.attempts
            delay = self._backoff(attempts) if exc.retryable else maximum
            retry_at = now + timedelta(seconds=delay)
            self._move(batch, BatchState.FAILED_RETRYING, exc.reason, next_attempt_at=retry_at)
        else:  # pull mode publishes from VERIFIED: no state to move to, only bookkeeping
            attempts = batch.attempts + 1
            delay = self._backoff(attempts) if exc.retryable else maximum
            retry_at = now + timedelta(seconds=delay)
            self._store.update_batch(batch.batch_id, attempts=attempts, next_attempt_at=retry_at)
        self._audit.emit(
            "delivery_failed",
            batch=batch.batch_id,
            tenant=batch.tenant,
            destination=tenant.route.describe(),
            reason=exc.reason,
            detail=exc.detail,
            retryable=exc.retryable,
            attempt=attempts,
            retry_in_ms=int(delay * 1000),
        )
        if exc.reason == "conflict":
            self._incident("conflict", batch, exc.detail or "a different batch of that id exists")
        age = (now - batch.received_at).total_seconds()
        section = tenant.section
        if pipeline.overdue(attempts, age, section.max_attempts, section.max_age_minutes):
            self._incident("forward_failed", batch, f"{attempts} attempts, last: {exc.reason}")

    def _publish(
        self, batch: BatchRecord, tenant: TenantRoute, destination: Destination
    ) -> BatchRecord | None:
        try:
            delivery = destination.deliver(
                batch, open_source(self._storage, batch, self._stopping, verify=True)
            )
        except DeliveryError as exc:
            self._failed(batch, tenant, exc)
            return None
        now = self._clock()
        published = self._move(
            batch, BatchState.FORWARDED, "waiting_for_pull", next_attempt_at=None, cleared_at=now
        )
        self._audit.emit(
            "batch_published",
            batch=batch.batch_id,
            tenant=batch.tenant,
            location=delivery.location,
            size_bytes=batch.size,
            already=delivery.already,
        )
        return published

    def _clear(self, batch: BatchRecord) -> BatchRecord | None:
        """Remove the inbox copy of a finished batch (quarantine it if it was rejected)."""
        if batch.state is BatchState.QUARANTINED:
            self._quarantine_copy(batch, "")
            return None
        now = self._clock()
        retention = timedelta(seconds=self._cfg.retention_seconds)
        if batch.state is BatchState.FORWARDED and now < batch.updated_at + retention:
            self._store.update_batch(batch.batch_id, next_attempt_at=batch.updated_at + retention)
            return None
        path = f"/inbox/{batch.file_name}"
        try:
            self._storage.remove(batch.tenant, Area.INBOX, batch.file_name)
        except StorageError as exc:
            if exc.reason != "not_found":
                raise
        else:
            self._audit.emit(
                "batch_deleted",
                batch=batch.batch_id,
                tenant=batch.tenant,
                path=path,
                retention_seconds=self._cfg.retention_seconds,
            )
        self._store.update_batch(batch.batch_id, cleared_at=now, next_attempt_at=None)
        return None

    def _quarantine_copy(self, batch: BatchRecord, detail: str) -> None:
        """Move a QUARANTINED batch's inbox copy to quarantine and raise the incident once."""
        label = batch.reason or "rejected"
        try:
            moved: str | None = self._storage.quarantine(
                batch.tenant, Area.INBOX, batch.file_name, label
            )
        except StorageError as exc:
            if exc.reason != "not_found":
                raise
            moved = None
        self._store.update_batch(batch.batch_id, cleared_at=self._clock(), next_attempt_at=None)
        self._incident("quarantine", batch, detail or label, reason=label, quarantined_as=moved)

    # -- pull confirmations ------------------------------------------------------------------

    def confirm_pulled(self, batch_id: str, tenant: str, user: str) -> None:
        """A contractor confirmed it pulled and verified ``batch_id``: FORWARDED → PULLED.

        Idempotent (a repeated confirmation of a PULLED batch is accepted, and so
        is a late one for a batch the print site has erased already).

        Raises:
            PolicyError: no such batch in ``tenant``, or it is not waiting for a pull.
        """
        batch = self._store.get_batch(batch_id)
        if batch is None or batch.tenant != tenant:
            raise PolicyError("not_permitted", "no such batch")
        if batch.state in (BatchState.PULLED, BatchState.ERASED):
            return  # confirmed again, or erased (its certificate came first)
        route = self._routes.get(tenant)
        if batch.state is not BatchState.FORWARDED or route is None:
            raise PolicyError("not_permitted", "the batch is not waiting for a pull")
        if route.route.kind is not RouteKind.PULL:
            raise PolicyError("not_permitted", "the batch is not waiting for a pull")
        self._move(batch, BatchState.PULLED, None, cleared_at=batch.cleared_at or self._clock())
        self._audit.emit("batch_pulled", batch=batch_id, tenant=tenant, user=user)
        self._state_status(batch_id)

    # -- helpers -----------------------------------------------------------------------------

    def _move(
        self, batch: BatchRecord, to: BatchState, reason: str | None, **bookkeeping: Any
    ) -> BatchRecord:
        """Transition and audit ``batch_state_changed`` (the status record follows, see process)."""
        moved, event = self._store.transition(
            batch.batch_id, batch.state, to, reason, self._clock(), **bookkeeping
        )
        self._audit.emit(
            "batch_state_changed",
            batch=batch.batch_id,
            tenant=batch.tenant,
            reason=reason,
            event_seq=event.seq,
            **{"from": batch.state.value, "to": to.value},
        )
        return moved

    def _state_status(self, batch_id: str) -> None:
        """Write the batch's status record if it lags; a failure is retried on a later pass."""
        try:
            self._status.publish(batch_id)
        except (StorageError, StateError) as exc:
            self._audit.emit("status_failed", batch=batch_id, error=str(exc))
            self._schedule(batch_id, float(self._cfg.rescan_seconds))

    def _incident(self, kind: str, batch: BatchRecord, detail: str, **fields: object) -> None:
        """Raise incident ``kind`` for ``batch`` once (audit first: never lost, rarely repeated)."""
        if kind in self._store.incidents(batch.batch_id):
            return
        self._audit.emit(
            "incident_raised",
            kind=kind,
            batch=batch.batch_id,
            tenant=batch.tenant,
            detail=detail,
            **fields,
        )
        self._store.add_incident(batch.batch_id, kind, self._clock(), detail)

    def _schedule(self, batch_id: str, seconds: float) -> None:
        at = self._clock() + timedelta(seconds=seconds)
        self._store.update_batch(batch_id, next_attempt_at=at)

    def _backoff(self, attempts: int) -> float:
        return pipeline.backoff_seconds(
            attempts,
            self._cfg.backoff_initial_ms / 1000,
            float(self._cfg.backoff_max_seconds),
            self._jitter(),
        )
