"""The print-site spool: atomic, verified, exactly-once delivery; a listing trusting no name."""

import fcntl
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from custody.canonical import canonical_json
from gateway.spool import (
    Arrival,
    BatchState,
    Spool,
    SpoolBusyError,
    SpoolConflictError,
    SpoolError,
    batch_state,
)
from tests.gateway.test_envelope_check import sealed_envelope

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-JUMIN-AB12CD"
JST = timezone(timedelta(hours=9))
DATA = sealed_envelope(BATCH, padding=200_000)
SHA = hashlib.sha256(DATA).hexdigest()
DETAIL = {"serials": ["DVD-20260715-001"], "label": "KAIGO_7F3KQ2"}


class Clock:
    """A settable clock in JST."""

    def __init__(self) -> None:
        self.now = datetime(2026, 7, 15, 10, 30, tzinfo=JST)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves."""
    return Clock()


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Spool:
    """An empty spool (its directory not yet created)."""
    return Spool(tmp_path / "spool", clock=clock)


def _deliver(spool: Spool, data: bytes = DATA, batch: str = BATCH, **kw: object) -> Arrival:
    args: dict[str, object] = {
        "tenant": "shinjuku",
        "channel": "dvd",
        "expected_size": len(data),
        "expected_sha256": hashlib.sha256(data).hexdigest(),
        "source_detail": DETAIL,
    }
    args.update(kw)
    return spool.deliver(batch, io.BytesIO(data), **args)  # type: ignore[arg-type]


def _names(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.root.iterdir()) if spool.root.exists() else []


class Exploding(io.RawIOBase):
    """A source that yields ``good`` bytes of the envelope, then fails like a dying disc."""

    def __init__(self, good: int) -> None:
        self._data = io.BytesIO(DATA[:good])
        self.reads = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        chunk = self._data.read(size)
        if not chunk:
            raise OSError(5, "Input/output error")
        return chunk


def test_delivery_writes_the_envelope_and_its_arrival_record(spool: Spool) -> None:
    """A delivery leaves exactly <batch>.age and <batch>.arrival.json (canonical, 0600)."""
    arrival = _deliver(spool)
    assert _names(spool) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]
    assert arrival.path.read_bytes() == DATA
    assert arrival == Arrival(
        BATCH, "shinjuku", "dvd", len(DATA), SHA, Clock().now, spool.root / f"{BATCH}.age", DETAIL
    )
    record = (spool.root / f"{BATCH}.arrival.json").read_bytes()
    doc = json.loads(record)
    assert record == canonical_json(doc) + b"\n"
    assert doc["arrived_at"] == "2026-07-15T10:30:00.000+09:00" and doc["source"] == DETAIL
    assert spool.get(BATCH) == arrival and spool.list() == [arrival]
    for name in _names(spool):
        assert (spool.root / name).stat().st_mode & 0o777 == 0o600
    assert spool.root.stat().st_mode & 0o777 == 0o700


def test_same_batch_again_is_delivered_once_without_reading(spool: Spool, clock: Clock) -> None:
    """A second delivery with the same SHA-256 returns the first arrival and reads nothing."""
    first = _deliver(spool)
    clock.now += timedelta(hours=1)
    source = Exploding(0)
    again = spool.deliver(
        BATCH,
        source,
        tenant="shinjuku",
        channel="lgwan",
        expected_size=len(DATA),
        expected_sha256=SHA,
        source_detail={},
    )
    assert again == first and source.reads == 0
    assert _names(spool) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]


def test_different_content_under_the_same_id_is_refused(spool: Spool) -> None:
    """Another envelope under a delivered batch id is a conflict; the first stays untouched."""
    _deliver(spool)
    other = sealed_envelope(BATCH)
    with pytest.raises(SpoolConflictError, match="different SHA-256"):
        _deliver(spool, other)
    assert (spool.root / f"{BATCH}.age").read_bytes() == DATA
    assert _names(spool) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]


def test_same_content_for_another_tenant_is_refused(spool: Spool) -> None:
    """The same envelope claimed for a different tenant is a conflict, not a delivery."""
    _deliver(spool)
    with pytest.raises(SpoolConflictError, match="tenant shinjuku"):
        _deliver(spool, tenant="nakano")


def test_source_failing_mid_read_leaves_nothing_then_a_retry_succeeds(spool: Spool) -> None:
    """A source dying halfway propagates its error, leaves no file at all, and a retry works."""
    with pytest.raises(OSError, match="Input/output"):
        spool.deliver(
            BATCH,
            Exploding(100_000),
            tenant="shinjuku",
            channel="dvd",
            expected_size=len(DATA),
            expected_sha256=SHA,
            source_detail=DETAIL,
        )
    assert _names(spool) == []
    assert spool.get(BATCH) is None
    assert _deliver(spool).path.read_bytes() == DATA


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DATA[:-1], "bytes, expected"),
        (DATA + b"x", "longer than"),
        (DATA[:-1] + bytes([DATA[-1] ^ 1]), "SHA-256"),
    ],
    ids=["short", "long", "altered"],
)
def test_source_differing_from_the_expected_envelope_is_refused(
    spool: Spool, data: bytes, message: str
) -> None:
    """A source whose size or SHA-256 differs from the expected values leaves nothing behind."""
    with pytest.raises(SpoolError, match=message):
        spool.deliver(
            BATCH,
            io.BytesIO(data),
            tenant="shinjuku",
            channel="dvd",
            expected_size=len(DATA),
            expected_sha256=SHA,
            source_detail={},
        )
    assert _names(spool) == []


def test_verifier_sees_the_complete_part_and_can_veto(spool: Spool) -> None:
    """The verify hook gets the whole verified .part before publication; raising aborts."""
    seen: list[bytes] = []

    def veto(part: Path) -> None:
        seen.append(part.read_bytes())
        assert part.name == f".{BATCH}.age.part"
        raise ValueError("not acceptable")

    with pytest.raises(ValueError, match="not acceptable"):
        _deliver(spool, verify=veto)
    assert seen == [DATA]
    assert _names(spool) == []


def test_arrival_record_is_in_place_before_the_envelope_is_named(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .part gets its final name last, after the arrival record: no envelope without one."""
    seen: list[tuple[str, bool]] = []
    rename = Path.rename

    def watched(self: Path, target: str | os.PathLike[str]) -> Path:
        seen.append((Path(target).name, (spool.root / f"{BATCH}.arrival.json").exists()))
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", watched)
    _deliver(spool)
    assert seen == [(f"{BATCH}.age", True)]


