"""The hand-over rules of the ward's ledger: pure functions over ledger entries, no I/O.

The privacy council's chain-of-custody rules for the DVD path (issue 5 §2): the
encrypted disc and its password notice live in separate locked cabinets, leave
on separate occasions with different carriers, and every hand-over and return
is recorded. :func:`check` decides whether one proposed entry may join a batch's
earlier entries and raises :class:`RuleError` (one line, exit 1) when it may not;
the caller reads the entries and records under the same ledger lock, so nothing
can slip in between the check and the write.

Items are *discs* (``media-out``/``media-return``, field ``serials``: one entry
may carry the several discs of a split batch) and *password notices*
(``notice-out``/``notice-return``, field ``serial``). An item is outstanding
from its hand-over until its return. Every event carries ``at``, when it
happened (which may be earlier than the entry's ``time``, when it was recorded:
paper records are back-filled); entries without ``at`` (``sealed``, ``sent``,
``dvd-created``) happened at their ``time``.

Names people type (cabinets, carriers, serials) are compared after NFKC,
case folding and collapsing white space, so ``Ａ棚`` and ``a棚`` are one cabinet.
"""

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from client.errors import ClientError
from client.i18n import _
from client.ledger import (
    EVENT_DELIVERY,
    EVENT_DVD_CREATED,
    EVENT_ERASURE_VERIFIED,
    EVENT_MEDIA_OUT,
    EVENT_MEDIA_RETURN,
    EVENT_NOTICE_OUT,
    EVENT_NOTICE_RETURN,
    EVENT_SEALED,
    EVENT_SENT,
    FIELD_BATCH,
    FIELD_EVENT,
)

MEDIA = "media"
NOTICE = "notice"
KIND_NAMES = {MEDIA: "disc", NOTICE: "password notice"}
"""English names of the items (see :func:`kind_name` for the name shown to people)."""

OUT_EVENTS = {EVENT_MEDIA_OUT: MEDIA, EVENT_NOTICE_OUT: NOTICE}
RETURN_EVENTS = {EVENT_MEDIA_RETURN: MEDIA, EVENT_NOTICE_RETURN: NOTICE}
MANUAL_EVENTS = (*OUT_EVENTS, *RETURN_EVENTS, EVENT_DELIVERY)
"""The events a person records with ``lgwan-client ledger record``."""
AUTOMATIC_EVENTS = {
    EVENT_SEALED: "lgwan-client seal",
    EVENT_SENT: "lgwan-client send",
    EVENT_DVD_CREATED: "lgwan-client dvd",
    EVENT_ERASURE_VERIFIED: "lgwan-client verify-certificate",
}
"""Events only the named command records; never by hand."""

FIELD_AT = "at"
FIELD_TIME = "time"
FIELD_SEQ = "seq"
FIELD_SERIALS = "serials"
"""Disc serials of a media event (a list)."""
FIELD_SERIAL = "serial"
"""The notice serial of a notice event."""
FIELD_CABINET = "cabinet"
FIELD_CARRIER = "carrier"

FUTURE_TOLERANCE = timedelta(minutes=5)
"""How far ahead of the clock an event's time may be (clocks differ a little)."""

JST = ZoneInfo("Asia/Tokyo")


class RuleError(ClientError):
    """A hand-over rule refuses the event; nothing was recorded (exit 1)."""


@dataclass(frozen=True)
class HandOver:
    """One item (a disc or a password notice) handed out and not yet returned."""

    batch: str
    kind: str
    serial: str
    at: datetime
    entry: Mapping[str, object]

    @property
    def seq(self) -> object:
        """The ledger seq of the hand-over entry."""
        return self.entry.get(FIELD_SEQ)


