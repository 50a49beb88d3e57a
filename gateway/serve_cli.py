"""``lgwan-gateway serve [--listen HOST:PORT]``: the drop service and the forwarder, foreground.

Prints exactly one line, ``listening on HOST:PORT`` (the real bound port, so
``--listen 127.0.0.1:0`` tells the caller which port it got), on stderr; every
other fact goes to the audit log. Beside the drop service it runs the
forwarder (:mod:`gateway.forwarder`) and the file watcher (:mod:`gateway.watcher`).
SIGTERM and SIGINT stop it cleanly: the listener and every connection are
closed, open uploads stay ``.part``, a delivery in progress is interrupted
(retried at the next start), ``server_stopped`` is audited, the audit log gets
its final checkpoint, and the exit status is 0.
"""

import argparse
import signal
import sys
from types import FrameType
from typing import Any

from gateway import app
from gateway import config as config_mod
from gateway.errors import GatewayError, UsageError
from gateway.i18n import _
from gateway.server import DropServer
from gateway.watcher import Watcher

EXIT_OK = 0


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add ``serve`` to the top-level subcommands."""
    p = sub.add_parser(
        "serve",
        help=_("run the SFTP drop service and the forwarder (foreground; SIGTERM stops it)"),
    )
    p.add_argument(
        "--listen", metavar="HOST:PORT", help=_("address to listen on (default: [server] listen)")
    )
    p.set_defaults(run=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; return 0 after a clean stop."""
    cfg = config_mod.load(args.config)
    try:
        host, port = config_mod.parse_listen(args.listen or cfg.server.listen)
    except ValueError as exc:
        raise UsageError(
            f"--listen: {exc}", hint=_("give HOST:PORT, e.g. 127.0.0.1:2222")
        ) from None
    gateway = app.build(cfg)
    try:
        forwarder = gateway.forwarder
        watcher = Watcher(cfg.path(cfg.storage.root), forwarder.notify, gateway.audit)
        server = DropServer(
            gateway,
            host,
            port,
            services=(forwarder, watcher),
            on_pulled=forwarder.confirm_pulled,
        )
        try:
            bound_host, bound_port = server.bind()
        except OSError as exc:
            raise GatewayError(
                _("cannot listen on {host}:{port}: {reason}").format(
                    host=host, port=port, reason=exc.strerror or exc
                ),
                hint=_("is another server running there? choose another --listen"),
            ) from None

        def _stop(signum: int, _frame: FrameType | None) -> None:
            server.stop()

        previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"listening on {shown}:{bound_port}", file=sys.stderr, flush=True)
            server.serve_forever()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
    finally:
        gateway.close()
    return EXIT_OK