def test_failure_at_the_final_rename_leaves_no_arrival(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If naming the envelope fails, its fresh arrival record and .part are removed again."""

    def broken(self: Path, target: str | os.PathLike[str]) -> Path:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "rename", broken)
    with pytest.raises(OSError, match="No space"):
        _deliver(spool)
    assert _names(spool) == [] and spool.get(BATCH) is None


def test_leftovers_of_a_crash_are_not_an_arrival(spool: Spool) -> None:
    """A stale .part and an arrival record without its envelope (a kill mid-way) are invisible."""
    spool.root.mkdir(parents=True)
    (spool.root / f".{BATCH}.age.part").write_bytes(b"half an envelope")
    (spool.root / f"{BATCH}.arrival.json").write_bytes(b'{"stale": true}')
    assert spool.get(BATCH) is None and spool.list() == []
    arrival = _deliver(spool)
    assert arrival.path.read_bytes() == DATA
    assert _names(spool) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]


_KILL_SCRIPT = """
import sys
from pathlib import Path
from gateway.spool import Spool
Spool(Path(sys.argv[1])).deliver(
    sys.argv[2], sys.stdin.buffer.raw, tenant="shinjuku", channel="lgwan",
    expected_size=int(sys.argv[3]), expected_sha256=sys.argv[4], source_detail={},
)
"""


def test_sigkill_mid_delivery_leaves_no_envelope(spool: Spool) -> None:
    """A delivery killed with SIGKILL mid-way leaves only a .part; the next run completes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILL_SCRIPT, str(spool.root), BATCH, str(len(DATA)), SHA],
        stdin=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert proc.stdin is not None
    proc.stdin.write(DATA[:100_000])
    proc.stdin.flush()
    part = spool.root / f".{BATCH}.age.part"
    deadline = time.monotonic() + 20
    while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert part.stat().st_size > 0  # killed while writing, not before
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdin.close()
    assert _names(spool) == [f".{BATCH}.age.part"]
    assert spool.list() == [] and spool.get(BATCH) is None
    assert _deliver(spool).path.read_bytes() == DATA
    assert _names(spool) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]