def check(
    event: str,
    proposed: Mapping[str, object],
    earlier: Sequence[Mapping[str, object]],
    *,
    min_gap: timedelta,
    now: datetime,
) -> None:
    """Decide whether ``proposed`` may be recorded after the batch's ``earlier`` entries.

    Args:
        event: the event name, e.g. ``media-out``.
        proposed: the entry's fields (``batch``, ``at``, ``serials``/``serial``,
            ``cabinet``, ``carrier`` …) as they would be recorded.
        earlier: the ledger's entries for the batch, in order (others are ignored).
        min_gap: the least time between a DVD batch's disc and notice hand-overs.
        now: the current time (aware), for the future check.

    Raises:
        RuleError: the reason the event is refused, in one line.
    """
    refuse_automatic(event)
    if event not in MANUAL_EVENTS:
        raise RuleError(
            _("unknown ledger event {event}; one of: {events}").format(
                event=repr(event), events=", ".join(MANUAL_EVENTS)
            )
        )
    batch = str(proposed.get(FIELD_BATCH, ""))
    mine = [entry for entry in earlier if entry.get(FIELD_BATCH) == batch]
    at = event_time(proposed)
    if at > now + FUTURE_TOLERANCE:
        raise RuleError(
            _("{event} at {at} is in the future (now {now})").format(
                event=event, at=format_time(at), now=format_time(now)
            )
        )
    sealed = sealed_entry(mine)
    if sealed is None:
        raise RuleError(
            _(
                "batch {batch} was never sealed (no 'sealed' entry in this ledger); "
                "{event} is not recorded for it"
            ).format(batch=batch, event=event)
        )
    if at < event_time(sealed):
        raise RuleError(
            _("{event} at {at} is before batch {batch} was sealed ({sealed_at})").format(
                event=event,
                at=format_time(at),
                batch=batch,
                sealed_at=format_time(event_time(sealed)),
            )
        )
    if event in OUT_EVENTS:
        _check_hand_over(OUT_EVENTS[event], batch, proposed, at, mine, min_gap)
    elif event in RETURN_EVENTS:
        _check_return(RETURN_EVENTS[event], batch, proposed, at, mine)


def refuse_automatic(event: str) -> None:
    """Refuse an event that only a command records (``sealed``, ``sent``, ``dvd-created``).

    Raises:
        RuleError: ``event`` is one of them.
    """
    command = AUTOMATIC_EVENTS.get(event)
    if command is not None:
        raise RuleError(
            _("'{event}' entries are recorded by {command} only, never by hand").format(
                event=event, command=command
            )
        )


def sealed_entry(entries: Iterable[Mapping[str, object]]) -> Mapping[str, object] | None:
    """The batch's first ``sealed`` entry, if any."""
    for entry in entries:
        if entry.get(FIELD_EVENT) == EVENT_SEALED:
            return entry
    return None


def is_dvd_batch(entries: Iterable[Mapping[str, object]]) -> bool:
    """Whether the batch goes by disc: it has a ``dvd-created`` or ``media-out`` entry."""
    return any(e.get(FIELD_EVENT) in (EVENT_DVD_CREATED, EVENT_MEDIA_OUT) for e in entries)


def item_serials(entry: Mapping[str, object]) -> list[str]:
    """The serials a hand-over or return entry names (discs: a list; notice: one)."""
    event = entry.get(FIELD_EVENT)
    kind = OUT_EVENTS.get(str(event)) or RETURN_EVENTS.get(str(event))
    if kind == MEDIA:
        value = entry.get(FIELD_SERIALS)
        return [str(s) for s in value] if isinstance(value, list) else []
    if kind == NOTICE:
        value = entry.get(FIELD_SERIAL)
        return [value] if isinstance(value, str) else []
    return []


def outstanding(entries: Iterable[Mapping[str, object]]) -> list[HandOver]:
    """Replay entries (any batches, in ledger order): items handed out and not returned."""
    out: dict[tuple[str, str, str], HandOver] = {}
    for entry in entries:
        event = str(entry.get(FIELD_EVENT))
        batch = str(entry.get(FIELD_BATCH))
        if event in OUT_EVENTS:
            kind, at = OUT_EVENTS[event], event_time(entry)
            for serial in item_serials(entry):
                out[(batch, kind, normalize(serial))] = HandOver(batch, kind, serial, at, entry)
        elif event in RETURN_EVENTS:
            for serial in item_serials(entry):
                out.pop((batch, RETURN_EVENTS[event], normalize(serial)), None)
    return list(out.values())


