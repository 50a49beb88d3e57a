"""Tests for gateway.state: the SQLite state store (accounts, batches) on real files."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.state import (
    KEEP,
    Account,
    BatchRecord,
    BatchState,
    DuplicateAccountError,
    DuplicateBatchError,
    DuplicateKeyError,
    StateError,
    StateStore,
    UnknownAccountError,
)

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def _account(name: str = "ward-a", fingerprint: str = "SHA256:aaa", **kw: object) -> Account:
    fields: dict[str, object] = {
        "name": name,
        "role": "ward",
        "tenant": "shinjuku",
        "public_key": "ssh-ed25519 AAAA",
        "key_fingerprint": fingerprint,
        "password_hash": HASH,
        "allow_cidrs": ("10.0.0.0/8",),
        "admin_locked": False,
        "locked_until": None,
        "failed_logins": 0,
        "created_at": T0,
        "updated_at": T0,
        **kw,
    }
    return Account(**fields)  # type: ignore[arg-type]


def _batch(batch_id: str = "20260715-KAIGO-7F3KQ2", tenant: str = "shinjuku") -> BatchRecord:
    return BatchRecord(
        batch_id=batch_id,
        tenant=tenant,
        uploader="ward-a",
        file_name=f"{batch_id}.age",
        size=1234,
        sha256="ab" * 32,
        state=BatchState.RECEIVED,
        received_at=T0,
        updated_at=T0,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A fresh store on a real SQLite file."""
    opened = StateStore.open(tmp_path / "state.db")
    yield opened
    opened.close()


def test_open_creates_private_wal_database(tmp_path: Path) -> None:
    """A new database file is mode 0600 and uses the WAL journal."""
    path = tmp_path / "state.db"
    StateStore.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_open_without_create_refuses_missing_file(tmp_path: Path) -> None:
    """create=False refuses a database that does not exist and creates nothing."""
    with pytest.raises(StateError, match="no state database"):
        StateStore.open(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_open_refuses_other_schema_version(tmp_path: Path) -> None:
    """A database of another schema version is refused, not silently used."""
    path = tmp_path / "state.db"
    StateStore.open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StateError, match="schema version 99"):
        StateStore.open(path)


def test_open_refuses_non_database(tmp_path: Path) -> None:
    """A file that is not SQLite is refused with a StateError."""
    path = tmp_path / "state.db"
    path.write_bytes(b"not a database" * 100)
    with pytest.raises(StateError):
        StateStore.open(path)


def test_account_round_trip(store: StateStore) -> None:
    """An added account reads back equal, and is listed."""
    account = _account()
    store.add_account(account)
    assert store.get_account("ward-a") == account
    assert store.find_account_by_fingerprint("SHA256:aaa") == account
    assert store.list_accounts() == [account]
    assert store.get_account("nobody") is None


def test_account_repr_hides_password_hash() -> None:
    """The argon2 hash never appears in an account's repr."""
    assert "argon2" not in repr(_account())


def test_duplicate_name_and_key_refused(store: StateStore) -> None:
    """A second account with the same name or the same public key is refused."""
    store.add_account(_account())
    with pytest.raises(DuplicateAccountError):
        store.add_account(_account(fingerprint="SHA256:bbb"))
    with pytest.raises(DuplicateKeyError, match="ward-a"):
        store.add_account(_account(name="ward-b"))
    assert [a.name for a in store.list_accounts()] == ["ward-a"]


def test_update_account_changes_only_given_columns(store: StateStore) -> None:
    """update_account changes the named columns, keeps the rest and stamps updated_at."""
    store.add_account(_account(failed_logins=3))
    later = T0 + timedelta(minutes=5)
    updated = store.update_account("ward-a", later, admin_locked=True, password_hash=KEEP)
    assert updated.admin_locked is True
    assert updated.failed_logins == 3
    assert updated.password_hash == HASH
    assert updated.updated_at == later
    cleared = store.update_account("ward-a", later, locked_until=None, failed_logins=0)
    assert cleared.failed_logins == 0 and cleared.admin_locked is True