def test_concurrent_delivery_of_the_same_batch_is_busy(spool: Spool) -> None:
    """While another process holds a batch's .part lock, a second delivery is refused as busy."""
    spool.root.mkdir(parents=True)
    part = spool.root / f".{BATCH}.age.part"
    fd = os.open(part, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(SpoolBusyError, match="in progress") as caught:
            _deliver(spool)
        assert caught.value.exit_code == 75
    finally:
        os.close(fd)
    assert spool.get(BATCH) is None
    assert _deliver(spool).size == len(DATA)


@pytest.fixture
def hostile_spool(spool: Spool) -> Iterator[Spool]:
    """A spool holding one real batch among names that are not batches."""
    _deliver(spool)
    root = spool.root
    (root / ".hidden.age").write_bytes(DATA)
    (root / "notes.age").write_bytes(DATA)
    (root / "readme.txt").write_bytes(b"hello")
    (root / f".{OTHER}.age.part").write_bytes(DATA[:10])
    (root / f"{OTHER}.age.part").write_bytes(DATA[:10])
    (root / "20261399-KAIGO-AAAAAA.age").write_bytes(DATA)  # no such date
    (root / "20260716-KAIGO-aaaaaa.age").write_bytes(DATA)  # lower case
    (root / "20260716-KAIGO-BBBBBB.age").mkdir()  # a directory
    (root / "20260716-KAIGO-CCCCCC.age").symlink_to("/etc/passwd")  # a link out
    (root / "..20260716-KAIGO-DDDDDD.age").write_bytes(DATA)
    os.close(os.open(os.fsencode(root) + b"/\xff\xfe.age", os.O_CREAT | os.O_WRONLY, 0o600))
    yield spool


def test_list_ignores_names_that_are_not_batches(hostile_spool: Spool) -> None:
    """Only <valid batch id>.age regular files are listed; hostile and foreign names are skipped."""
    assert [a.batch_id for a in hostile_spool.list()] == [BATCH]


@pytest.mark.parametrize("name", ["../etc/passwd", "x", f"{BATCH}/../x", f"{BATCH}.age", ""])
def test_get_refuses_what_is_not_a_batch_id(spool: Spool, name: str) -> None:
    """get() validates the id before building any path from it."""
    with pytest.raises(SpoolError, match="batch id"):
        spool.get(name)


def test_envelope_without_arrival_record_is_damage_not_an_arrival(spool: Spool) -> None:
    """A <batch>.age nobody delivered is reported, and a delivery refuses to overwrite it."""
    spool.root.mkdir(parents=True)
    (spool.root / f"{BATCH}.age").write_bytes(b"dropped here by hand")
    with pytest.raises(SpoolError, match="no arrival record"):
        spool.get(BATCH)
    with pytest.raises(SpoolError, match="no arrival record"):
        spool.list()
    with pytest.raises(SpoolConflictError, match="damaged"):
        _deliver(spool)
    assert (spool.root / f"{BATCH}.age").read_bytes() == b"dropped here by hand"


def test_envelope_changed_after_arrival_is_reported(spool: Spool) -> None:
    """An envelope whose size no longer matches its arrival record is reported as changed."""
    arrival = _deliver(spool)
    with arrival.path.open("ab") as handle:
        handle.write(b"more")
    with pytest.raises(SpoolError, match="arrival record says"):
        spool.get(BATCH)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tenant", "Shinjuku", "invalid tenant"),
        ("tenant", "../x", "invalid tenant"),
        ("channel", "usb", "unknown channel"),
        ("expected_sha256", "ABC", "64 lower-case hex"),
        ("expected_size", -1, "non-negative"),
        ("source_detail", {"ratio": 0.5}, "canonical JSON"),
    ],
)
def test_bad_arguments_are_refused_before_writing(
    spool: Spool, field: str, value: object, message: str
) -> None:
    """Invalid tenant, channel, hash, size or detail are refused and nothing is written."""
    with pytest.raises(SpoolError, match=message):
        _deliver(spool, **{field: value})
    assert _names(spool) == []