def overdue(entries: Iterable[Mapping[str, object]], *, now: datetime, days: int) -> list[HandOver]:
    """Items out for at least ``days`` days at ``now``, oldest first."""
    limit = timedelta(days=days)
    late = [item for item in outstanding(entries) if now - item.at >= limit]
    return sorted(late, key=lambda item: item.at)


def event_time(entry: Mapping[str, object]) -> datetime:
    """When the event happened: its ``at``, else the entry's ``time``.

    Raises:
        RuleError: neither is an ISO 8601 time with a UTC offset.
    """
    value = entry.get(FIELD_AT, entry.get(FIELD_TIME))
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        shown = repr(str(value)[:40])
        if FIELD_SEQ in entry:
            message = _("ledger seq {seq}: time {time} is not ISO 8601 with a UTC offset")
            raise RuleError(message.format(seq=entry[FIELD_SEQ], time=shown))
        message = _("the event: time {time} is not ISO 8601 with a UTC offset")
        raise RuleError(message.format(time=shown))
    return moment


def normalize(text: str) -> str:
    """The form names are compared in: NFKC, case-folded, white space collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def kind_name(kind: str) -> str:
    """The item's name in the chosen language: disc, or password notice."""
    return _("disc") if kind == MEDIA else _("password notice")


def format_time(moment: datetime) -> str:
    """``2026-07-15 10:32 JST``: a time for one-line messages."""
    return f"{moment.astimezone(JST):%Y-%m-%d %H:%M} JST"


def _check_hand_over(
    kind: str,
    batch: str,
    proposed: Mapping[str, object],
    at: datetime,
    mine: Sequence[Mapping[str, object]],
    min_gap: timedelta,
) -> None:
    serials = item_serials({**proposed, FIELD_EVENT: _out_event(kind)})
    if not serials:
        raise RuleError(_("a {item} hand-over needs its serial").format(item=kind_name(kind)))
    seen: set[str] = set()
    for serial in serials:
        if normalize(serial) in seen:
            raise RuleError(
                _("{item} {serial} is named twice in one hand-over").format(
                    item=kind_name(kind), serial=serial
                )
            )
        seen.add(normalize(serial))
    for item in outstanding(mine):
        if item.kind == kind and normalize(item.serial) in seen:
            raise RuleError(
                _(
                    "{item} {serial} of batch {batch} is already handed out "
                    "(seq {seq}, {at}) and not returned"
                ).format(
                    item=kind_name(kind),
                    serial=item.serial,
                    batch=batch,
                    seq=item.seq,
                    at=format_time(item.at),
                )
            )
    if kind == MEDIA:
        _check_created_serials(batch, serials, mine)
    _check_cabinet(kind, batch, proposed, mine)
    if kind == MEDIA or is_dvd_batch(mine):
        _check_occasion(kind, batch, proposed, at, mine, min_gap)


def _check_return(
    kind: str,
    batch: str,
    proposed: Mapping[str, object],
    at: datetime,
    mine: Sequence[Mapping[str, object]],
) -> None:
    serials = item_serials({**proposed, FIELD_EVENT: _return_event(kind)})
    if not serials:
        raise RuleError(_("a {item} return needs its serial").format(item=kind_name(kind)))
    out = {normalize(i.serial): i for i in outstanding(mine) if i.kind == kind}
    for serial in serials:
        item = out.pop(normalize(serial), None)
        if item is None:
            raise RuleError(
                _("no outstanding hand-over of {item} {serial} for batch {batch} to return").format(
                    item=kind_name(kind), serial=serial, batch=batch
                )
            )
        if at < item.at:
            raise RuleError(
                _(
                    "the return at {at} is before {item} {serial} was handed out "
                    "(seq {seq}, {out_at})"
                ).format(
                    at=format_time(at),
                    item=kind_name(kind),
                    serial=serial,
                    seq=item.seq,
                    out_at=format_time(item.at),
                )
            )
    _check_cabinet(kind, batch, proposed, mine)


