"""Tests for gateway.state_batches: transitions with bookkeeping, events, incidents, migration."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pipeline import BatchState, IllegalTransitionError
from gateway.state import (
    SCHEMA_VERSION,
    BatchEvent,
    BatchRecord,
    StateError,
    StateStore,
    TransitionConflictError,
)

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)
BATCH = "20260715-KAIGO-7F3KQ2"
S = BatchState

V1_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE accounts (name TEXT PRIMARY KEY, role TEXT NOT NULL, tenant TEXT NOT NULL,
        public_key TEXT NOT NULL, key_fingerprint TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL, allow_cidrs TEXT NOT NULL,
        admin_locked INTEGER NOT NULL DEFAULT 0, locked_until TEXT,
        failed_logins INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    """CREATE TABLE batches (batch_id TEXT PRIMARY KEY, tenant TEXT NOT NULL,
        uploader TEXT NOT NULL, file_name TEXT NOT NULL, size INTEGER NOT NULL,
        sha256 TEXT NOT NULL, state TEXT NOT NULL, received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL, reason TEXT)""",
    "CREATE INDEX batches_by_tenant ON batches (tenant)",
    "INSERT INTO meta (key, value) VALUES ('schema_version', '1')",
)
"""The schema the drop service (issue 3) created, verbatim in effect."""


def _batch(batch_id: str = BATCH) -> BatchRecord:
    return BatchRecord(
        batch_id, "shinjuku", "ward-a", f"{batch_id}.age", 10, "ab" * 32, S.RECEIVED, T0, T0
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A fresh store holding one RECEIVED batch."""
    opened = StateStore.open(tmp_path / "state.db")
    opened.insert_batch(_batch())
    yield opened
    opened.close()


def test_version_1_database_is_migrated_keeping_its_batches(tmp_path: Path) -> None:
    """A database made by the drop service opens: version 2, its batch with a RECEIVED event."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO batches VALUES "
            "(?, 'shinjuku', 'ward-a', ?, 10, ?, 'received', ?, ?, NULL)",
            (BATCH, f"{BATCH}.age", "ab" * 32, T0.isoformat(), T0.isoformat()),
        )
    conn.close()
    with StateStore.open(path, create=False) as store:
        batch = store.get_batch(BATCH)
        assert batch is not None and (batch.attempts, batch.cleared_at, batch.status_seq) == (
            0,
            None,
            0,
        )
        assert store.events(BATCH) == [BatchEvent(BATCH, 1, S.RECEIVED, T0, None)]
        assert batch.seq == 1
        assert [b.batch_id for b in store.pending_batches()] == [BATCH]
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert version == str(SCHEMA_VERSION) == "3"
    StateStore.open(path, create=False).close()  # opening again changes nothing


def test_transition_records_event_and_bookkeeping_in_one_step(store: StateStore) -> None:
    """Each transition appends seq n+1 and sets only the given bookkeeping columns."""
    later = T0 + timedelta(seconds=5)
    batch, event = store.transition(BATCH, S.RECEIVED, S.VERIFIED, None, later)
    assert (batch.state, event.seq, event.at) == (S.VERIFIED, 2, later)
    batch, event = store.transition(
        BATCH, S.VERIFIED, S.FORWARDING, None, later, attempts=1, next_attempt_at=None
    )
    retry_at = later + timedelta(seconds=2)
    batch, event = store.transition(
        BATCH, S.FORWARDING, S.FAILED_RETRYING, "destination_missing", later,
        next_attempt_at=retry_at,
    )  # fmt: skip
    assert (batch.attempts, batch.next_attempt_at, batch.reason) == (
        1,
        retry_at,
        "destination_missing",
    )
    assert [(e.seq, e.state, e.reason) for e in store.events(BATCH)] == [
        (1, S.RECEIVED, None),
        (2, S.VERIFIED, None),
        (3, S.FORWARDING, None),
        (4, S.FAILED_RETRYING, "destination_missing"),
    ]


def test_transition_from_the_wrong_state_changes_nothing(store: StateStore) -> None:
    """Expecting another state → TransitionConflictError; an illegal move or batch → refused."""
    with pytest.raises(TransitionConflictError):
        store.transition(BATCH, S.VERIFIED, S.FORWARDING, None, T0)
    with pytest.raises(IllegalTransitionError):
        store.transition(BATCH, S.RECEIVED, S.FORWARDED, None, T0)
    with pytest.raises(StateError, match="no batch"):
        store.transition("20260715-KAIGO-AAAAAA", S.RECEIVED, S.VERIFIED, None, T0)
    assert len(store.events(BATCH)) == 1
    batch = store.get_batch(BATCH)
    assert batch is not None and batch.state is S.RECEIVED


def test_incident_is_remembered_once(store: StateStore) -> None:
    """add_incident is True the first time per (batch, kind) only."""
    assert store.add_incident(BATCH, "no_route", T0, "no forward")
    assert not store.add_incident(BATCH, "no_route", T0)
    assert store.add_incident(BATCH, "quarantine", T0)
    assert store.incidents(BATCH) == ["no_route", "quarantine"]


def test_pending_batches_are_in_progress_uncleared_or_unstated(store: StateStore) -> None:
    """A FORWARDED batch is pending until its copy is cleared and its status record written."""
    store.transition(BATCH, S.RECEIVED, S.VERIFIED, None, T0)
    store.transition(BATCH, S.VERIFIED, S.FORWARDING, None, T0)
    store.transition(BATCH, S.FORWARDING, S.FORWARDED, None, T0)
    assert [b.batch_id for b in store.pending_batches()] == [BATCH]
    store.update_batch(BATCH, cleared_at=T0)
    assert [b.batch_id for b in store.pending_batches()] == [BATCH]  # record lags (seq 4)
    store.update_batch(BATCH, status_seq=4)
    assert store.pending_batches() == []


def test_status_seq_only_grows(store: StateStore) -> None:
    """update_batch(status_seq=…) never lowers the recorded status sequence."""
    store.update_batch(BATCH, status_seq=3)
    store.update_batch(BATCH, status_seq=2)
    batch = store.get_batch(BATCH)
    assert batch is not None and batch.status_seq == 3
    with pytest.raises(StateError):
        store.update_batch("20260715-KAIGO-AAAAAA", attempts=1)


def test_list_batches_by_state_reads_only_those(store: StateStore) -> None:
    """The certificate poll asks for FORWARDED/PULLED only, never the whole history."""
    for number in range(200):
        store.insert_batch(_batch(f"20260715-KAIGO-{number:06d}"))
    store.transition("20260715-KAIGO-000007", S.RECEIVED, S.VERIFIED, None, T0)
    store.transition("20260715-KAIGO-000007", S.VERIFIED, S.FORWARDED, None, T0)
    found = store.list_batches(states={S.FORWARDED, S.PULLED})
    assert [b.batch_id for b in found] == ["20260715-KAIGO-000007"]
    assert store.list_batches(tenant="nobody", states={S.RECEIVED}) == []
    assert len(store.list_batches(states={S.RECEIVED})) == 200
    assert store.list_batches(states=set()) == []
