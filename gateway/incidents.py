"""Incidents and overdue batches: what ``lgwan-gateway incidents`` and ``overdue`` report.

An incident is something the ward must hear about at once (SPEC §1, 事故報告).
:func:`read_incidents` verifies the audit log first, with
:func:`gateway.audit_query.verify` (the same check as ``audit verify``), then
reads every record and :func:`collect` turns them into :class:`Incident` rows,
sorted by time:

- ``account_locked_out``: an account locked by failed logins;
- ``brute_force``: a burst of at least ``[auth] source_failures_per_minute``
  ``login_failed`` from one source address within 60 s — one row per burst,
  with its count (the burst goes on while the next failure follows within
  60 s of the last);
- ``path_refused``: an ``sftp_refused`` whose reason is a path trick
  (:data:`PATH_TRICKS`: ``..``, ``//``, NUL, backslash, areas the account
  does not see …), or a symbolic-link request;
- ``upload_rejected``: a completed upload refused (and quarantined);
- every ``incident_raised`` under its own kind (``quarantine``,
  ``forward_failed``, ``no_route``, ``conflict`` …);
- ``custody_refused``: a refused open, print-log entry or erasure;
- ``reprint``: a ``print_logged`` with ``occurrence`` above 1 (detail: its reason);
- ``erasure_certificate_rejected``: an erasure certificate that failed its check;
- ``audit_tampered``: the log did not verify (or could not be read to the
  end); the row carries the verification's finding and the time it was found.

Text from the log is shown escaped (control characters as ``\\xNN``): an SFTP
path is chosen by whoever sent it. A row's ``detail`` is English (the report's
PDF and CSV); ``shown`` is the same in the chosen language, for the terminal.

:func:`find_overdue` lists batches delivered or opened but not erased after N
days: spool arrivals (LGWAN and DVD, opened or not, by ``arrived_at``) and, at
an ASP gateway, state-database batches FORWARDED or PULLED (by the time they
were first delivered) that never became ERASED. A spool batch whose erasure
the state database records but whose certificate copy is not in the spool yet
(an ``erase`` that failed or was killed) is listed in state ``erasing``.
"""

from __future__ import annotations

import contextlib
import json
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.audit_files import AuditError, describe
from gateway.audit_query import records, verify
from gateway.envelope_check import Text, _, english
from gateway.pdf import JST
from gateway.pipeline import DELIVERED
from gateway.spool import Arrival, Spool, batch_state
from gateway.state import BatchRecord, StateStore

BURST_WINDOW = timedelta(seconds=60)
"""Failed logins from one source this close together make a brute-force burst."""

PATH_TRICKS = frozenset(
    {
        "dot_dot",
        "dot_component",
        "empty_component",
        "backslash",
        "nul_byte",
        "control_character",
        "not_utf8",
        "overlong",
        "too_deep",
        "trailing_slash",
        "unknown_area",
    }
)
"""``sftp_refused`` reasons (gateway.policy) that are attempts to leave the account's view."""
LINK_OPS = frozenset({"symlink", "readlink"})
"""SFTP operations that are path tricks whatever the reason (planting links)."""

KIND_LOCKED_OUT = "account_locked_out"
KIND_BRUTE_FORCE = "brute_force"
KIND_PATH = "path_refused"
KIND_UPLOAD = "upload_rejected"
KIND_CUSTODY = "custody_refused"
KIND_REPRINT = "reprint"
KIND_CERTIFICATE = "erasure_certificate_rejected"
KIND_TAMPERED = "audit_tampered"

DELIVERED_STATES = tuple(sorted(state.value for state in DELIVERED))
"""Gateway batch states (values) that mean the print site has the batch."""
ERASED = "erased"
"""The value of the erased state, in the spool and in the gateway pipeline."""
ERASURE_SUFFIX = ".erasure.json"
"""``<spool>/<batch>.erasure.json``: the batch's erasure tombstone (see ``erase``)."""


@dataclass(frozen=True)
class Incident:
    """One row of the incident report; text fields already escaped for display."""

    at: datetime
    kind: str
    user: str = ""
    """The account (SFTP events) or the staff member / operator (custody events)."""
    tenant: str = ""
    batch: str = ""
    source: str = ""
    """``ip:port`` of the peer, or the address of a brute-force burst."""
    detail: str = ""
    seq: int | None = None
    """The audit record's seq (None for bursts and verification findings)."""
    shown: str = ""
    """``detail`` in the chosen language, for the terminal (empty: as ``detail``)."""


