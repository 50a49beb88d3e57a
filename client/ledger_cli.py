"""``lgwan-client ledger record|report|outstanding|verify``: the hand-over ledger by hand.

``record EVENT --batch B …`` records one hand-over event (``media-out``,
``notice-out``, ``media-return``, ``notice-return``, ``delivery``) as a signed
ledger entry, after the rules of :mod:`client.handover` accept it; the batch's
entries are read and the entry written under one ledger lock. A refused event
is one line on stderr, exit 1, and nothing written. ``--at`` back-fills an
event from a paper record (an ISO 8601 time with its UTC offset).

``report`` prints the batch's 確認書 (PDF) or its CSV, from a ledger that has
just been verified; ``outstanding`` lists discs and notices out for N days or
more (exit 1 when there are any, for cron); ``verify`` checks the chain and
every signature. The public key for ``verify`` and ``report`` is
``--public-key FILE`` if given (an auditor pins it), else the public half of
``identity.private_key`` (a ``.pub`` beside it that differs is refused: a
swapped public key must not bless a forged ledger), else ``<key>.pub`` alone
(an auditor's copy without the private key).
"""

import argparse
import json
import sys
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.console import Console
from rich.table import Table

from client import config as config_mod
from client import handover, ledger, ledger_report
from client.errors import ClientError, ConfigError, UsageError
from client.handover import MEDIA, NOTICE, RuleError
from client.i18n import _, ngettext
from custody import KeyFormatError, canonical_json, fingerprint, load_public_key
from custody.chain import VerifyReport
from envelope import EnvelopeError
from envelope.manifest import check_batch_id

EXIT_OK, EXIT_OUTSTANDING = 0, 1
METHODS = ("hand", "registered-mail", "phone")
NOTICE_SERIAL_SUFFIX = "-N"
"""The default notice serial is the batch id followed by this (one notice per batch)."""
MAX_TEXT_CHARS = 200
MAX_SERIAL_CHARS = 64
_AT_EXAMPLE = "2026-07-15T10:32+09:00"

_COMMON = frozenset({"batch", "at", "handler", "note"})
_EVENT_OPTIONS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # event: (required, optional) option dests besides the common ones
    ledger.EVENT_MEDIA_OUT: (
        frozenset({"serial", "to_org", "to_person", "cabinet", "carrier"}),
        frozenset({"content", "discs", "files", "records"}),
    ),
    ledger.EVENT_NOTICE_OUT: (
        frozenset({"to_org", "to_person", "cabinet", "method"}),
        frozenset({"notice_serial", "tracking", "carrier"}),
    ),
    ledger.EVENT_MEDIA_RETURN: (
        frozenset({"returned_by", "condition"}),
        frozenset({"serial", "cabinet"}),
    ),
    ledger.EVENT_NOTICE_RETURN: (
        frozenset({"returned_by", "condition"}),
        frozenset({"notice_serial", "cabinet"}),
    ),
    ledger.EVENT_DELIVERY: (
        frozenset({"quantity"}),
        frozenset({"shortfall", "from_org", "from_person"}),
    ),
}
_FLAGS = {
    "serial": "--serial",
    "to_org": "--to-org",
    "to_person": "--to-person",
    "content": "--content",
    "discs": "--discs",
    "files": "--files",
    "records": "--records",
    "cabinet": "--cabinet",
    "carrier": "--carrier",
    "notice_serial": "--notice-serial",
    "method": "--method",
    "tracking": "--tracking",
    "returned_by": "--returned-by",
    "condition": "--condition",
    "quantity": "--quantity",
    "shortfall": "--shortfall",
    "from_org": "--from-org",
    "from_person": "--from-person",
}


