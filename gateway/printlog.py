"""The print site's custody records at work: the session custody commands share, and the print log.

``open``, ``print-log add`` and ``erase`` run inside a :class:`Custody` session
(:func:`custody_session`): the state database (openings, prints, erasures, the
staff roster), the audit log and the spool of this print site. Every custody
action is done by an authenticated member of staff (``--as NAME``); every
refusal — the authentication's own and the rules below — is written to the
audit log as ``custody_refused`` (``action``, ``actor`` = the staff name,
``reason``, ``batch``, ``os_user``) before the command fails with exit 1.

The print log (:func:`log_print`) records each print of one file of an opened
batch: the source computer, the time, the file, the printer, the number of
sheets and the handler. Its rules, in order:

- the batch is not erased (nor being erased): ``erased``;
- the batch was opened at this site (``open`` recorded it): ``not_opened``;
- the file is one of the opened manifest's files: ``unknown_file``;
- a second or later print of the same file needs a reason:
  ``reprint_without_reason`` (counted in the inserting transaction, so two
  handlers printing at once cannot both record a "first" print).

A recorded print is audited ``print_logged`` with its occurrence (1 = the first
print of that file, 2 = the first reprint, …) and the reason.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from envelope import ManifestError
from envelope.manifest import BATCH_ID_RE, check_batch_id
from gateway import config as config_mod
from gateway.admin import operator
from gateway.app import init_hint, load_key
from gateway.audit import AuditLog, local_now
from gateway.errors import ConfigError, GatewayError, UsageError
from gateway.i18n import _
from gateway.spool import Spool
from gateway.staff import CustodyRefusedError, Roster
from gateway.state import (
    PrintRecord,
    ReprintReasonRequiredError,
    StaffMember,
    StateError,
    StateStore,
)

ACTION_OPEN = "open"
ACTION_PRINT = "print"

REASON_ERASED = "erased"
REASON_NOT_OPENED = "not_opened"
REASON_UNKNOWN_FILE = "unknown_file"
REASON_REPRINT = "reprint_without_reason"
REASON_REOPEN = "reopen_without_reason"

MIN_SHEETS, MAX_SHEETS = 1, 1_000_000
MAX_NAME_CHARS = 200
"""Longest printer, computer or file name, notice serial."""
MAX_REASON_CHARS = 500
_SHOWN_FILES = 5


@dataclass
class Custody:
    """What a custody command works with at the print site."""

    cfg: config_mod.GatewayConfig
    store: StateStore
    audit: AuditLog
    roster: Roster
    spool: Spool
    work_dir: Path
    os_user: str
    key: Ed25519PrivateKey
    """The site's signing key (it signs the audit checkpoints and erasure certificates)."""

    def refuse(
        self,
        reason: str,
        message: str,
        *,
        action: str,
        actor: str,
        batch: str | None,
        hint: str | None = None,
    ) -> NoReturn:
        """Audit ``custody_refused`` and raise :class:`CustodyRefusedError` (exit 1).

        Raises:
            CustodyRefusedError: always, with ``message`` and ``hint``.
        """
        fields: dict[str, object] = {"action": action, "actor": actor, "reason": reason}
        if batch is not None:
            fields["batch"] = batch
        self.audit.emit("custody_refused", **fields, os_user=self.os_user)
        error = CustodyRefusedError(message, reason=reason, action=action, actor=actor)
        error.hint = hint
        raise error

    def erased(self, batch_id: str) -> bool:
        """Whether the batch is erased, or its erasure has started (certificate copy or record)."""
        if os.path.lexists(self.spool.erasure_path(batch_id)):
            return True
        return self.store.get_erasure(batch_id) is not None

    def refuse_if_erased(self, batch_id: str, *, action: str, actor: str) -> None:
        """Refuse (audited) any custody action on an erased batch.

        Raises:
            CustodyRefusedError: the batch is erased or being erased.
        """
        if not self.erased(batch_id):
            return
        if action == ACTION_OPEN:
            message = _(
                "batch {batch} has been erased at this site; nothing of it may be opened any more"
            )
        else:
            message = _(
                "batch {batch} has been erased at this site; nothing of it may be printed any more"
            )
        self.refuse(
            REASON_ERASED,
            message.format(batch=batch_id),
            action=action,
            actor=actor,
            batch=batch_id,
            hint=_("ask the ward to send the batch again if it is still needed"),
        )


def open_store(cfg: config_mod.GatewayConfig) -> StateStore:
    """This site's state database, which ``init`` created.

    Raises:
        GatewayError: it does not exist or cannot be used.
    """
    try:
        return StateStore.open(cfg.path(cfg.state.database), create=False)
    except StateError as exc:
        raise GatewayError(str(exc), hint=init_hint()) from None


@contextmanager
def custody_session(cfg: config_mod.GatewayConfig) -> Iterator[Custody]:
    """Open the state database, the audit log (and its signing key) and the spool.

    Raises:
        GatewayError: no state database (``init`` was not run).
        ConfigError: the signing key or the audit log is missing or unusable.
    """
    store = open_store(cfg)
    try:
        key = load_key(cfg, "keys.signing_key", cfg.keys.signing_key)
        log = cfg.path(cfg.audit.log)
        if not log.is_file():
            file = str(cfg.source) if cfg.source else _("(defaults)")
            message = _("{path} does not exist ({hint})").format(path=log, hint=init_hint())
            raise ConfigError(file, "audit.log", message)
        audit = AuditLog.open(
            log,
            cfg.path(cfg.audit.checkpoints),
            key,
            every_records=cfg.audit.checkpoint_every_records,
            every_seconds=cfg.audit.checkpoint_every_seconds,
            timer=False,  # a short-lived command: close() writes the checkpoint
        )
        try:
            os_user = operator()
            yield Custody(
                cfg=cfg,
                store=store,
                audit=audit,
                roster=Roster(store, audit, os_user=os_user),
                spool=Spool(cfg.path(cfg.printsite.spool)),
                work_dir=cfg.path(cfg.printsite.work_dir),
                os_user=os_user,
                key=key,
            )
        finally:
            audit.close()
    finally:
        store.close()


# -- argument checks ----------------------------------------------------------------------------


def checked_batch_id(value: str) -> str:
    """``value`` if it is a batch id.

    Raises:
        UsageError: it is not.
    """
    try:
        return check_batch_id(value)
    except ManifestError:
        if BATCH_ID_RE.fullmatch(value):
            message = _("{value} is not a batch id: it does not start with a real date")
        else:
            message = _("{value} is not a batch id (expected YYYYMMDD-TYPE-XXXXXX)")
        raise UsageError(
            message.format(value=repr(value[:40])),
            hint=_("see 'lgwan-gateway batches' for the batch ids"),
        ) from None


def checked_text(value: str, option: str, *, limit: int = MAX_NAME_CHARS) -> str:
    """``value`` stripped: printable, not empty, at most ``limit`` characters.

    Raises:
        UsageError: it is not.
    """
    text = value.strip()
    if not text:
        raise UsageError(_("{option} must not be empty").format(option=option))
    if len(text) > limit or not text.isprintable():
        raise UsageError(
            _("{option} must be printable text of at most {limit} characters").format(
                option=option, limit=limit
            )
        )
    return text


def checked_reason(value: str | None) -> str | None:
    """A ``--reason`` as given (stripped), or None when none was given.

    Raises:
        UsageError: it is empty or not printable text of at most MAX_REASON_CHARS.
    """
    return None if value is None else checked_text(value, "--reason", limit=MAX_REASON_CHARS)


def checked_sheets(value: int) -> int:
    """``value`` if it is a sheet count from MIN_SHEETS to MAX_SHEETS.

    Raises:
        UsageError: it is not.
    """
    if not MIN_SHEETS <= value <= MAX_SHEETS:
        raise UsageError(
            _("--sheets must be from {min} to {max:,} (got {value})").format(
                min=MIN_SHEETS, max=MAX_SHEETS, value=value
            )
        )
    return value


def default_computer(cfg: config_mod.GatewayConfig) -> str:
    """The source computer recorded when ``--computer`` is not given."""
    return cfg.custody.computer.strip() or socket.gethostname()


# -- the print log ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrintRequest:
    """One print to record, its arguments already checked."""

    batch_id: str
    file_name: str
    printer: str
    sheets: int
    computer: str
    reason: str | None


def log_print(
    custody: Custody, handler: StaffMember, request: PrintRequest, *, now: datetime | None = None
) -> PrintRecord:
    """Record one print of a file of an opened batch (audited ``print_logged``).

    Args:
        custody: the session.
        handler: the authenticated member of staff who printed.
        request: what was printed, where and how many sheets.
        now: the time recorded (aware); the current time when None.

    Returns:
        The recorded print, with its occurrence.

    Raises:
        CustodyRefusedError: the batch is erased, was not opened here, has no
            such file, or it is a reprint without a reason (audited).
    """
    batch, actor = request.batch_id, handler.name
    custody.refuse_if_erased(batch, action=ACTION_PRINT, actor=actor)
    opens = custody.store.opens(batch)
    if not opens:
        custody.refuse(
            REASON_NOT_OPENED,
            _("batch {batch} was not opened at this site; there is nothing to print").format(
                batch=batch
            ),
            action=ACTION_PRINT,
            actor=actor,
            batch=batch,
            hint=_("open it first: lgwan-gateway open BATCH --as NAME --via …"),
        )
    names = sorted({name for record in opens for name in record.files})
    if request.file_name not in names:
        shown = ", ".join(names[:_SHOWN_FILES]) + (", …" if len(names) > _SHOWN_FILES else "")
        custody.refuse(
            REASON_UNKNOWN_FILE,
            _("batch {batch} has no file {name}").format(
                batch=batch, name=repr(request.file_name[:80])
            ),
            action=ACTION_PRINT,
            actor=actor,
            batch=batch,
            hint=_("its files: {names}").format(names=shown),
        )
    try:
        record = custody.store.add_print(
            batch,
            request.file_name,
            request.printer,
            request.sheets,
            request.computer,
            now or local_now(),
            actor,
            request.reason,
        )
    except ReprintReasonRequiredError as exc:
        custody.refuse(
            REASON_REPRINT, str(exc), action=ACTION_PRINT, actor=actor, batch=batch, hint=exc.hint
        )
    custody.audit.emit(
        "print_logged",
        batch=batch,
        tenant=opens[-1].tenant,
        actor=actor,
        os_user=custody.os_user,
        file=record.file_name,
        printer=record.printer,
        sheets=record.sheets,
        computer=record.computer,
        occurrence=record.occurrence,
        reason=record.reason,
    )
    return record
