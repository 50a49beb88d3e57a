"""``lgwan-client dvd BATCH --out FILE.iso [--format age|7z] [--passphrase-fd N]``.

Prints one line per verified image on stdout — ``<serial>  <sha256>  <path>`` —
and a one-line summary on stderr. Exit 0 only when every image was written,
read back, verified and recorded in the ledger.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

from client import config as config_mod
from client import dvd
from client.dvd_layout import KIND_7Z, KIND_AGE
from client.i18n import _
from client.ui import progress_bar

PROG = "lgwan-client"
PASSES = {KIND_AGE: 3, KIND_7Z: 4}
"""How often the payload is read or written, for the progress bar's total."""


def register(sub: "argparse._SubParsersAction[Any]") -> None:
    """Add ``dvd`` to the program's subparsers."""
    p = sub.add_parser("dvd", help=_("write a sealed batch to verified DVD image(s) with serials"))
    p.add_argument("target", metavar="BATCH|FILE.age", help=_("batch id (in out_dir) or .age file"))
    p.add_argument("--out", type=Path, required=True, metavar="FILE.iso", help=_("image to write"))
    p.add_argument(
        "--format",
        dest="kind",
        choices=dvd.KINDS,
        default=KIND_AGE,
        help=_("age: the sealed envelope (default); 7z: AES-256 7z of the files for 7-Zip"),
    )
    p.add_argument(
        "--passphrase-fd",
        type=int,
        metavar="N",
        help=_("7z: read the batch passphrase from fd N"),
    )
    p.set_defaults(run=cmd_dvd)


def cmd_dvd(args: argparse.Namespace) -> int:
    """Run ``dvd`` and print the serial, SHA-256 and path of every image."""
    from client.cli import read_secret  # client.cli imports this module to register it

    cfg = config_mod.load(args.config)
    envelope = dvd.check(args.target, args.out, cfg)[1]  # before asking for anything
    secret = None
    if args.kind == KIND_7Z:
        prompt = _("Batch passphrase (from the password notice): ")
        secret = read_secret(args.passphrase_fd, prompt, option="--passphrase-fd")
    total = envelope.stat().st_size * PASSES[args.kind]
    with progress_bar(_("DVD image"), total) as advance:
        result = dvd.make_dvd(
            args.target,
            args.out,
            cfg,
            kind=args.kind,
            secret=secret,
            progress=advance,
        )
    for disc in result.discs:
        print(f"{disc.serial}  {disc.sha256}  {disc.path}")
    summary = _(
        "{batch}: {count} {kind} disc image(s) written and verified; "
        "recorded as {event} in the ledger"
    ).format(
        batch=result.batch_id,
        count=len(result.discs),
        kind=result.kind,
        event=dvd.EVENT_DVD_CREATED,
    )
    print(f"{PROG}: {summary}", file=sys.stderr)
    return 0