def _record_epilog() -> str:
    """The ``record`` help's epilog (translated when the parser is built, not at import)."""
    return _(
        """\
events and their options (besides --batch, --at, --handler, --note):
  media-out      --serial S [--serial S2 …] --to-org ORG --to-person NAME --cabinet C
                 --carrier NAME [--content TEXT] [--discs N] [--files N] [--records N]
  notice-out     --method hand|registered-mail|phone --to-org ORG --to-person NAME
                 --cabinet C [--notice-serial S] [--tracking NO (registered-mail)]
                 [--carrier NAME (required for hand)]
  media-return   --returned-by NAME --condition TEXT [--serial S …] [--cabinet C]
  notice-return  --returned-by NAME --condition TEXT [--notice-serial S] [--cabinet C]
  delivery       --quantity N [--shortfall N] [--from-org ORG] [--from-person NAME]
sealed, sent and dvd-created are recorded by seal, send and dvd themselves."""
    )


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add ``ledger`` with its four subcommands to the program's subparsers."""
    top = sub.add_parser(
        "ledger", help=_("the hand-over ledger: record, report, outstanding, verify")
    )
    commands = top.add_subparsers(dest="ledger_command", required=True, parser_class=type(top))

    p = commands.add_parser(
        "record",
        help=_("record a hand-over, return or delivery (checked against the rules)"),
        epilog=_record_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("event", metavar="EVENT", help=", ".join(handover.MANUAL_EVENTS))
    p.add_argument("--batch", required=True, metavar="BATCH")
    p.add_argument("--at", metavar="ISO", help=_("when it happened, with offset (default: now)"))
    p.add_argument("--handler", metavar="NAME", help=_("ward staff (default: [ward] handler/user)"))
    p.add_argument("--note", metavar="TEXT", help=_("a remark for the record"))
    p.add_argument("--serial", action="append", metavar="S", help=_("disc serial (repeatable)"))
    p.add_argument("--notice-serial", metavar="S", help=_("notice serial (default: BATCH-N)"))
    for dest in ("to_org", "to_person", "content", "cabinet", "carrier", "tracking"):
        p.add_argument(_FLAGS[dest], metavar="TEXT")
    p.add_argument("--returned-by", metavar="NAME")
    p.add_argument("--condition", metavar="TEXT", help=_("e.g. 'intact, seal unbroken'"))
    p.add_argument("--from-org", metavar="ORG")
    p.add_argument("--from-person", metavar="NAME")
    p.add_argument("--method", choices=METHODS)
    for dest in ("discs", "files", "records", "quantity", "shortfall"):
        p.add_argument(_FLAGS[dest], type=int, metavar="N")
    p.set_defaults(run=cmd_record)

    p = commands.add_parser("report", help=_("write a batch's 確認書 (PDF) or its CSV"))
    p.add_argument("batch", metavar="BATCH")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help=_("F.pdf or F.csv"))
    p.add_argument("--format", choices=("pdf", "csv"), dest="fmt", help=_("default: from --out"))
    p.add_argument("--public-key", type=Path, metavar="FILE", help=_("OpenSSH public key to pin"))
    p.set_defaults(run=cmd_report)

    p = commands.add_parser("outstanding", help=_("discs and notices not returned (exit 1 if any)"))
    p.add_argument(
        "--days", type=int, metavar="N", help=_("out at least N days ([ledger] default)")
    )
    p.set_defaults(run=cmd_outstanding)

    p = commands.add_parser("verify", help=_("check the hash chain and every signature"))
    p.add_argument("--public-key", type=Path, metavar="FILE", help=_("OpenSSH public key to pin"))
    p.set_defaults(run=cmd_verify)


def cmd_record(args: argparse.Namespace) -> int:
    """Check one event against the rules and record it, under one ledger lock."""
    event: str = args.event
    handover.refuse_automatic(event)
    if event not in _EVENT_OPTIONS:
        raise UsageError(
            _("unknown ledger event {event}").format(event=repr(event)),
            hint=_("one of: {events}").format(events=", ".join(handover.MANUAL_EVENTS)),
        )
    _check_options(event, args)
    batch = _batch(args.batch)
    now = datetime.now().astimezone().replace(microsecond=0)
    at = _at(args.at) if args.at is not None else now
    cfg = config_mod.load(args.config)
    fields = _fields(event, args, batch, at, cfg.handler_name())
    path = cfg.path(cfg.ledger.path)
    if not path.exists():
        raise RuleError(
            _("batch {batch} was never sealed (there is no ledger at {path} yet)").format(
                batch=batch, path=path
            )
        )
    key = ledger.load_key(cfg.path(cfg.identity.private_key), "identity.private_key")
    with ledger.Ledger.open(path, key) as book:
        earlier = list(book.entries(batch))
        _fill_defaults(event, fields, earlier)
        gap = timedelta(minutes=cfg.ledger.min_gap_minutes)
        handover.check(event, fields, earlier, min_gap=gap, now=now)
        entry = book.record(event, **fields)
    print(
        _("recorded {event} of {batch}{items} as ledger seq {seq}").format(
            event=event, batch=batch, items=_what(fields), seq=entry["seq"]
        )
    )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """Verify the ledger, then write the batch's 確認書 PDF or CSV."""
    fmt = args.fmt or _format_from_suffix(args.out)
    batch = _batch(args.batch)
    cfg = config_mod.load(args.config)
    path = cfg.path(cfg.ledger.path)
    public = public_key(cfg, args.public_key)
    report = ledger.Ledger.verify(path, public)
    hint = _(
        "the report was not written; keep the file unchanged as evidence and raise an incident"
    )
    _require_intact(path, report, hint)
    head_seq = report.head.seq  # what was verified; a later entry waits for the next report
    entries = [e for e in ledger.entries(path, batch) if _seq(e) <= head_seq]
    if not entries:
        raise ClientError(
            _("ledger {path} has no entries for batch {batch}").format(path=path, batch=batch)
        )
    if not args.out.parent.is_dir():
        raise UsageError(_("{path} is not a directory").format(path=args.out.parent))
    if fmt == "csv":
        ledger_report.write_csv(args.out, entries)
    else:
        ledger_report.render_pdf(
            args.out,
            entries,
            batch=batch,
            ward_name=cfg.ward.name,
            head=report.head,
            signer=fingerprint(public),
            printed_at=datetime.now().astimezone(),
        )
    print(args.out)
    return EXIT_OK


