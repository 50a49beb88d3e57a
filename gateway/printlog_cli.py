"""``lgwan-gateway print-log add|report``: the print site's print log.

:func:`register` adds the commands to the ``lgwan-gateway`` parser::

    print-log add --batch B --file NAME --printer P --sheets N [--computer C]
                  [--reason TEXT] --as NAME [--password-fd N]
    print-log report BATCH --out F.pdf|F.csv

``add`` records one print by an authenticated member of staff (the rules are in
:mod:`gateway.printlog`; refusals are audited and exit 1). The source computer
is ``--computer``, else ``[custody] computer``, else this host's name.
``report`` writes every print of the batch — reprints highlighted, with their
reasons — and the totals, as a Japanese PDF with English headings or as CSV
(UTF-8 with BOM); it only reads, so it needs no authentication.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway import config as config_mod
from gateway.audit import local_now
from gateway.errors import GatewayError, UsageError
from gateway.i18n import _
from gateway.printlog import (
    ACTION_PRINT,
    MAX_NAME_CHARS,
    PrintRequest,
    checked_batch_id,
    checked_reason,
    checked_sheets,
    checked_text,
    custody_session,
    default_computer,
    log_print,
    open_store,
)
from gateway.printlog_report import PrintReport, render_pdf, write_csv
from gateway.staff import add_actor_arguments, authenticate_actor

EXIT_OK = 0
_FORMATS = (".pdf", ".csv")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``print-log add`` and ``print-log report`` to the top-level subcommands."""
    group = sub.add_parser("print-log", help=_("the print log: record prints, report them"))
    commands = group.add_subparsers(
        dest="print_log_command", required=True, parser_class=type(group)
    )

    p = commands.add_parser("add", help=_("record one print of a file of an opened batch"))
    p.add_argument("--batch", required=True, metavar="B", help=_("the batch id"))
    p.add_argument("--file", required=True, metavar="NAME", help=_("the file, as in the manifest"))
    p.add_argument("--printer", required=True, metavar="P", help=_("the printer's name"))
    p.add_argument("--sheets", required=True, type=int, metavar="N", help=_("sheets printed"))
    p.add_argument(
        "--computer", metavar="C",
        help=_("the computer that printed (default: [custody] computer, else this host's name)"),
    )  # fmt: skip
    p.add_argument("--reason", metavar="TEXT", help=_("why the file is printed again (reprints)"))
    add_actor_arguments(p)
    p.set_defaults(run=cmd_add)

    p = commands.add_parser("report", help=_("every print of a batch as PDF or CSV"))
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--out", type=Path, required=True, metavar="F.pdf|F.csv")
    p.set_defaults(run=cmd_report)


def cmd_add(args: argparse.Namespace) -> int:
    """``print-log add``: authenticate, check the rules, record, audit ``print_logged``."""
    cfg = config_mod.load(args.config)
    batch = checked_batch_id(args.batch)
    computer = default_computer(cfg) if args.computer is None else args.computer
    request = PrintRequest(
        batch_id=batch,
        file_name=checked_text(args.file, "--file", limit=MAX_NAME_CHARS),
        printer=checked_text(args.printer, "--printer"),
        sheets=checked_sheets(args.sheets),
        computer=checked_text(computer, "--computer"),
        reason=checked_reason(args.reason),
    )
    with custody_session(cfg) as custody:
        staff = authenticate_actor(args, custody.roster, action=ACTION_PRINT, batch=batch)
        record = log_print(custody, staff, request)
    if record.occurrence == 1:
        done = _(
            "recorded print of {file} from batch {batch}:"
            " {sheets:,} sheet(s) on {printer} from {computer} by {staff}"
        )
    else:
        done = _(
            "recorded reprint (print {occurrence}) of {file} from batch {batch}:"
            " {sheets:,} sheet(s) on {printer} from {computer} by {staff}"
        )
    values = {
        "occurrence": record.occurrence,
        "file": record.file_name,
        "batch": batch,
        "sheets": record.sheets,
        "printer": record.printer,
        "computer": record.computer,
        "staff": staff.name,
    }
    print(done.format(**values), file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """``print-log report BATCH --out F``: the PDF or CSV; prints the file written."""
    batch = checked_batch_id(args.batch)
    out: Path = args.out
    suffix = out.suffix.lower()
    if suffix not in _FORMATS:
        raise UsageError(
            _("--out {out}: unknown format").format(out=out),
            hint=_("name the file F.pdf or F.csv"),
        )
    if not out.absolute().parent.is_dir():
        raise UsageError(
            _("--out {out}: the directory {directory} does not exist").format(
                out=out, directory=out.absolute().parent
            )
        )
    cfg = config_mod.load(args.config)
    with open_store(cfg) as store:
        opens = store.opens(batch)
        prints = store.prints(batch)
        names = {r.handler for r in prints} | {r.handler for r in opens}
        full_names = {
            name: member.full_name
            for name in sorted(names)
            if (member := store.get_staff(name)) is not None
        }
    if not opens and not prints:
        raise GatewayError(
            _("batch {batch} was never opened at this site; it has no print log").format(
                batch=batch
            ),
            hint=_("see 'lgwan-gateway batches'"),
        )
    report = PrintReport(
        batch_id=batch,
        tenant=next((r.tenant for r in reversed(opens) if r.tenant), ""),
        opens=tuple(opens),
        prints=tuple(prints),
        full_names=full_names,
        printed_at=local_now(),
    )
    if suffix == ".pdf":
        render_pdf(out, report)
    else:
        write_csv(out, report)
    print(out)
    return EXIT_OK