def test_list_is_in_arrival_order(spool: Spool, clock: Clock) -> None:
    """Batches are listed oldest arrival first, whatever their names."""
    _deliver(spool)
    clock.now -= timedelta(days=1)
    older = sealed_envelope(OTHER)
    _deliver(spool, older, OTHER)
    assert [a.batch_id for a in spool.list()] == [OTHER, BATCH]


def test_state_is_opened_once_the_batch_directory_exists(spool: Spool, tmp_path: Path) -> None:
    """A batch is `arrived` until <work_dir>/<batch>/ exists; a symlink there does not count."""
    arrival = _deliver(spool)
    work = tmp_path / "work"
    work.mkdir()
    assert batch_state(arrival, work) is BatchState.ARRIVED
    (work / BATCH).symlink_to(tmp_path)
    assert batch_state(arrival, work) is BatchState.ARRIVED
    (work / BATCH).unlink()
    (work / BATCH).mkdir()
    assert batch_state(arrival, work) is BatchState.OPENED


CERTIFICATE = b'{"kind":"erasure-certificate"}\n'


def _erase(spool: Spool, batch: str = BATCH) -> None:
    """What ``erase`` leaves: the envelope gone, the certificate copy beside the arrival."""
    (spool.root / f"{batch}.age").unlink()
    spool.write_erasure(batch, CERTIFICATE)


def test_state_is_erased_once_the_certificate_copy_is_there(spool: Spool, tmp_path: Path) -> None:
    """``<batch>.erasure.json`` in the spool makes the batch erased, opened or not."""
    arrival = _deliver(spool)
    work = tmp_path / "work"
    (work / BATCH).mkdir(parents=True)
    assert batch_state(arrival, work) is BatchState.OPENED
    (work / BATCH).rmdir()
    _erase(spool)
    assert batch_state(arrival, work) is BatchState.ERASED


def test_erased_batch_stays_listed_as_its_tombstone(spool: Spool) -> None:
    """An erased batch (arrival + certificate, no envelope) is still listed and got."""
    arrival = _deliver(spool)
    _erase(spool)
    assert _names(spool) == [f"{BATCH}.arrival.json", f"{BATCH}.erasure.json"]
    assert spool.get(BATCH) == arrival
    assert spool.list() == [arrival]


def test_a_certificate_copy_alone_is_not_a_batch(spool: Spool) -> None:
    """Without its arrival record a certificate copy lists nothing."""
    spool.write_erasure(BATCH, CERTIFICATE)
    assert spool.get(BATCH) is None and spool.list() == []


def test_delivering_an_erased_batch_again_does_not_bring_it_back(spool: Spool) -> None:
    """The same batch again returns the tombstone unread; a different one is a conflict."""
    arrival = _deliver(spool)
    _erase(spool)
    assert _deliver(spool) == arrival
    assert not (spool.root / f"{BATCH}.age").exists()
    other = sealed_envelope(BATCH)
    with pytest.raises(SpoolConflictError):
        _deliver(spool, other)
    assert _names(spool) == [f"{BATCH}.arrival.json", f"{BATCH}.erasure.json"]


def test_certificate_copy_is_written_once(spool: Spool) -> None:
    """The same bytes again are fine; different ones are refused and the first kept."""
    path = spool.write_erasure(BATCH, CERTIFICATE)
    assert spool.write_erasure(BATCH, CERTIFICATE) == path == spool.erasure_path(BATCH)
    with pytest.raises(SpoolConflictError, match="different erasure certificate"):
        spool.write_erasure(BATCH, CERTIFICATE + b" ")
    assert path.read_bytes() == CERTIFICATE
    assert _names(spool) == [f"{BATCH}.erasure.json"]


def test_certificate_copy_refuses_a_bad_batch_id(spool: Spool) -> None:
    """A path trick as the batch id writes nothing."""
    with pytest.raises(SpoolError):
        spool.write_erasure("../x", CERTIFICATE)
