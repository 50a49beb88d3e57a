"""Hash-chained logs: entries, the writer, recovery, verification and tampering."""

import hashlib
import io
import json
import tracemalloc
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.chain import (
    GENESIS,
    GENESIS_HASH,
    MAX_LINE_BYTES,
    ChainHead,
    ChainWriter,
    make_checkpoint,
    make_entry,
    parse_entry,
    recover_head,
    verify_chain,
    verify_checkpoint,
)
from custody.errors import ChainError, RecordError, SignatureError
from custody.records import KIND_RECEIPT, sign_record

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
T0 = "2025-07-01T09:00:00+09:00"
FIRST_LINE = (
    b'{"event":"login_failed","hash":"e1b01939e9a7da3f6fcd7def2fbdd4ad011c4f1e9dd5acc15246679fab5562b8",'
    b'"prev":"0000000000000000000000000000000000000000000000000000000000000000","seq":1,'
    b'"time":"2025-07-01T09:00:00+09:00","user":"ward01"}\n'
)
"""The first entry of a log, pinned byte for byte."""


def _time(n: int) -> str:
    return f"2025-07-01T09:{n // 60 % 60:02d}:{n % 60:02d}+09:00"


def _build(count: int, start: ChainHead = GENESIS) -> tuple[list[bytes], list[ChainHead]]:
    """Lines and heads of a log of `count` entries."""
    lines, heads, head = [], [], start
    for n in range(count):
        line, head = make_entry(head, {"event": "upload_completed", "n": n}, _time(n))
        lines.append(line)
        heads.append(head)
    return lines, heads


LINES, HEADS = _build(6)
LOG = b"".join(LINES)


def test_first_entry_known_answer() -> None:
    """The first entry's bytes and hash are exactly as specified."""
    line, head = make_entry(GENESIS, {"user": "ward01", "event": "login_failed"}, T0)
    assert line == FIRST_LINE
    unhashed = (
        '{"event":"login_failed","prev":"' + GENESIS_HASH + '","seq":1,'
        '"time":"2025-07-01T09:00:00+09:00","user":"ward01"}'
    )
    assert head == ChainHead(1, hashlib.sha256(unhashed.encode()).hexdigest())


def test_entries_link_by_seq_and_prev() -> None:
    """Each entry's seq counts from 1 and its prev is the hash before it."""
    entries = [json.loads(line) for line in LINES]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5, 6]
    assert [e["prev"] for e in entries] == [GENESIS_HASH] + [h.hash for h in HEADS[:-1]]
    assert [e["hash"] for e in entries] == [h.hash for h in HEADS]


@pytest.mark.parametrize("name", ["seq", "prev", "hash", "time"])
def test_reserved_field_names_are_refused(name: str) -> None:
    """A caller's field may not set seq, prev, hash or time."""
    with pytest.raises(ChainError, match="reserved"):
        make_entry(GENESIS, {name: 1}, T0)


@pytest.mark.parametrize(
    "time", ["2025-07-01T09:00:00", "yesterday", "", "2025-13-01T00:00:00+09:00", 1751328000]
)
def test_times_without_offset_or_malformed_are_refused(time: object) -> None:
    """time must be ISO 8601 with a UTC offset."""
    with pytest.raises(ChainError):
        make_entry(GENESIS, {}, time)  # type: ignore[arg-type]


def test_utc_z_time_is_accepted() -> None:
    """A 'Z' suffix is a UTC offset."""
    _, head = make_entry(GENESIS, {}, "2025-07-01T00:00:00Z")
    assert head.seq == 1


def test_non_json_field_values_are_refused() -> None:
    """Field values must be canonical JSON (no floats)."""
    with pytest.raises(RecordError):
        make_entry(GENESIS, {"ratio": 0.5}, T0)


def test_oversize_entry_is_refused() -> None:
    """An entry whose line would exceed MAX_LINE_BYTES is refused at write time."""
    with pytest.raises(ChainError, match="exceeds"):
        make_entry(GENESIS, {"blob": "x" * MAX_LINE_BYTES}, T0)


@pytest.mark.parametrize(("seq", "digest"), [(-1, GENESIS_HASH), (0, "0" * 63), (1, "A" * 64)])
def test_malformed_heads_are_refused(seq: int, digest: str) -> None:
    """A head needs seq >= 0 and 64 lower-case hex digits."""
    with pytest.raises(ChainError):
        ChainHead(seq, digest)


class _RecordingStream(io.BytesIO):
    """A BytesIO that records write and flush calls, and can fail or write short."""

    def __init__(self, *, fail: bool = False, short: bool = False) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail = fail
        self.short = short

    def write(self, data: object) -> int:
        assert isinstance(data, bytes)
        self.calls.append("write")
        if self.fail:
            raise OSError("disk full")
        return super().write(data[:-1] if self.short else data)

    def flush(self) -> None:
        self.calls.append("flush")
        super().flush()


def test_writer_makes_one_write_and_one_flush_per_entry() -> None:
    """append writes each line with a single write() then flush()."""
    stream = _RecordingStream()
    writer = ChainWriter(stream, GENESIS)
    for n in range(3):
        writer.append({"event": "upload_completed", "n": n}, _time(n))
    assert stream.calls == ["write", "flush"] * 3
    assert stream.getvalue() == b"".join(LINES[:3])
    assert writer.head == HEADS[2]


def test_writer_refuses_after_a_failed_write() -> None:
    """After a failed write the head stays put and further appends are refused."""
    stream = _RecordingStream(fail=True)
    writer = ChainWriter(stream, GENESIS)
    with pytest.raises(OSError, match="disk full"):
        writer.append({"n": 0}, T0)
    stream.fail = False
    with pytest.raises(ChainError, match="earlier write failed"):
        writer.append({"n": 0}, T0)
    assert writer.head == GENESIS


def test_writer_detects_a_short_write() -> None:
    """A write() that reports fewer bytes than the line is an error."""
    writer = ChainWriter(_RecordingStream(short=True), GENESIS)
    with pytest.raises(ChainError, match="short write"):
        writer.append({"n": 0}, T0)
    assert writer.head == GENESIS


def test_writer_repr_shows_no_stream() -> None:
    """The repr names the head only."""
    assert repr(ChainWriter(io.BytesIO(), GENESIS)).startswith("ChainWriter(head=ChainHead(seq=0")


def test_recover_empty_and_clean_logs() -> None:
    """An empty log resumes at GENESIS; a clean log at its last entry and its length."""
    assert recover_head(io.BytesIO()) == (GENESIS, 0)
    assert recover_head(io.BytesIO(LOG)) == (HEADS[-1], len(LOG))


def test_recover_torn_tail_then_resume() -> None:
    """A torn last line is reported by offset; truncating there and appending verifies."""
    torn = LOG + LINES[0][:40]
    stream = io.BytesIO(torn)
    head, offset = recover_head(stream)
    assert (head, offset) == (HEADS[-1], len(LOG))
    stream.truncate(offset)
    stream.seek(offset)
    ChainWriter(stream, head).append({"event": "recovered"}, T0)
    report = verify_chain(io.BytesIO(stream.getvalue()))
    assert report.ok and report.records == len(LINES) + 1


def test_recover_line_missing_only_its_newline_is_torn() -> None:
    """A complete entry without its newline was never acknowledged and is cut off too."""
    assert recover_head(io.BytesIO(LOG[:-1])) == (HEADS[-2], len(LOG) - len(LINES[-1]))


def test_recover_refuses_damage_before_the_tail() -> None:
    """A broken complete line makes recovery fail, naming the line."""
    damaged = LOG.replace(b'"n":1', b'"n":7', 1)
    with pytest.raises(ChainError, match="line 2"):
        recover_head(io.BytesIO(damaged))


def test_recover_refuses_an_overlong_tail() -> None:
    """An unterminated fragment longer than any entry is not a torn write."""
    with pytest.raises(ChainError, match="longer than"):
        recover_head(io.BytesIO(LOG + b"x" * (MAX_LINE_BYTES + 5)))


def test_clean_log_verifies() -> None:
    """An untouched log verifies and the report names its head."""
    report = verify_chain(io.BytesIO(LOG))
    assert report.ok and report.records == 6 and report.head == HEADS[-1]
    assert (report.first_bad_seq, report.first_bad_line, report.reason) == (None, None, None)


def test_empty_log_verifies() -> None:
    """No lines is a valid, empty log."""
    assert verify_chain([]).ok


def _checkpoint(index: int, key: Ed25519PrivateKey = KEY) -> dict[str, object]:
    return make_checkpoint(HEADS[index], _time(100 + index), key)


def test_checkpoints_verify() -> None:
    """A log holding every checkpointed (seq, hash) verifies."""
    report = verify_chain(
        LINES, checkpoints=[_checkpoint(1), _checkpoint(5)], public_key=KEY.public_key()
    )
    assert report.ok and report.records == 6


def test_checkpoint_round_trip() -> None:
    """verify_checkpoint returns the head make_checkpoint attested."""
    assert verify_checkpoint(_checkpoint(3), KEY.public_key()) == HEADS[3]


def _bad(lines: list[bytes], **kwargs: object) -> tuple[int | None, int | None, str]:
    report = verify_chain(lines, **kwargs)  # type: ignore[arg-type]
    assert not report.ok and report.reason is not None
    return report.first_bad_seq, report.first_bad_line, report.reason


def test_changed_byte_is_detected() -> None:
    """Changing one value in line 3 fails at line 3 with a hash mismatch."""
    lines = list(LINES)
    lines[2] = lines[2].replace(b'"n":2', b'"n":9')
    assert _bad(lines) == (3, 3, "hash mismatch: the line's content was changed")


def test_deleted_line_is_detected() -> None:
    """Removing line 3 fails at the line that follows the gap."""
    seq, line_no, reason = _bad(LINES[:2] + LINES[3:])
    assert (seq, line_no) == (3, 3) and "seq 4 where 3" in reason


def test_swapped_lines_are_detected() -> None:
    """Swapping lines 2 and 3 fails at line 2."""
    seq, line_no, reason = _bad([LINES[0], LINES[2], LINES[1], *LINES[3:]])
    assert (seq, line_no) == (2, 2) and "seq 3 where 2" in reason


def test_inserted_line_is_detected() -> None:
    """A well-formed entry inserted after line 2 fails at the insertion."""
    forged, _ = make_entry(HEADS[1], {"event": "forged"}, T0)
    seq, line_no, reason = _bad([*LINES[:2], forged, *LINES[2:]])
    assert (seq, line_no) == (4, 4) and "seq 3 where 4" in reason


def test_duplicated_line_is_detected() -> None:
    """Replaying an earlier line fails at the replay."""
    assert _bad([*LINES[:3], LINES[1], *LINES[3:]])[:2] == (4, 4)


def test_torn_last_line_is_detected() -> None:
    """A last line without its newline fails as a torn write."""
    seq, line_no, reason = _bad(list(io.BytesIO(LOG[:-10])))
    assert (seq, line_no) == (6, 6) and "torn" in reason


def test_truncation_is_caught_only_by_a_checkpoint() -> None:
    """Dropping the tail leaves a valid chain unless a checkpoint covers the lost records."""
    assert verify_chain(LINES[:4]).ok
    seq, line_no, reason = _bad(
        LINES[:4], checkpoints=[_checkpoint(5)], public_key=KEY.public_key()
    )
    assert (seq, line_no) == (5, None) and "truncated" in reason


def test_rewritten_log_is_caught_by_a_checkpoint() -> None:
    """A consistently re-hashed log with changed content fails at the checkpointed seq."""
    forged_lines, _ = _build(6)
    forged_lines[1:], _ = _build_from(forged_lines[0], 5)
    assert verify_chain(forged_lines).ok
    seq, line_no, reason = _bad(
        forged_lines, checkpoints=[_checkpoint(3)], public_key=KEY.public_key()
    )
    assert (seq, line_no) == (4, 4) and "checkpoint" in reason


def _build_from(first: bytes, count: int) -> tuple[list[bytes], ChainHead]:
    entry = json.loads(first)
    head = ChainHead(entry["seq"], entry["hash"])
    lines = []
    for n in range(count):
        line, head = make_entry(head, {"event": "rewritten", "n": n}, _time(n))
        lines.append(line)
    return lines, head


def test_bad_checkpoint_signature_is_reported() -> None:
    """A checkpoint whose body was changed makes the report not ok."""
    cp = _checkpoint(5)
    body = cp["body"]
    assert isinstance(body, dict)
    cp["body"] = {**body, "seq": 2}
    reason = _bad(LINES, checkpoints=[cp], public_key=KEY.public_key())[2]
    assert "checkpoint 1" in reason and "bad signature" in reason


def test_checkpoint_from_another_key_is_reported() -> None:
    """A checkpoint signed by another key makes the report not ok."""
    cp = _checkpoint(5, OTHER_KEY)
    assert "signed by" in _bad(LINES, checkpoints=[cp], public_key=KEY.public_key())[2]


def test_other_kind_as_checkpoint_is_reported() -> None:
    """A receipt with a checkpoint-shaped body is not a checkpoint."""
    body = {"seq": 6, "hash": HEADS[5].hash, "time": T0}
    receipt = sign_record(KIND_RECEIPT, body, KEY)
    assert "kind" in _bad(LINES, checkpoints=[receipt], public_key=KEY.public_key())[2]


def test_malformed_checkpoint_body_is_reported() -> None:
    """A signed checkpoint whose body lacks exactly seq, hash and time is refused."""
    cp = sign_record("checkpoint", {"seq": 6, "hash": HEADS[5].hash}, KEY)
    assert "exactly" in _bad(LINES, checkpoints=[cp], public_key=KEY.public_key())[2]
    with pytest.raises(ChainError):
        verify_checkpoint(cp, KEY.public_key())


def test_conflicting_checkpoints_are_reported() -> None:
    """Two signed checkpoints that disagree about one seq cannot both hold."""
    forged = make_checkpoint(ChainHead(6, "ab" * 32), T0, KEY)
    reason = _bad(LINES, checkpoints=[_checkpoint(5), forged], public_key=KEY.public_key())[2]
    assert "disagree" in reason


def test_checkpoints_without_a_key_are_a_usage_error() -> None:
    """Checkpoints cannot be ignored by forgetting the key."""
    with pytest.raises(ChainError, match="public key"):
        verify_chain(LINES, checkpoints=[_checkpoint(1)])


def test_checkpoint_errors_name_their_class() -> None:
    """verify_checkpoint raises SignatureError for a foreign key."""
    with pytest.raises(SignatureError):
        verify_checkpoint(_checkpoint(1, OTHER_KEY), KEY.public_key())


@pytest.mark.parametrize(
    "line",
    [
        b"\n",
        b"{}\n",
        b"[1]\n",
        b'{"hash":"' + b"0" * 64 + b'"}\n',
        LINES[0].replace(b'{"event"', b'{ "event"'),
        LINES[0].replace(b'"seq":1', b'"seq":1,"seq":1'),
    ],
    ids=["blank", "empty-object", "array", "hash-only", "non-canonical", "duplicate-key"],
)
def test_parse_entry_refuses_malformed_lines(line: bytes) -> None:
    """Blank, foreign, non-canonical or duplicated-key lines are ChainErrors."""
    with pytest.raises(ChainError):
        parse_entry(line)


def test_every_position_flipped_is_detected() -> None:
    """Flipping the low bit of every byte of a 3-line log is detected (exhaustive)."""
    log = b"".join(LINES[:3])
    undetected = []
    for position in range(len(log)):
        mutated = bytearray(log)
        mutated[position] ^= 0x01
        if verify_chain(io.BytesIO(bytes(mutated))).ok:
            undetected.append(position)
    assert undetected == []


@settings(max_examples=300)
@given(
    position=st.integers(min_value=0, max_value=len(LOG) - 1),
    value=st.integers(min_value=0, max_value=255),
)
def test_any_single_byte_change_is_detected(position: int, value: int) -> None:
    """Replacing any one byte of a log makes verification fail."""
    if LOG[position] == value:
        value ^= 0x80
    mutated = LOG[:position] + bytes([value]) + LOG[position + 1 :]
    report = verify_chain(io.BytesIO(mutated))
    assert not report.ok


def _lazy_log(count: int) -> Iterator[bytes]:
    head = GENESIS
    for n in range(count):
        line, head = make_entry(head, {"pad": "x" * 500, "n": n}, _time(n))
        yield line


def test_verify_streams_in_bounded_memory() -> None:
    """Verifying a ~3 MB log from a generator stays far below the log's size in memory."""
    count = 5000
    tracemalloc.start()
    try:
        report = verify_chain(_lazy_log(count))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.records == count
    assert peak < 256 * 1024


def test_text_mode_lines_are_refused() -> None:
    """Lines read from a file opened in text mode fail instead of crashing."""
    report = verify_chain([LINES[0].decode()])  # type: ignore[list-item]
    assert not report.ok and report.reason is not None and "bytes" in report.reason
