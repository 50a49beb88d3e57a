"""``lgwan-client status [BATCH]``: what the gateway says became of the ward's batches.

The gateway writes two signed records per batch into the ward's ``/receipts``:
``<batch>.receipt.json`` (kind ``receipt``) when the upload completed, and
``<batch>.status.json`` (kind ``status``, body :data:`STATUS_FIELDS`) on every
later state change (verified, forwarding, forwarded, quarantined …). ``status``
connects like ``send`` (:mod:`client.transfer`: pinned host key, password then
key), lists ``/receipts`` (or looks for ``BATCH`` only), reads each batch's
status record — or its receipt while it has none — and verifies it against the
pinned ``gateway.receipt_key``.

Once the print site has erased a batch (state ``erased``) the gateway also
holds its signed erasure certificate ``<batch>.erasure.json``; ``status``
downloads it (size-capped) into ``[printsite] certificate_dir`` and, with
``[printsite] signing_key`` set, says whether it verifies
(:mod:`client.certificate_store`). A certificate that does not verify, or one
that differs from the copy saved earlier, makes the command fail (exit 1).

A record only counts when it verifies **and** speaks about the batch whose name
it is stored under, for this ward's tenant, signed by the pinned key: a record
copied from another batch (a replay) is as invalid as a forged one. An invalid
record is reported as ``signature INVALID (why)`` and its state is never
shown; one invalid record makes the command fail (exit 1). So does an older
genuine status record of a batch than one seen before (``record STALE``,
:mod:`client.status_seen`). A batch with a valid receipt and no status record
yet is ``received`` (at the receipt's time).

:func:`check` is pure (bytes in, :class:`BatchStatus` out); :func:`status` does
the I/O; :func:`render_table` and :func:`json_line` format for people and tools.
"""

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

from client import certificate, certificate_store, ledger, send, status_seen, transfer
from client.certificate_store import CertificateCopy
from client.config import ClientConfig
from client.errors import ClientError, ConfigError, TemporaryError, UsageError
from client.i18n import _
from custody import (
    KIND_RECEIPT,
    KIND_STATUS,
    CustodyError,
    fingerprint,
    loads_record,
    verify_record,
)
from envelope.manifest import BATCH_ID_RE

RECEIPTS = send.RECEIPTS
RECEIPT_SUFFIX = send.RECEIPT_SUFFIX
STATUS_SUFFIX = ".status.json"
ERASURE_SUFFIX = certificate.CERTIFICATE_SUFFIX
MAX_RECORD_BYTES = 64 << 10

STATE_RECEIVED = "received"
"""The state of a batch with a valid receipt and no status record yet."""
STATE_ERASED = "erased"
"""The print site erased every copy and the gateway published its erasure certificate."""
STATE_RE = re.compile(r"[a-z][a-z_]{0,31}")
"""Syntax of a state name (the gateway's states are lower-case words)."""
STATUS_FIELDS = ("batch_id", "tenant", "state", "at", "reason", "seq", "gateway_key")
"""The body of a status record, exactly these fields."""
INVALID = "signature INVALID"
STALE = "record STALE"
JST = ZoneInfo("Asia/Tokyo")

PasswordSource = Callable[[], str]


@dataclass(frozen=True)
class BatchStatus:
    """One batch as the gateway's signed records state it.

    ``problem`` is None when every record read verified; otherwise it says
    which record failed and why, and ``state``/``at``/``reason`` are None.
    """

    batch_id: str
    state: str | None
    at: datetime | None
    reason: str | None
    seq: int | None
    problem: str | None = None
    certificate: CertificateCopy | None = None
    """The batch's erasure certificate, when the gateway holds one."""
    stale: bool = False
    """The status record verified but is older than one seen before (:mod:`client.status_seen`)."""

    @property
    def valid(self) -> bool:
        """True when every record of the batch verified."""
        return self.problem is None

    @property
    def error(self) -> str | None:
        """``signature INVALID (why)`` or ``record STALE (why)`` when invalid, else None."""
        if self.problem is None:
            return None
        return f"{STALE if self.stale else INVALID} ({self.problem})"


class _RecordError(Exception):
    """A record that does not verify or does not speak about this batch."""


