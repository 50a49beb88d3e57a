"""Administrative commands: ``init`` and ``user add|list|lock|unlock|passwd|remove``.

:func:`register` adds them to the ``lgwan-gateway`` parser; each handler takes
the parsed arguments, returns an exit status and raises :class:`GatewayError`
subclasses on failure (``cli.main()`` maps them). Every change is written to
the audit log with ``actor`` = the operator's OS user; a password never is.
What ``init`` creates is built by :mod:`gateway.initialise` (re-exported here).

A generated password exists only on the credential notice PDF and as an
argon2id hash, so ``user add`` / ``user passwd`` without ``--password-fd``
refuse to run without ``--notice-out``. Output files are written before the
database changes and removed again if the change fails: an account never
exists with a password nobody holds.

A ``forwarder`` account (the forwarding gateway at a print site) has no
password and so no notice: ``user add --role forwarder`` needs ``--allow`` and
refuses ``--notice-out``, ``--client-config-out`` and ``--password-fd``.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import keys
from gateway import config as config_mod
from gateway.accounts import (
    Accounts,
    InvalidAccountError,
    check_key_only,
    check_name,
    check_password_strength,
    check_role,
    check_tenant,
    generate_password,
    parse_allow,
    parse_public_key,
)
from gateway.app import init_hint, load_key
from gateway.audit import AuditLog
from gateway.credentials import (
    ClientConfig,
    CredentialNotice,
    printsite_signing_key,
    render_credential_notice,
    write_client_config,
)
from gateway.errors import ConfigError, GatewayError, UsageError
from gateway.i18n import _
from gateway.initialise import CONFIG_NAME as CONFIG_NAME
from gateway.initialise import Initialised as Initialised
from gateway.initialise import init_root as init_root
from gateway.initialise import render_config_toml as render_config_toml
from gateway.prompt import read_secret
from gateway.state import (
    ROLE_FORWARDER,
    ROLES,
    Account,
    DuplicateAccountError,
    DuplicateKeyError,
    StateError,
    StateStore,
)

EXIT_OK = 0
CLIENT_PRIVATE_KEY_DEFAULT = "keys/ward_ed25519"
"""Where ``lgwan-client keygen`` puts the ward's private key by default."""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``init`` and ``user …`` to the top-level subcommands."""
    p = sub.add_parser(
        "init", help=_("create a gateway: config, keys, state database, directories")
    )
    p.add_argument(
        "--root", type=Path, required=True, metavar="DIR",
        help=_("the new gateway's directory (nothing in it is overwritten)"),
    )  # fmt: skip
    p.set_defaults(run=cmd_init)

    user = sub.add_parser("user", help=_("manage login accounts"))
    users = user.add_subparsers(dest="user_command", required=True, parser_class=type(user))

    p = users.add_parser(
        "add", help=_("create an account; its password goes on a credential notice")
    )
    p.add_argument("name", metavar="NAME", help=_("account name (user ID)"))
    p.add_argument("--role", required=True, choices=ROLES, help=_("what the account may do"))
    p.add_argument("--tenant", required=True, metavar="T", help=_("the ward's tenant name"))
    p.add_argument(
        "--pubkey", type=Path, required=True, metavar="FILE",
        help=_("the account's OpenSSH ssh-ed25519 public key (.pub)"),
    )  # fmt: skip
    p.add_argument(
        "--allow", action="append", default=[], metavar="CIDR",
        help=_("network a login may come from (repeatable; default: any)"),
    )  # fmt: skip
    p.add_argument(
        "--notice-out", type=Path, metavar="F.pdf",
        help=_("write the credential notice (with the generated password) here"),
    )  # fmt: skip
    p.add_argument(
        "--client-config-out", type=Path, metavar="F.toml",
        help=_("write a ready lgwan-client configuration here"),
    )  # fmt: skip
    p.add_argument(
        "--client-key", default=CLIENT_PRIVATE_KEY_DEFAULT, metavar="PATH",
        help=_("the ward's private-key path written into --client-config-out"),
    )  # fmt: skip
    p.add_argument("--password-fd", type=int, metavar="N", help=_("read the password from fd N"))
    p.set_defaults(run=cmd_user_add)

    p = users.add_parser(
        "list", help=_("list accounts (table on a terminal, JSON lines otherwise)")
    )
    p.set_defaults(run=cmd_user_list)

    for name, handler, text in (
        ("lock", cmd_user_lock, _("lock an account until it is unlocked")),
        ("unlock", cmd_user_unlock, _("clear the admin lock, a lockout and the failure count")),
        ("remove", cmd_user_remove, _("delete an account")),
    ):
        p = users.add_parser(name, help=text)
        p.add_argument("name", metavar="NAME", help=_("account name (user ID)"))
        p.set_defaults(run=handler)

    p = users.add_parser(
        "passwd", help=_("set a new password (generated onto a notice by default)")
    )
    p.add_argument("name", metavar="NAME", help=_("account name (user ID)"))
    p.add_argument(
        "--notice-out", type=Path, metavar="F.pdf",
        help=_("write the credential notice (with the generated password) here"),
    )  # fmt: skip
    p.add_argument("--password-fd", type=int, metavar="N", help=_("read the password from fd N"))
    p.set_defaults(run=cmd_user_passwd)


