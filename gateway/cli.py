"""``lgwan-gateway``: the contractor-side command line.

Exceptions are mapped to one stderr line and an exit status here, once:
0 done, 1 failed, 2 usage, 75 temporary failure, 78 configuration.
"""

import argparse
import os
import sys
from collections.abc import Sequence

from envelope import (
    ArmorError,
    EnvelopeError,
    HeaderError,
    HmacError,
    ManifestError,
    NoMatchError,
    PassphraseError,
    PayloadError,
)
from gateway import (
    admin,
    audit_cli,
    erase_cli,
    incidents_cli,
    open_cli,
    printlog_cli,
    printsite_cli,
    pull_cli,
    serve_cli,
    staff_cli,
)
from gateway.errors import GatewayError, UsageError
from gateway.i18n import _, add_lang_argument, choose, install

PROG = "lgwan-gateway"
EXIT_OK, EXIT_FAILED = 0, 1


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() maps every error once."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=_("run '{prog} --help'").format(prog=self.prog))


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description=_("Contractor side of the LGWAN-ASP print-data exchange.")
    )
    parser.add_argument("--config", metavar="FILE", help=_("configuration file (TOML)"))
    add_lang_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    open_cli.register(sub)
    printlog_cli.register(sub)
    admin.register(sub)
    audit_cli.register(sub)
    serve_cli.register(sub)
    printsite_cli.register(sub)
    pull_cli.register(sub)
    staff_cli.register(sub)
    incidents_cli.register(sub)
    erase_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status (never raises, never a traceback)."""
    words = list(sys.argv[1:] if argv is None else argv)
    install(choose(words, os.environ))
    try:
        args = _build_parser().parse_args(words)
        code: int = args.run(args)
        return code
    except GatewayError as exc:
        _error(str(exc), exc.hint)
        return exc.exit_code
    except EnvelopeError as exc:
        _error(*envelope_message(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error(_("interrupted; nothing was completed"), None)
        return 130
    except OSError as exc:
        _error(f"{exc.filename or 'I/O'}: {exc.strerror or exc}", None)
        return EXIT_FAILED


_NO_DETAIL = frozenset({"wrong passphrase"})
"""Envelope details that the translated explanation already says in full."""


def envelope_message(exc: EnvelopeError) -> tuple[str, str | None]:
    """A translated one-line explanation of an envelope failure, and a hint.

    The envelope package speaks English only; its detail (which check failed)
    follows the explanation unless it would only repeat it.
    """
    detail = str(exc)
    retype = _("type the passphrase exactly as printed on this batch's password notice")
    resend = _("keep the file as evidence and ask the sender to send the batch again")
    explained: dict[type[EnvelopeError], tuple[str, str, str | None]] = {
        NoMatchError: (
            _("wrong passphrase: it does not open this envelope"),
            _("the passphrase does not open this envelope: {detail}"),
            retype,
        ),
        PassphraseError: (
            _("the passphrase is not as printed on the notice"),
            _("the passphrase is not as printed on the notice: {detail}"),
            retype,
        ),
        HmacError: (
            _("the envelope's header was changed after sealing"),
            _("the envelope's header was changed after sealing: {detail}"),
            resend,
        ),
        PayloadError: (
            _("the envelope is truncated or was tampered with"),
            _("the envelope is truncated or was tampered with: {detail}"),
            resend,
        ),
        HeaderError: (
            _("the envelope's header is damaged or not a supported age header"),
            _("the envelope's header is damaged or not a supported age header: {detail}"),
            resend,
        ),
        ArmorError: (
            _("the envelope's text (ASCII armor) form is damaged"),
            _("the envelope's text (ASCII armor) form is damaged: {detail}"),
            resend,
        ),
        ManifestError: (
            _("a batch id, a file name or the list of contents (manifest) is not valid"),
            _("a batch id, a file name or the list of contents (manifest) is not valid: {detail}"),
            None,
        ),
    }
    for cls in type(exc).__mro__:
        if cls in explained:
            bare, with_detail, hint = explained[cls]
            if not detail or detail in _NO_DETAIL:
                return bare, hint
            return with_detail.format(detail=detail), hint
    if not detail:
        return _("the envelope cannot be processed"), None
    return _("the envelope cannot be processed: {detail}").format(detail=detail), None


def _error(message: str, hint: str | None) -> None:
    print(f"{PROG}: {_('error')}: {message}", file=sys.stderr)
    if hint:
        print(f"{_('hint')}: {hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
