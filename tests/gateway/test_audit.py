"""Tests for gateway.audit: the hash-chained audit log writer, checkpoints, repair, structlog."""

import enum
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import generate_private_key, loads_record, parse_entry, verify_chain, verify_checkpoint
from gateway.audit import AuditError, AuditLog, bind_audit
from gateway.audit_fields import MAX_TEXT_CHARS, is_secret_name
from gateway.errors import GatewayError

JST = timezone(timedelta(hours=9))


class FakeClock:
    """A settable clock for checkpoint cadence by time."""

    def __init__(self) -> None:
        self.now = datetime(2025, 7, 1, 9, 0, 0, tzinfo=JST)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    """A fresh gateway signing key."""
    return generate_private_key()


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    """Where the log and its checkpoints go (the directory does not exist yet)."""
    return tmp_path / "audit" / "audit.jsonl", tmp_path / "audit" / "checkpoints.jsonl"


@pytest.fixture
def opened(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> Iterator[AuditLog]:
    """An open log with the default cadence and no timer thread."""
    log = AuditLog.open(*paths, key, timer=False)
    yield log
    log.close()


def _entries(log: Path) -> list[dict[str, object]]:
    return [parse_entry(line) for line in log.read_bytes().splitlines(keepends=True)]


def _checkpoint_seqs(checkpoints: Path, key: Ed25519PrivateKey) -> list[int]:
    lines = checkpoints.read_bytes().splitlines(keepends=True)
    return [verify_checkpoint(loads_record(line), key.public_key()).seq for line in lines]


def _verified(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> int:
    """Verify the log against every checkpoint; return the number of records."""
    docs = [loads_record(line) for line in paths[1].read_bytes().splitlines(keepends=True)]
    with paths[0].open("rb") as stream:
        report = verify_chain(stream, checkpoints=docs, public_key=key.public_key())
    assert report.ok, report.reason
    return report.records


def test_emit_writes_one_chained_line_per_event(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """Each emit appends one canonical, chained line with event, fields and a ms time."""
    opened.emit("login_failed", user="ward1", reason="bad_password", source="10.0.0.5:50022")
    opened.emit("login_succeeded", user="ward1")
    first, second = _entries(paths[0])
    assert first["event"] == "login_failed" and first["reason"] == "bad_password"
    assert (first["seq"], second["seq"]) == (1, 2)
    assert second["prev"] == first["hash"]
    stamp = datetime.fromisoformat(str(first["time"]))
    assert stamp.utcoffset() is not None
    assert len(str(first["time"]).split("T")[1].split(".")[1]) >= 3  # milliseconds


def test_files_are_created_private(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """The log and checkpoint files are created with mode 0600."""
    for path in paths:
        assert path.stat().st_mode & 0o777 == 0o600


def test_concurrent_emits_keep_one_contiguous_chain(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """8 threads x 500 emits give 4000 contiguous seqs that verify with every checkpoint."""
    log = AuditLog.open(*paths, key, every_records=250, timer=False)

    def worker(n: int) -> None:
        for i in range(500):
            log.emit("sftp_stat", user=f"ward{n}", path=f"/inbox/{i}.age")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    seqs = [entry["seq"] for entry in _entries(paths[0])]
    assert seqs == list(range(1, 4001))
    assert _verified(paths, key) == 4000
    assert _checkpoint_seqs(paths[1], key) == list(range(250, 4001, 250))


def test_checkpoint_cadence_by_count(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """A checkpoint follows every 10th record, and close signs the rest once."""
    log = AuditLog.open(*paths, key, every_records=10, timer=False)
    for _ in range(25):
        log.emit("sftp_listed", user="ward1")
    assert _checkpoint_seqs(paths[1], key) == [10, 20]
    log.close()
    log.close()  # idempotent
    assert _checkpoint_seqs(paths[1], key) == [10, 20, 25]


def test_checkpoint_cadence_by_time(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """With an injected clock, a checkpoint is written once every_seconds have passed."""
    clock = FakeClock()
    log = AuditLog.open(*paths, key, every_seconds=300, clock=clock, timer=False)
    log.emit("session_opened", user="ward1")
    clock.advance(299)
    log.emit("sftp_listed", user="ward1")
    assert _checkpoint_seqs(paths[1], key) == []
    clock.advance(1)
    log.emit("sftp_listed", user="ward1")
    assert _checkpoint_seqs(paths[1], key) == [3]
    clock.advance(600)
    log.tick()  # an idle log with nothing new: no checkpoint
    assert _checkpoint_seqs(paths[1], key) == [3]
    log.emit("session_closed", user="ward1")
    clock.advance(300)
    log.tick()  # what the timer thread does while idle
    assert _checkpoint_seqs(paths[1], key) == [3, 4]
    log.close()
    assert _checkpoint_seqs(paths[1], key) == [3, 4]


def test_timer_thread_checkpoints_an_idle_log(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """The timer thread signs records while no further event arrives."""
    log = AuditLog.open(*paths, key, every_seconds=0.1, sync_every_ms=None)
    try:
        log.emit("server_started", listen="127.0.0.1:2222")
        deadline = time.monotonic() + 5
        while not paths[1].read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _checkpoint_seqs(paths[1], key) == [1]
    finally:
        log.close()


def test_checkpoint_is_written_after_the_log_is_fsynced(
    paths: tuple[Path, Path], key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log is fsynced before its checkpoint is written, and the checkpoint file after."""
    log = AuditLog.open(*paths, key, every_records=2, sync_every_ms=None, timer=False)
    log_fd, cp_fd = log._fd, log._cp_fd
    calls: list[tuple[str, int]] = []
    real_fsync, real_write = os.fsync, os.write

    def fsync(fd: int) -> None:
        calls.append(("fsync", fd))
        real_fsync(fd)

    def write(fd: int, data: bytes) -> int:
        calls.append(("write", fd))
        return real_write(fd, data)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "write", write)
    log.emit("login_succeeded", user="ward1")
    assert ("fsync", log_fd) not in calls  # no fsync per event with sync_every_ms=None
    log.emit("session_opened", user="ward1")
    monkeypatch.undo()
    log.close()
    assert calls[-4:] == [("write", log_fd), ("fsync", log_fd), ("write", cp_fd), ("fsync", cp_fd)]


def test_periodic_fsync_runs_on_emit(
    paths: tuple[Path, Path], key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With sync_every_ms, an emit after the interval fsyncs the log without a checkpoint."""
    log = AuditLog.open(*paths, key, sync_every_ms=1, timer=False)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    log.emit("sftp_listed", user="ward1")
    time.sleep(0.01)
    log.emit("sftp_listed", user="ward1")
    monkeypatch.undo()
    assert log._fd in synced
    assert paths[1].read_bytes() == b""
    log.close()


def test_torn_last_line_is_cut_and_reported(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """A torn final line is cut at open and an audit_repaired event records its size."""
    with AuditLog.open(*paths, key, timer=False) as log:
        log.emit("server_started")
        log.emit("server_stopped")
    torn = b'{"event":"login_fail'
    with paths[0].open("ab") as handle:
        handle.write(torn)
    with AuditLog.open(*paths, key, timer=False) as log:
        assert log.head.seq == 3
    entries = _entries(paths[0])
    assert [e["event"] for e in entries] == ["server_started", "server_stopped", "audit_repaired"]
    assert entries[2]["file"] == "log" and entries[2]["dropped_bytes"] == len(torn)
    assert _verified(paths, key) == 3


def test_torn_checkpoint_line_is_cut_and_reported(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """A torn checkpoint line is cut at open, reported, and the head re-signed."""
    with AuditLog.open(*paths, key, timer=False) as log:
        log.emit("server_started")
    with paths[1].open("ab") as handle:
        handle.write(b'{"alg":"ed25')
    with AuditLog.open(*paths, key, timer=False):
        pass
    repaired = _entries(paths[0])[-1]
    assert repaired["event"] == "audit_repaired" and repaired["file"] == "checkpoints"
    assert repaired["dropped_bytes"] == 12
    assert _checkpoint_seqs(paths[1], key) == [1, 2]
    assert _verified(paths, key) == 2


def _three_records(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> list[bytes]:
    with AuditLog.open(*paths, key, timer=False) as log:
        for user in ("a1", "a2", "a3"):
            log.emit("login_failed", user=user, reason="bad_password")
    return paths[0].read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("case", ["changed_byte", "removed", "reordered", "truncated"])
def test_refuses_to_open_a_tampered_log(
    paths: tuple[Path, Path], key: Ed25519PrivateKey, case: str
) -> None:
    """A log changed before its end or behind its checkpoint is refused and left untouched."""
    lines = _three_records(paths, key)
    if case == "changed_byte":
        lines[1] = lines[1].replace(b'"a2"', b'"a9"')
    elif case == "removed":
        del lines[1]
    elif case == "reordered":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        del lines[2]
    tampered = b"".join(lines)
    paths[0].write_bytes(tampered)
    before = paths[1].read_bytes()
    with pytest.raises(AuditError) as info:
        AuditLog.open(*paths, key, timer=False)
    assert isinstance(info.value, GatewayError)
    message = str(info.value)
    assert "truncated" in message if case == "truncated" else "seq 2 at line 2" in message
    assert paths[0].read_bytes() == tampered  # nothing emitted, nothing cut
    assert paths[1].read_bytes() == before


def test_refuses_a_checkpoint_signed_by_another_key(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """Opening with a key that did not sign the last checkpoint is refused."""
    _three_records(paths, key)
    with pytest.raises(AuditError, match="does not verify"):
        AuditLog.open(*paths, generate_private_key(), timer=False)


@pytest.mark.parametrize(
    "fields",
    [
        {"password": "hunter2"},
        {"passphrase": "correct horse"},
        {"secret": "x"},
        {"private_key": "x"},
        {"new_password": "x"},
        {"password_hash": "$argon2id$..."},
        {"Passphrase": "x"},
        {"detail": {"password": "x"}},
        {"detail": [{"secret_key": "x"}]},
    ],
)
def test_secret_fields_are_refused(
    opened: AuditLog, paths: tuple[Path, Path], fields: dict[str, object]
) -> None:
    """A field that could carry a secret raises ValueError and writes nothing."""
    with pytest.raises(ValueError, match="secret"):
        opened.emit("account_added", user="ward1", **fields)
    assert paths[0].read_bytes() == b""


def test_private_key_text_is_refused(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """PEM private-key text in any field value is refused."""
    pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n"
    with pytest.raises(ValueError, match="private key"):
        opened.emit("account_added", note=pem)
    assert paths[0].read_bytes() == b""


def test_secret_names_spare_ordinary_fields() -> None:
    """Names that merely mention a word inside another are not secret."""
    assert not is_secret_name("method")
    assert not is_secret_name("key_fingerprint")
    assert is_secret_name("initial_password")


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"elapsed_ms": 1.5}, TypeError),
        ({"data": b"raw"}, TypeError),
        ({"seq": 1}, ValueError),
        ({"time": "x"}, ValueError),
        ({"BadName": 1}, ValueError),
        ({"when": datetime(2025, 7, 1)}, ValueError),
        ({"size_bytes": 2**60}, ValueError),
    ],
)
def test_unfit_fields_are_refused(
    opened: AuditLog, fields: dict[str, object], error: type[Exception]
) -> None:
    """Floats, bytes, reserved names, bad names, naive datetimes and huge ints are refused."""
    with pytest.raises(error):
        opened.emit("sftp_closed", **fields)
    assert opened.head.seq == 0


def test_bad_event_name_is_refused(opened: AuditLog) -> None:
    """Event names must be snake_case."""
    with pytest.raises(ValueError, match="snake_case"):
        opened.emit("Login Failed")
    assert opened.head.seq == 0


class _State(enum.Enum):
    RECEIVED = "received"


def test_common_python_values_are_normalised(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """Enums, aware datetimes, paths, IP addresses and tuples become JSON values."""
    opened.emit(
        "upload_completed",
        state=_State.RECEIVED,
        received_at=datetime(2025, 7, 1, 0, 0, tzinfo=UTC),
        path=PurePosixPath("/inbox/a.age"),
        source=ipaddress.ip_address("10.0.0.5"),
        algorithms=("aes256-gcm@openssh.com", "curve25519-sha256"),
    )
    entry = _entries(paths[0])[0]
    assert entry["state"] == "received"
    assert entry["received_at"] == "2025-07-01T00:00:00.000+00:00"
    assert entry["path"] == "/inbox/a.age" and entry["source"] == "10.0.0.5"
    assert entry["algorithms"] == ["aes256-gcm@openssh.com", "curve25519-sha256"]


def test_hostile_text_cannot_break_the_log(
    opened: AuditLog, paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """Lone surrogates, newlines and overlong strings are escaped or cut, never refused."""
    opened.emit("sftp_refused", path="/inbox/\udcff\n../x" + "A" * 5000, reason="bad_name")
    opened.close()
    entry = _entries(paths[0])[0]
    text = str(entry["path"])
    assert "\\udcff" in text and "\n" in text
    assert len(text) < MAX_TEXT_CHARS + 40 and text.endswith("chars]")
    assert paths[0].read_bytes().count(b"\n") == 1
    assert _verified(paths, key) == 1


def test_structlog_logger_routes_into_the_log(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """bind_audit gives a structlog logger whose events and bound context land in the log."""
    config_before = structlog.get_config()
    logger = bind_audit(opened, session="s-1", source="10.0.0.5:50022")
    logger.info("login_failed", user="ward1", reason="bad_password")
    logger.bind(user="ward1").warning("account_locked_out", locked_minutes=15)
    first, second = _entries(paths[0])
    assert first["event"] == "login_failed" and first["session"] == "s-1"
    assert first["source"] == "10.0.0.5:50022" and "level" not in first
    assert second["user"] == "ward1" and second["locked_minutes"] == 15
    assert structlog.get_config() == config_before  # no global configuration touched


def test_structlog_logger_refuses_secrets_and_drops_tracebacks(
    opened: AuditLog, paths: tuple[Path, Path]
) -> None:
    """A secret through structlog raises; exception() records the event without a traceback."""
    logger = bind_audit(opened)
    with pytest.raises(ValueError, match="secret"):
        logger.info("account_added", password="hunter2")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logger.exception("incident_raised", reason="storage_error")
    (entry,) = _entries(paths[0])
    assert entry["event"] == "incident_raised" and "exc_info" not in entry
    assert b"boom" not in paths[0].read_bytes()


def test_two_writers_on_one_file_interleave_safely(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """Two open logs (as serve and a CLI command would) append one valid chain."""
    server = AuditLog.open(*paths, key, every_records=7, timer=False)
    admin = AuditLog.open(*paths, key, every_records=7, timer=False)
    for i in range(20):
        (server if i % 3 else admin).emit("sftp_stat", n=i)
    admin.close()
    server.emit("server_stopped")
    server.close()
    assert [e["n"] for e in _entries(paths[0])[:20]] == list(range(20))
    assert _verified(paths, key) == 21


def test_a_torn_line_from_another_writer_is_repaired_on_emit(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """A partial line left by another process is cut and reported before the next event."""
    log = AuditLog.open(*paths, key, timer=False)
    log.emit("server_started")
    with paths[0].open("ab") as handle:
        handle.write(b'{"event":"acc')
    log.emit("server_stopped")
    log.close()
    events = [e["event"] for e in _entries(paths[0])]
    assert events == ["server_started", "audit_repaired", "server_stopped"]
    assert _verified(paths, key) == 3


def test_a_log_changed_under_a_writer_is_refused(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """If the file shrinks while open, emit raises and the writer stops appending."""
    log = AuditLog.open(*paths, key, timer=False)
    log.emit("server_started")
    log.emit("server_stopped")
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: data.index(b"\n") + 1])
    with pytest.raises(AuditError, match="shrank"):
        log.emit("login_failed", user="x")
    with pytest.raises(AuditError, match="unusable"):
        log.emit("login_failed", user="x")
    log.close()
    assert paths[0].read_bytes().count(b"\n") == 1


def test_a_failed_write_leaves_no_partial_line(
    opened: AuditLog, paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short write is cut back off the file; the log stays usable."""
    opened.emit("server_started")
    before = paths[0].read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))
    with pytest.raises(AuditError, match="short write"):
        opened.emit("login_failed", user="x")
    monkeypatch.undo()
    assert paths[0].read_bytes() == before
    opened.emit("login_failed", user="x")
    assert [e["seq"] for e in _entries(paths[0])] == [1, 2]


def test_emit_after_close_raises(paths: tuple[Path, Path], key: Ed25519PrivateKey) -> None:
    """A closed log refuses further events."""
    log = AuditLog.open(*paths, key, timer=False)
    log.close()
    with pytest.raises(AuditError, match="closed"):
        log.emit("server_started")


def test_repr_shows_no_key(opened: AuditLog, paths: tuple[Path, Path]) -> None:
    """The repr names the file and head only."""
    assert repr(opened) == f"AuditLog({str(paths[0])!r}, head seq 0)"


def test_naive_clock_is_a_programming_error(
    paths: tuple[Path, Path], key: Ed25519PrivateKey
) -> None:
    """A clock returning naive datetimes is refused at open; nothing is written."""
    with pytest.raises(ValueError, match="timezone-aware"):
        AuditLog.open(*paths, key, clock=lambda: datetime(2025, 7, 1), timer=False)
    assert paths[0].read_bytes() == b"" and paths[1].read_bytes() == b""
