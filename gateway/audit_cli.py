"""``lgwan-gateway audit verify|search|export|tail``: the operators' view of the audit log.

The files come from the configuration: ``[audit] log`` and ``checkpoints``.
``verify`` checks the checkpoints against the gateway signing key's public
half: ``--public-key FILE`` if given (an auditor should pin the key from the
credential notice, not trust the gateway's own directory), else
``<[keys] signing_key>.pub`` when that file exists, else the public half
derived from the private key file. The one-line summary names the key's
fingerprint so it can be compared with the notice.

Output of ``search`` and ``tail``: a table (search) or one line per record
(tail) on a terminal; JSON lines, one record per line exactly as in the log,
when stdout is not a terminal.
"""

import argparse
import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table
from rich.text import Text

from custody import KeyFormatError, load_private_key, load_public_key
from custody.canonical import canonical_json
from gateway import config as config_mod
from gateway.audit_fields import COMMON_FIELDS
from gateway.audit_files import AuditError, describe
from gateway.audit_query import export, search, tail, verify
from gateway.errors import ConfigError, UsageError
from gateway.i18n import _, ngettext

EXIT_OK = 0
_SHOWN = ("seq", "time", "event", *COMMON_FIELDS)
_HIDDEN = frozenset({*_SHOWN, "prev", "hash"})


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add ``audit`` with its four subcommands to the program's subparsers."""
    audit = sub.add_parser("audit", help=_("verify, search, export or follow the audit log"))
    commands = audit.add_subparsers(dest="audit_command", required=True, parser_class=type(audit))

    p = commands.add_parser("verify", help=_("check the hash chain and every signed checkpoint"))
    p.add_argument("--public-key", type=Path, metavar="FILE", help=_("OpenSSH public key to pin"))
    p.set_defaults(run=cmd_verify)

    p = commands.add_parser("search", help=_("print the records matching every filter"))
    _add_filters(p)
    p.set_defaults(run=cmd_search)

    p = commands.add_parser("export", help=_("write matching records to a CSV or JSON-lines file"))
    p.add_argument(
        "--format", choices=("csv", "jsonl"), required=True, dest="fmt",
        help=_("file format (its columns and keys stay English)"),
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help=_("the file to write"))
    _add_filters(p)
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("tail", help=_("print the last records; --follow waits for more"))
    p.add_argument("-n", type=int, default=10, metavar="N", help=_("records to show (default 10)"))
    p.add_argument("--follow", "-f", action="store_true", help=_("keep printing new records"))
    p.set_defaults(run=cmd_tail)


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", metavar="ISO", help=_("from this time on (ISO 8601; local if naive)"))
    p.add_argument("--until", metavar="ISO", help=_("before this time (ISO 8601)"))
    p.add_argument("--user", metavar="NAME", help=_("records of this account"))
    p.add_argument("--tenant", metavar="T", help=_("records of this tenant"))
    p.add_argument("--batch", metavar="ID", help=_("records of this batch"))
    p.add_argument("--event", metavar="NAME", help=_("event name, e.g. login_failed"))


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the log; print a one-line summary; AuditError (exit 1) naming the first bad record."""
    cfg = config_mod.load(args.config)
    log, checkpoints = cfg.path(cfg.audit.log), cfg.path(cfg.audit.checkpoints)
    report = verify(log, checkpoints, public_key(cfg, args.public_key))
    if not report.ok:
        raise AuditError(
            _("audit log {path} is not intact: {problem}").format(
                path=log, problem=describe(report)
            ),
            hint=_("keep both files unchanged as evidence and raise an incident"),
        )
    last = _("none") if report.last_checkpoint is None else str(report.last_checkpoint)
    print(
        _(
            "ok: {records} records, head seq {seq}, last checkpoint {last} (signed by {signer})"
        ).format(records=report.records, seq=report.head.seq, last=last, signer=report.signer)
    )
    return EXIT_OK


def cmd_search(args: argparse.Namespace) -> int:
    """Print matching records: a table on a terminal, JSON lines otherwise."""
    cfg = config_mod.load(args.config)
    found = search(cfg.path(cfg.audit.log), **_filters(args))
    if sys.stdout.isatty():
        _print_table(found)
    else:
        _print_json_lines(found)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    """Export matching records atomically; print how many went where."""
    cfg = config_mod.load(args.config)
    count = export(cfg.path(cfg.audit.log), args.out, args.fmt, **_filters(args))
    print(
        ngettext(
            "{count} record written to {path}", "{count} records written to {path}", count
        ).format(count=count, path=args.out)
    )
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    """Print the last N records; with --follow, new ones until interrupted."""
    if args.n < 0:
        raise UsageError(_("-n must not be negative"))
    cfg = config_mod.load(args.config)
    stop = threading.Event()
    found = tail(cfg.path(cfg.audit.log), args.n, args.follow, stop=stop)
    try:
        if sys.stdout.isatty():
            console = Console(markup=False, highlight=False, emoji=False)
            for record in found:
                console.print(_one_line(record))
        else:
            _print_json_lines(found)
    except KeyboardInterrupt:  # the way to end --follow
        stop.set()
    return EXIT_OK


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "since": _when(args.since, "--since"),
        "until": _when(args.until, "--until"),
        "user": args.user,
        "tenant": args.tenant,
        "batch": args.batch,
        "event": args.event,
    }


def _when(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            _("{option} {value} is not an ISO 8601 date or time").format(
                option=option, value=repr(text)
            ),
            hint=_("e.g. 2025-07-01 or 2025-07-01T09:00:00+09:00"),
        ) from None
    return when if when.utcoffset() is not None else when.astimezone()


def public_key(cfg: config_mod.GatewayConfig, explicit: Path | None) -> Ed25519PublicKey:
    """The key checkpoints must verify with (see the module docstring)."""
    if explicit is not None:
        try:
            return load_public_key(explicit.read_bytes())
        except KeyFormatError as exc:
            raise AuditError(f"{explicit}: {exc}") from None
    source = str(cfg.source) if cfg.source else _("(defaults)")
    private = cfg.path(cfg.keys.signing_key)
    public = private.with_name(private.name + ".pub")
    try:
        if public.exists():
            return load_public_key(public.read_bytes())
        if private.exists():
            return load_private_key(private.read_bytes()).public_key()
    except KeyFormatError as exc:
        raise ConfigError(source, "keys.signing_key", str(exc)) from None
    raise ConfigError(
        source,
        "keys.signing_key",
        _("{path} not found (nor {public})").format(path=private, public=public.name),
    )


def _print_json_lines(found: Iterable[dict[str, object]]) -> None:
    out = sys.stdout.buffer
    try:
        for record in found:
            out.write(canonical_json(record) + b"\n")
            out.flush()
    except BrokenPipeError:  # e.g. `audit search | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _print_table(found: Iterator[dict[str, object]]) -> None:
    rows = list(found)
    console = Console(markup=False, highlight=False, emoji=False)
    if not rows:
        console.print(_("no matching records"), style="dim")
        return
    columns = [c for c in _SHOWN if any(c in row for row in rows)]
    table = Table(*columns, _("detail"), show_lines=False)
    for row in rows:
        cells = [Text(_display(row.get(c))) for c in columns]
        table.add_row(*cells, Text(_display(_detail(row))))
    console.print(table)


def _one_line(record: dict[str, object]) -> Text:
    head = f"{_display(record.get('seq'))} {_display(record.get('time'))} "
    line = Text(head, style="dim")
    line.append(_display(record.get("event")), style="bold")
    for name in COMMON_FIELDS:
        if name in record:
            line.append(f" {name}={_display(record[name])}")
    detail = _detail(record)
    if detail:
        line.append(f" {_display(detail)}", style="dim")
    return line


def _detail(record: dict[str, object]) -> dict[str, object] | None:
    rest = {k: v for k, v in record.items() if k not in _HIDDEN}
    return rest or None


def _display(value: object) -> str:
    """Text safe for a terminal: control characters (C0, DEL, C1) shown escaped."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )
