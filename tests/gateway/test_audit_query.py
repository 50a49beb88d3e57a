"""Tests for gateway.audit_query: verify, search, export and tail of the audit log."""

import csv
import fcntl
import io
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import generate_private_key, verify_chain
from gateway.audit import AuditError, AuditLog
from gateway.audit_query import (
    CSV_COLUMNS,
    AuditReport,
    _lines,
    _Prefix,
    export,
    records,
    search,
    tail,
    verify,
)

JST = timezone(timedelta(hours=9))
START = datetime(2025, 7, 1, 9, 0, 0, tzinfo=JST)


class SetClock:
    """A clock that reads whatever time the test last set."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def key() -> Ed25519PrivateKey:
    """A fresh gateway signing key."""
    return generate_private_key()


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """The log and checkpoint paths."""
    return tmp_path / "audit.jsonl", tmp_path / "checkpoints.jsonl"


EVENTS: list[tuple[str, dict[str, object]]] = [
    ("login_failed", {"user": "ward1", "tenant": "setagaya", "reason": "bad_password"}),
    ("login_succeeded", {"user": "ward1", "tenant": "setagaya"}),
    (
        "upload_completed",
        {"user": "ward1", "tenant": "setagaya", "batch": "B-001", "size_bytes": 9},
    ),
    ("login_succeeded", {"user": "ward2", "tenant": "nerima"}),
    ("upload_completed", {"user": "ward2", "tenant": "nerima", "batch": "B-002", "size_bytes": 5}),
    ("account_added", {"user": "区役所", "tenant": "nerima", "actor": "管理者", "note": "新規"}),
]


@pytest.fixture
def written(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> tuple[Path, Path]:
    """A closed log of EVENTS, one minute apart from START, checkpointed every 2 records."""
    clock = SetClock()
    with AuditLog.open(*paths, key, every_records=2, clock=clock, timer=False) as log:
        for minute, (event, fields) in enumerate(EVENTS):
            clock.now = START + timedelta(minutes=minute)
            log.emit(event, **fields)
    return paths


def _rewrite(log: Path, change: str) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    if change == "byte":
        lines[2] = lines[2].replace(b"B-001", b"B-00X")
    elif change == "removed":
        del lines[2]
    elif change == "reordered":
        lines[2], lines[3] = lines[3], lines[2]
    elif change == "truncated":
        del lines[-2:]
    elif change == "torn":
        lines[-1] = lines[-1][:-5]
    log.write_bytes(b"".join(lines))


def test_verify_reports_an_intact_log(written: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """An untouched log verifies: all records, the last checkpoint and the signer."""
    report = verify(*written, key.public_key())
    assert isinstance(report, AuditReport)
    assert report.ok and report.records == 6 and report.head.seq == 6
    assert report.checkpoints == 3 and report.last_checkpoint == 6
    assert report.signer.startswith("SHA256:")


@pytest.mark.parametrize(
    ("change", "bad_seq", "bad_line"),
    [("byte", 3, 3), ("removed", 3, 3), ("reordered", 3, 3), ("torn", 6, 6)],
)
def test_verify_names_the_first_bad_record(
    written: tuple[Path, Path],
    key: Ed25519PrivateKey,
    change: str,
    bad_seq: int,
    bad_line: int,
) -> None:
    """A changed byte, a removed, reordered or torn record fails at that seq and line."""
    _rewrite(written[0], change)
    report = verify(*written, key.public_key())
    assert not report.ok
    assert (report.first_bad_seq, report.first_bad_line) == (bad_seq, bad_line)


def test_verify_catches_truncation_behind_a_checkpoint(
    written: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """Cutting records a checkpoint covers fails even though the shorter chain is valid."""
    _rewrite(written[0], "truncated")
    report = verify(*written, key.public_key())
    assert not report.ok and "truncated" in str(report.reason)
    assert report.records == 4


@pytest.mark.parametrize("damage", ["signature", "malformed", "torn", "missing"])
def test_verify_fails_on_a_bad_checkpoint_file(
    written: tuple[Path, Path], key: Ed25519PrivateKey, damage: str
) -> None:
    """A checkpoint with a bad signature, a malformed or torn line, or no file fails."""
    checkpoints = written[1]
    lines = checkpoints.read_bytes().splitlines(keepends=True)
    if damage == "signature":
        at = lines[1].index(b'"sig":"') + len(b'"sig":"')
        flipped = b"B" if lines[1][at : at + 1] == b"A" else b"A"
        lines[1] = lines[1][:at] + flipped + lines[1][at + 1 :]
    elif damage == "malformed":
        lines[1] = b"not json\n"
    elif damage == "torn":
        lines[-1] = lines[-1][:-1]
    if damage == "missing":
        checkpoints.unlink()
    else:
        checkpoints.write_bytes(b"".join(lines))
    report = verify(*written, key.public_key())
    assert not report.ok
    assert "checkpoint" in str(report.reason)


def test_verify_with_another_key_fails(written: tuple[Path, Path]) -> None:
    """Checkpoints signed by the gateway do not verify against another key."""
    report = verify(*written, generate_private_key().public_key())
    assert not report.ok and "signed by" in str(report.reason)


def test_verify_of_a_missing_log_raises(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """A log that does not exist is an AuditError, not an empty success."""
    paths[1].write_bytes(b"")
    with pytest.raises(AuditError, match="cannot read"):
        verify(*paths, key.public_key())


def test_verify_never_sees_a_line_a_writer_is_still_appending(
    written: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """A writer holds the log's flock while it appends: verify reads only whole lines then.

    Half a record is written under the writer's lock; verify started meanwhile waits and,
    once the line is whole, reports the intact log (before: a torn line, i.e. tampering)."""
    log, _checkpoints = written
    line = b'{"event":"x","seq":7}\n'
    with log.open("ab") as writer:
        fcntl.flock(writer.fileno(), fcntl.LOCK_EX)
        writer.write(line[:9])
        writer.flush()
        reports: list[AuditReport] = []
        reader = threading.Thread(target=lambda: reports.append(verify(*written, key.public_key())))
        reader.start()
        reader.join(0.3)
        assert reader.is_alive()  # waiting for the writer
        writer.truncate(log.stat().st_size - 9)  # the writer gives up: the log as it was
        writer.flush()
        fcntl.flock(writer.fileno(), fcntl.LOCK_UN)
    reader.join(10)
    assert reports[0].ok and reports[0].records == len(EVENTS), reports


def test_verify_reads_only_what_was_there_when_it_started(
    written: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """Records appended while verify reads are not read (they may be mid-write)."""
    log, _checkpoints = written
    size = log.stat().st_size
    stream = log.open("rb")
    try:
        with log.open("ab") as writer:
            writer.write(b"half a line")
        lines = list(_lines(_Prefix(stream, size)))
    finally:
        stream.close()
    assert b"".join(lines) == log.read_bytes()[:size] and lines[-1].endswith(b"\n")


@pytest.mark.parametrize(
    ("filters", "seqs"),
    [
        ({}, [1, 2, 3, 4, 5, 6]),
        ({"user": "ward1"}, [1, 2, 3]),
        ({"tenant": "nerima"}, [4, 5, 6]),
        ({"batch": "B-002"}, [5]),
        ({"event": "upload_completed"}, [3, 5]),
        ({"user": "ward2", "event": "login_succeeded"}, [4]),
        ({"since": START + timedelta(minutes=2)}, [3, 4, 5, 6]),
        ({"until": START + timedelta(minutes=2)}, [1, 2]),
        ({"since": START + timedelta(minutes=1), "until": START + timedelta(minutes=3)}, [2, 3]),
        ({"since": datetime(2025, 7, 1, 0, 3, tzinfo=UTC)}, [4, 5, 6]),
        ({"user": "区役所"}, [6]),
        ({"user": "nobody"}, []),
    ],
)
def test_search_filters(
    written: tuple[Path, Path], filters: dict[str, object], seqs: list[int]
) -> None:
    """Every filter narrows the records; since is inclusive, until exclusive, offsets honoured."""
    found = search(written[0], **filters)  # type: ignore[arg-type]
    assert [r["seq"] for r in found] == seqs


def test_search_takes_naive_times_as_local(written: tuple[Path, Path]) -> None:
    """A naive --since is local time: the same instant as its aware equivalent."""
    local = (START + timedelta(minutes=4)).astimezone().replace(tzinfo=None)
    assert [r["seq"] for r in search(written[0], since=local)] == [5, 6]


def test_search_skips_a_torn_last_line(written: tuple[Path, Path]) -> None:
    """A line still being written is not a record yet."""
    with written[0].open("ab") as handle:
        handle.write(b'{"event":"log')
    assert len(list(search(written[0]))) == 6


def test_search_reports_a_garbage_line(written: tuple[Path, Path]) -> None:
    """A line that is not a JSON object raises AuditError naming the line."""
    lines = written[0].read_bytes().splitlines(keepends=True)
    lines[3] = b"garbage\n"
    written[0].write_bytes(b"".join(lines))
    with pytest.raises(AuditError, match="line 4"):
        list(records(written[0]))


def test_export_csv_has_bom_columns_and_japanese(
    written: tuple[Path, Path], tmp_path: Path
) -> None:
    """CSV is UTF-8 with BOM, fixed columns, Japanese intact, the rest in detail JSON."""
    out = tmp_path / "export.csv"
    assert export(written[0], out, "csv") == 6
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert tuple(rows[0]) == CSV_COLUMNS
    last = dict(zip(CSV_COLUMNS, rows[-1], strict=True))
    assert last["user"] == "区役所" and last["actor"] == "管理者"
    assert last["detail"] == '{"note": "新規"}'
    upload = dict(zip(CSV_COLUMNS, rows[3], strict=True))
    assert upload["batch"] == "B-001" and upload["detail"] == '{"size_bytes": 9}'
    assert "hash" not in upload["detail"] and "prev" not in upload["detail"]


def test_export_csv_defuses_formulas(
    paths: tuple[Path, Path], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A hostile name that Excel would run as a formula is written with a leading quote."""
    with AuditLog.open(*paths, key, timer=False) as log:
        log.emit("login_failed", user='=HYPERLINK("http://x")', reason="unknown_user")
    out = tmp_path / "x.csv"
    export(paths[0], out, "csv")
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"), newline="")))
    assert rows[1][CSV_COLUMNS.index("user")] == '\'=HYPERLINK("http://x")'


def test_export_jsonl_keeps_records_byte_for_byte(
    written: tuple[Path, Path], key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A full JSON-lines export is the log itself and still verifies; filters apply."""
    out = tmp_path / "all.jsonl"
    assert export(written[0], out, "jsonl") == 6
    assert out.read_bytes() == written[0].read_bytes()
    with out.open("rb") as stream:
        assert verify_chain(stream).ok
    assert export(written[0], out, "jsonl", tenant="nerima") == 3
    assert out.read_bytes().count(b"\n") == 3


def test_export_is_atomic(written: tuple[Path, Path], tmp_path: Path) -> None:
    """A failed export leaves the previous file and no temporary behind."""
    out = tmp_path / "out.csv"
    out.write_text("previous", encoding="utf-8")
    lines = written[0].read_bytes().splitlines(keepends=True)
    lines[4] = b"[]\n"
    written[0].write_bytes(b"".join(lines))
    with pytest.raises(AuditError):
        export(written[0], out, "csv")
    assert out.read_text(encoding="utf-8") == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "audit.jsonl",
        "checkpoints.jsonl",
        "out.csv",
    ]


def test_tail_gives_the_last_records(written: tuple[Path, Path]) -> None:
    """tail yields the last n records in order; more than there are yields all."""
    assert [r["seq"] for r in tail(written[0], 2)] == [5, 6]
    assert [r["seq"] for r in tail(written[0], 50)] == [1, 2, 3, 4, 5, 6]
    assert list(tail(written[0], 0)) == []


def test_tail_ignores_a_torn_last_line(written: tuple[Path, Path]) -> None:
    """A partial last line is neither counted nor shown."""
    with written[0].open("ab") as handle:
        handle.write(b'{"event":"lo')
    assert [r["seq"] for r in tail(written[0], 1)] == [6]


def test_tail_follow_yields_new_records(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """With follow, records emitted later are yielded until stop is set."""
    log = AuditLog.open(*paths, key, timer=False)
    log.emit("server_started")
    stop = threading.Event()
    seen: list[object] = []

    def emit_later() -> None:
        for _ in range(3):
            log.emit("sftp_stat", user="ward1")

    emitter = threading.Timer(0.1, emit_later)
    emitter.start()
    for record in tail(paths[0], 1, follow=True, poll_seconds=0.02, stop=stop):
        seen.append(record["seq"])
        if len(seen) == 4:
            stop.set()
    emitter.join()
    log.close()
    assert seen == [1, 2, 3, 4]


def test_tail_follow_stops_when_asked(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """An idle follow returns once stop is set."""
    with AuditLog.open(*paths, key, timer=False) as log:
        log.emit("server_started")
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    assert [r["seq"] for r in tail(paths[0], 5, follow=True, poll_seconds=0.02, stop=stop)] == [1]
