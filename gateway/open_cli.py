"""``lgwan-gateway open``: release a batch at the print site, under custody.

:func:`register` adds the command to the ``lgwan-gateway`` parser::

    open BATCH|PATH.age --as NAME [--password-fd N] [--passphrase-fd N]
         --via hand|registered-mail|phone [--notice-serial TEXT] [--reason TEXT] [--out DIR]

In order:

1. ``--out``, when given, must be ``[printsite] work_dir`` itself (the
   default): plaintext is released nowhere else (exit 2 otherwise), not even in
   a directory inside it, because ``erase`` and ``batches`` find a batch's
   plaintext at ``<work_dir>/<batch>/`` and nowhere else. The work directory
   is made 0700 (created so if missing), the batch directory is 0700, released
   files 0600.
2. The member of staff named by ``--as`` authenticates with their own password
   (an active handler or manager; refusals are audited, exit 1).
3. A batch id is looked up in the spool; a path is opened as given (its
   tenant comes from the spool when the batch is there).
4. Custody rules, checked before the passphrase is asked for when the batch id
   is known and again on the authenticated manifest (before any file is
   extracted): an erased batch is never opened (``erased``); a batch opened
   before — recorded in the custody log, or its directory in the work
   directory — is opened again only with ``--reason`` (``reopen_without_reason``),
   and even then only once the earlier copy is gone (erased or moved;
   ``earlier_copy_present`` otherwise). Every refusal is audited ``custody_refused``.
5. The passphrase from the paper notice is read (``--passphrase-fd`` or a
   prompt), the batch is decrypted and verified (:mod:`gateway.opener`), the
   opening is recorded (who, when, how the passphrase arrived, the notice
   serial — by default the batch id printed on the notice —, the reason, the
   directory and the manifest's files) and audited ``batch_opened``.

From the moment the manifest is admitted until the opening is recorded, ``open``
holds the print site's custody lock shared (:mod:`gateway.custody_lock`): an
``erase`` running exits it with 75, and no ``erase`` starts meanwhile. Should the
opening not be recordable after all (the batch's erasure is recorded), the
released files are overwritten and removed, and the refusal is audited.

stdout carries the released directory only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from envelope import PassphraseError, passphrase
from envelope.manifest import BATCH_ID_RE, Manifest
from gateway import config as config_mod
from gateway.audit import local_now
from gateway.custody_lock import custody_lock
from gateway.erasure import shred_tree
from gateway.errors import GatewayError, UsageError
from gateway.i18n import _
from gateway.opener import Opened, OpenError, batch_of_name, make_private_dir, open_batch
from gateway.printlog import (
    ACTION_OPEN,
    REASON_ERASED,
    REASON_REOPEN,
    Custody,
    checked_batch_id,
    checked_reason,
    checked_text,
    custody_session,
)
from gateway.prompt import read_secret
from gateway.spool import Arrival
from gateway.staff import add_actor_arguments, authenticate_actor
from gateway.state import OPEN_VIA, OpenRecord, StaffMember, StateError
from gateway.state_custody import BatchErasedError
from gateway.ui import progress_bar

EXIT_OK = 0
REASON_EARLIER_COPY = "earlier_copy_present"
"""``custody_refused`` reason: opening again (with a reason) while the earlier copy is there."""


class OpenBusyError(GatewayError):
    """An ``erase`` is running at this site (exit 75: try again when it is done)."""

    exit_code = 75


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``open`` to the top-level subcommands."""
    p = sub.add_parser(
        "open",
        help=_("decrypt a batch with the passphrase from its paper notice (staff authenticated)"),
    )
    p.add_argument(
        "envelope",
        metavar="BATCH|PATH.age",
        help=_("a batch id in the spool, or an envelope file"),
    )
    p.add_argument(
        "--out", type=Path, metavar="DIR",
        help=_("must be [printsite] work_dir (the default): plaintext goes nowhere else"),
    )  # fmt: skip
    add_actor_arguments(p)
    p.add_argument(
        "--passphrase-fd", type=int, metavar="N", help=_("read the passphrase from fd N")
    )
    p.add_argument(
        "--via", required=True, choices=OPEN_VIA,
        help=_("how the passphrase notice arrived"),
    )  # fmt: skip
    p.add_argument(
        "--notice-serial", metavar="TEXT",
        help=_("the notice's serial or tracking number (default: the batch id printed on it)"),
    )  # fmt: skip
    p.add_argument("--reason", metavar="TEXT", help=_("why a batch opened before is opened again"))
    p.set_defaults(run=cmd_open)


def cmd_open(args: argparse.Namespace) -> int:
    """``open``: authenticate, check custody, decrypt, verify, record; print the directory."""
    cfg = config_mod.load(args.config)
    reason = checked_reason(args.reason)
    serial = (
        None if args.notice_serial is None else checked_text(args.notice_serial, "--notice-serial")
    )
    work_dir = cfg.path(cfg.printsite.work_dir)
    _check_out(args.out, work_dir)
    with custody_session(cfg) as custody:
        envelope, known = _locate(args.envelope, custody)
        staff = authenticate_actor(args, custody.roster, action=ACTION_OPEN, batch=known)
        guard = _Guard(custody, staff, reason)
        if known is not None:
            guard.check(known)
        canonical = _read_passphrase(args.passphrase_fd)
        make_private_dir(work_dir)
        _tighten(work_dir)
        size = envelope.stat().st_size if envelope.is_file() else 0
        with guard.lock:
            with progress_bar(_("opening"), size) as advance:
                opened = open_batch(
                    envelope,
                    work_dir,
                    canonical,
                    max_work_factor=cfg.envelope.max_work_factor,
                    csv_encoding=cfg.printsite.csv_encoding,
                    progress=advance,
                    admit=guard.admit,
                    wipe_passes=cfg.custody.overwrite_passes,
                )
            _record(custody, staff, opened, args.via, serial, reason)
    print(opened.directory)
    return EXIT_OK


def _record(
    custody: Custody,
    staff: StaffMember,
    opened: Opened,
    via: str,
    serial: str | None,
    reason: str | None,
) -> None:
    """Record the opening (audited ``batch_opened``); if it cannot be, take the files back.

    Raises:
        CustodyRefusedError: the batch's erasure is recorded (audited ``erased``).
        StateError: the opening could not be recorded (the files were shredded).
    """
    manifest = opened.manifest
    batch = manifest.batch_id
    arrival = custody.spool.get(batch)
    record = OpenRecord(
        batch_id=batch,
        tenant=arrival.tenant if arrival is not None else "",
        handler=staff.name,
        opened_at=local_now(),
        via=via,
        notice_serial=serial or batch,
        reason=reason,
        directory=str(opened.directory),
        files=tuple(entry.name for entry in manifest.files),
    )
    try:
        occurrence = custody.store.add_open(record)
    except StateError as exc:
        shred_tree(opened.directory, passes=custody.cfg.custody.overwrite_passes)
        if isinstance(exc, BatchErasedError):
            custody.refuse(
                REASON_ERASED, str(exc), action=ACTION_OPEN, actor=staff.name, batch=batch,
                hint=exc.hint,
            )  # fmt: skip
        raise
    custody.audit.emit(
        "batch_opened",
        batch=batch,
        tenant=record.tenant,
        actor=staff.name,
        os_user=custody.os_user,
        via=record.via,
        notice_serial=record.notice_serial,
        reason=reason,
        directory=record.directory,
        files=list(record.files),
        occurrence=occurrence,
    )


def _check_out(out: Path | None, work_dir: Path) -> None:
    """``--out`` may only name the work directory again.

    Raises:
        UsageError: ``--out`` names another directory (symlinks and ``..`` resolved).
    """
    if out is None or out.absolute().resolve() == work_dir.resolve():
        return
    raise UsageError(
        _(
            "--out {out} is not the work directory {work_dir}; plaintext is released there only"
            " (erase finds it there)"
        ).format(out=out, work_dir=work_dir),
        hint=_("leave out --out ([printsite] work_dir in the configuration says where)"),
    )


