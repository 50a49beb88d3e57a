"""Tests for gateway.admin: ``lgwan-gateway init`` and ``user …`` run as real subprocesses."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from pypdf import PdfReader

from client import config as client_config
from custody import keys
from gateway import config as gateway_config
from gateway.admin import init_root, render_config_toml
from gateway.audit_query import verify
from gateway.state import Account, StateStore
from tests.conftest import CliRunner, Result

OPERATOR = pwd.getpwuid(os.getuid()).pw_name
CHOSEN = "a-chosen-password-42"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An initialised gateway (in-process init; the init command has its own tests)."""
    init_root(tmp_path / "gw", actor="test-setup")
    return tmp_path / "gw"


def _ward_key(tmp_path: Path, name: str = "ward") -> Path:
    pub = tmp_path / f"{name}.pub"
    line = keys.public_key_to_openssh(keys.generate_private_key().public_key(), f"{name}@pc")
    pub.write_text(line + "\n")
    return pub


def _events(root: Path) -> list[dict[str, object]]:
    lines = (root / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _account(root: Path, name: str) -> Account | None:
    with StateStore.open(root / "state.db", create=False) as store:
        return store.get_account(name)


def _existing(root: Path, name: str) -> Account:
    account = _account(root, name)
    assert account is not None, f"no account {name}"
    return account


def _notice_password(pdf: Path) -> str:
    lines = PdfReader(pdf).pages[0].extract_text().splitlines()
    (line,) = [x for x in lines if x.startswith("Password: ")]
    return line.removeprefix("Password: ")


def _add(
    gateway: CliRunner,
    root: Path,
    tmp_path: Path,
    name: str = "ward-a",
    *extra: str | Path,
    secret: str | None = None,
) -> Result:
    pubkey = tmp_path / f"{name}.pub"
    if not pubkey.exists():
        _ward_key(tmp_path, name)
    return gateway(
        "--config", root / "gateway.toml", "user", "add", name, "--role", "ward",
        "--tenant", "shinjuku", "--pubkey", pubkey, *extra, secret=secret,
    )  # fmt: skip


# -- init ---------------------------------------------------------------------------------------


def test_init_creates_keys_config_database_and_audit(gateway: CliRunner, tmp_path: Path) -> None:
    """init writes private keys 0600, prints the config path and both fingerprints, audits."""
    done = gateway("init", "--root", "gw")
    assert done.code == 0, done.err
    root = tmp_path / "gw"
    host_pub = keys.load_public_key((root / "keys/ssh_host_ed25519_key.pub").read_text())
    sign_pub = keys.load_public_key((root / "keys/gateway_signing_ed25519.pub").read_text())
    assert done.out.splitlines() == [
        f"config {root / 'gateway.toml'}",
        f"host_key {keys.fingerprint(host_pub)}",
        f"signing_key {keys.fingerprint(sign_pub)}",
    ]
    for private in ("keys/ssh_host_ed25519_key", "keys/gateway_signing_ed25519"):
        assert stat.S_IMODE((root / private).stat().st_mode) == 0o600
    assert (root / "storage").is_dir()
    for private_dir in ("spool", "work"):  # the print site's spool and plaintext work area
        assert stat.S_IMODE((root / private_dir).stat().st_mode) == 0o700
    assert (root / "state.db").is_file()
    events = _events(root)
    assert [e["event"] for e in events] == ["gateway_initialised"]
    assert events[0]["actor"] == OPERATOR
    assert verify(root / "audit/audit.jsonl", root / "audit/checkpoints.jsonl", sign_pub).ok


def test_init_config_lists_every_key_at_its_default(tmp_path: Path) -> None:
    """The written gateway.toml loads back equal to the defaults, relative to its directory."""
    root = init_root(tmp_path / "gw", actor="t").config_path.parent
    loaded = gateway_config.load(str(root / "gateway.toml"))
    expected = gateway_config.GatewayConfig(base_dir=root, source=root / "gateway.toml")
    assert loaded == expected
    text = render_config_toml()
    for section in gateway_config._SECTIONS.values():
        for key in dataclasses.fields(section):
            assert f"\n{key.name} = " in text


def test_init_twice_refuses_and_changes_nothing(gateway: CliRunner, tmp_path: Path) -> None:
    """A second init on the same directory exits 1 and leaves every file byte for byte."""
    assert gateway("init", "--root", "gw").code == 0
    before = {p: p.read_bytes() for p in (tmp_path / "gw").rglob("*") if p.is_file()}
    again = gateway("init", "--root", "gw")
    assert again.code == 1
    assert "already initialised" in again.err
    after = {p: p.read_bytes() for p in (tmp_path / "gw").rglob("*") if p.is_file()}
    assert after == before


def test_init_refuses_partial_root_and_creates_nothing(gateway: CliRunner, tmp_path: Path) -> None:
    """A root holding only a leftover signing key is refused; nothing else appears."""
    (tmp_path / "gw/keys").mkdir(parents=True)
    (tmp_path / "gw/keys/gateway_signing_ed25519").write_bytes(b"old key")
    done = gateway("init", "--root", "gw")
    assert done.code == 1
    assert sorted(p.name for p in (tmp_path / "gw").rglob("*")) == [
        "gateway_signing_ed25519",
        "keys",
    ]


def test_init_failure_removes_what_it_created(gateway: CliRunner, tmp_path: Path) -> None:
    """When a late step fails (audit/ is a file), init removes every file it had written."""
    (tmp_path / "gw").mkdir()
    (tmp_path / "gw/audit").write_text("in the way")
    done = gateway("init", "--root", "gw")
    assert done.code == 1
    assert "audit" in done.err
    assert sorted(p.name for p in (tmp_path / "gw").rglob("*")) == ["audit"]


# -- user add -----------------------------------------------------------------------------------


def test_add_with_generated_password(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """The generated password is on the notice only; the database holds its argon2id hash."""
    notice = tmp_path / "notice.pdf"
    done = _add(gateway, root, tmp_path, "ward-a", "--notice-out", notice, "--allow", "10.0.0.0/8")
    assert done.code == 0, done.err
    password = _notice_password(notice)
    account = _existing(root, "ward-a")
    assert PasswordHasher().verify(account.password_hash, password)
    assert account.allow_cidrs == ("10.0.0.0/8",)
    assert stat.S_IMODE(notice.stat().st_mode) == 0o600
    audit_text = (root / "audit/audit.jsonl").read_text()
    assert password not in done.out + done.err + audit_text
    assert password.encode() not in (root / "state.db").read_bytes()
    added = _events(root)[-1]
    assert added["event"] == "account_added"
    assert (added["user"], added["tenant"], added["actor"]) == ("ward-a", "shinjuku", OPERATOR)


def test_add_without_notice_or_fd_refuses(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """Without --notice-out a generated password would be lost: exit 2, no account."""
    done = _add(gateway, root, tmp_path)
    assert done.code == 2
    assert "--notice-out" in done.err
    assert _account(root, "ward-a") is None


def test_add_with_password_fd_and_client_config(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """A password from an fd is used; the client config pins the gateway's two public keys."""
    out = tmp_path / "client.toml"
    done = _add(
        gateway, root, tmp_path, "ward-a", "--password-fd", "{fd}", "--client-config-out", out,
        secret=CHOSEN,
    )  # fmt: skip
    assert done.code == 0, done.err
    assert PasswordHasher().verify(_existing(root, "ward-a").password_hash, CHOSEN)
    loaded = client_config.load(str(out))
    host_line = (root / "keys/ssh_host_ed25519_key.pub").read_text().split(" lgwan")[0]
    sign_line = (root / "keys/gateway_signing_ed25519.pub").read_text().split(" lgwan")[0]
    assert (loaded.gateway.host, loaded.gateway.port) == ("127.0.0.1", 2222)
    assert (loaded.gateway.user, loaded.gateway.tenant) == ("ward-a", "shinjuku")
    assert (loaded.gateway.host_key, loaded.gateway.receipt_key) == (host_line, sign_line)
    assert CHOSEN not in out.read_text()


def _add_with_secret(gateway: CliRunner, root: Path, tmp_path: Path, *extra: str) -> Result:
    return gateway(
        "--config", root / "gateway.toml", "user", "add", "ward-a", "--password-fd", "{fd}",
        "--pubkey", _ward_key(tmp_path), *extra, secret=CHOSEN,
    )  # fmt: skip


def test_add_short_password_refused(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """A chosen password under 12 characters is refused with exit 2."""
    done = gateway(
        "--config", root / "gateway.toml", "user", "add", "ward-a", "--role", "ward",
        "--tenant", "shinjuku", "--pubkey", _ward_key(tmp_path), "--password-fd", "{fd}",
        secret="short",
    )  # fmt: skip
    assert done.code == 2
    assert "shorter than 12" in done.err
    assert _account(root, "ward-a") is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--role", "ward", "--tenant", "Shinjuku"), "invalid tenant"),
        (("--role", "ward", "--tenant", "shinjuku", "--allow", "10.0.0.5/8"), "invalid network"),
        (("--role", "admin", "--tenant", "shinjuku"), "invalid choice"),
    ],
)
def test_add_invalid_fields_exit_2(
    gateway: CliRunner, root: Path, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """An invalid tenant, network with host bits or role is a usage error; nothing is stored."""
    done = _add_with_secret(gateway, root, tmp_path, *args)
    assert done.code == 2
    assert message in done.err
    assert _account(root, "ward-a") is None


def test_add_invalid_name_and_pubkey_exit_2(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """A bad account name or a public-key file that is not one ssh-ed25519 line: exit 2."""
    bad_name = gateway(
        "--config", root / "gateway.toml", "user", "add", "../x", "--role", "ward",
        "--tenant", "shinjuku", "--pubkey", _ward_key(tmp_path), "--password-fd", "{fd}",
        secret=CHOSEN,
    )  # fmt: skip
    two_keys = tmp_path / "two.pub"
    two_keys.write_text(_ward_key(tmp_path, "a").read_text() + _ward_key(tmp_path, "b").read_text())
    bad_key = gateway(
        "--config", root / "gateway.toml", "user", "add", "ward-a", "--role", "ward",
        "--tenant", "shinjuku", "--pubkey", two_keys, "--password-fd", "{fd}", secret=CHOSEN,
    )  # fmt: skip
    assert (bad_name.code, bad_key.code) == (2, 2)
    assert "invalid account name" in bad_name.err
    assert "public key" in bad_key.err
    with StateStore.open(root / "state.db", create=False) as store:
        assert store.list_accounts() == []


def test_duplicates_exit_1_and_leave_no_notice(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """A taken name or a reused key exits 1 and the refused notice file is not written."""
    assert _add(gateway, root, tmp_path, "ward-a", "--notice-out", tmp_path / "a.pdf").code == 0
    same_name = _add(gateway, root, tmp_path, "ward-a", "--notice-out", tmp_path / "b.pdf")
    reused = gateway(
        "--config", root / "gateway.toml", "user", "add", "ward-b", "--role", "ward",
        "--tenant", "shinjuku", "--pubkey", tmp_path / "ward-a.pub",
        "--notice-out", tmp_path / "c.pdf",
    )  # fmt: skip
    assert (same_name.code, reused.code) == (1, 1)
    assert "already exists" in same_name.err
    assert "already belongs to account 'ward-a'" in reused.err
    assert not (tmp_path / "b.pdf").exists()
    assert not (tmp_path / "c.pdf").exists()


def test_add_refuses_to_overwrite_notice(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """An existing --notice-out file is never overwritten (exit 1, no account)."""
    existing = tmp_path / "notice.pdf"
    existing.write_bytes(b"someone else's notice")
    done = _add(gateway, root, tmp_path, "ward-a", "--notice-out", existing)
    assert done.code == 1
    assert existing.read_bytes() == b"someone else's notice"
    assert _account(root, "ward-a") is None


def test_user_commands_need_an_initialised_gateway(gateway: CliRunner, tmp_path: Path) -> None:
    """Without a state database the command fails (exit 1) with a hint to run init."""
    done = gateway("user", "list")
    assert done.code == 1
    assert "lgwan-gateway init" in done.err
    assert not (tmp_path / "state.db").exists()


# -- list, lock, unlock, passwd, remove ---------------------------------------------------------


def test_list_prints_json_lines_without_hashes(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """Off a terminal, user list prints one JSON object per account and no password hash."""
    assert _add(gateway, root, tmp_path, "ward-a", "--notice-out", tmp_path / "a.pdf").code == 0
    assert _add(gateway, root, tmp_path, "ward-b", "--notice-out", tmp_path / "b.pdf").code == 0
    done = gateway("--config", root / "gateway.toml", "user", "list")
    assert done.code == 0
    rows = [json.loads(line) for line in done.out.splitlines()]
    assert [(r["name"], r["status"], r["tenant"]) for r in rows] == [
        ("ward-a", "active", "shinjuku"),
        ("ward-b", "active", "shinjuku"),
    ]
    assert "argon2" not in done.out
    assert "password_hash" not in rows[0]


def test_lock_unlock_remove_are_audited(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """lock, unlock and remove change the account and each leaves its audit event."""
    config = root / "gateway.toml"
    assert _add(gateway, root, tmp_path, "ward-a", "--notice-out", tmp_path / "a.pdf").code == 0
    assert gateway("--config", config, "user", "lock", "ward-a").code == 0
    assert _existing(root, "ward-a").admin_locked is True
    with StateStore.open(root / "state.db", create=False) as store:
        now = datetime.now().astimezone()
        store.record_failure("ward-a", now, 1, timedelta(minutes=15))
    assert gateway("--config", config, "user", "unlock", "ward-a").code == 0
    unlocked = _existing(root, "ward-a")
    assert not unlocked.admin_locked
    assert (unlocked.locked_until, unlocked.failed_logins) == (None, 0)
    assert gateway("--config", config, "user", "remove", "ward-a").code == 0
    assert _account(root, "ward-a") is None
    missing = gateway("--config", config, "user", "remove", "ward-a")
    assert missing.code == 1
    events = _events(root)
    assert [e["event"] for e in events] == [
        "gateway_initialised",
        "account_added",
        "account_locked",
        "account_unlocked",
        "account_removed",
    ]
    assert {e["actor"] for e in events[1:]} == {OPERATOR}
    sign_pub = keys.load_public_key((root / "keys/gateway_signing_ed25519.pub").read_text())
    assert verify(root / "audit/audit.jsonl", root / "audit/checkpoints.jsonl", sign_pub).ok


def test_passwd_issues_new_notice(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """passwd needs a notice for a generated password; the new one replaces the old."""
    config = root / "gateway.toml"
    assert _add(gateway, root, tmp_path, "ward-a", "--notice-out", tmp_path / "a.pdf").code == 0
    old = _notice_password(tmp_path / "a.pdf")
    refused = gateway("--config", config, "user", "passwd", "ward-a")
    assert refused.code == 2
    done = gateway(
        "--config", config, "user", "passwd", "ward-a", "--notice-out", tmp_path / "b.pdf"
    )
    assert done.code == 0, done.err
    new = _notice_password(tmp_path / "b.pdf")
    account = _existing(root, "ward-a")
    hasher = PasswordHasher()
    assert hasher.verify(account.password_hash, new)
    assert not _verifies(hasher, account.password_hash, old)
    assert "再発行" in PdfReader(tmp_path / "b.pdf").pages[0].extract_text()
    changed = _events(root)[-1]
    assert (changed["event"], changed["user"], changed["actor"]) == (
        "account_password_changed",
        "ward-a",
        OPERATOR,
    )
    assert new not in (root / "audit/audit.jsonl").read_text()
    unknown = gateway(
        "--config", config, "user", "passwd", "ghost", "--notice-out", tmp_path / "c.pdf"
    )
    assert unknown.code == 1
    assert not (tmp_path / "c.pdf").exists()


def _verifies(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    try:
        return hasher.verify(password_hash, password)
    except VerifyMismatchError:
        return False