def cmd_outstanding(args: argparse.Namespace) -> int:
    """List items out for at least N days; exit 1 when there are any."""
    cfg = config_mod.load(args.config)
    days = cfg.ledger.outstanding_days if args.days is None else args.days
    if days < 0:
        raise UsageError(_("--days must not be negative"))
    now = datetime.now().astimezone()
    late = handover.overdue(ledger.entries(cfg.path(cfg.ledger.path)), now=now, days=days)
    rows = [_outstanding_row(item, now) for item in late]
    if sys.stdout.isatty():
        _print_table(rows, days)
    else:
        for row in rows:
            sys.stdout.buffer.write(canonical_json(row) + b"\n")
        sys.stdout.flush()
    return EXIT_OUTSTANDING if rows else EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """Check the chain and every signature; one-line summary, or exit 1 naming the bad record."""
    cfg = config_mod.load(args.config)
    path = cfg.path(cfg.ledger.path)
    public = public_key(cfg, args.public_key)
    report = ledger.Ledger.verify(path, public)
    hint = _(
        "nothing in it can be relied on past that point; "
        "keep the file unchanged as evidence and raise an incident"
    )
    _require_intact(path, report, hint)
    summary = ngettext(
        "ok: ledger {path}: {count} record, chain and signatures intact; "
        "head seq {seq} {hash}; signed by {signer}",
        "ok: ledger {path}: {count} records, chain and signatures intact; "
        "head seq {seq} {hash}; signed by {signer}",
        report.records,
    )
    print(
        summary.format(
            path=path,
            count=report.records,
            seq=report.head.seq,
            hash=report.head.hash,
            signer=fingerprint(public),
        )
    )
    return EXIT_OK


def public_key(cfg: config_mod.ClientConfig, explicit: Path | None) -> Ed25519PublicKey:
    """The ward key entries must verify with (see the module docstring).

    Raises:
        ClientError: ``--public-key`` is unreadable or not a key.
        ConfigError: neither ``<identity.private_key>.pub`` nor the private key is usable.
    """
    if explicit is not None:
        try:
            return load_public_key(explicit.read_bytes())
        except OSError as exc:
            raise ClientError(
                _("{path}: cannot read: {reason}").format(path=explicit, reason=exc.strerror or exc)
            ) from None
        except KeyFormatError as exc:
            raise ClientError(f"{explicit}: {exc}") from None
    source = str(cfg.source) if cfg.source else "(defaults)"
    private = cfg.path(cfg.identity.private_key)
    public = private.with_name(private.name + ".pub")
    try:
        from_file = load_public_key(public.read_bytes()) if public.exists() else None
    except KeyFormatError as exc:
        raise ConfigError(source, "identity.private_key", f"{public}: {exc}") from None
    except OSError as exc:
        raise ConfigError(source, "identity.private_key", f"{public}: {exc.strerror}") from None
    if private.exists():
        derived = ledger.load_key(private, "identity.private_key").public_key()
        if from_file is not None and fingerprint(from_file) != fingerprint(derived):
            message = _("{public} does not match {private}")
            raise ConfigError(
                source,
                "identity.private_key",
                message.format(public=public.name, private=private.name),
            )
        return derived
    if from_file is not None:
        return from_file
    message = _("{private} not found (nor {public})").format(private=private, public=public.name)
    raise ConfigError(source, "identity.private_key", message)


