"""Tests for gateway.state_custody: the roster, openings, print log and erasures on real SQLite."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.state import (
    _MIGRATIONS,
    SCHEMA_VERSION,
    DuplicateStaffError,
    ErasureFinishedError,
    ErasureItem,
    ErasureRecord,
    OpenRecord,
    PrintRecord,
    ReopenReasonRequiredError,
    ReprintReasonRequiredError,
    StaffMember,
    StateError,
    StateStore,
    UnknownStaffError,
)
from tests.gateway.test_state_batches import V1_SCHEMA

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)
JST = timezone(timedelta(hours=9))
BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-KAIGO-9ZZZZ9"
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
ENVELOPE = ErasureItem("envelope", f"/srv/spool/{BATCH}.age", 1234, "ab" * 32)
PLAIN = ErasureItem("plaintext", f"/srv/work/{BATCH}/a.csv", 99, "cd" * 32)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A fresh store on a real SQLite file."""
    opened = StateStore.open(tmp_path / "state.db")
    yield opened
    opened.close()


def _member(name: str = "sato", role: str = "handler", **kw: object) -> StaffMember:
    fields: dict[str, object] = {
        "name": name,
        "role": role,
        "full_name": "佐藤 一郎",
        "password_hash": HASH,
        "active": True,
        "created_at": T0,
        "updated_at": T0,
        **kw,
    }
    return StaffMember(**fields)  # type: ignore[arg-type]


def _open(reason: str | None = None, at: datetime = T0, batch: str = BATCH) -> OpenRecord:
    return OpenRecord(
        batch, "shinjuku", "sato", at, "hand", "N-0001", reason, f"/srv/work/{batch}",
        ("a.csv", "b.csv"),
    )  # fmt: skip


def _print(store: StateStore, reason: str | None = None, **kw: object) -> PrintRecord:
    args: dict[str, object] = {
        "batch_id": BATCH,
        "file_name": "a.csv",
        "printer": "RICOH-01",
        "sheets": 120,
        "computer": "print-pc",
        "printed_at": T0,
        "handler": "sato",
        "reason": reason,
        **kw,
    }
    return store.add_print(**args)  # type: ignore[arg-type]


def _erasure(items: tuple[ErasureItem, ...] = (ENVELOPE, PLAIN), **kw: object) -> ErasureRecord:
    fields: dict[str, object] = {
        "batch_id": BATCH,
        "tenant": "shinjuku",
        "channel": "lgwan",
        "handler": "sato",
        "approver": "suzuki",
        "started_at": T0,
        "finished_at": None,
        "items": items,
        "certificate": None,
        **kw,
    }
    return ErasureRecord(**fields)  # type: ignore[arg-type]


# -- schema ---------------------------------------------------------------------------------------


def _version_2_database(path: Path) -> None:
    """A database as the forwarding pipeline (schema 2) left it: one account, one batch."""
    with sqlite3.connect(path) as conn:
        for statement in (*V1_SCHEMA, *_MIGRATIONS[1]):
            conn.execute(statement)
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO accounts VALUES ('ward-a', 'ward', 'shinjuku', 'ssh-ed25519 AAAA', "
            "'SHA256:aaa', ?, '[]', 0, NULL, 0, ?, ?)",
            (HASH, T0.isoformat(), T0.isoformat()),
        )
        conn.execute(
            "INSERT INTO batches (batch_id, tenant, uploader, file_name, size, sha256, state, "
            "received_at, updated_at) VALUES (?, 'shinjuku', 'ward-a', ?, 10, ?, 'received', ?, ?)",
            (BATCH, f"{BATCH}.age", "ab" * 32, T0.isoformat(), T0.isoformat()),
        )
    conn.close()


def _schema_version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        (version,) = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    return str(version)


def test_version_2_database_is_migrated_keeping_accounts_and_batches(tmp_path: Path) -> None:
    """A schema-2 database opens as version 3 with its data and empty, usable custody tables."""
    path = tmp_path / "state.db"
    _version_2_database(path)
    with StateStore.open(path, create=False) as store:
        assert store.get_account("ward-a") is not None
        batch = store.get_batch(BATCH)
        assert batch is not None and batch.size == 10
        assert (store.list_staff(), store.opens(), store.prints(), store.erasures()) == (
            [], [], [], [],
        )  # fmt: skip
        store.add_staff(_member())
        assert _print(store).occurrence == 1
    assert _schema_version(path) == str(SCHEMA_VERSION) == "3"
    with StateStore.open(path, create=False) as store:  # opening again changes nothing
        assert [m.name for m in store.list_staff()] == ["sato"]


def test_failed_migration_leaves_version_2_untouched(tmp_path: Path) -> None:
    """When a step of the v2->v3 migration fails, none of it stays: the database is still v2."""
    path = tmp_path / "state.db"
    _version_2_database(path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE custody_prints (x TEXT)")  # clashes with the third statement
    conn.close()
    with pytest.raises(StateError, match="not a usable state database"):
        StateStore.open(path, create=False)
    assert _schema_version(path) == "2"
    with sqlite3.connect(path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "staff" not in tables and "custody_opens" not in tables


# -- staff ----------------------------------------------------------------------------------------


def test_staff_round_trip_ordered_by_name_hash_out_of_repr(store: StateStore) -> None:
    """Members come back as stored, by name; the password hash never appears in a repr."""
    store.add_staff(_member("tanaka", "manager"))
    store.add_staff(_member("sato"))
    assert [m.name for m in store.list_staff()] == ["sato", "tanaka"]
    assert store.get_staff("tanaka") == _member("tanaka", "manager")
    assert store.get_staff("nobody") is None
    assert "argon2" not in repr(store.get_staff("sato"))


def test_duplicate_staff_name_is_refused_even_when_disabled(store: StateStore) -> None:
    """A name is never reused: adding it again fails, also after the member was disabled."""
    store.add_staff(_member())
    store.set_staff_active("sato", False, T0 + timedelta(days=1))
    with pytest.raises(DuplicateStaffError, match="'sato' already exists"):
        store.add_staff(_member(role="manager"))


def test_set_staff_active_and_password_hash(store: StateStore) -> None:
    """Disabling and re-hashing change only their column and the update time."""
    store.add_staff(_member())
    later = T0 + timedelta(hours=2)
    member = store.set_staff_active("sato", False, later)
    assert (member.active, member.updated_at, member.created_at) == (False, later, T0)
    store.set_staff_password_hash("sato", "$argon2id$new", later + timedelta(seconds=1))
    stored = store.get_staff("sato")
    assert stored is not None and stored.password_hash == "$argon2id$new" and not stored.active


def test_unknown_staff_cannot_be_changed(store: StateStore) -> None:
    """Changing a member who does not exist raises UnknownStaffError."""
    with pytest.raises(UnknownStaffError):
        store.set_staff_active("ghost", False, T0)
    with pytest.raises(UnknownStaffError):
        store.set_staff_password_hash("ghost", HASH, T0)


def test_naive_times_are_refused(store: StateStore) -> None:
    """A datetime without a timezone is never stored."""
    with pytest.raises(ValueError, match="timezone-aware"):
        store.add_staff(_member(created_at=datetime(2026, 7, 15)))
    assert store.list_staff() == []


# -- openings -------------------------------------------------------------------------------------


def test_openings_count_per_batch_and_a_reopening_needs_a_reason(store: StateStore) -> None:
    """The first opening is 1; another without a reason is refused and not recorded."""
    assert store.add_open(_open()) == 1
    assert store.add_open(_open(batch=OTHER)) == 1
    for missing in (None, "", "   "):
        with pytest.raises(ReopenReasonRequiredError) as refused:
            store.add_open(_open(missing))
        assert (refused.value.batch_id, refused.value.previous) == (BATCH, 1)
    assert len(store.opens(BATCH)) == 1
    assert store.add_open(_open("紙詰まりで出力をやり直すため", T0 + timedelta(hours=1))) == 2
    opens = store.opens(BATCH)
    assert [o.reason for o in opens] == [None, "紙詰まりで出力をやり直すため"]
    assert opens[0] == _open()
    assert opens[0].files == ("a.csv", "b.csv")
    assert len(store.opens()) == 3


def test_records_come_back_by_instant_whatever_their_offset(store: StateStore) -> None:
    """Oldest first compares instants: 09:30 JST (00:30 UTC) precedes 01:00 UTC."""
    store.add_open(_open(batch=OTHER, at=T0))
    earlier_jst = datetime(2026, 7, 15, 9, 30, tzinfo=JST)
    store.add_open(_open(batch=BATCH, at=earlier_jst))
    assert [o.batch_id for o in store.opens()] == [BATCH, OTHER]
    assert store.opens(BATCH)[0].opened_at == earlier_jst


# -- the print log --------------------------------------------------------------------------------


def test_print_occurrences_count_per_batch_and_file(store: StateStore) -> None:
    """Occurrence 1 for each file's first print, 2 for a reprint with a reason."""
    first = _print(store)
    assert first == PrintRecord(BATCH, "a.csv", "RICOH-01", 120, "print-pc", T0, "sato", None, 1)
    assert _print(store, file_name="b.csv").occurrence == 1
    assert _print(store, batch_id=OTHER).occurrence == 1
    again = _print(store, "トナー切れで印字がかすれたため", printed_at=T0 + timedelta(minutes=5))
    assert (again.occurrence, again.reason) == (2, "トナー切れで印字がかすれたため")
    assert [(p.file_name, p.occurrence) for p in store.prints(BATCH)] == [
        ("a.csv", 1), ("b.csv", 1), ("a.csv", 2),
    ]  # fmt: skip
    assert len(store.prints()) == 4


def test_reprint_without_reason_is_refused_and_nothing_recorded(store: StateStore) -> None:
    """ReprintReasonRequiredError names the file and its previous prints; the log is unchanged."""
    _print(store)
    _print(store, "再印刷", printed_at=T0 + timedelta(minutes=1))
    before = store.prints()
    for missing in (None, "", " \t"):
        with pytest.raises(ReprintReasonRequiredError) as refused:
            _print(store, missing)
        assert (refused.value.batch_id, refused.value.file_name, refused.value.previous) == (
            BATCH, "a.csv", 2,
        )  # fmt: skip
        assert refused.value.hint is not None and "--reason" in refused.value.hint
    assert store.prints() == before


def test_concurrent_first_prints_count_once(tmp_path: Path) -> None:
    """Two processes' stores printing one file at once: one is first, the other needs a reason."""
    path = tmp_path / "state.db"
    StateStore.open(path).close()
    stores = [StateStore.open(path, create=False) for _ in range(4)]
    barrier = threading.Barrier(len(stores))
    results: list[object] = []
    lock = threading.Lock()

    def worker(own: StateStore) -> None:
        barrier.wait()
        try:
            outcome: object = _print(own)
        except StateError as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=worker, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for own in stores:
        own.close()
    printed = [r for r in results if isinstance(r, PrintRecord)]
    refused = [r for r in results if isinstance(r, ReprintReasonRequiredError)]
    assert [p.occurrence for p in printed] == [1]
    assert len(refused) == len(stores) - 1, results
    with StateStore.open(path, create=False) as store:
        assert len(store.prints()) == 1


# -- erasures -------------------------------------------------------------------------------------


def test_start_erasure_is_idempotent_while_unfinished(store: StateStore) -> None:
    """Starting again returns the first record unchanged: its items, handler and start time."""
    started = store.start_erasure(_erasure())
    assert started == _erasure()
    again = store.start_erasure(
        _erasure(items=(ENVELOPE,), handler="kato", started_at=T0 + timedelta(hours=1))
    )
    assert again == started
    assert store.get_erasure(BATCH) == started
    assert store.erasures() == [started]


def test_finish_erasure_records_certificate_once(store: StateStore) -> None:
    """Finishing sets time and certificate; the same again is a no-op, another is refused."""
    store.start_erasure(_erasure())
    done_at = T0 + timedelta(minutes=3)
    cert = f"/srv/certificates/{BATCH}.erasure.json"
    done = store.finish_erasure(BATCH, done_at, cert)
    assert (done.finished_at, done.certificate, done.items) == (done_at, cert, (ENVELOPE, PLAIN))
    assert store.finish_erasure(BATCH, done_at + timedelta(minutes=1), cert) == done
    with pytest.raises(ErasureFinishedError) as refused:
        store.finish_erasure(BATCH, done_at, "/elsewhere.json")
    assert refused.value.record == done
    with pytest.raises(ErasureFinishedError, match="erased already"):
        store.start_erasure(_erasure())
    assert store.get_erasure(BATCH) == done


def test_finish_without_start_and_unknown_erasure(store: StateStore) -> None:
    """Finishing an erasure never started is a StateError; an unknown batch has none."""
    with pytest.raises(StateError, match="no erasure"):
        store.finish_erasure(BATCH, T0, "/x.json")
    assert store.get_erasure(BATCH) is None


def test_erasures_listed_oldest_start_first(store: StateStore) -> None:
    """erasures() orders by start time, not by batch id."""
    store.start_erasure(_erasure(started_at=T0 + timedelta(days=1)))
    store.start_erasure(_erasure(batch_id=OTHER, items=(), started_at=T0))
    assert [e.batch_id for e in store.erasures()] == [OTHER, BATCH]
    assert store.get_erasure(OTHER) == _erasure(batch_id=OTHER, items=(), started_at=T0)
