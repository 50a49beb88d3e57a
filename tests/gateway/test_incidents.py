"""Tests for gateway.incidents: which audit records are incidents, bursts, and overdue batches."""

import hashlib
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.errors import UsageError
from gateway.incidents import (
    KIND_BRUTE_FORCE,
    Incident,
    collect,
    find_overdue,
)
from gateway.incidents_cli import parse_since
from gateway.pipeline import BatchState as GatewayState
from gateway.spool import Spool
from gateway.state import BatchRecord, StateStore

JST = timezone(timedelta(hours=9))
T0 = datetime(2026, 7, 15, 10, 0, 0, tzinfo=JST)


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _failure(
    seconds: float, source: str = "10.0.0.9:40000", user: str = "mallory"
) -> dict[str, object]:
    return {"event": "login_failed", "time": _at(seconds), "source": source, "user": user}


def _bursts(rows: list[Incident]) -> list[Incident]:
    return [r for r in rows if r.kind == KIND_BRUTE_FORCE]


def test_burst_needs_the_threshold_within_60_seconds() -> None:
    """Threshold failures within 60 s make one burst; one fewer, or spread wider, make none."""
    exactly = [_failure(i * 3) for i in range(5)]
    assert len(_bursts(collect(exactly, burst_threshold=5))) == 1
    assert _bursts(collect(exactly[:4], burst_threshold=5)) == []
    spread = [_failure(i * 20) for i in range(5)]  # 80 s from first to last
    assert _bursts(collect(spread, burst_threshold=5)) == []


def test_one_row_per_burst_with_its_count_and_start() -> None:
    """A burst goes on while failures follow within 60 s; a later one is a second row."""
    first = [_failure(i * 2) for i in range(7)] + [_failure(60 + 12), _failure(130)]
    second = [_failure(600 + i) for i in range(5)]
    rows = _bursts(collect(first + second, burst_threshold=5))
    assert [r.at for r in rows] == [T0, T0 + timedelta(seconds=600)]
    assert rows[0].detail.startswith("9 failed logins in 130 s")
    assert rows[1].detail.startswith("5 failed logins in 4 s")
    assert {r.source for r in rows} == {"10.0.0.9"}


def test_bursts_are_per_address_whatever_the_port() -> None:
    """Ports differ per connection: the address counts; IPv6 in brackets too; others apart."""
    mixed = [_failure(i, source=f"10.0.0.9:{40000 + i}", user=f"u{i % 2}") for i in range(3)]
    mixed += [_failure(i, source=f"[2001:db8::1]:{5000 + i}") for i in range(3)]
    mixed += [_failure(i, source="10.0.0.8:1") for i in range(2)]
    rows = _bursts(collect(mixed, burst_threshold=3))
    assert sorted(r.source for r in rows) == ["10.0.0.9", "2001:db8::1"]
    by_source = {r.source: r for r in rows}
    assert 'accounts "u0", "u1"' in by_source["10.0.0.9"].detail
    assert by_source["2001:db8::1"].user == "mallory"


def test_path_tricks_are_incidents_ordinary_refusals_are_not() -> None:
    """dot_dot, unknown_area and a symlink request are listed; bad_name and not_permitted not."""
    base = {"event": "sftp_refused", "user": "alice", "tenant": "shinjuku", "source": "1.2.3.4:5"}
    found = [
        {**base, "time": _at(1), "op": "stat", "path": "../../etc/passwd", "reason": "dot_dot"},
        {**base, "time": _at(2), "op": "open", "path": "/etc/passwd", "reason": "unknown_area"},
        {**base, "time": _at(3), "op": "symlink", "path": "/inbox/x", "reason": "not_permitted"},
        {**base, "time": _at(4), "op": "open", "path": "/inbox/evil.sh", "reason": "bad_name"},
        {**base, "time": _at(5), "op": "remove", "path": "/inbox/a.age", "reason": "not_permitted"},
    ]
    rows = collect(found, burst_threshold=20)
    assert [r.kind for r in rows] == ["path_refused"] * 3
    assert rows[0].detail == 'stat "../../etc/passwd": dot_dot'
    assert (rows[0].user, rows[0].tenant, rows[0].source) == ("alice", "shinjuku", "1.2.3.4:5")


def test_reprints_custody_certificates_and_raised_incidents() -> None:
    """Only a print with occurrence > 1 is a reprint; the other custody kinds always count."""
    found: list[dict[str, object]] = [
        {"event": "print_logged", "time": _at(1), "actor": "hanako", "batch": "B", "file": "a.csv",
         "printer": "P1", "sheets": 3, "computer": "pc1", "occurrence": 1, "reason": None},
        {"event": "print_logged", "time": _at(2), "actor": "hanako", "batch": "B", "file": "a.csv",
         "printer": "P1", "sheets": 3, "computer": "pc1", "occurrence": 2, "reason": "paper jam"},
        {"event": "custody_refused", "time": _at(3), "actor": "taro", "action": "erase",
         "reason": "self_approval", "batch": "B", "os_user": "op"},
        {"event": "erasure_certificate_rejected", "time": _at(4), "batch": "B", "tenant": "t1",
         "reason": "bad_signature"},
        {"event": "incident_raised", "time": _at(5), "kind": "forward_failed", "batch": "C",
         "tenant": "t1", "detail": "8 attempts, last: refused"},
        {"event": "upload_completed", "time": _at(6), "batch": "D"},
    ]  # fmt: skip
    rows = collect(found, burst_threshold=20)
    assert [r.kind for r in rows] == [
        "reprint",
        "custody_refused",
        "erasure_certificate_rejected",
        "forward_failed",
    ]
    assert rows[0].detail == "print #2: a.csv on P1, 3 sheets from pc1; reason: paper jam"
    assert (rows[1].user, rows[1].detail) == ("taro", "erase: self_approval (OS user op)")
    assert rows[3].detail == "8 attempts, last: refused"


