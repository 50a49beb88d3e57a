"""Print-site commands: ``dvd-import`` and ``batches``.

:func:`register` adds them to the ``lgwan-gateway`` parser. ``dvd-import``
writes ``dvd_imported`` or ``dvd_refused`` to the audit log (``actor`` = the
operator's OS user), so it needs the print site's signing key and audit log
(``lgwan-gateway init --root DIR`` creates both). ``batches`` only reads: the
spool, and the state database when there is one (a batch whose erasure is
recorded there but not completed — no certificate copy in the spool yet — is
``erasing``: run ``erase`` again).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gateway import config as config_mod
from gateway.accounts import TENANT_RE
from gateway.admin import operator
from gateway.app import init_hint, load_key
from gateway.audit import AuditLog
from gateway.dvd_import import ImportNotes, import_discs
from gateway.envelope_check import english
from gateway.errors import ConfigError, UsageError
from gateway.i18n import _
from gateway.spool import Arrival, BatchState, Spool, batch_state
from gateway.state import StateStore
from gateway.ui import progress_bar

EXIT_OK = 0
JST = ZoneInfo("Asia/Tokyo")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``dvd-import`` and ``batches`` to the top-level subcommands."""
    p = sub.add_parser(
        "dvd-import",
        help=_(
            "verify a DVD from the ward (ISO image or mounted disc), put its batch in the spool"
        ),
    )
    p.add_argument(
        "sources",
        nargs="+",
        type=Path,
        metavar="FILE.iso|DIR",
        help=_("an image, a mounted disc, or a directory of images; every part of a split set"),
    )
    p.add_argument("--tenant", required=True, metavar="T", help=_("the ward the batch belongs to"))
    p.set_defaults(run=cmd_dvd_import)

    p = sub.add_parser(
        "batches",
        help=_("list the batches in the spool (table on a terminal, JSON lines otherwise)"),
    )
    p.set_defaults(run=cmd_batches)


def cmd_dvd_import(args: argparse.Namespace) -> int:
    """``dvd-import SOURCE… --tenant T``: prints the batch id; audited either way."""
    cfg = config_mod.load(args.config)
    tenant = args.tenant
    if not TENANT_RE.fullmatch(tenant):
        raise UsageError(
            _("invalid tenant {tenant}").format(tenant=repr(tenant[:40])),
            hint=_("2-32 characters: a-z first, then a-z 0-9 -"),
        )
    actor = operator()
    spool = Spool(cfg.path(cfg.printsite.spool))
    sources = [str(s) for s in args.sources]
    with _audit_log(cfg) as audit:
        notes = ImportNotes()
        try:
            done = import_discs(
                args.sources,
                spool,
                tenant=tenant,
                min_work_factor=cfg.envelope.min_work_factor,
                max_work_factor=cfg.envelope.max_work_factor,
                notes=notes,
                progress=progress_bar,
            )
        except Exception as exc:
            fields = {"batch": notes.batch_id} if notes.batch_id else {}
            audit.emit(
                "dvd_refused",
                actor=actor,
                tenant=tenant,
                **fields,
                serials=notes.serials,
                sources=sources,
                reason=_reason(exc),
            )
            raise
        arrival = done.arrival
        audit.emit(
            "dvd_imported",
            actor=actor,
            batch=arrival.batch_id,
            tenant=arrival.tenant,
            channel=arrival.channel,
            serials=list(done.serials),
            labels=list(done.labels),
            image_sha256s=list(done.image_sha256s),
            size_bytes=arrival.size,
            sha256=arrival.sha256,
            sources=sources,
            already_present=done.already_present,
        )
    print(arrival.batch_id)
    serials = ", ".join(done.serials)
    if done.already_present:
        print(
            _(
                "{batch} was already imported (arrived {arrived}, SHA-256 {sha256});"
                " nothing changed"
            ).format(batch=arrival.batch_id, arrived=_jst(arrival), sha256=arrival.sha256),
            file=sys.stderr,
        )
    else:
        print(
            _(
                "imported {batch} for {tenant} from disc(s) {serials}:"
                " {size} bytes, SHA-256 {sha256}"
            ).format(
                batch=arrival.batch_id,
                tenant=arrival.tenant,
                serials=serials,
                size=arrival.size,
                sha256=arrival.sha256,
            ),
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_batches(args: argparse.Namespace) -> int:
    """``batches``: a rich table on a terminal, JSON lines (ISO times, +09:00) otherwise."""
    cfg = config_mod.load(args.config)
    spool = Spool(cfg.path(cfg.printsite.spool))
    work_dir = cfg.path(cfg.printsite.work_dir)
    journaled = journaled_erasures(cfg)
    rows = [
        (a, batch_state(a, work_dir, journaled=a.batch_id in journaled))
        for a in spool.list(erasing=journaled)
    ]
    if sys.stdout.isatty():
        _print_table(rows)
        return EXIT_OK
    for arrival, state in rows:
        doc = {
            "batch_id": arrival.batch_id,
            "tenant": arrival.tenant,
            "channel": arrival.channel,
            "state": state.value,
            "size": arrival.size,
            "sha256": arrival.sha256,
            "arrived_at": arrival.arrived_at.astimezone(JST).isoformat(timespec="seconds"),
            "source": arrival.source,
        }
        print(json.dumps(doc, ensure_ascii=False))
    return EXIT_OK


def journaled_erasures(cfg: config_mod.GatewayConfig) -> set[str]:
    """The batches whose erasure the state database records, finished or not (none without one).

    Raises:
        StateError: the database cannot be read.
    """
    database = cfg.path(cfg.state.database)
    if not database.exists():
        return set()
    with StateStore.open(database, create=False) as store:
        return {record.batch_id for record in store.erasures()}


@contextmanager
def _audit_log(cfg: config_mod.GatewayConfig) -> Iterator[AuditLog]:
    """The print site's audit log; its signing key and log must exist (``init`` made them)."""
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
        yield audit
    finally:
        audit.close()


def _reason(exc: Exception) -> str:
    """Why the import failed, in English whatever the language (the audit log's ``reason``)."""
    if isinstance(exc, OSError):
        return f"{exc.filename or 'I/O'}: {exc.strerror or exc}"
    return english(exc)


def _jst(arrival: Arrival) -> str:
    return f"{arrival.arrived_at.astimezone(JST):%Y-%m-%d %H:%M} JST"


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _print_table(rows: list[tuple[Arrival, BatchState]]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        Console().print(_("no batches in the spool"))
        return
    table = Table()
    headers = (_("batch"), _("tenant"), _("channel"), _("state"), _("size"), _("arrived (JST)"))
    for header in headers:
        table.add_column(header, no_wrap=True)
    for arrival, state in rows:
        table.add_row(
            arrival.batch_id,
            arrival.tenant,
            arrival.channel,
            state.value,
            _size(arrival.size),
            _jst(arrival),
        )
    Console().print(table)