@dataclass(frozen=True)
class Findings:
    """What :func:`read_incidents` found: the rows and the verification's verdict."""

    incidents: list[Incident]
    intact: bool
    verification: str
    """``ok: N records, head seq S`` or what the verification found wrong."""
    signer: str
    """Fingerprint of the key the checkpoints were checked against."""


@dataclass(frozen=True)
class Overdue:
    """A batch not erased after the allowed number of days."""

    batch_id: str
    tenant: str
    where: str
    """``spool`` (the print site's) or ``gateway`` (this root's state database)."""
    channel: str
    """``lgwan`` or ``dvd`` (spool), ``forwarded``/``pulled`` route state (gateway)."""
    state: str
    since: datetime
    """Arrival in the spool, or first delivery by the gateway."""
    days: int


@dataclass
class _Burst:
    start: datetime
    last: datetime
    count: int
    users: list[str] = field(default_factory=list)


def read_incidents(
    log: Path,
    checkpoints: Path,
    public_key: Ed25519PublicKey,
    *,
    burst_threshold: int,
    now: datetime,
    since: datetime | None = None,
) -> Findings:
    """Verify the audit log, then collect its incidents (``since`` on, if given).

    A log that does not verify, or cannot be read to its end, adds an
    ``audit_tampered`` row at ``now`` whatever ``since`` says.

    Raises:
        AuditError: The log cannot be opened at all.
    """
    report = verify(log, checkpoints, public_key)
    tampered: list[Incident] = []
    if report.ok:
        verdict = f"ok: {report.records} records, head seq {report.head.seq}"
    else:
        verdict = describe(report)
        tampered.append(Incident(now, KIND_TAMPERED, detail=_safe(f"{log.name}: {verdict}")))
    stopped: list[Text] = []
    rows = collect(
        _until_error(records(log), stopped), burst_threshold=burst_threshold, since=since
    )
    for stop in stopped:
        detail, shown = _both(stop)
        tampered.append(Incident(now, KIND_TAMPERED, detail=detail, shown=shown))
        verdict = english(stop) if report.ok else f"{verdict}; {english(stop)}"
    return Findings(rows + tampered, not tampered, verdict, report.signer)


def _until_error(
    found: Iterator[dict[str, object]], stopped: list[Text]
) -> Iterator[dict[str, object]]:
    """Stream ``found``; a read error ends it and is noted in ``stopped``."""
    count = 0
    try:
        for record in found:
            count += 1
            yield record
    except AuditError as exc:
        stopped.append(
            _("reading stopped after {count} records: {reason}").format(count=count, reason=exc)
        )


def collect(
    found: Iterable[dict[str, object]],
    *,
    burst_threshold: int,
    since: datetime | None = None,
) -> list[Incident]:
    """The incident rows of audit records, sorted by time (then seq).

    Args:
        found: Audit records in log order (unverified: odd values are tolerated).
        burst_threshold: Failed logins from one address within 60 s that make a burst.
        since: Leave out rows before this time (a burst counts by its start).
    """
    rows: list[Incident] = []
    failures: dict[str, list[tuple[datetime, str]]] = {}
    for record in found:
        at = _time(record)
        if at is None:
            continue
        if record.get("event") == "login_failed":
            address = _address(_text(record.get("source")))
            failures.setdefault(address, []).append((at, _text(record.get("user"))))
            continue
        row = _row(record, at)
        if row is not None:
            rows.append(row)
    for address, attempts in failures.items():
        rows.extend(_bursts(address, attempts, burst_threshold))
    if since is not None:
        rows = [row for row in rows if row.at >= since]
    rows.sort(key=lambda r: (r.at, r.seq if r.seq is not None else -1))
    return rows


def _row(record: dict[str, object], at: datetime) -> Incident | None:
    """The incident a record is, or None (most records are none)."""
    found = _kind_and_detail(record)
    if found is None:
        return None
    kind, text = found
    detail, shown = _both(text)
    who = record.get("user") if kind == KIND_LOCKED_OUT else record.get("actor")
    seq = record.get("seq")
    return Incident(
        at=at,
        kind=_safe(kind),
        user=_safe(_text(who or record.get("user"))),
        tenant=_safe(_text(record.get("tenant"))),
        batch=_safe(_text(record.get("batch"))),
        source=_safe(_text(record.get("source"))),
        detail=detail,
        seq=seq if isinstance(seq, int) else None,
        shown=shown,
    )


def _kind_and_detail(record: dict[str, object]) -> tuple[str, Text] | None:
    event = record.get("event")
    reason = _text(record.get("reason"))
    if event == "account_locked_out":
        return KIND_LOCKED_OUT, _("locked until {until}").format(until=_jst(record.get("until")))
    if event == "sftp_refused":
        op = _text(record.get("op"))
        if reason not in PATH_TRICKS and op not in LINK_OPS:
            return None
        return KIND_PATH, _as_is(f"{op} {_quoted(record.get('path'))}: {reason}")
    if event == "upload_rejected":
        return KIND_UPLOAD, _joined(_as_is(reason), _moved(record))
    if event == "incident_raised":
        kind = _text(record.get("kind")) or "incident"
        said = _text(record.get("detail"))
        if reason and reason != said:
            said = f"{said} ({reason})" if said else reason
        return kind, _joined(_as_is(said), _moved(record))
    if event == "custody_refused":
        os_user = _text(record.get("os_user"))
        refused = f"{_text(record.get('action'))}: {reason}"
        if not os_user:
            return KIND_CUSTODY, _as_is(refused)
        return KIND_CUSTODY, _("{refused} (OS user {user})").format(refused=refused, user=os_user)
    if event == "print_logged":
        occurrence = record.get("occurrence")
        if not isinstance(occurrence, int) or occurrence <= 1:
            return None
        return KIND_REPRINT, _reprint(record, occurrence)
    if event == "erasure_certificate_rejected":
        return KIND_CERTIFICATE, _as_is(reason)
    return None


def _reprint(record: dict[str, object], occurrence: int) -> Text:
    sheets = record.get("sheets")
    what = _("{file} on {printer}").format(
        file=_text(record.get("file")), printer=_text(record.get("printer"))
    )
    if isinstance(sheets, int):
        what = _("{what}, {sheets} sheets").format(what=what, sheets=sheets)
    computer = _text(record.get("computer"))
    if computer:
        what = _("{what} from {computer}").format(what=what, computer=computer)
    return _("print #{occurrence}: {what}; reason: {reason}").format(
        occurrence=occurrence, what=what, reason=_text(record.get("reason"))
    )


def _bursts(
    address: str, attempts: list[tuple[datetime, str]], threshold: int
) -> Iterator[Incident]:
    """One ``brute_force`` row per burst of failures from ``address``."""
    window: deque[tuple[datetime, str]] = deque()
    burst: _Burst | None = None
    for at, user in sorted(attempts, key=lambda a: a[0]):
        if burst is not None:
            if at - burst.last <= BURST_WINDOW:
                burst.last, burst.count = at, burst.count + 1
                burst.users.append(user)
                continue
            yield _burst_row(address, burst)
            burst = None
        window.append((at, user))
        while at - window[0][0] > BURST_WINDOW:
            window.popleft()
        if len(window) >= max(threshold, 1):
            burst = _Burst(window[0][0], at, len(window), [u for _at, u in window])
            window.clear()
    if burst is not None:
        yield _burst_row(address, burst)


def _burst_row(address: str, burst: _Burst) -> Incident:
    seconds = int((burst.last - burst.start).total_seconds())
    names = sorted({u for u in burst.users if u})
    listed = _as_is(", ".join(_quoted(n) for n in names[:5]))
    if len(names) > 5:
        listed = _("{names} and {more} more").format(names=listed, more=len(names) - 5)
    text = _("{count} failed logins in {seconds} s (until {until})").format(
        count=burst.count, seconds=seconds, until=jst_text(burst.last)
    )
    if names:
        text = _("{logins}; accounts {names}").format(logins=text, names=listed)
    user = _safe(names[0]) if len(names) == 1 else ""
    detail, shown = _both(text)
    return Incident(
        burst.start,
        KIND_BRUTE_FORCE,
        user=user,
        source=_safe(address),
        detail=detail,
        shown=shown,
    )


# -- overdue ---------------------------------------------------------------------------------


def find_overdue(
    spool: Spool,
    work_dir: Path,
    store: StateStore | None,
    *,
    days: int,
    now: datetime,
) -> list[Overdue]:
    """Batches not erased ``days`` or more days after they arrived (or were delivered).

    Args:
        spool: The print site's spool (a missing directory is empty).
        work_dir: ``[printsite] work_dir`` (tells opened batches).
        store: This root's state database, or None where there is none.
        days: The allowance in days (0: every batch not erased).
        now: The current time (aware).

    Returns:
        Oldest first; a batch both in the spool and in the database once (the spool's).

    Raises:
        SpoolError: A damaged spool entry.
        StateError: The database cannot be read.
    """
    limit = timedelta(days=days)
    found: list[Overdue] = []
    in_spool: set[str] = set()
    journaled = {r.batch_id for r in store.erasures()} if store is not None else set()
    for arrival in spool.list(erasing=journaled):
        in_spool.add(arrival.batch_id)
        state = _spool_state(arrival, spool.root, work_dir, arrival.batch_id in journaled)
        if state != ERASED and now - arrival.arrived_at >= limit:
            found.append(
                Overdue(
                    arrival.batch_id,
                    arrival.tenant,
                    "spool",
                    arrival.channel,
                    state,
                    arrival.arrived_at,
                    (now - arrival.arrived_at).days,
                )
            )
    for batch in store.list_batches(states=DELIVERED) if store is not None else []:
        if batch.batch_id in in_spool:
            continue
        if (spool.root / (batch.batch_id + ERASURE_SUFFIX)).exists():
            continue  # erased here; the gateway has not published the certificate yet
        delivered = _delivered_at(store, batch) if store is not None else batch.received_at
        if now - delivered >= limit:
            state = batch.state.value
            age = (now - delivered).days
            found.append(
                Overdue(batch.batch_id, batch.tenant, "gateway", "lgwan", state, delivered, age)
            )
    found.sort(key=lambda o: (o.since, o.batch_id))
    return found


def _spool_state(arrival: Arrival, spool_root: Path, work_dir: Path, journaled: bool) -> str:
    """``arrived``, ``opened``, ``erasing`` or ``erased`` (the one place this module decides it).

    :func:`gateway.spool.batch_state` decides when the spool knows erasure;
    otherwise the tombstone ``<spool>/<batch>.erasure.json`` does.
    """
    state = batch_state(arrival, work_dir, journaled=journaled).value
    if state != ERASED and (spool_root / (arrival.batch_id + ERASURE_SUFFIX)).exists():
        return ERASED
    return state


def _delivered_at(store: StateStore, batch: BatchRecord) -> datetime:
    """When the batch first reached a delivered state (its received time if unrecorded)."""
    for event in store.events(batch.batch_id):
        if event.state.value in DELIVERED_STATES:
            return event.at
    return batch.received_at


# -- text ------------------------------------------------------------------------------------


def _time(record: dict[str, object]) -> datetime | None:
    text = record.get("time")
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.utcoffset() is not None else None


def _address(source: str) -> str:
    """The address part of ``ip:port`` or ``[v6]:port``."""
    if source.startswith("["):
        return source[1:].partition("]")[0]
    host, sep, port = source.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else source


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _safe(text: str) -> str:
    """Control characters (C0, DEL, C1) shown escaped: text from the log may be hostile."""
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )


def _quoted(value: object) -> str:
    return json.dumps(_text(value), ensure_ascii=False)


def _jst(value: object) -> str:
    """An ISO time from the log as ``YYYY-MM-DD HH:MM:SS JST``, or as it was."""
    text = _text(value)
    with contextlib.suppress(ValueError):
        at = datetime.fromisoformat(text)
        if at.utcoffset() is not None:
            return jst_text(at)
    return text


def jst_text(at: datetime) -> str:
    """``2026-07-15 10:32:05 JST``: the time of a row as tables and CSV show it."""
    return f"{at.astimezone(JST):%Y-%m-%d %H:%M:%S} JST"


def _moved(record: dict[str, object]) -> Text:
    moved = _text(record.get("quarantined_as"))
    return _("quarantined as {name}").format(name=moved) if moved else _as_is("")


def _joined(*parts: Text) -> Text:
    kept = [p for p in parts if p]
    return Text("; ".join(kept), "; ".join(english(p) for p in kept))


def _as_is(text: str) -> Text:
    """Text from the log (codes, values): the same in every language."""
    return Text(text, text)


def _both(text: Text) -> tuple[str, str]:
    """``text`` escaped: in English (``detail``) and in the chosen language (``shown``)."""
    return _safe(english(text)), _safe(str(text))
