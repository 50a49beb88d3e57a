"""The gateway's composition root: builds every long-lived part from a configuration.

:func:`build` opens the state database, the audit log, the confined storage and
the keys named by a :class:`~gateway.config.GatewayConfig` and wires them into
one :class:`Gateway`. Nothing else constructs these parts for the server; there
are no global singletons.

Completed uploads reach the forwarding pipeline through one interface,
:class:`BatchQueue`. The durable queue is the ``batches`` table (a batch is
RECEIVED there before anyone is notified); ``notify`` only wakes a consumer, so
a lost notification delays a batch but never loses it. The consumer is the
:class:`~gateway.forwarder.Forwarder` built here (``serve`` starts and stops
its thread, with the :class:`~gateway.watcher.Watcher`).
"""

import threading
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.accounts import Accounts
from gateway.audit import AuditLog
from gateway.config import GatewayConfig, load_private_key
from gateway.errors import ConfigError, GatewayError
from gateway.forwarder import Forwarder
from gateway.i18n import _
from gateway.receipts import Completer
from gateway.state import StateError, StateStore
from gateway.status import StatusWriter
from gateway.storage import Limits, Storage, StorageError

INIT_HINT = "run 'lgwan-gateway init --root DIR' or pass --config DIR/gateway.toml"
"""English; shown to people through :func:`init_hint` (translated when it is called)."""


def init_hint() -> str:
    """:data:`INIT_HINT` in the chosen language."""
    return _("run 'lgwan-gateway init --root DIR' or pass --config DIR/gateway.toml")


class BatchQueue(Protocol):
    """Where the drop service announces a batch it has just received."""

    def notify(self, batch_id: str) -> None:
        """Batch ``batch_id`` is RECEIVED in the state database (wake the forwarder)."""


class _Both:
    """Announces to a caller's queue and to the forwarder."""

    def __init__(self, first: BatchQueue, second: BatchQueue) -> None:
        self._queues = (first, second)

    def notify(self, batch_id: str) -> None:
        for queue in self._queues:
            queue.notify(batch_id)


class EventBatchQueue:
    """The default :class:`BatchQueue`: an in-process notifier backed by a threading.Event.

    The consumer (the forwarder) calls :meth:`wait` and then reads the batches
    table; the ids returned are a hint, not the queue.
    """

    def __init__(self) -> None:
        """An empty notifier."""
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._pending: list[str] = []

    def notify(self, batch_id: str) -> None:
        """Remember ``batch_id`` and wake a waiting consumer."""
        with self._lock:
            self._pending.append(batch_id)
            self._event.set()

    def wait(self, timeout: float | None = None) -> list[str]:
        """Wait up to ``timeout`` seconds for notifications; return and forget them."""
        self._event.wait(timeout)
        with self._lock:
            pending, self._pending = self._pending, []
            self._event.clear()
        return pending


@dataclass
class Gateway:
    """The running gateway's parts, built by :func:`build`; close with :meth:`close`."""

    config: GatewayConfig
    store: StateStore
    accounts: Accounts
    audit: AuditLog
    storage: Storage
    signing_key: Ed25519PrivateKey = field(repr=False)
    host_key: Ed25519PrivateKey = field(repr=False)
    queue: BatchQueue
    completer: Completer
    status: StatusWriter
    forwarder: Forwarder
    _closers: ExitStack

    def close(self) -> None:
        """Close the audit log (final checkpoint), storage and database; idempotent."""
        self._closers.close()


def _now() -> datetime:
    return datetime.now().astimezone()


def build(
    config: GatewayConfig,
    *,
    queue: BatchQueue | None = None,
    clock: Callable[[], datetime] = _now,
) -> Gateway:
    """Open everything the drop service needs, as ``config`` says.

    Args:
        config: The loaded configuration.
        queue: Where received batches are announced; an EventBatchQueue if
            None. The forwarder waits on it (or, for a queue without ``wait``,
            on its own EventBatchQueue that is notified too).
        clock: Current timezone-aware time (tests may pin it).

    Returns:
        The wired gateway. On failure, whatever was opened is closed again.

    Raises:
        ConfigError: a key is missing, unreadable or not an Ed25519 private key;
            a tenant's destination cannot be set up (sftp:// keys).
        GatewayError: the state database, audit log or storage cannot be opened.
    """
    host_key = load_key(config, "server.host_key", config.server.host_key)
    signing_key = load_key(config, "keys.signing_key", config.keys.signing_key)
    with ExitStack() as stack:
        try:
            store = StateStore.open(config.path(config.state.database), create=False)
        except StateError as exc:
            raise GatewayError(str(exc), hint=init_hint()) from None
        stack.callback(store.close)
        log = config.path(config.audit.log)
        checkpoints = config.path(config.audit.checkpoints)
        for parent in {log.parent, checkpoints.parent}:
            parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        audit = AuditLog.open(
            log,
            checkpoints,
            signing_key,
            every_records=config.audit.checkpoint_every_records,
            every_seconds=config.audit.checkpoint_every_seconds,
            clock=clock,
        )
        stack.callback(audit.close)
        limits = Limits(
            max_upload_bytes=config.storage.max_upload_bytes,
            tenant_quota_bytes=config.storage.tenant_quota_bytes,
            reserve_free_bytes=config.storage.reserve_free_bytes,
        )
        try:
            storage = Storage(config.path(config.storage.root), limits)
        except StorageError as exc:
            raise GatewayError(
                _("storage {path}: {reason}").format(
                    path=config.path(config.storage.root), reason=exc
                )
            ) from None
        stack.callback(storage.close)
        status = StatusWriter(storage, store, signing_key)
        queue = queue if queue is not None else EventBatchQueue()
        wakeup = queue if isinstance(queue, EventBatchQueue) else EventBatchQueue()
        forwarder = Forwarder(config, store, storage, audit, status, wakeup, clock=clock)
        stack.callback(forwarder.stop)
        announce = queue if wakeup is queue else _Both(queue, wakeup)
        completer = Completer(storage, store, signing_key, audit, announce, clock)
        gateway = Gateway(
            config=config,
            store=store,
            accounts=Accounts(store, config.auth, clock),
            audit=audit,
            storage=storage,
            signing_key=signing_key,
            host_key=host_key,
            queue=queue,
            completer=completer,
            status=status,
            forwarder=forwarder,
            _closers=stack.pop_all(),
        )
    return gateway


def load_key(config: GatewayConfig, name: str, value: str) -> Ed25519PrivateKey:
    """Load one of the gateway's own keys (created by ``init``).

    Raises:
        ConfigError: as :func:`gateway.config.load_private_key`, with a hint to run init.
    """
    try:
        return load_private_key(config, name, value)
    except ConfigError as exc:
        exc.hint = exc.hint or init_hint()
        raise
