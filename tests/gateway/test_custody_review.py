"""Regression tests of the custody review (issue 6): one set of rules, a journal that keeps its
method, the spool under the custody lock, and ``erasing`` shown where an erasure stopped."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from custody import erasure_certificate as rules
from gateway import certificate_pdf, certificates, spool, state_custody
from gateway.incidents import find_overdue
from gateway.spool import BatchState, Spool, SpoolBusyError, batch_state
from gateway.state import ErasureItem, ErasureRecord, StateStore
from tests.gateway.test_envelope_check import sealed_envelope

BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"


def test_one_list_of_item_kinds_and_one_size_limit() -> None:
    """The gateway, the journal, the PDF and the spool use the shared rules, not copies."""
    assert state_custody.ITEM_KINDS is rules.ITEM_KINDS
    assert certificates.ITEM_KINDS is rules.ITEM_KINDS
    assert set(certificate_pdf.KIND_LABELS) == set(rules.ITEM_KINDS)
    assert certificates.MAX_CERTIFICATE_BYTES == spool.MAX_ERASURE_BYTES
    assert spool.MAX_ERASURE_BYTES == rules.MAX_CERTIFICATE_BYTES


def _record(method: str | None) -> ErasureRecord:
    now = datetime.now().astimezone()
    item = ErasureItem("envelope", f"/s/{BATCH}.age", 10, "e" * 64)
    return ErasureRecord(BATCH, TENANT, "dvd", "yamada", "sato", now, None, (item,), None, method)


def test_the_journal_keeps_the_overwrite_method(tmp_path: Path) -> None:
    """L5: the method is recorded when the erasure starts and comes back on resume."""
    with StateStore.open(tmp_path / "state.db", create=True) as store:
        started = store.start_erasure(_record("zero-overwrite-3-pass+unlink"))
        assert started.method == "zero-overwrite-3-pass+unlink"
        again = store.get_erasure(BATCH)
        assert again is not None and again.method == "zero-overwrite-3-pass+unlink"
        assert store.start_erasure(_record("zero-overwrite-1-pass+unlink")) == again


def test_a_journal_written_before_the_method_was_reads_as_none(tmp_path: Path) -> None:
    """A bare list of items (the first version's column) still reads; its method is None."""
    database = tmp_path / "state.db"
    with StateStore.open(database, create=True) as store:
        store.start_erasure(_record(None))
    legacy = json.dumps([{"kind": "envelope", "path": "/s/x", "size": 10, "sha256": "e" * 64}])
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        conn.execute("UPDATE custody_erasures SET items = ?", (legacy,))
    with StateStore.open(database, create=False) as store:
        record = store.get_erasure(BATCH)
    assert record is not None and record.method is None and record.items[0].path == "/s/x"


def _deliver(root: Path) -> Spool:
    envelope = sealed_envelope(BATCH)
    made = Spool(root)
    made.deliver(
        BATCH, io.BytesIO(envelope), tenant=TENANT, channel="lgwan", expected_size=len(envelope),
        expected_sha256=hashlib.sha256(envelope).hexdigest(), source_detail={},
    )  # fmt: skip
    return made


def test_a_delivery_during_an_erasure_is_busy_and_leaves_nothing(tmp_path: Path) -> None:
    """H1: ``Spool.deliver`` takes the custody lock; while ``erase`` holds it: busy, nothing."""
    root = tmp_path / "spool"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SpoolBusyError, match="an erasure is running"):
            _deliver(root)
    finally:
        os.close(fd)
    assert list(root.iterdir()) == []
    assert _deliver(root).get(BATCH) is not None  # and afterwards it goes through


def test_a_batch_whose_erasure_stopped_is_listed_as_erasing(tmp_path: Path) -> None:
    """M4: envelope gone, no certificate copy yet, erasure recorded: listed, ``erasing``."""
    made = _deliver(tmp_path / "spool")
    (made.root / f"{BATCH}.age").unlink()
    assert made.list() == []
    [arrival] = made.list(erasing={BATCH})
    assert batch_state(arrival, tmp_path / "work", journaled=True) is BatchState.ERASING
    made.write_erasure(BATCH, b"{}\n")
    [arrival] = made.list(erasing={BATCH})
    assert batch_state(arrival, tmp_path / "work", journaled=True) is BatchState.ERASED


def test_overdue_says_erasing_for_a_recorded_unfinished_erasure(tmp_path: Path) -> None:
    """M4: ``overdue`` lists such a batch as ``erasing`` (not as erased, not as gone)."""
    made = _deliver(tmp_path / "spool")
    (made.root / f"{BATCH}.age").unlink()
    with StateStore.open(tmp_path / "state.db", create=True) as store:
        store.start_erasure(_record("zero-overwrite-1-pass+unlink"))
        later = datetime.now().astimezone() + timedelta(days=30)
        [found] = find_overdue(made, tmp_path / "work", store, days=14, now=later)
    assert (found.batch_id, found.state) == (BATCH, "erasing")