def _check_cabinet(
    kind: str, batch: str, proposed: Mapping[str, object], mine: Sequence[Mapping[str, object]]
) -> None:
    """A password notice and its disc never share a cabinet (either way round)."""
    cabinet = proposed.get(FIELD_CABINET)
    if not isinstance(cabinet, str) or not cabinet.strip():
        return
    for entry in mine:
        if _kind_of(entry) not in (None, kind) and _same(entry.get(FIELD_CABINET), cabinet):
            raise RuleError(
                _(
                    "cabinet {cabinet} holds the {other} of batch {batch} "
                    "({event} seq {seq}); a password notice "
                    "and its disc are never kept in the same cabinet"
                ).format(
                    cabinet=repr(cabinet),
                    other=kind_name(_other(kind)),
                    batch=batch,
                    event=entry.get(FIELD_EVENT),
                    seq=entry.get(FIELD_SEQ),
                )
            )


def _check_occasion(
    kind: str,
    batch: str,
    proposed: Mapping[str, object],
    at: datetime,
    mine: Sequence[Mapping[str, object]],
    min_gap: timedelta,
) -> None:
    """A DVD batch's disc and notice leave on separate occasions: time apart, other carrier."""
    other_out = _out_event(_other(kind))
    for entry in mine:
        if entry.get(FIELD_EVENT) != other_out:
            continue
        other_at = event_time(entry)
        gap = abs(at - other_at)
        where = f"{other_out} seq {entry.get(FIELD_SEQ)}, {format_time(other_at)}"
        if gap < min_gap:
            raise RuleError(
                _(
                    "the {item} of DVD batch {batch} would leave within {gap} "
                    "of its {other} ({where}); they go on separate occasions "
                    "at least {min_gap} apart"
                ).format(
                    item=kind_name(kind),
                    batch=batch,
                    gap=_minutes(gap),
                    other=kind_name(_other(kind)),
                    where=where,
                    min_gap=_minutes(min_gap),
                )
            )
        carrier = proposed.get(FIELD_CARRIER)
        if isinstance(carrier, str) and _same(entry.get(FIELD_CARRIER), carrier):
            raise RuleError(
                _(
                    "carrier {carrier} already carries the {other} of DVD "
                    "batch {batch} ({where}); the {item} needs another carrier"
                ).format(
                    carrier=repr(carrier),
                    other=kind_name(_other(kind)),
                    batch=batch,
                    where=where,
                    item=kind_name(kind),
                )
            )


def _check_created_serials(
    batch: str, serials: Sequence[str], mine: Sequence[Mapping[str, object]]
) -> None:
    """When ``lgwan-client dvd`` made the batch's discs, only their serials may go out."""
    created: dict[str, str] = {}
    for entry in mine:
        value = entry.get(FIELD_SERIALS) if entry.get(FIELD_EVENT) == EVENT_DVD_CREATED else None
        for serial in value if isinstance(value, list) else []:
            if isinstance(serial, str):
                created[normalize(serial)] = serial
    if not created:
        return
    for serial in serials:
        if normalize(serial) not in created:
            known = ", ".join(sorted(created.values()))
            raise RuleError(
                _("disc {serial} was not made for batch {batch} (its discs: {known})").format(
                    serial=serial, batch=batch, known=known
                )
            )


def _kind_of(entry: Mapping[str, object]) -> str | None:
    event = str(entry.get(FIELD_EVENT))
    return OUT_EVENTS.get(event) or RETURN_EVENTS.get(event)


def _other(kind: str) -> str:
    return NOTICE if kind == MEDIA else MEDIA


def _out_event(kind: str) -> str:
    return EVENT_MEDIA_OUT if kind == MEDIA else EVENT_NOTICE_OUT


def _return_event(kind: str) -> str:
    return EVENT_MEDIA_RETURN if kind == MEDIA else EVENT_NOTICE_RETURN


def _same(recorded: object, typed: str) -> bool:
    return (
        isinstance(recorded, str)
        and bool(recorded.strip())
        and (normalize(recorded) == normalize(typed))
    )


def _minutes(delta: timedelta) -> str:
    minutes = math.ceil(delta.total_seconds() / 60)
    if minutes <= 1:
        return _("a minute")
    return _("{count} minutes").format(count=minutes)