def _locate(given: str, custody: Custody) -> tuple[Path, str | None]:
    """The envelope to open and, when it is known before decrypting, its batch id.

    A batch id is looked up in the spool (an erased batch has no envelope left:
    its id is returned with the path, so the erased rule refuses it, audited).

    Raises:
        OpenError: no such batch in the spool, or no such file.
        UsageError: a batch-id-like argument that is not a valid batch id.
    """
    if BATCH_ID_RE.fullmatch(given):
        batch = checked_batch_id(given)
        path = custody.spool.path_of(batch)
        arrival: Arrival | None = custody.spool.get(batch)
        if arrival is None and not custody.erased(batch):
            raise OpenError(
                _("batch {batch} is not in the spool ({spool})").format(
                    batch=batch, spool=custody.spool.root
                ),
                hint=_("see 'lgwan-gateway batches', or give the envelope's path"),
            )
        return path, batch
    path = Path(given)
    if not path.is_file():
        raise OpenError(_("{path}: no such envelope file").format(path=path))
    return path, batch_of_name(path)


def _read_passphrase(fd: int | None) -> str:
    typed = read_secret(fd, _("Passphrase (from the notice): "), option="--passphrase-fd")
    try:
        return passphrase.normalize(typed)
    except PassphraseError as exc:
        raise GatewayError(
            _("the passphrase is not as printed on the notice: {detail}").format(detail=exc),
            hint=_("type it again exactly as printed on the notice"),
        ) from None


def _tighten(work_dir: Path) -> None:
    """Make the work directory 0700 (it holds nothing but released plaintext)."""
    mode = work_dir.stat().st_mode & 0o777
    if mode != 0o700:
        work_dir.chmod(0o700)


@dataclass
class _Guard:
    """The custody rules for opening one batch, applied before anything is released."""

    custody: Custody
    staff: StaffMember
    reason: str | None
    lock: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    """Holds the custody lock from :meth:`admit` until it is closed (after recording)."""

    def admit(self, manifest: Manifest) -> None:
        """:data:`gateway.opener.Admit`: take the custody lock, check the manifest's batch.

        Raises:
            OpenBusyError: an ``erase`` holds the lock.
            CustodyRefusedError: as :meth:`check`.
        """
        self.lock.enter_context(
            custody_lock(self.custody.spool.root, exclusive=False, busy=_erase_running)
        )
        self.check(manifest.batch_id)

    def check(self, batch: str) -> None:
        """Refuse an erased batch, and a batch opened before unless a reason is given.

        Raises:
            CustodyRefusedError: erased, opened before without ``--reason``, or
                with one while an earlier copy is still there (audited).
        """
        custody, actor = self.custody, self.staff.name
        custody.refuse_if_erased(batch, action=ACTION_OPEN, actor=actor)
        earlier = custody.store.opens(batch)
        places = {custody.work_dir / batch}
        places.update(Path(record.directory) for record in earlier)
        present = sorted(p for p in places if os.path.lexists(p))
        if not earlier and not present:
            return
        if self.reason is None:
            custody.refuse(
                REASON_REOPEN,
                _opened_before(batch, len(earlier), present),
                action=ACTION_OPEN,
                actor=actor,
                batch=batch,
                hint=_(
                    "give --reason TEXT to open it again"
                    " (after the earlier copy is erased or moved)"
                ),
            )
        if present:
            custody.refuse(
                REASON_EARLIER_COPY,
                _("{path} already exists; refusing to overwrite an opened batch").format(
                    path=present[0]
                ),
                action=ACTION_OPEN,
                actor=actor,
                batch=batch,
                hint=_("erase or move the earlier copy first"),
            )


def _erase_running() -> OpenBusyError:
    return OpenBusyError(
        _("an erase is running at this site; nothing was released"),
        hint=_("wait for it to finish, then run the command again"),
    )


def _opened_before(batch: str, times: int, present: list[Path]) -> str:
    if times:
        return _(
            "batch {batch} was opened {times} time(s) already; opening it again needs a reason"
        ).format(batch=batch, times=times)
    return _("batch {batch} is already open in {path}; opening it again needs a reason").format(
        batch=batch, path=present[0]
    )
