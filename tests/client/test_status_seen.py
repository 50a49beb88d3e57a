"""client.status_seen: the newest status record seq per batch; older ones are stale."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from client import status_seen
from client.errors import ClientError
from client.status import BatchStatus

AT = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)


def _item(batch: str, seq: int | None, problem: str | None = None) -> BatchStatus:
    return BatchStatus(batch, "forwarded", AT, None, seq, problem=problem)


def test_newer_records_raise_what_was_seen_older_ones_are_stale() -> None:
    """seq above what was seen is recorded; below it is stale (state hidden); equal is fine."""
    seen = {"A": 3, "B": 5}
    items, changed = status_seen.check(
        [_item("A", 4), _item("B", 2), _item("C", 0), _item("B", 5)], seen
    )
    assert changed and seen == {"A": 4, "B": 5, "C": 0}
    assert [i.valid for i in items] == [True, False, True, True]
    stale = items[1]
    assert stale.stale and stale.state is None and stale.at is None
    assert stale.error is not None and stale.error.startswith("record STALE (status record seq 2")


def test_invalid_records_and_receipts_only_are_left_alone() -> None:
    """A record that did not verify, or a batch with only a receipt (no seq), changes nothing."""
    seen = {"A": 3}
    items, changed = status_seen.check(
        [_item("A", 1, problem="bad signature"), _item("B", None)], seen
    )
    assert not changed and seen == {"A": 3}
    assert not items[0].stale and items[0].error == "signature INVALID (bad signature)"


def test_save_creates_the_ledger_directory_when_there_is_none_yet(tmp_path: Path) -> None:
    """A ward that never sealed here has no ledger directory: status still records what it saw."""
    path = tmp_path / "ledger" / "status-seen.json"
    status_seen.save(path, {"A": 1})
    assert status_seen.load(path) == {"A": 1}
    assert path.parent.stat().st_mode & 0o777 == 0o700


def test_save_merges_with_the_file_and_is_private(tmp_path: Path) -> None:
    """Two runs: the higher seq of each batch wins; the file is 0600 and leaves no temporary."""
    path = tmp_path / "status-seen.json"
    status_seen.save(path, {"A": 5, "B": 1})
    status_seen.save(path, {"A": 4, "C": 2})
    assert status_seen.load(path) == {"A": 5, "B": 1, "C": 2}
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["status-seen.json"]


@pytest.mark.parametrize("content", [b"[]", b"{", b'{"A": -1}', b'{"A": "3"}', b'{"A": true}'])
def test_a_damaged_file_is_an_error_not_a_fresh_start(tmp_path: Path, content: bytes) -> None:
    """A file that is not {batch: count} is refused with a hint (never silently reset)."""
    path = tmp_path / "status-seen.json"
    path.write_bytes(content)
    with pytest.raises(ClientError, match="not a valid status-seen file") as refused:
        status_seen.load(path)
    assert refused.value.hint is not None and "remove it" in refused.value.hint
    assert status_seen.load(tmp_path / "missing.json") == {}
