"""The hand-over rules (client.handover): pure decisions over a batch's ledger entries."""

from datetime import datetime, timedelta

import pytest

from client import handover
from client.errors import ClientError
from client.handover import RuleError, check, outstanding, overdue

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER_BATCH = "20260715-KAIGO-9ZZZZ9"
SEALED_AT = datetime.fromisoformat("2026-07-15T09:00:00+09:00")
NOW = SEALED_AT + timedelta(days=1)
GAP = timedelta(minutes=60)


def _iso(minutes: float) -> str:
    """A time ``minutes`` after the batch was sealed."""
    return (SEALED_AT + timedelta(minutes=minutes)).isoformat()


def _sealed(batch: str = BATCH) -> dict[str, object]:
    return {
        "seq": 1,
        "event": "sealed",
        "batch": batch,
        "time": SEALED_AT.isoformat(),
        "file_count": 2,
        "record_total": 10,
    }


def _media_out(minutes: float, *serials: str, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "batch": BATCH,
        "at": _iso(minutes),
        "serials": list(serials or ("DVD-20260715-001",)),
        "cabinet": "A棚",
        "carrier": "佐藤",
    }
    entry.update(extra)
    return entry


def _notice_out(minutes: float, **extra: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "batch": BATCH,
        "at": _iso(minutes),
        "serial": f"{BATCH}-N",
        "method": "hand",
        "cabinet": "B棚",
        "carrier": "鈴木",
    }
    entry.update(extra)
    return entry


def _ledger(*events: tuple[str, dict[str, object]]) -> list[dict[str, object]]:
    """Entries as the ledger holds them: the sealed entry, then events with seq numbers."""
    entries = [_sealed()]
    for seq, (event, fields) in enumerate(events, start=2):
        entries.append({**fields, "event": event, "seq": seq, "time": fields["at"]})
    return entries


def _check(event: str, fields: dict[str, object], earlier: list[dict[str, object]]) -> None:
    check(event, fields, earlier, min_gap=GAP, now=NOW)


def test_rule_error_is_a_client_error_with_exit_1() -> None:
    """RuleError maps to exit 1 through the one CLI error mapping."""
    assert issubclass(RuleError, ClientError)
    assert RuleError("x").exit_code == 1


def test_disc_then_notice_on_separate_occasions_is_accepted() -> None:
    """A notice 60 minutes after its disc, other cabinet, other carrier: allowed."""
    earlier = _ledger(("media-out", _media_out(10)))
    _check("notice-out", _notice_out(70), earlier)


def test_hand_over_of_a_never_sealed_batch_is_refused() -> None:
    """Without a sealed entry for the batch, nothing may be handed over."""
    with pytest.raises(RuleError, match="never sealed"):
        _check("media-out", _media_out(10), [_sealed(OTHER_BATCH)])


@pytest.mark.parametrize("event", ["sealed", "sent", "dvd-created"])
def test_automatic_events_cannot_be_recorded_by_hand(event: str) -> None:
    """sealed, sent and dvd-created come from their commands only."""
    with pytest.raises(RuleError, match="never by hand"):
        _check(event, {"batch": BATCH, "at": _iso(5)}, _ledger())


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("media-out", _media_out(0)), ("notice-out", _notice_out(120, cabinet="A棚"))),
        (("notice-out", _notice_out(0)), ("media-out", _media_out(120, cabinet="B棚"))),
    ],
)
def test_notice_and_disc_never_share_a_cabinet(
    first: tuple[str, dict[str, object]], second: tuple[str, dict[str, object]]
) -> None:
    """Either way round, the second item may not come from the first one's cabinet."""
    with pytest.raises(RuleError, match="same cabinet"):
        _check(second[0], second[1], _ledger(first))


def test_cabinet_names_are_compared_as_people_type_them() -> None:
    """Full-width and case variants of a cabinet name are the same cabinet."""
    earlier = _ledger(("media-out", _media_out(0, cabinet="Cab A")))
    with pytest.raises(RuleError, match="same cabinet"):
        _check("notice-out", _notice_out(120, cabinet="ｃａｂ　ａ"), earlier)


