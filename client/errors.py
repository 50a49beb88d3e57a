"""Failures of the ward client, each mapped to an exit status once, in ``cli.main()``.

:func:`explain` turns a failure of the shared ``envelope`` and ``custody``
packages (which speak English only, being pure) into one line in the user's
language: a sentence per failure class, with the package's own detail
appended where it says more than the class does.
"""

from client.i18n import _
from custody import errors as custody
from envelope import errors as envelope


class ClientError(Exception):
    """Base class: an operation failed (exit 1). ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class UsageError(ClientError):
    """The command line is wrong (exit 2)."""

    exit_code = 2


class ConfigError(ClientError):
    """The configuration file, a key in it, or a key file is wrong (exit 78)."""

    exit_code = 78

    def __init__(self, file: str, key: str | None, message: str) -> None:
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {message}")
        self.file = file
        self.key = key


class TemporaryError(ClientError):
    """The gateway is unreachable or the connection dropped: safe to retry (exit 75)."""

    exit_code = 75


def _explanations() -> tuple[tuple[type[Exception], str], ...]:
    """(failure class, translated line) pairs, most specific class first.

    Built at call time so the chosen language applies. A line with
    ``{detail}`` carries the package's English detail; one without states
    everything the class can say (the detail would only repeat it).
    """
    return (
        (
            envelope.NoMatchError,
            _(
                "the passphrase does not open this envelope (a wrong passphrase, or a file "
                "not sealed with a passphrase)"
            ),
        ),
        (envelope.HmacError, _("the envelope's header was changed after sealing")),
        (
            envelope.PassphraseError,
            _("the passphrase is not as printed on the password notice: {detail}"),
        ),
        (
            envelope.PayloadError,
            _("the envelope's contents are damaged, truncated or changed: {detail}"),
        ),
        (envelope.HeaderError, _("the file is not a readable age envelope: {detail}")),
        (envelope.ArmorError, _("the envelope's ASCII armor is malformed: {detail}")),
        (envelope.ManifestError, _("the batch's manifest or a name in it is invalid: {detail}")),
        (envelope.EnvelopeError, _("the envelope cannot be processed: {detail}")),
        (custody.KeyFormatError, _("not a usable Ed25519 key: {detail}")),
        (custody.SignatureError, _("the signature does not verify: {detail}")),
        (custody.RecordError, _("the signed record is malformed: {detail}")),
        (custody.ChainError, _("the hash chain is broken: {detail}")),
        (custody.CustodyError, _("the signed data cannot be checked: {detail}")),
    )


def explain(exc: Exception) -> str:
    """One line for a person about an ``envelope`` or ``custody`` failure, in their language."""
    detail = str(exc) or type(exc).__name__
    for cls, line in _explanations():
        if isinstance(exc, cls):
            return line.format(detail=detail)
    return detail
