"""Reading secrets: from a file descriptor (gpg's ``--passphrase-fd``) or a terminal.

Never from argv or the environment. The secret is returned, never logged.
"""

import getpass
import os
import sys

from gateway.errors import UsageError
from gateway.i18n import _

MAX_SECRET_BYTES = 4096


def read_secret(fd: int | None, prompt: str, *, option: str) -> str:
    """Read a secret from ``fd`` (its first line) or prompt on the terminal.

    Args:
        fd: the file descriptor named on the command line, or None to prompt.
        prompt: what the terminal prompt says.
        option: the option to suggest when there is no terminal, e.g. ``--passphrase-fd``.

    Raises:
        UsageError: unreadable fd, oversized or non-UTF-8 input, or no terminal.
    """
    if fd is None:
        if not sys.stdin.isatty():
            raise UsageError(
                _("no terminal to ask on"), hint=_("give {option} N").format(option=option)
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