def test_returning_a_notice_to_the_disc_cabinet_is_refused() -> None:
    """A return names its cabinet too, and it may not be the disc's."""
    earlier = _ledger(("media-out", _media_out(0)), ("notice-out", _notice_out(120)))
    fields = {"batch": BATCH, "at": _iso(200), "serial": f"{BATCH}-N", "cabinet": "A棚"}
    with pytest.raises(RuleError, match="same cabinet"):
        _check("notice-return", fields, earlier)


def test_notice_within_the_gap_after_its_disc_is_refused() -> None:
    """A DVD batch's notice 59 minutes after the disc is the same occasion."""
    earlier = _ledger(("media-out", _media_out(0)))
    with pytest.raises(RuleError, match="separate occasions at least 60 minutes apart"):
        _check("notice-out", _notice_out(59), earlier)


def test_disc_within_the_gap_after_its_notice_is_refused() -> None:
    """The gap holds the other way round: a disc soon after the notice is refused."""
    earlier = _ledger(("notice-out", _notice_out(0)))
    with pytest.raises(RuleError, match="within 30 minutes"):
        _check("media-out", _media_out(30), earlier)


def test_gap_is_measured_on_event_times_not_recording_times() -> None:
    """A back-filled notice recorded late but dated 5 minutes before the disc is refused."""
    earlier = _ledger(("media-out", _media_out(100)))
    with pytest.raises(RuleError, match="separate occasions"):
        _check("notice-out", _notice_out(95), earlier)


def test_exactly_the_gap_is_enough() -> None:
    """min_gap apart is a separate occasion."""
    earlier = _ledger(("media-out", _media_out(0)))
    _check("notice-out", _notice_out(60), earlier)


def test_same_carrier_is_refused_for_a_dvd_batch() -> None:
    """The notice may not travel with the person who carried the disc, days later too."""
    earlier = _ledger(("media-out", _media_out(0)))
    with pytest.raises(RuleError, match="needs another carrier"):
        _check("notice-out", _notice_out(1000, carrier=" 佐藤 "), earlier)


def test_dvd_created_batch_is_a_dvd_batch_for_a_later_disc() -> None:
    """After dvd-created, a notice is out first; the disc later must keep the gap."""
    created = {"seq": 2, "event": "dvd-created", "batch": BATCH, "time": _iso(1)}
    earlier = [_sealed(), created]
    assert handover.is_dvd_batch(earlier)
    notice = {**_notice_out(5), "event": "notice-out", "seq": 3, "time": _iso(5)}
    with pytest.raises(RuleError, match="separate occasions"):
        _check("media-out", _media_out(10), [*earlier, notice])


def test_lgwan_batch_notice_has_no_occasion_rule() -> None:
    """Without a disc, a notice may go at once and with anyone."""
    assert not handover.is_dvd_batch(_ledger())
    _check("notice-out", _notice_out(1), _ledger())


def test_second_hand_over_of_an_outstanding_disc_is_refused() -> None:
    """A disc already out cannot be handed out again before it returns."""
    earlier = _ledger(("media-out", _media_out(0)))
    with pytest.raises(RuleError, match="already handed out"):
        _check("media-out", _media_out(10, "dvd-20260715-001"), earlier)


def test_second_hand_over_of_an_outstanding_notice_is_refused() -> None:
    """The same notice serial cannot go out twice without a return."""
    earlier = _ledger(("notice-out", _notice_out(0)))
    with pytest.raises(RuleError, match="already handed out"):
        _check("notice-out", _notice_out(10), earlier)


def test_hand_over_after_return_is_accepted() -> None:
    """Once returned, the disc may go out again."""
    back = {"batch": BATCH, "at": _iso(20), "serials": ["DVD-20260715-001"]}
    earlier = _ledger(("media-out", _media_out(0)), ("media-return", back))
    _check("media-out", _media_out(30), earlier)


def test_one_hand_over_naming_a_disc_twice_is_refused() -> None:
    """Two equal serials in one entry are a typing mistake."""
    with pytest.raises(RuleError, match="named twice"):
        _check("media-out", _media_out(0, "D-1", "d-1"), _ledger())