def test_rows_are_sorted_by_time_and_since_filters() -> None:
    """Out-of-order records come out by time; --since drops earlier rows (a burst by its start)."""
    found = [
        {"event": "account_locked_out", "time": _at(300), "user": "b", "until": _at(900)},
        {"event": "account_locked_out", "time": _at(100), "user": "a", "until": _at(700)},
        *[_failure(i) for i in range(5)],
    ]
    rows = collect(found, burst_threshold=5)
    assert [r.kind for r in rows] == ["brute_force", "account_locked_out", "account_locked_out"]
    assert rows[1].detail == "locked until 2026-07-15 10:11:40 JST"
    later = collect(found, burst_threshold=5, since=T0 + timedelta(seconds=200))
    assert [r.user for r in later] == ["b"]


def test_hostile_text_is_escaped() -> None:
    """A terminal escape in a path or user name is shown as \\x1b, never passed through."""
    found = [
        {"event": "sftp_refused", "time": _at(1), "user": "x\x1b[2J", "op": "stat",
         "path": "/inbox/\x1b]0;owned\x07/../x", "reason": "dot_dot"},
    ]  # fmt: skip
    (row,) = collect(found, burst_threshold=20)
    assert "\x1b" not in row.detail + row.user
    assert row.user == "x\\x1b[2J"


def test_parse_since() -> None:
    """--since takes Nd or ISO 8601 with an offset; a naive time or other text is a usage error."""
    assert parse_since("7d", T0) == T0 - timedelta(days=7)
    assert parse_since("2026-07-01T00:00:00+09:00", T0) == datetime(2026, 7, 1, tzinfo=JST)
    assert parse_since(None, T0) is None
    for bad in ("2026-07-01", "2026-07-01T00:00:00", "last week", "-3d"):
        with pytest.raises(UsageError):
            parse_since(bad, T0)


# -- overdue -------------------------------------------------------------------------------------


def _deliver(spool_dir: Path, batch: str, arrived: datetime, channel: str = "lgwan") -> None:
    data = b"sealed " + batch.encode()
    Spool(spool_dir, clock=lambda: arrived).deliver(
        batch,
        io.BytesIO(data),
        tenant="shinjuku",
        channel=channel,
        expected_size=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        source_detail={},
    )


def _forwarded(store: StateStore, batch: str, at: datetime, final: GatewayState) -> None:
    store.insert_batch(
        BatchRecord(
            batch_id=batch,
            tenant="minato",
            uploader="bob",
            file_name=f"{batch}.age",
            size=1,
            sha256="0" * 64,
            state=GatewayState.RECEIVED,
            received_at=at - timedelta(hours=1),
            updated_at=at - timedelta(hours=1),
        )
    )
    path = [GatewayState.VERIFIED, GatewayState.FORWARDING, GatewayState.FORWARDED]
    if final is GatewayState.PULLED:
        path.append(GatewayState.PULLED)
    state = GatewayState.RECEIVED
    for to in path:
        later = timedelta(days=1 if to is GatewayState.PULLED else 0)
        store.transition(batch, state, to, None, at + later)
        state = to


def test_overdue_spool_and_gateway(tmp_path: Path) -> None:
    """Old arrivals (opened or not, LGWAN or DVD) and old delivered batches; erased ones not."""
    spool, work = tmp_path / "spool", tmp_path / "work"
    now = T0 + timedelta(days=30)
    _deliver(spool, "20260715-KAIGO-AAAAAA", T0)  # 30 days old
    _deliver(spool, "20260716-KAIGO-BBBBBB", T0 + timedelta(days=1), channel="dvd")
    _deliver(spool, "20260801-KAIGO-CCCCCC", now - timedelta(days=2))  # recent
    _deliver(spool, "20260715-KAIGO-DDDDDD", T0)  # erased
    (spool / "20260715-KAIGO-DDDDDD.erasure.json").write_text("{}")
    (work / "20260716-KAIGO-BBBBBB").mkdir(parents=True)
    with StateStore.open(tmp_path / "state.db") as store:
        _forwarded(store, "20260714-KAIGO-EEEEEE", T0 - timedelta(days=1), GatewayState.FORWARDED)
        _forwarded(store, "20260714-KAIGO-FFFFFF", T0, GatewayState.PULLED)
        _forwarded(store, "20260801-KAIGO-GGGGGG", now - timedelta(days=1), GatewayState.FORWARDED)
        found = find_overdue(Spool(spool), work, store, days=14, now=now)
        everything = find_overdue(Spool(spool), work, store, days=0, now=now)
    assert [(o.batch_id, o.where, o.channel, o.state, o.days) for o in found] == [
        ("20260714-KAIGO-EEEEEE", "gateway", "lgwan", "forwarded", 31),
        ("20260714-KAIGO-FFFFFF", "gateway", "lgwan", "pulled", 30),
        ("20260715-KAIGO-AAAAAA", "spool", "lgwan", "arrived", 30),
        ("20260716-KAIGO-BBBBBB", "spool", "dvd", "opened", 29),
    ]
    assert found[1].since == T0  # first delivered, not pulled a day later
    assert len(everything) == 6
    assert "20260715-KAIGO-DDDDDD" not in {o.batch_id for o in everything}


def test_overdue_nothing_without_a_spool_or_database(tmp_path: Path) -> None:
    """A root with no spool directory and no database has nothing overdue."""
    assert find_overdue(Spool(tmp_path / "none"), tmp_path / "w", None, days=0, now=T0) == []