def test_update_and_remove_unknown_account_raise(store: StateStore) -> None:
    """Changing or removing a missing account raises UnknownAccountError."""
    with pytest.raises(UnknownAccountError):
        store.update_account("ghost", T0, admin_locked=True)
    with pytest.raises(UnknownAccountError):
        store.remove_account("ghost")


def test_remove_account_returns_it(store: StateStore) -> None:
    """remove_account deletes the row and returns what it was."""
    store.add_account(_account())
    assert store.remove_account("ward-a").name == "ward-a"
    assert store.get_account("ward-a") is None


def test_record_failure_locks_at_max_and_resets_count(store: StateStore) -> None:
    """The max_failures-th failure locks until now+lockout and restarts the count."""
    store.add_account(_account())
    lockout = timedelta(minutes=15)
    results = [store.record_failure("ward-a", T0, 3, lockout) for _ in range(3)]
    assert results == [None, None, T0 + lockout]
    account = store.get_account("ward-a")
    assert account is not None
    assert account.locked_until == T0 + lockout
    assert account.failed_logins == 0
    assert account.locked_at(T0 + lockout - timedelta(seconds=1))
    assert not account.locked_at(T0 + lockout)


def test_record_failure_of_unknown_account_is_none(store: StateStore) -> None:
    """Counting a failure for a missing account changes nothing and returns None."""
    assert store.record_failure("ghost", T0, 1, timedelta(minutes=1)) is None
    assert store.list_accounts() == []


def test_reset_failures_clears_lockout(store: StateStore) -> None:
    """reset_failures zeroes the count and lifts a lockout, but not an admin lock."""
    store.add_account(_account(failed_logins=2, locked_until=T0, admin_locked=True))
    store.reset_failures("ward-a", T0)
    account = store.get_account("ward-a")
    assert account is not None
    assert (account.failed_logins, account.locked_until, account.admin_locked) == (0, None, True)


def test_naive_datetime_refused(store: StateStore) -> None:
    """A naive datetime is refused before anything is written."""
    with pytest.raises(ValueError, match="timezone-aware"):
        store.add_account(_account(created_at=datetime(2026, 7, 15)))
    assert store.list_accounts() == []


def test_failures_counted_exactly_under_threads_and_two_connections(tmp_path: Path) -> None:
    """Concurrent failures from many threads over two connections are all counted."""
    path = tmp_path / "state.db"
    first = StateStore.open(path)
    second = StateStore.open(path)
    first.add_account(_account())

    def hammer(store: StateStore) -> None:
        for _ in range(25):
            store.record_failure("ward-a", T0, 10_000, timedelta(minutes=1))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in (first, second) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    account = second.get_account("ward-a")
    first.close()
    second.close()
    assert account is not None
    assert account.failed_logins == 200


def test_batch_round_trip_and_listing(store: StateStore) -> None:
    """Batches read back equal and list per tenant, oldest first."""
    one = _batch("20260715-KAIGO-7F3KQ2")
    two = _batch("20260716-KAIGO-AAAAAA", tenant="nakano")
    store.insert_batch(one)
    store.insert_batch(two)
    assert store.get_batch(one.batch_id) == one
    assert store.list_batches() == [one, two]
    assert store.list_batches("nakano") == [two]
    assert store.get_batch("nope") is None


def test_duplicate_batch_refused_across_tenants(store: StateStore) -> None:
    """A batch id already used by any tenant is refused."""
    store.insert_batch(_batch(tenant="shinjuku"))
    with pytest.raises(DuplicateBatchError):
        store.insert_batch(_batch(tenant="nakano"))
    assert len(store.list_batches()) == 1


def test_set_batch_state_records_reason(store: StateStore) -> None:
    """set_batch_state stores the state value and reason; a missing batch raises."""
    store.insert_batch(_batch())
    later = T0 + timedelta(hours=1)
    moved = store.set_batch_state("20260715-KAIGO-7F3KQ2", BatchState.RECEIVED, later, "again")
    assert (moved.reason, moved.updated_at) == ("again", later)
    with pytest.raises(StateError):
        store.set_batch_state("nope", BatchState.RECEIVED, later)