def check(
    batch: str,
    receipt: bytes | None,
    status_record: bytes | None,
    receipt_key: Ed25519PublicKey,
    tenant: str,
) -> BatchStatus:
    """Verify a batch's receipt and status record (either may be missing) and say its state.

    Args:
        batch: The batch id the records are stored under.
        receipt: The bytes of ``<batch>.receipt.json``, None when absent.
        status_record: The bytes of ``<batch>.status.json``, None when absent.
        receipt_key: The pinned gateway signing key.
        tenant: The ward's tenant (``gateway.tenant``).

    Returns:
        The batch's latest signed state, or an invalid :class:`BatchStatus`
        whose ``error`` names the failed record (never a state from it).
    """
    signer = fingerprint(receipt_key)
    received_at: datetime | None = None
    try:
        if receipt is not None:
            what = _("receipt")
            body = _verified(receipt, KIND_RECEIPT, receipt_key, what)
            _same(body, batch, tenant, signer, what)
            received_at = _time(body.get("received_at"), what, "received_at")
        if status_record is not None:
            what = _("status record")
            body = _verified(status_record, KIND_STATUS, receipt_key, what)
            _same(body, batch, tenant, signer, what)
            return _from_status(batch, body, what)
    except _RecordError as exc:
        return BatchStatus(batch, None, None, None, None, problem=str(exc))
    return BatchStatus(batch, STATE_RECEIVED, received_at, None, None)


def _verified(data: bytes, kind: str, key: Ed25519PublicKey, what: str) -> dict[str, object]:
    try:
        return verify_record(loads_record(data, max_bytes=MAX_RECORD_BYTES), key, kind=kind)
    except CustodyError as exc:
        raise _RecordError(f"{what}: {exc}") from None


def _same(body: Mapping[str, object], batch: str, tenant: str, signer: str, what: str) -> None:
    """Refuse a record about another batch or tenant (a replay) or naming another key."""
    for name, expected in (("batch_id", batch), ("tenant", tenant), ("gateway_key", signer)):
        if body.get(name) != expected:
            if name == "batch_id":
                text = _(
                    "{what} names {field} {value}, expected {expected} — copied from another batch"
                )
            else:
                text = _("{what} names {field} {value}, expected {expected}")
            raise _RecordError(
                text.format(
                    what=what, field=name, value=_short(body.get(name)), expected=repr(expected)
                )
            )


def _from_status(batch: str, body: Mapping[str, object], what: str) -> BatchStatus:
    if set(body) != set(STATUS_FIELDS):
        raise _RecordError(
            _("status record has fields {fields}, expected {expected}").format(
                fields=sorted(body), expected=list(STATUS_FIELDS)
            )
        )
    state, reason, seq = body["state"], body["reason"], body["seq"]
    if not isinstance(state, str) or not STATE_RE.fullmatch(state):
        raise _RecordError(
            _("status record names no valid state: {value}").format(value=_short(state))
        )
    if reason is not None and not isinstance(reason, str):
        raise _RecordError(_("status record reason is not text"))
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise _RecordError(_("status record seq is not a count: {value}").format(value=_short(seq)))
    at = _time(body["at"], what, "at")
    return BatchStatus(batch, state, at, reason, seq)


