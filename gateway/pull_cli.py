"""``lgwan-gateway pull [--password-fd N]``: fetch batches from the gateway (pull mode).

Run at the print site with its ``gateway.toml`` (``[pull]``, ``[printsite] spool``).
The contractor account's password comes from a terminal prompt or ``--password-fd``
(never argv). Prints the id of each batch pulled (and confirmed) on stdout, one a
line, then ``<batch>.erasure.json`` for each erasure certificate the gateway
accepted in this run (see :mod:`gateway.pull`); each refused batch or
certificate gets an ``error:`` line on stderr.

Exit status: 0 every batch in ``/outbox`` pulled (or nothing to pull); 75 the
gateway is unreachable or the connection dropped (run again: downloads resume);
1 the login or host key was refused, or a batch failed verification (it stays
in the outbox, unconfirmed); 78 ``[pull]`` is incomplete or a key is unusable.
"""

import argparse
import sys
from typing import Any

from gateway import config as config_mod
from gateway import pull
from gateway.errors import GatewayError
from gateway.i18n import _, ngettext
from gateway.prompt import read_secret
from gateway.ui import progress_bar

EXIT_OK = 0


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add ``pull`` to the top-level subcommands."""
    p = sub.add_parser(
        "pull", help=_("fetch this print site's batches from the gateway's /outbox (pull mode)")
    )
    p.add_argument("--password-fd", type=int, metavar="N", help=_("read the password from fd N"))
    p.set_defaults(run=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    """Pull, verify, spool and confirm every batch waiting in ``/outbox``."""
    cfg = config_mod.load(args.config)
    settings = pull.settings(cfg)
    password = read_secret(
        args.password_fd,
        _("Password for {user}: ").format(user=settings.peer.user),
        option="--password-fd",
    )
    report = pull.pull(settings, password, progress=progress_bar)
    for batch_id in report.pulled:
        print(batch_id, flush=True)
    for batch_id in report.certificates:
        print(f"{batch_id}.erasure.json", flush=True)
    for reason in report.refused.values():
        print(f"lgwan-gateway: {_('error')}: {reason}", file=sys.stderr)
    if report.refused:
        count = len(report.refused)
        raise GatewayError(
            ngettext(
                "{count} batch or erasure certificate was not accepted",
                "{count} batches or erasure certificates were not accepted",
                count,
            ).format(count=count),
            hint=_(
                "batches stay in the gateway's /outbox and certificates in the spool "
                "(sent again on the next pull); tell the gateway's operator"
            ),
        )
    return EXIT_OK