def _require_intact(path: Path, report: VerifyReport, hint: str) -> None:
    if report.ok:
        return
    if report.first_bad_line:
        message = _(
            "ledger {path} is not intact: first bad record seq {seq} (line {line}): {reason}"
        )
    else:
        message = _("ledger {path} is not intact: first bad record seq {seq}: {reason}")
    raise ClientError(
        message.format(
            path=path, seq=report.first_bad_seq, line=report.first_bad_line, reason=report.reason
        ),
        hint=hint,
    )


def _check_options(event: str, args: argparse.Namespace) -> None:
    """Refuse options the event does not take; require the ones it needs."""
    required, optional = _EVENT_OPTIONS[event]
    for dest, flag in _FLAGS.items():
        given = getattr(args, dest) is not None
        if given and dest not in required | optional:
            raise UsageError(
                _("{option} does not apply to {event}").format(option=flag, event=event)
            )
        if not given and dest in required:
            raise UsageError(_("{event} needs {option}").format(event=event, option=flag))
    if event == ledger.EVENT_NOTICE_OUT:
        if args.method == "registered-mail" and args.tracking is None:
            raise UsageError(_("notice-out by registered-mail needs --tracking (the mail number)"))
        if args.method != "registered-mail" and args.tracking is not None:
            raise UsageError(
                _("--tracking applies to registered-mail, not {method}").format(method=args.method)
            )
        if args.method == "hand" and args.carrier is None:
            raise UsageError(_("notice-out by hand needs --carrier (who carries it)"))


def _fields(
    event: str, args: argparse.Namespace, batch: str, at: datetime, default_handler: str
) -> dict[str, object]:
    """The entry's fields from the command line (defaults needing the ledger come later)."""
    fields: dict[str, object] = {
        "batch": batch,
        "at": at.isoformat(timespec="seconds"),
        "handler": _text(args.handler, "--handler")
        if args.handler is not None
        else default_handler,
    }
    text_dests = (
        "to_org",
        "to_person",
        "content",
        "cabinet",
        "carrier",
        "tracking",
        "returned_by",
        "condition",
        "from_org",
        "from_person",
    )
    for dest in text_dests:
        value = getattr(args, dest)
        if value is not None:
            fields[dest] = _text(value, _FLAGS[dest])
    if args.method is not None:
        fields["method"] = args.method
    for dest, least in (("discs", 1), ("files", 0), ("records", 0), ("quantity", 0)):
        value = getattr(args, dest)
        if value is not None:
            fields[dest] = _count(value, _FLAGS[dest], least)
    if event == ledger.EVENT_DELIVERY:
        fields["shortfall"] = _count(args.shortfall or 0, "--shortfall", 0)
    if args.serial is not None:
        fields[handover.FIELD_SERIALS] = [_serial(s, "--serial") for s in args.serial]
        if event == ledger.EVENT_MEDIA_OUT:
            fields.setdefault("discs", len(args.serial))
    if args.notice_serial is not None:
        fields[handover.FIELD_SERIAL] = _serial(args.notice_serial, "--notice-serial")
    elif event == ledger.EVENT_NOTICE_OUT:
        fields[handover.FIELD_SERIAL] = batch + NOTICE_SERIAL_SUFFIX
    if args.note is not None:
        fields["note"] = _text(args.note, "--note")
    return fields


def _fill_defaults(event: str, fields: dict[str, object], earlier: list[dict[str, object]]) -> None:
    """Defaults read from the batch's entries: counts from ``sealed``, the item returned."""
    sealed = handover.sealed_entry(earlier)
    if event == ledger.EVENT_MEDIA_OUT and sealed is not None:
        fields.setdefault("files", sealed.get("file_count"))
        fields.setdefault("records", sealed.get("record_total"))
        fields.setdefault("content", f"{sealed.get('notice_type')} 暗号化印刷データ")
    if event in handover.RETURN_EVENTS:
        kind = handover.RETURN_EVENTS[event]
        name = handover.FIELD_SERIALS if kind == MEDIA else handover.FIELD_SERIAL
        if name in fields:
            return
        out = [i for i in handover.outstanding(earlier) if i.kind == kind]
        if not out:
            raise RuleError(
                _("no outstanding hand-over of a {item} for batch {batch}").format(
                    item=handover.kind_name(kind), batch=fields["batch"]
                )
            )
        if kind == NOTICE and len(out) == 1:
            fields[name] = out[0].serial
        elif kind == MEDIA and len(out) == 1:
            fields[name] = [out[0].serial]
        else:
            serials = ", ".join(i.serial for i in out)
            if kind == MEDIA:
                message = _("several discs of the batch are out ({serials}): name it with {option}")
            else:
                message = _(
                    "several password notices of the batch are out ({serials}): "
                    "name it with {option}"
                )
            flag = "--serial" if kind == MEDIA else "--notice-serial"
            raise UsageError(message.format(serials=serials, option=flag))