def _time(value: object, what: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _RecordError(
            _("{what} {field} is not an ISO 8601 time with offset: {value}").format(
                what=what, field=name, value=_short(value)
            )
        )
    return moment


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def status(
    config: ClientConfig,
    *,
    password: PasswordSource,
    key_path: Path | None = None,
    batch: str | None = None,
) -> list[BatchStatus]:
    """Fetch and verify the ward's batches' records (or one batch's) from the gateway.

    Erasure certificates the gateway holds are saved and checked on the way
    (:func:`client.certificate_store.keep`); they never raise.

    Raises:
        UsageError: ``batch`` is not a batch id. ConfigError: gateway settings,
        key or ``[printsite] signing_key`` (78). TemporaryError: unreachable
        or dropped (75). ClientError: refused, or ``batch`` unknown to the gateway (1).
    """
    if batch is not None and not BATCH_ID_RE.fullmatch(batch):
        raise UsageError(
            _("{value} is not a batch id").format(value=repr(batch)),
            hint=_("e.g. {example} (as printed by seal)").format(example="20260715-KAIGO-7F3KQ2"),
        )
    endpoint, receipt_key = send.settings(config)
    setting = "--key" if key_path is not None else "identity.private_key"
    key = ledger.load_key(key_path or config.path(config.identity.private_key), setting)
    printsite_key = certificate.printsite_key(config)
    ward_key = key.public_key() if key_path is None else _ward_key(config)
    tenant = config.gateway.tenant
    with transfer.connect(endpoint, password(), key) as session:
        stored = {batch: _BOTH} if batch is not None else listing(_names(session))
        found = []
        for name, suffixes in sorted(stored.items()):
            record = receipt = None
            if STATUS_SUFFIX in suffixes:
                record = session.read(f"{RECEIPTS}/{name}{STATUS_SUFFIX}", MAX_RECORD_BYTES)
            if record is None and RECEIPT_SUFFIX in suffixes:  # no state change stated yet
                receipt = session.read(f"{RECEIPTS}/{name}{RECEIPT_SUFFIX}", MAX_RECORD_BYTES)
            if receipt is None and record is None:
                continue
            item = check(name, receipt, record, receipt_key, tenant)
            if ERASURE_SUFFIX in suffixes or (batch is not None and item.state == STATE_ERASED):
                copy = _certificate(session, config, name, printsite_key, ward_key)
                item = replace(item, certificate=copy)
            found.append(item)
    seen_path = status_seen.path_for(config)
    seen = status_seen.load(seen_path)
    found, changed = status_seen.check(found, seen)
    if changed:
        status_seen.save(seen_path, seen)
    if batch is not None and not found:
        raise ClientError(
            _("the gateway has no record of batch {batch}").format(batch=batch),
            hint=_("check the batch id; a batch appears here once send has completed"),
        )
    return found


_BOTH = frozenset({STATUS_SUFFIX, RECEIPT_SUFFIX})
_SUFFIXES = (*_BOTH, ERASURE_SUFFIX)


def _certificate(
    session: transfer.Session,
    config: ClientConfig,
    batch: str,
    printsite_key: Ed25519PublicKey | None,
    ward_key: Ed25519PublicKey | None,
) -> CertificateCopy | None:
    """Download ``<batch>.erasure.json`` (size-capped), save and check it; None when absent."""
    path = f"{RECEIPTS}/{batch}{ERASURE_SUFFIX}"
    try:
        data = session.read(path, certificate.MAX_CERTIFICATE_BYTES)
    except TemporaryError:
        raise
    except ClientError as exc:
        target = certificate_store.target(config, batch)
        return CertificateCopy(batch, target, certificate_store.CHECK_UNAVAILABLE, problem=str(exc))
    if data is None:
        return None
    return certificate_store.keep(config, batch, data, printsite_key, ward_key)


def _ward_key(config: ClientConfig) -> Ed25519PublicKey | None:
    """The ward's own public key when ``--key`` logged in with another (None if unusable)."""
    try:
        path = config.path(config.identity.private_key)
        return ledger.load_key(path, "identity.private_key").public_key()
    except ConfigError:
        return None


def _names(session: transfer.Session) -> list[str]:
    """The file names in ``/receipts``.

    :class:`client.transfer.Session` offers no directory listing, so this uses
    its SFTP channel under the session's own failure mapping.
    """
    with session.mapped(_("listing {path}").format(path=RECEIPTS)):
        names: list[str] = session._sftp.listdir(RECEIPTS)
    return names


def listing(names: Iterable[str]) -> dict[str, frozenset[str]]:
    """Batch id → which of its records (receipt, status, erasure suffixes) are among ``names``.

    Names that are not ``<batch-id>.receipt.json``, ``<batch-id>.status.json``
    or ``<batch-id>.erasure.json`` are ignored.
    """
    found: dict[str, set[str]] = {}
    for name in names:
        for suffix in _SUFFIXES:
            stem = name.removesuffix(suffix)
            if stem != name and BATCH_ID_RE.fullmatch(stem):
                found.setdefault(stem, set()).add(suffix)
    return {batch: frozenset(suffixes) for batch, suffixes in found.items()}


def format_time(moment: datetime | None) -> str:
    """``2026-07-15 10:32:05 JST`` (empty for None)."""
    return "" if moment is None else f"{moment.astimezone(JST):%Y-%m-%d %H:%M:%S} JST"


def as_dict(item: BatchStatus) -> dict[str, object]:
    """The JSON form: times in JST ISO 8601, ``signature`` ``valid``, ``invalid`` or ``stale``.

    ``certificate`` is the saved erasure certificate's path (null without one),
    ``certificate_check`` one of ``valid``, ``invalid``, ``unchecked``,
    ``conflict``, ``unavailable``, ``certificate_error`` why, and
    ``certificate_ledger_seq`` its ``erasure-verified`` ledger entry once recorded.
    """
    copy = item.certificate
    return {
        "batch_id": item.batch_id,
        "state": item.state,
        "at": None if item.at is None else item.at.astimezone(JST).isoformat(),
        "reason": item.reason,
        "seq": item.seq,
        "signature": "stale" if item.stale else "valid" if item.valid else "invalid",
        "error": item.error,
        "certificate": None if copy is None or not copy.readable else str(copy.path),
        "certificate_check": None if copy is None else copy.check,
        "certificate_error": None if copy is None else copy.problem,
        "certificate_ledger_seq": None if copy is None else copy.ledger_seq,
    }


@dataclass(frozen=True)
class Note:
    """One line about a batch's erasure certificate, for stderr."""

    failed: bool
    message: str
    hint: str | None = None


def certificate_notes(items: Iterable[BatchStatus]) -> list[Note]:
    """What to tell a person about the erasure certificates found (failures first).

    A certificate already saved, verified and recorded in the ledger needs
    nothing more and gets no note (the JSON lines still carry it).
    """
    copies = [item.certificate for item in items if item.certificate is not None]
    notes = [_note(copy) for copy in copies if not _settled(copy)]
    return sorted(notes, key=lambda note: not note.failed)


def _settled(copy: CertificateCopy) -> bool:
    valid = copy.check == certificate_store.CHECK_VALID
    return valid and copy.ledger_seq is not None and not copy.saved


def _note(copy: CertificateCopy) -> Note:
    values = {"batch": copy.batch_id, "path": copy.path, "problem": copy.problem}
    check = copy.check
    if check == certificate_store.CHECK_VALID and copy.ledger_seq is not None:
        text = (
            _(
                "{batch}: erasure certificate saved as {path} verifies "
                "(recorded as ledger seq {seq})"
            )
            if copy.saved
            else _("{batch}: erasure certificate {path} verifies (recorded as ledger seq {seq})")
        )
        return Note(False, text.format(seq=copy.ledger_seq, **values))
    if check == certificate_store.CHECK_VALID:
        text = (
            _("{batch}: erasure certificate saved as {path} verifies")
            if copy.saved
            else _("{batch}: erasure certificate {path} verifies")
        )
        hint = _("run 'lgwan-client verify-certificate {path}' to record it in the ledger")
        return Note(False, text.format(**values), hint.format(**values))
    if check == certificate_store.CHECK_UNCHECKED:
        text = (
            _("{batch}: erasure certificate saved as {path} is not verified ({problem})")
            if copy.saved
            else _("{batch}: erasure certificate {path} is not verified ({problem})")
        )
        if "signing_key" in (copy.problem or ""):  # kept as is in every language
            hint = _(
                "set [printsite] signing_key, then run 'lgwan-client verify-certificate {path}'"
            )
        else:
            hint = _("run 'lgwan-client verify-certificate {path}'")
        return Note(False, text.format(**values), hint.format(**values))
    if check == certificate_store.CHECK_CONFLICT:
        return Note(True, f"{copy.batch_id}: {copy.problem}", certificate_store.conflict_hint())
    if check == certificate_store.CHECK_UNAVAILABLE:
        text = _("{batch}: the erasure certificate at the gateway cannot be read: {problem}")
        return Note(True, text.format(**values), _("tell the contractor"))
    text = (
        _("{batch}: erasure certificate saved as {path} does NOT verify: {problem}")
        if copy.saved
        else _("{batch}: erasure certificate {path} does NOT verify: {problem}")
    )
    return Note(True, text.format(**values), _("do not rely on it; tell the contractor"))


def json_line(item: BatchStatus) -> str:
    """One JSON object per batch, for tools."""
    return json.dumps(as_dict(item), ensure_ascii=False, separators=(",", ":"))


def render_table(items: Iterable[BatchStatus]) -> None:
    """Print a table for a person (invalid records in red, never with a state)."""
    console = Console(markup=False, highlight=False, emoji=False)
    listed = list(items)
    if not listed:
        console.print(_("no batches at the gateway"), style="dim")
        return
    table = Table(
        Column(_("batch"), no_wrap=True),
        Column(_("state"), no_wrap=True),
        Column(_("at (JST)"), no_wrap=True),
        Column(_("reason"), overflow="fold"),
    )
    for item in listed:
        if item.valid:
            state = Text(item.state or "", style=_STYLES.get(item.state or "", ""))
            table.add_row(item.batch_id, state, format_time(item.at), _display(item.reason))
        else:
            invalid = Text(_("signature INVALID"), style="bold red")
            table.add_row(item.batch_id, invalid, "", Text(_display(item.problem), style="red"))
    console.print(table)


_STYLES = {
    "quarantined": "bold red",
    "failed_retrying": "yellow",
    "forwarded": "green",
    "pulled": "green",
    "erased": "bold green",
}


def _display(value: str | None) -> str:
    """Text safe for a terminal: control characters shown escaped."""
    text = value or ""
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )
