"""``lgwan-gateway``: the contractor-side command line.

Exceptions are mapped to one stderr line and an exit status here, once:
0 done, 1 failed, 2 usage, 75 temporary failure, 78 configuration.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from envelope import EnvelopeError, PassphraseError, passphrase
from gateway import admin, audit_cli, printsite_cli, pull_cli, serve_cli
from gateway import config as config_mod
from gateway.errors import GatewayError, UsageError
from gateway.opener import open_batch
from gateway.prompt import read_secret
from gateway.ui import progress_bar

PROG = "lgwan-gateway"
EXIT_OK, EXIT_FAILED = 0, 1


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() maps every error once."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"run '{self.prog} --help'")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Contractor side of the LGWAN-ASP print-data exchange.")
    parser.add_argument("--config", metavar="FILE", help="configuration file (TOML)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("open", help="decrypt a batch with the passphrase from its paper notice")
    p.add_argument("envelope", type=Path, metavar="BATCH.age")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--passphrase-fd", type=int, metavar="N")
    p.set_defaults(run=_cmd_open)
    admin.register(sub)
    audit_cli.register(sub)
    serve_cli.register(sub)
    printsite_cli.register(sub)
    pull_cli.register(sub)
    return parser


def _cmd_open(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config)
    typed = read_secret(
        args.passphrase_fd, "Passphrase (from the notice): ", option="--passphrase-fd"
    )
    try:
        canonical = passphrase.normalize(typed)
    except PassphraseError as exc:
        raise GatewayError(
            str(exc), hint="type it again exactly as printed on the notice"
        ) from None
    size = args.envelope.stat().st_size if args.envelope.is_file() else 0
    with progress_bar("opening", size) as advance:
        opened = open_batch(
            args.envelope,
            args.out,
            canonical,
            max_work_factor=cfg.envelope.max_work_factor,
            csv_encoding=cfg.printsite.csv_encoding,
            progress=advance,
        )
    print(opened.directory)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status (never raises, never a traceback)."""
    try:
        args = _build_parser().parse_args(argv)
        code: int = args.run(args)
        return code
    except GatewayError as exc:
        _error(str(exc), exc.hint)
        return exc.exit_code
    except EnvelopeError as exc:
        _error(str(exc), None)
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted; nothing was completed", None)
        return 130
    except OSError as exc:
        _error(f"{exc.filename or 'I/O'}: {exc.strerror or exc}", None)
        return EXIT_FAILED


def _error(message: str, hint: str | None) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
