"""``lgwan-client``: the ward-side command line.

Exceptions are mapped to one stderr line and an exit status here, once:
0 done, 1 failed, 2 usage, 75 temporary failure, 78 configuration.
"""

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from client import (
    certificate,
    certificate_store,
    dvd_cli,
    identity,
    ledger_cli,
    sample,
    seal,
    send,
    status,
)
from client import config as config_mod
from client.errors import ClientError, UsageError, explain
from client.i18n import _, add_lang_argument, choose, install
from client.ui import progress_bar
from custody import CustodyError
from envelope import EnvelopeError

PROG = "lgwan-client"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG = 0, 1, 2, 78
MAX_SECRET_BYTES = 4096


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() maps every error once."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=_("run '{prog} --help'").format(prog=self.prog))


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=_("Ward side of the LGWAN-ASP print-data exchange."))
    parser.add_argument("--config", metavar="FILE", help=_("configuration file (TOML)"))
    add_lang_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("keygen", help=_("create the ward's Ed25519 key pair"))
    p.add_argument("--out", metavar="PATH", type=Path, help=_("private key path"))
    p.set_defaults(run=_cmd_keygen)

    p = sub.add_parser("sample", help=_("write synthetic 介護保険料納入通知書 print data"))
    p.add_argument("--records", type=int, required=True, metavar="N", help=_("number of rows"))
    p.add_argument("--seed", type=int, metavar="S", help=_("random seed, for the same data again"))
    p.add_argument(
        "--fiscal-year", type=int, metavar="YYYY", help=_("賦課年度 (default: the current one)")
    )
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help=_("CSV file to write"))
    p.set_defaults(run=_cmd_sample)

    p = sub.add_parser("seal", help=_("encrypt print files into one batch envelope"))
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help=_("print data (CSV)"))
    p.add_argument(
        "--notice-type", required=True, metavar="TYPE", help=_("notice type, e.g. KAIGO")
    )
    p.add_argument(
        "--out-dir", type=Path, metavar="DIR", help=_("where the envelope goes (default: out_dir)")
    )
    p.add_argument(
        "--notice-dir",
        type=Path,
        metavar="DIR",
        help=_("where the password notice goes (default: notice_dir)"),
    )
    p.set_defaults(run=_cmd_seal)

    p = sub.add_parser(
        "send", help=_("upload a sealed batch to the gateway and verify its receipt")
    )
    p.add_argument("target", metavar="BATCH|FILE.age", help=_("batch id (in out_dir) or .age file"))
    p.add_argument("--password-fd", type=int, metavar="N", help=_("read the password from fd N"))
    p.add_argument("--key", type=Path, metavar="PATH", help=_("private key (default: identity)"))
    p.set_defaults(run=_cmd_send)

    p = sub.add_parser("status", help=_("show the gateway's signed state of the ward's batches"))
    p.add_argument("batch", nargs="?", metavar="BATCH", help=_("one batch id (default: all)"))
    p.add_argument("--password-fd", type=int, metavar="N", help=_("read the password from fd N"))
    p.add_argument("--key", type=Path, metavar="PATH", help=_("private key (default: identity)"))
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser(
        "verify-certificate",
        help=_("check the print site's erasure certificate against the ledger and record it"),
    )
    p.add_argument(
        "file", type=Path, metavar="FILE", help=_("the certificate file, <batch>.erasure.json")
    )
    p.set_defaults(run=_cmd_verify_certificate)

    ledger_cli.register(sub)
    dvd_cli.register(sub)
    return parser


def _cmd_keygen(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    target = args.out or cfg.path(cfg.identity.private_key)
    pair = identity.generate(target, f"{cfg.handler_name()}@{socket.gethostname()}")
    print(pair.public_path)
    print(pair.fingerprint)
    return EXIT_OK


def _cmd_sample(args: argparse.Namespace) -> int:
    try:
        sample.write_sample(args.out, args.records, seed=args.seed, fiscal_year=args.fiscal_year)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def _cmd_seal(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    total = sum(_size(p) for p in args.files) * 2  # validation pass + encryption pass
    with progress_bar(_("sealing"), total) as advance:
        result = seal.seal(
            args.files,
            args.notice_type,
            cfg,
            out_dir=args.out_dir,
            notice_dir=args.notice_dir,
            progress=advance,
        )
    print(result.manifest.batch_id)
    return EXIT_OK


def _cmd_send(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    gw = cfg.gateway
    prompt = _("Password for {user}@{host}: ").format(user=gw.user, host=gw.host)
    result = send.send(
        args.target,
        cfg,
        password=lambda: read_secret(args.password_fd, prompt, option="--password-fd"),
        key_path=args.key,
    )
    print(result.batch_id)
    _note(_send_summary(result), None)
    return EXIT_OK


def _send_summary(result: send.SendResult) -> str:
    """The stderr line after a send: how the gateway received it, and what the receipt says."""
    values = {
        "batch": result.batch_id,
        "at": result.received_at,
        "size": result.size,
        "sha256": result.sha256,
        "signer": result.receipt_signer,
        "offset": result.resumed_from,
    }
    if result.already_received:
        text = _(
            "{batch}: already received earlier by the gateway at {at}; {size} bytes, "
            "SHA-256 {sha256}; receipt signed by {signer}"
        )
    elif result.resumed_from:
        text = _(
            "{batch}: received (resumed at {offset} bytes) by the gateway at {at}; {size} bytes, "
            "SHA-256 {sha256}; receipt signed by {signer}"
        )
    else:
        text = _(
            "{batch}: received by the gateway at {at}; {size} bytes, SHA-256 {sha256}; "
            "receipt signed by {signer}"
        )
    return text.format(**values)


def _cmd_status(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    gw = cfg.gateway
    prompt = _("Password for {user}@{host}: ").format(user=gw.user, host=gw.host)
    found = status.status(
        cfg,
        password=lambda: read_secret(args.password_fd, prompt, option="--password-fd"),
        key_path=args.key,
        batch=args.batch,
    )
    if sys.stdout.isatty():
        status.render_table(found)
    else:
        for item in found:
            print(status.json_line(item))
    notes = status.certificate_notes(found)
    for note in notes:
        if note.failed:
            _error(note.message, note.hint)
        else:
            _note(note.message, note.hint)
    stale = [item.batch_id for item in found if item.stale]
    if stale:
        _error(
            _("{count} status record(s) from the gateway are older than ones seen before: "
              "{batches}").format(count=len(stale), batches=", ".join(stale)),
            _("do not rely on these states: the gateway served an earlier signed record again; "
              "tell the contractor"),
        )  # fmt: skip
    invalid = [item.batch_id for item in found if not item.valid and not item.stale]
    if invalid:
        _error(
            _("{count} record(s) from the gateway do not verify: {batches}").format(
                count=len(invalid), batches=", ".join(invalid)
            ),
            _(
                "do not rely on these states; tell the contractor (the records are not signed "
                "by the pinned gateway.receipt_key for these batches)"
            ),
        )
    failed = invalid or stale or any(note.failed for note in notes)
    return EXIT_FAILED if failed else EXIT_OK


def _cmd_verify_certificate(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    verified = certificate_store.verify_file(cfg, args.file)
    print(certificate.summary(verified))
    return EXIT_OK


def read_secret(fd: int | None, prompt: str, *, option: str) -> str:
    """Read a secret from ``fd`` (its first line, at most 4 KiB of UTF-8) or the terminal.

    Never from argv or the environment; the secret is returned, never logged.

    Raises:
        UsageError: unreadable fd, oversized or non-UTF-8 input, or no terminal.
    """
    if fd is None:
        if not sys.stdin.isatty():
            raise UsageError(
                _("no terminal to ask for the password on"),
                hint=_("give {option} N").format(option=option),
            )
        return getpass.getpass(prompt)
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= MAX_SECRET_BYTES and (block := os.read(fd, MAX_SECRET_BYTES)):
            chunks.append(block)
            size += len(block)
            if b"\n" in block:
                break
    except OSError as exc:
        raise UsageError(
            _("cannot read file descriptor {fd}: {reason}").format(fd=fd, reason=exc.strerror)
        ) from None
    if size > MAX_SECRET_BYTES:
        raise UsageError(_("file descriptor {fd} holds more than a secret").format(fd=fd))
    line = b"".join(chunks).split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(_("file descriptor {fd} does not hold UTF-8 text").format(fd=fd)) from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status (never raises, never a traceback)."""
    return run(_build_parser, argv)


def run(build: Callable[[], argparse.ArgumentParser], argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and map every failure to one line on stderr and an exit status."""
    words = list(sys.argv[1:] if argv is None else argv)
    install(choose(words, os.environ))
    try:
        args = build().parse_args(words)
        code: int = args.run(args)
        return code
    except ClientError as exc:
        _error(str(exc), exc.hint)
        return exc.exit_code
    except (EnvelopeError, CustodyError) as exc:
        _error(explain(exc), None)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error(_("interrupted; nothing was completed"), None)
        return 130
    except OSError as exc:
        _error(f"{exc.filename or _('I/O')}: {exc.strerror or exc}", None)
        return EXIT_FAILED


def _error(message: str, hint: str | None) -> None:
    print(f"{PROG}: {_('error')}: {message}", file=sys.stderr)
    if hint:
        print(f"{_('hint')}: {hint}", file=sys.stderr)


def _note(message: str, hint: str | None) -> None:
    print(f"{PROG}: {message}", file=sys.stderr)
    if hint:
        print(f"{_('hint')}: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