def test_return_without_a_hand_over_is_refused() -> None:
    """Nothing can come back that did not go out."""
    fields = {"batch": BATCH, "at": _iso(20), "serials": ["DVD-20260715-001"]}
    with pytest.raises(RuleError, match="no outstanding hand-over of disc"):
        _check("media-return", fields, _ledger())


def test_return_of_a_notice_when_only_the_disc_is_out_is_refused() -> None:
    """Returns match the kind of item: a disc hand-over does not cover a notice return."""
    fields = {"batch": BATCH, "at": _iso(20), "serial": "DVD-20260715-001"}
    with pytest.raises(RuleError, match="password notice"):
        _check("notice-return", fields, _ledger(("media-out", _media_out(0))))


def test_second_return_is_refused() -> None:
    """A disc returned once is no longer outstanding."""
    back = {"batch": BATCH, "at": _iso(20), "serials": ["DVD-20260715-001"]}
    earlier = _ledger(("media-out", _media_out(0)), ("media-return", back))
    with pytest.raises(RuleError, match="no outstanding"):
        _check("media-return", {**back, "at": _iso(30)}, earlier)


def test_return_dated_before_its_hand_over_is_refused() -> None:
    """A return cannot precede the hand-over it closes."""
    back = {"batch": BATCH, "at": _iso(5), "serials": ["DVD-20260715-001"]}
    with pytest.raises(RuleError, match="before disc"):
        _check("media-return", back, _ledger(("media-out", _media_out(10))))


def test_event_in_the_future_is_refused() -> None:
    """An event more than a few minutes ahead of the clock is a mistake."""
    fields = {**_media_out(0), "at": (NOW + timedelta(minutes=6)).isoformat()}
    with pytest.raises(RuleError, match="in the future"):
        _check("media-out", fields, _ledger())


def test_event_before_the_batch_was_sealed_is_refused() -> None:
    """Nothing is handed over before the batch exists."""
    with pytest.raises(RuleError, match="before batch"):
        _check("media-out", _media_out(-1), _ledger())


def test_dvd_created_serials_limit_the_discs_that_go_out() -> None:
    """When lgwan-client dvd made the discs, a serial it did not make is refused."""
    created = {
        "seq": 2,
        "event": "dvd-created",
        "batch": BATCH,
        "time": _iso(1),
        "serials": ["DVD-20260715-001"],
    }
    with pytest.raises(RuleError, match="not made for batch"):
        _check("media-out", _media_out(5, "DVD-20260715-002"), [_sealed(), created])
    _check("media-out", _media_out(5, "DVD-20260715-001"), [_sealed(), created])


def test_entries_of_other_batches_do_not_count() -> None:
    """Another batch's disc in cabinet A does not bar this batch's notice from it."""
    foreign = {**_media_out(0), "batch": OTHER_BATCH, "event": "media-out", "seq": 2}
    _check("notice-out", _notice_out(1, cabinet="A棚"), [_sealed(), foreign])


def test_outstanding_replays_hand_overs_and_returns() -> None:
    """Two discs out, one back: one outstanding, with its hand-over entry."""
    back = {"batch": BATCH, "at": _iso(20), "serials": ["D-2"]}
    entries = _ledger(
        ("media-out", _media_out(0, "D-1", "D-2")),
        ("notice-out", _notice_out(90)),
        ("media-return", back),
    )
    items = outstanding(entries)
    assert [(i.kind, i.serial) for i in items] == [("media", "D-1"), ("notice", f"{BATCH}-N")]
    assert items[0].seq == 2


def test_overdue_lists_items_out_at_least_n_days() -> None:
    """An item out 1 day is overdue for --days 1, not for --days 2."""
    entries = _ledger(("media-out", _media_out(0)))
    assert [i.serial for i in overdue(entries, now=NOW, days=1)] == ["DVD-20260715-001"]
    assert overdue(entries, now=NOW, days=2) == []


def test_event_time_needs_an_offset() -> None:
    """A stored time without a UTC offset is refused, naming the entry."""
    with pytest.raises(RuleError, match="seq 4"):
        handover.event_time({"seq": 4, "at": "2026-07-15T09:00:00"})