# -- init ---------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    """``init --root DIR``: prints the config path and both key fingerprints."""
    result = init_root(args.root, actor=operator())
    print(f"config {result.config_path}")
    print(f"host_key {result.host_key_fingerprint}")
    print(f"signing_key {result.signing_key_fingerprint}")
    return EXIT_OK


# -- user ---------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What an administrative command works with."""

    cfg: config_mod.GatewayConfig
    store: StateStore
    accounts: Accounts
    audit: AuditLog
    signing_key: Ed25519PrivateKey
    actor: str

    def emit(self, event: str, account: Account, **fields: object) -> None:
        self.audit.emit(event, actor=self.actor, user=account.name, tenant=account.tenant, **fields)


@contextmanager
def _session(args: argparse.Namespace) -> Iterator[_Session]:
    cfg = config_mod.load(args.config)
    store = _open_store(cfg)
    try:
        signing_key = load_key(cfg, "keys.signing_key", cfg.keys.signing_key)
        audit = AuditLog.open(
            cfg.path(cfg.audit.log),
            cfg.path(cfg.audit.checkpoints),
            signing_key,
            every_records=cfg.audit.checkpoint_every_records,
            every_seconds=cfg.audit.checkpoint_every_seconds,
            timer=False,  # a short-lived command: close() writes the checkpoint
        )
        try:
            yield _Session(cfg, store, Accounts(store, cfg.auth), audit, signing_key, operator())
        finally:
            audit.close()
    finally:
        store.close()


def cmd_user_add(args: argparse.Namespace) -> int:
    """``user add``: validate, write the notice and client config, then create the account."""
    key_only = args.role == ROLE_FORWARDER
    if key_only:
        _refuse_password_options(args)
    else:
        _need_notice(args)
    check_name(args.name)
    check_role(args.role)
    check_tenant(args.tenant)
    allow = parse_allow(args.allow)
    check_key_only(args.role, allow, None if key_only else "")
    line, key_fingerprint = parse_public_key(_read_pubkey(args.pubkey))
    outputs = [p for p in (args.notice_out, args.client_config_out) if p is not None]
    _refuse_existing(outputs)
    password = None if key_only else _password(args)
    with _session(args) as s:
        if s.store.get_account(args.name) is not None:
            raise DuplicateAccountError(
                _("account {name} already exists").format(name=repr(args.name))
            )
        holder = s.store.find_account_by_fingerprint(key_fingerprint)
        if holder is not None:
            raise DuplicateKeyError(
                _("public key {fingerprint} already belongs to account {name}").format(
                    fingerprint=key_fingerprint, name=repr(holder.name)
                ),
                hint=_("each account needs its own key pair (lgwan-client keygen)"),
            )
        with _undo_on_failure(outputs):
            if args.notice_out is not None and password is not None:
                _write_notice(s, args.notice_out, args.name, args.tenant, args.role, password)
            if args.client_config_out is not None:
                client = _client_config(s, args.name, args.tenant, args.client_key)
                write_client_config(args.client_config_out, client)
            account = s.accounts.add(args.name, args.role, args.tenant, line, allow, password)
        s.emit(
            "account_added",
            account,
            role=account.role,
            key_fingerprint=account.key_fingerprint,
            allow=list(account.allow_cidrs),
            generated=password is not None and args.password_fd is None,
        )
    for path in outputs:
        print(path)
    return EXIT_OK


def cmd_user_list(args: argparse.Namespace) -> int:
    """``user list``: a rich table on a terminal, JSON lines otherwise; never a hash."""
    cfg = config_mod.load(args.config)
    with _open_store(cfg) as store:
        accounts = store.list_accounts()
    now = datetime.now().astimezone()
    rows = [_account_view(a, now) for a in accounts]
    if sys.stdout.isatty():
        _print_table(rows)
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    return EXIT_OK


def cmd_user_lock(args: argparse.Namespace) -> int:
    """``user lock NAME``: refuse every login until ``user unlock``."""
    with _session(args) as s:
        s.emit("account_locked", s.accounts.lock(args.name))
    return EXIT_OK


def cmd_user_unlock(args: argparse.Namespace) -> int:
    """``user unlock NAME``: clear the admin lock, any lockout and the failure count."""
    with _session(args) as s:
        s.emit("account_unlocked", s.accounts.unlock(args.name))
    return EXIT_OK


def cmd_user_remove(args: argparse.Namespace) -> int:
    """``user remove NAME``: delete the account (its tenant's files stay)."""
    with _session(args) as s:
        account = s.accounts.remove(args.name)
        s.emit(
            "account_removed", account, role=account.role, key_fingerprint=account.key_fingerprint
        )
    return EXIT_OK


def cmd_user_passwd(args: argparse.Namespace) -> int:
    """``user passwd NAME``: a new password (generated onto a notice unless given on an fd)."""
    _need_notice(args)
    outputs = [args.notice_out] if args.notice_out is not None else []
    _refuse_existing(outputs)
    password = _password(args)
    with _session(args) as s:
        current = s.store.get_account(args.name)
        if current is None:
            raise GatewayError(
                _("no account {name}").format(name=repr(args.name)),
                hint=_("see 'lgwan-gateway user list'"),
            )
        if current.role == ROLE_FORWARDER:
            raise InvalidAccountError(
                _("{name} is a forwarder account: it has no password (key only)").format(
                    name=repr(current.name)
                ),
                hint=_("to change its key, remove the account and add it again"),
            )
        with _undo_on_failure(outputs):
            if args.notice_out is not None:
                _write_notice(
                    s, args.notice_out, current.name, current.tenant, current.role, password,
                    reset=True,
                )  # fmt: skip
            account = s.accounts.passwd(args.name, password)
        s.emit("account_password_changed", account, generated=args.password_fd is None)
    for path in outputs:
        print(path)
    return EXIT_OK


# -- helpers ------------------------------------------------------------------------------------


def operator() -> str:
    """The OS user running the command (the ``actor`` of audit events)."""
    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = f"uid:{os.getuid()}"
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and os.getuid() == 0 else name


def _refuse_password_options(args: argparse.Namespace) -> None:
    """A forwarder account has no password: refuse the options that would give it one."""
    given = [
        option
        for option, value in (
            ("--notice-out", args.notice_out),
            ("--client-config-out", args.client_config_out),
            ("--password-fd", args.password_fd),
        )
        if value is not None
    ]
    if given:
        raise UsageError(
            _("a forwarder account has no password: {options} does not apply").format(
                options=", ".join(given)
            ),
            hint=_("give --pubkey (the forwarding gateway's forward_key .pub) and --allow CIDR"),
        )


def _need_notice(args: argparse.Namespace) -> None:
    if args.password_fd is None and args.notice_out is None:
        raise UsageError(
            _(
                "a generated password is printed only on the credential notice; "
                "without --notice-out it would be lost"
            ),
            hint=_("give --notice-out F.pdf (or --password-fd N with a password you chose)"),
        )


def _password(args: argparse.Namespace) -> str:
    if args.password_fd is None:
        return generate_password()
    return check_password_strength(
        read_secret(args.password_fd, _("Password: "), option="--password-fd")
    )


def _read_pubkey(path: Path) -> str:
    try:
        data = path.read_bytes()[: 16 * 1024]
    except OSError as exc:
        raise UsageError(
            _("cannot read --pubkey {path}: {reason}").format(path=path, reason=exc.strerror)
        ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidAccountError(
            _("{path} is not a text public-key file").format(path=path)
        ) from None


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise GatewayError(
                _("{path} already exists").format(path=path),
                hint=_("choose another file name; nothing is overwritten"),
            )
        if not path.parent.is_dir():
            raise UsageError(_("directory {path} does not exist").format(path=path.parent))


@contextmanager
def _undo_on_failure(paths: list[Path]) -> Iterator[None]:
    """Remove files written in the block if the block fails (they did not exist before)."""
    try:
        yield
    except BaseException:
        for path in paths:
            path.unlink(missing_ok=True)
        raise


def _open_store(cfg: config_mod.GatewayConfig) -> StateStore:
    try:
        return StateStore.open(cfg.path(cfg.state.database), create=False)
    except StateError as exc:
        raise GatewayError(str(exc), hint=init_hint()) from None


def _public_address(cfg: config_mod.GatewayConfig) -> tuple[str, int]:
    address = cfg.server.public_address or cfg.server.listen
    try:
        return config_mod.parse_listen(address)
    except ValueError as exc:
        file = str(cfg.source) if cfg.source else "(defaults)"
        raise ConfigError(file, "server.public_address", str(exc)) from None


def _write_notice(
    s: _Session, out: Path, name: str, tenant: str, role: str, password: str, *, reset: bool = False
) -> None:
    host, port = _public_address(s.cfg)
    host_key = load_key(s.cfg, "server.host_key", s.cfg.server.host_key)
    shown_host = f"[{host}]" if ":" in host else host
    notice = CredentialNotice(
        user=name,
        tenant=tenant,
        role=role,
        password=password,
        gateway_address=f"{shown_host}:{port}",
        host_key_fingerprint=keys.fingerprint(host_key.public_key()),
        signing_key_fingerprint=keys.fingerprint(s.signing_key.public_key()),
        issued_at=datetime.now().astimezone(),
        issued_by=s.actor,
        reset=reset,
    )
    try:
        render_credential_notice(out, notice)
    except ValueError as exc:
        raise InvalidAccountError(
            _("cannot print the credential notice: {reason}").format(reason=exc)
        ) from None


def _client_config(s: _Session, name: str, tenant: str, private_key: str) -> ClientConfig:
    host, port = _public_address(s.cfg)
    host_key = load_key(s.cfg, "server.host_key", s.cfg.server.host_key)
    return ClientConfig(
        host=host,
        port=port,
        user=name,
        tenant=tenant,
        host_key=keys.public_key_to_openssh(host_key.public_key()),
        receipt_key=keys.public_key_to_openssh(s.signing_key.public_key()),
        private_key=private_key,
        printsite_key=printsite_signing_key(s.cfg, tenant),
    )


def _account_view(account: Account, now: datetime) -> dict[str, object]:
    if account.admin_locked:
        status = "admin_locked"
    elif account.locked_at(now):
        status = "locked"
    else:
        status = "active"
    return {
        "name": account.name,
        "role": account.role,
        "tenant": account.tenant,
        "status": status,
        "key_fingerprint": account.key_fingerprint,
        "allow": list(account.allow_cidrs),
        "failed_logins": account.failed_logins,
        "locked_until": account.locked_until.isoformat() if account.locked_until else None,
        "created_at": account.created_at.isoformat(timespec="seconds"),
        "updated_at": account.updated_at.isoformat(timespec="seconds"),
    }


def _print_table(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table()
    for header in (
        _("name"),
        _("role"),
        _("tenant"),
        _("status"),
        _("allow"),
        _("failures"),
        _("created"),
    ):
        table.add_column(header, no_wrap=True)
    table.add_column(_("key"), overflow="fold")
    for row in rows:
        allow = row["allow"]
        table.add_row(
            str(row["name"]),
            str(row["role"]),
            str(row["tenant"]),
            str(row["status"]),
            ", ".join(str(a) for a in allow) if isinstance(allow, list) and allow else _("any"),
            str(row["failed_logins"]),
            str(row["created_at"])[:10],
            str(row["key_fingerprint"]),
        )
    Console().print(table)
