"""The roster commands: ``staff add|list|disable|passwd|roster``.

:func:`register` adds them to the ``lgwan-gateway`` parser. The print site's
取扱責任者 (``manager``) and 取扱者 (``handler``) each get a password of their
own, chosen by them: typed twice at a terminal prompt, or read from
``--password-fd N`` (without a terminal and without the option the command
refuses: the password is never generated, printed or taken from argv). ``add``,
``disable`` and ``passwd`` are written to the audit log (``staff_added``,
``staff_disabled``, ``staff_password_changed``; ``actor`` = the operator's OS
user), never with the password. Staff are disabled, never removed.

``staff roster --out F.pdf|F.csv`` writes the 取扱責任者及び取扱者名簿 for the
ward (:mod:`gateway.roster_report`); ``staff list`` prints a table on a
terminal and JSON lines otherwise (never a hash).
"""

from __future__ import annotations

import argparse
import hmac
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway import config as config_mod
from gateway import roster_report
from gateway.app import init_hint, load_key
from gateway.audit import AuditLog
from gateway.errors import ConfigError, GatewayError, UsageError
from gateway.i18n import _
from gateway.pdf import JST
from gateway.prompt import read_secret
from gateway.staff import (
    PASSWORD_FD_OPTION,
    ROLE_LABELS,
    Roster,
    check_full_name,
    check_staff_name,
    check_staff_role,
    read_staff_password,
)
from gateway.state import (
    STAFF_ROLES,
    DuplicateStaffError,
    StaffMember,
    StateError,
    StateStore,
    UnknownStaffError,
)

EXIT_OK = 0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``staff …`` to the top-level subcommands."""
    staff = sub.add_parser("staff", help=_("the roster: managers (取扱責任者), handlers (取扱者)"))
    cmds = staff.add_subparsers(dest="staff_command", required=True, parser_class=type(staff))

    p = cmds.add_parser("add", help=_("put a manager or handler on the roster with their password"))
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--role", required=True, choices=STAFF_ROLES,
        help=_("manager (取扱責任者) or handler (取扱者)"),
    )  # fmt: skip
    p.add_argument(
        "--full-name", default="", metavar="TEXT", help=_("氏名 as printed on the roster")
    )
    p.add_argument(
        PASSWORD_FD_OPTION, dest="password_fd", type=int, metavar="N",
        help=_("read the password from file descriptor N (else typed twice at a prompt)"),
    )  # fmt: skip
    p.set_defaults(run=cmd_staff_add)

    p = cmds.add_parser("list", help=_("list staff (table on a terminal, JSON lines otherwise)"))
    p.set_defaults(run=cmd_staff_list)

    p = cmds.add_parser("disable", help=_("take a member off duty (they stay on the roster)"))
    p.add_argument("name", metavar="NAME")
    p.set_defaults(run=cmd_staff_disable)

    p = cmds.add_parser("passwd", help=_("set a member's new password"))
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        PASSWORD_FD_OPTION, dest="password_fd", type=int, metavar="N",
        help=_("read the password from file descriptor N (else typed twice at a prompt)"),
    )  # fmt: skip
    p.set_defaults(run=cmd_staff_passwd)

    p = cmds.add_parser("roster", help=_("write the 取扱責任者及び取扱者名簿 (PDF or CSV)"))
    p.add_argument("--out", type=Path, required=True, metavar="F.pdf|F.csv")
    p.set_defaults(run=cmd_staff_roster)


def cmd_staff_add(args: argparse.Namespace) -> int:
    """``staff add NAME --role R``: validate, read the password, store and audit."""
    check_staff_name(args.name)
    check_staff_role(args.role)
    full_name = check_full_name(args.full_name)
    cfg = config_mod.load(args.config)
    with _open_store(cfg) as store:
        if store.get_staff(args.name) is not None:
            raise DuplicateStaffError(
                _("staff member {name} already exists").format(name=repr(args.name)),
                hint=_("names are never reused; see 'lgwan-gateway staff list'"),
            )
    password = _new_password(args)
    with _roster(cfg) as roster:
        member = roster.add(args.name, args.role, full_name, password)
    print(_("added {name} ({role})").format(name=member.name, role=member.role))
    return EXIT_OK


def cmd_staff_list(args: argparse.Namespace) -> int:
    """``staff list``: a rich table on a terminal, JSON lines otherwise; never a hash."""
    cfg = config_mod.load(args.config)
    with _open_store(cfg) as store:
        members = store.list_staff()
    if sys.stdout.isatty():
        _print_table(members)
        return EXIT_OK
    for member in members:
        print(json.dumps(_view(member), ensure_ascii=False))
    return EXIT_OK


def cmd_staff_disable(args: argparse.Namespace) -> int:
    """``staff disable NAME``: refuse their custody actions from now on."""
    cfg = config_mod.load(args.config)
    with _roster(cfg) as roster:
        current = roster.get(args.name)
        if current is None:
            raise _unknown(args.name)
        if not current.active:
            print(_("{name} was disabled already").format(name=current.name), file=sys.stderr)
            return EXIT_OK
        member = roster.disable(args.name)
    print(_("disabled {name}").format(name=member.name))
    return EXIT_OK


def cmd_staff_passwd(args: argparse.Namespace) -> int:
    """``staff passwd NAME``: a new password, typed twice or read from ``--password-fd``."""
    cfg = config_mod.load(args.config)
    with _open_store(cfg) as store:
        if store.get_staff(args.name) is None:
            raise _unknown(args.name)
    password = _new_password(args)
    with _roster(cfg) as roster:
        member = roster.passwd(args.name, password)
    print(_("password changed for {name}").format(name=member.name))
    return EXIT_OK


def cmd_staff_roster(args: argparse.Namespace) -> int:
    """``staff roster --out F.pdf|F.csv``: the roster for the ward; prints the file name."""
    out: Path = args.out
    fmt = out.suffix.lower()
    if fmt not in (".pdf", ".csv"):
        raise UsageError(
            _("cannot tell the format of {name}").format(name=out.name),
            hint=_("name it .pdf or .csv"),
        )
    if not out.parent.is_dir():
        raise UsageError(_("{path} is not a directory").format(path=out.parent))
    cfg = config_mod.load(args.config)
    with _open_store(cfg) as store:
        members = store.list_staff()
    if fmt == ".csv":
        roster_report.write_csv(out, members)
    else:
        roster_report.render_pdf(
            out,
            members,
            prepared_at=datetime.now().astimezone(),
            site=cfg.custody.computer or socket.gethostname(),
        )
    print(out)
    return EXIT_OK


# -- helpers ------------------------------------------------------------------------------------


def _new_password(args: argparse.Namespace) -> str:
    """The new password: from ``--password-fd``, else typed twice at a terminal."""
    if args.password_fd is not None:
        return read_staff_password(args.password_fd, args.name)
    first = read_staff_password(None, args.name)
    prompt = _("Password for {name} (again): ").format(name=args.name)
    again = read_secret(None, prompt, option=PASSWORD_FD_OPTION)
    if not hmac.compare_digest(first.encode(), again.encode()):
        raise UsageError(_("the two passwords differ; nothing was changed"))
    return first


def _unknown(name: str) -> UnknownStaffError:
    return UnknownStaffError(
        _("no staff member {name}").format(name=repr(name[:40])),
        hint=_("see 'lgwan-gateway staff list'"),
    )


def _open_store(cfg: config_mod.GatewayConfig) -> StateStore:
    try:
        return StateStore.open(cfg.path(cfg.state.database), create=False)
    except StateError as exc:
        raise GatewayError(str(exc), hint=init_hint()) from None


@contextmanager
def _roster(cfg: config_mod.GatewayConfig) -> Iterator[Roster]:
    """The roster with the store and audit log open (``init`` made both)."""
    key = load_key(cfg, "keys.signing_key", cfg.keys.signing_key)
    log = cfg.path(cfg.audit.log)
    if not log.is_file():
        file = str(cfg.source) if cfg.source else _("(defaults)")
        message = _("{path} does not exist ({hint})").format(path=log, hint=init_hint())
        raise ConfigError(file, "audit.log", message)
    with _open_store(cfg) as store:
        audit = AuditLog.open(
            log,
            cfg.path(cfg.audit.checkpoints),
            key,
            every_records=cfg.audit.checkpoint_every_records,
            every_seconds=cfg.audit.checkpoint_every_seconds,
            timer=False,  # a short-lived command: close() writes the checkpoint
        )
        try:
            yield Roster(store, audit)
        finally:
            audit.close()


def _view(member: StaffMember) -> dict[str, object]:
    return {
        "name": member.name,
        "role": member.role,
        "full_name": member.full_name,
        "active": member.active,
        "created_at": member.created_at.astimezone(JST).isoformat(timespec="seconds"),
        "updated_at": member.updated_at.astimezone(JST).isoformat(timespec="seconds"),
    }


def _print_table(members: list[StaffMember]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not members:
        Console().print(_("nobody on the roster"))
        return
    table = Table()
    for header in (_("name"), _("role"), _("full name"), _("status"), _("since (JST)")):
        table.add_column(header, no_wrap=True)
    for member in members:
        since = member.created_at.astimezone(JST)
        table.add_row(
            member.name,
            f"{member.role} ({ROLE_LABELS.get(member.role, '')})",
            member.full_name,
            _("active") if member.active else _("disabled"),
            f"{since:%Y-%m-%d}",
        )
    Console().print(table)
