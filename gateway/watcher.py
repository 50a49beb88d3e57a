"""The file watcher: a backstop that wakes the forwarder when a completed upload appears.

The drop service's completion notifies the forwarder directly; this watchdog
observer on the storage's ``tenants/`` tree catches what that path could miss
(and the periodic rescan catches what the watcher misses: inotify drops events
silently when its queue overflows). It acts only on final ``<batch>.age``
names in a tenant's ``inbox`` — never ``.part`` uploads, receipts or anything
else — and only *wakes* the forwarder: the state database decides what is
processed, so an event seen twice, or for a file with no batch record yet,
does nothing.

The only module that imports watchdog (STYLE: one third-party I/O library, one
module). If the observer cannot start (no inotify watches left), the gateway
runs on without it and audits ``watcher_failed``.
"""

import logging
import warnings
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from gateway.audit import AuditLog
from gateway.policy import Area, NameKind, batch_of, name_kind
from gateway.storage import TENANTS_DIR

JOIN_SECONDS = 5.0
_INACTIVE = "called when the thread is inactive"
"""watchdog's log line when an event arrives while its observer stops (harmless, and serve's
stderr carries nothing but its listening line)."""


class _StoppingRace(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _INACTIVE not in record.getMessage()


_QUIET = _StoppingRace()
EVENTS = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]
"""What the handler acts on; the inotify mask is built from it, so the kernel does not
report every upload write (IN_MODIFY), which woke this thread 32 times per MiB received."""
_DUPLICATE_WATCH = "Callback with id"
"""watchdog's RuntimeWarning when a new directory is registered twice (harmless; serve's
stderr carries nothing but its listening line)."""

Notify = Callable[[str], None]


def completed_batch(path: str | bytes) -> str | None:
    """The batch id when ``path`` names ``…/<tenant>/inbox/<batch>.age``, else None."""
    text = path.decode("utf-8", "surrogateescape") if isinstance(path, bytes) else path
    pure = PurePath(text)
    if pure.parent.name != Area.INBOX.value or name_kind(pure.name) is not NameKind.COMPLETE:
        return None
    return batch_of(pure.name)


class _Handler(FileSystemEventHandler):
    def __init__(self, notify: Notify) -> None:
        super().__init__()
        self._notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "moved", "closed"):
            return
        target = getattr(event, "dest_path", "") or event.src_path
        batch = completed_batch(target)
        if batch is not None:
            self._notify(batch)


class Watcher:
    """Watches every tenant inbox under the storage root; :meth:`start` / :meth:`stop`."""

    def __init__(self, storage_root: Path, notify: Notify, audit: AuditLog | None = None) -> None:
        """Watch ``storage_root/tenants`` recursively; call ``notify(batch_id)`` on completed names.

        Args:
            storage_root: The configured ``[storage] root``.
            notify: What to wake (the forwarder's ``notify``).
            audit: Where a failure to start is reported (optional).
        """
        self._root = storage_root / TENANTS_DIR
        self._notify = notify
        self._audit = audit
        self._observer: Any = None

    @property
    def running(self) -> bool:
        """Whether the observer is watching."""
        return self._observer is not None and bool(self._observer.is_alive())

    def start(self) -> None:
        """Start observing (a failure is audited, not raised: the rescan still runs)."""
        if self._observer is not None:
            return
        warnings.filterwarnings("ignore", message=_DUPLICATE_WATCH, category=RuntimeWarning)
        logging.getLogger("watchdog.observers.inotify").addFilter(_QUIET)  # once: a set
        observer = Observer()
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            observer.schedule(
                _Handler(self._notify), str(self._root), recursive=True, event_filter=EVENTS
            )
            observer.start()
        except (OSError, RuntimeError) as exc:
            if self._audit is not None:
                self._audit.emit("watcher_failed", error=f"{type(exc).__name__}: {exc}")
            return
        self._observer = observer

    def stop(self) -> None:
        """Stop observing; idempotent."""
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(JOIN_SECONDS)
