"""``lgwan-gateway incidents`` and ``overdue``: what must be reported to the ward, and when.

``incidents [--since ISO|Nd] [--out F.pdf|F.csv]`` verifies this root's audit
log exactly as ``audit verify`` does (same files, same key: ``<[keys]
signing_key>.pub`` or the public half of the private key), then lists every
incident (:mod:`gateway.incidents`) as a table on stdout, times in JST;
``--out`` also writes the 事故報告書 as a PDF or the rows as CSV
(:mod:`gateway.incidents_report`). ``--since`` takes ISO 8601 with a UTC
offset (``2026-07-01T00:00:00+09:00``) or ``Nd`` (the last N days). Exit 0,
whatever the incidents; exit 1 when the log does not verify — after the
table and the file are written, with the tamper finding as their first
concern (an ``audit_tampered`` row).

``overdue [--days N]`` (default ``[custody] overdue_days``) prints one line per
batch delivered or opened but not erased after N days: spool arrivals (LGWAN
and DVD) and, where this root has a state database, batches it forwarded
that never became ERASED; a batch whose erasure was started but not
completed says ``erasing`` (with a note on stderr to run ``erase`` again).
Exit 1 when there is any, 0 when none — made for
cron, it prints nothing then unless stdout is a terminal. Both commands only
read; neither writes to the audit log.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.cells import cell_len

from gateway import config as config_mod
from gateway.audit import local_now
from gateway.audit_cli import public_key as audit_public_key
from gateway.audit_files import AuditError
from gateway.errors import UsageError
from gateway.i18n import _, ngettext
from gateway.incidents import Incident, Overdue, find_overdue, jst_text, read_incidents
from gateway.incidents_report import Context, render_pdf, write_csv
from gateway.spool import BatchState, Spool
from gateway.state import StateStore

EXIT_OK, EXIT_FOUND = 0, 1
OUT_SUFFIXES = (".pdf", ".csv")
MAX_CELL = 40
"""Longest cell of the stdout table before the detail column (longer ones are cut)."""
_DAYS_RE = re.compile(r"([0-9]{1,5})d")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``incidents`` and ``overdue`` to the top-level subcommands."""
    p = sub.add_parser(
        "incidents",
        help=_("list every incident in the audit log (事故報告); --out writes a PDF or CSV"),
    )
    p.add_argument(
        "--since",
        metavar="ISO|Nd",
        help=_("from this time on: ISO 8601 with offset (2026-07-01T00:00:00+09:00) or 7d"),
    )
    p.add_argument("--out", type=Path, metavar="F.pdf|F.csv", help=_("also write the report"))
    p.set_defaults(run=cmd_incidents)

    p = sub.add_parser(
        "overdue",
        help=_("batches delivered or opened but not erased after N days (exit 1 if any)"),
    )
    p.add_argument("--days", type=int, metavar="N", help=_("default: [custody] overdue_days"))
    p.set_defaults(run=cmd_overdue)


def cmd_incidents(args: argparse.Namespace) -> int:
    """Verify the log, print the incidents, write --out; AuditError (exit 1) if tampered."""
    now = local_now()
    since = parse_since(args.since, now)
    out: Path | None = args.out
    if out is not None and out.suffix.lower() not in OUT_SUFFIXES:
        raise UsageError(_("--out {out}: the report is a .pdf or a .csv file").format(out=out))
    cfg = config_mod.load(args.config)
    log = cfg.path(cfg.audit.log)
    findings = read_incidents(
        log,
        cfg.path(cfg.audit.checkpoints),
        audit_public_key(cfg, None),
        burst_threshold=cfg.auth.source_failures_per_minute,
        now=now,
        since=since,
    )
    _print_table(findings.incidents, since)
    if out is not None:
        if out.suffix.lower() == ".pdf":
            render_pdf(out, Context(findings, since, now, log))
        else:
            write_csv(out, findings.incidents)
        count = len(findings.incidents)
        written = ngettext(
            "{count} incident written to {out}", "{count} incidents written to {out}", count
        )
        print(written.format(count=count, out=out), file=sys.stderr)
    if not findings.intact:
        raise AuditError(
            _("audit log {log} is not intact: {finding}").format(
                log=log, finding=findings.verification
            ),
            hint=_("keep both audit files unchanged as evidence and report this to the ward now"),
        )
    return EXIT_OK


def cmd_overdue(args: argparse.Namespace) -> int:
    """Print the batches not erased in time; exit 1 when there is any."""
    cfg = config_mod.load(args.config)
    days = cfg.custody.overdue_days if args.days is None else args.days
    if days < 0:
        raise UsageError(_("--days {days}: must not be negative").format(days=days))
    spool = Spool(cfg.path(cfg.printsite.spool))
    database = cfg.path(cfg.state.database)
    store = StateStore.open(database, create=False) if database.exists() else None
    try:
        found = find_overdue(
            spool, cfg.path(cfg.printsite.work_dir), store, days=days, now=local_now()
        )
    finally:
        if store is not None:
            store.close()
    _print_overdue(found)
    if not found and sys.stdout.isatty():
        print(_("no batch is waiting for erasure longer than {days} days").format(days=days))
    return EXIT_FOUND if found else EXIT_OK


def parse_since(text: str | None, now: datetime) -> datetime | None:
    """``--since``: ISO 8601 with a UTC offset, or ``Nd`` (N days before ``now``).

    Raises:
        UsageError: Anything else, including an ISO time without an offset.
    """
    if text is None:
        return None
    hint = _("e.g. 2026-07-01T00:00:00+09:00, or 7d for the last 7 days")
    days = _DAYS_RE.fullmatch(text.strip())
    if days:
        return now - timedelta(days=int(days.group(1)))
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            _("--since {value} is not ISO 8601 or Nd").format(value=repr(text[:40])), hint=hint
        ) from None
    if when.utcoffset() is None:
        raise UsageError(
            _("--since {value} has no UTC offset").format(value=repr(text[:40])), hint=hint
        )
    return when


def _print_table(rows: list[Incident], since: datetime | None) -> None:
    if not rows:
        if since is None:
            print(_("no incidents"))
        else:
            print(_("no incidents since {time}").format(time=jst_text(since)))
        return
    headings = (
        _("TIME (JST)"),
        _("KIND"),
        _("USER/ACTOR"),
        _("TENANT"),
        _("BATCH"),
        _("SOURCE"),
        _("DETAIL"),
    )
    lines: list[tuple[str, ...]] = [headings]
    for row in rows:
        cells = (jst_text(row.at), row.kind, row.user, row.tenant, row.batch, row.source)
        lines.append((*(_cut(c) for c in cells), row.shown or row.detail))
    widths = [max(cell_len(line[i]) for line in lines) for i in range(len(headings) - 1)]
    for line in lines:
        padded = [c + " " * (w - cell_len(c)) for c, w in zip(line, widths, strict=False)]
        print("  ".join([*padded, line[-1]]).rstrip())


def _print_overdue(found: list[Overdue]) -> None:
    lines = [
        (
            o.batch_id,
            o.tenant,
            f"{o.where}/{o.channel}",
            o.state,
            (_("arrived {time}") if o.where == "spool" else _("delivered {time}")).format(
                time=jst_text(o.since)
            ),
            _("({days} days)").format(days=o.days),
        )
        for o in found
    ]
    if not lines:
        return
    widths = [max(cell_len(line[i]) for line in lines) for i in range(5)]
    for line in lines:
        padded = [c + " " * (w - cell_len(c)) for c, w in zip(line, widths, strict=False)]
        print("  ".join([*padded, line[-1]]))
    if any(o.state == BatchState.ERASING.value for o in found):
        print(
            _(
                "erasing: the erasure was started but not completed (no certificate copy in"
                " the spool); run 'lgwan-gateway erase BATCH' again"
            ),
            file=sys.stderr,
        )


def _cut(text: str) -> str:
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
