"""Tests for gateway.watcher: a real watchdog observer on tmp_path, only final inbox names."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.watcher import Watcher, completed_batch

BATCH = "20260715-KAIGO-7F3KQ2"


@pytest.mark.parametrize(
    ("path", "batch"),
    [
        (f"/s/tenants/shinjuku/inbox/{BATCH}.age", BATCH),
        (f"/s/tenants/shinjuku/inbox/{BATCH}.age.part", None),
        (f"/s/tenants/shinjuku/receipts/{BATCH}.receipt.json", None),
        (f"/s/tenants/shinjuku/outbox/{BATCH}.age", None),
        ("/s/tenants/shinjuku/inbox/../x.age", None),
        ("/s/tenants/shinjuku/inbox/notes.txt", None),
    ],
)
def test_completed_batch_accepts_only_final_inbox_names(path: str, batch: str | None) -> None:
    """Only …/inbox/<batch>.age names a completed upload."""
    assert completed_batch(path) == batch


def test_watcher_notifies_on_rename_to_age_only(tmp_path: Path) -> None:
    """Writing .part notifies nothing; its rename to .age notifies the batch id."""
    seen: list[str] = []
    got = threading.Event()

    def notify(batch_id: str) -> None:
        seen.append(batch_id)
        got.set()

    inbox = tmp_path / "tenants" / "shinjuku" / "inbox"
    inbox.mkdir(parents=True)
    watcher = Watcher(tmp_path, notify)
    watcher.start()
    try:
        assert watcher.running
        part = inbox / f"{BATCH}.age.part"
        part.write_bytes(b"x" * 1000)
        (tmp_path / "tenants" / "shinjuku" / "receipt.json").write_bytes(b"{}")
        time.sleep(0.3)
        assert seen == []
        part.rename(inbox / f"{BATCH}.age")
        assert got.wait(5), "no notification"
    finally:
        watcher.stop()
    assert set(seen) == {BATCH}
    assert not watcher.running


def test_watcher_sees_tenants_created_later(tmp_path: Path) -> None:
    """A tenant inbox created after the start is watched too (recursive)."""
    got = threading.Event()
    watcher = Watcher(tmp_path, lambda _batch: got.set())
    watcher.start()
    try:
        inbox = tmp_path / "tenants" / "minato" / "inbox"
        inbox.mkdir(parents=True)
        time.sleep(0.2)
        (inbox / f"{BATCH}.age").write_bytes(b"y")
        assert got.wait(5)
    finally:
        watcher.stop()


def test_watcher_does_not_ask_the_kernel_for_write_events(tmp_path: Path) -> None:
    """The inotify mask leaves out IN_MODIFY: upload writes do not wake the watcher."""
    from watchdog.observers.inotify_c import InotifyConstants

    watcher = Watcher(tmp_path, lambda _batch: None)
    watcher.start()
    try:
        emitters = list(watcher._observer.emitters)
        assert emitters
        for emitter in emitters:
            mask = emitter.get_event_mask_from_filter()
            assert not mask & InotifyConstants.IN_MODIFY
            assert mask & InotifyConstants.IN_MOVED_TO and mask & InotifyConstants.IN_CLOSE_WRITE
    finally:
        watcher.stop()


def test_watchdogs_stopping_race_is_not_logged(tmp_path: Path) -> None:
    """An event arriving while the observer stops makes watchdog log an error line, which
    would land on serve's stderr: that one line is filtered, other errors are not."""
    import logging

    watcher = Watcher(tmp_path, lambda _batch: None)
    watcher.start()
    watcher.stop()
    logger = logging.getLogger("watchdog.observers.inotify")
    race = logger.makeRecord(
        logger.name, logging.ERROR, __file__, 1,
        "InotifyEmitter.queue_events() called when the thread is inactive", (), None,
    )  # fmt: skip
    other = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "other", (), None)
    assert not logger.filter(race) and logger.filter(other)