def _seq(entry: Mapping[str, object]) -> int:
    seq = entry.get("seq")
    return seq if isinstance(seq, int) else 0


def _what(fields: Mapping[str, object]) -> str:
    serials = fields.get(handover.FIELD_SERIALS)
    if isinstance(serials, list):
        return f" ({', '.join(map(str, serials))})"
    if handover.FIELD_SERIAL in fields:
        return f" ({fields[handover.FIELD_SERIAL]})"
    return ""


def _batch(value: str) -> str:
    try:
        return check_batch_id(value)
    except EnvelopeError as exc:
        raise UsageError(f"{value[:40]!r}: {exc}") from None


def _at(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(
            _("--at {value} is not an ISO 8601 time").format(value=repr(value[:40])),
            hint=_("e.g. {example}").format(example=_AT_EXAMPLE),
        ) from None
    if moment.utcoffset() is None:
        raise UsageError(
            _("--at {value} has no UTC offset").format(value=repr(value[:40])),
            hint=_("e.g. {example}").format(example=_AT_EXAMPLE),
        )
    return moment.replace(microsecond=0)


def _text(value: str, flag: str, limit: int = MAX_TEXT_CHARS) -> str:
    text = " ".join(value.split())
    if not text:
        raise UsageError(_("{option} must not be empty").format(option=flag))
    if len(text) > limit:
        raise UsageError(
            _("{option} is longer than {limit} characters").format(option=flag, limit=limit)
        )
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text):
        raise UsageError(_("{option} contains a control character").format(option=flag))
    return text


def _serial(value: str, flag: str) -> str:
    serial = _text(value, flag, MAX_SERIAL_CHARS)
    if " " in serial:
        raise UsageError(
            _("{option} {serial} must not contain spaces").format(option=flag, serial=repr(serial))
        )
    return serial


def _count(value: int, flag: str, least: int) -> int:
    if value < least:
        raise UsageError(_("{option} must be at least {least}").format(option=flag, least=least))
    return value


def _format_from_suffix(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".pdf", ".csv"):
        return suffix[1:]
    raise UsageError(
        _("cannot tell the format of {name}").format(name=out.name),
        hint=_("name it .pdf or .csv, or give --format"),
    )


def _outstanding_row(item: handover.HandOver, now: datetime) -> dict[str, object]:
    entry = item.entry
    return {
        "batch": item.batch,
        "kind": item.kind,
        "serial": item.serial,
        "out_at": item.at.isoformat(),
        "days_out": (now - item.at).days,
        "seq": item.seq,
        "to_org": entry.get("to_org"),
        "to_person": entry.get("to_person"),
        "handler": entry.get("handler"),
        "cabinet": entry.get("cabinet"),
    }


def _print_table(rows: Iterable[dict[str, object]], days: int) -> None:
    console = Console(markup=False, highlight=False, emoji=False)
    listed = list(rows)
    if not listed:
        console.print(_("nothing out for {days} days or more").format(days=days), style="dim")
        return
    table = Table()
    headings = (
        _("batch"),
        _("item"),
        _("serial"),
        _("out since (JST)"),
        _("days"),
        _("recipient"),
        _("handler"),
    )
    for name in headings:
        table.add_column(name, overflow="fold")  # a serial is never cut short
    for row in listed:
        out_at = datetime.fromisoformat(str(row["out_at"]))
        table.add_row(
            _display(row["batch"]),
            handover.kind_name(str(row["kind"])),
            _display(row["serial"]),
            handover.format_time(out_at),
            str(row["days_out"]),
            _display(f"{row['to_org'] or ''} {row['to_person'] or ''}".strip()),
            _display(row["handler"]),
        )
    console.print(table)


def _display(value: object) -> str:
    """Text safe for a terminal: control characters shown escaped."""
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )
