"""Tests for gateway.staff_cli: ``lgwan-gateway staff …`` run as real subprocesses."""

from __future__ import annotations

import csv
import json
import os
import pty
import pwd
import select
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from pypdf import PdfReader

from custody import keys
from gateway.admin import init_root
from gateway.audit_query import verify
from gateway.staff import CustodyRefusedError, Roster
from gateway.state import StaffMember, StateStore
from tests.conftest import CliRunner, Result

OPERATOR = pwd.getpwuid(os.getuid()).pw_name
SECRET = "kakuninn-no-aikotoba-2026"
NEW_SECRET = "atarashii-aikotoba-2027"

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed"
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An initialised print site (in-process init; the init command has its own tests)."""
    init_root(tmp_path / "site", actor="test-setup")
    return tmp_path / "site"


def _staff(gateway: CliRunner, root: Path, *args: str | Path, secret: str | None = None) -> Result:
    return gateway("--config", root / "gateway.toml", "staff", *args, secret=secret)


def _add(gateway: CliRunner, root: Path, name: str, role: str, *extra: str) -> Result:
    return _staff(
        gateway, root, "add", name, "--role", role, "--password-fd", "{fd}", *extra, secret=SECRET
    )


def _member(root: Path, name: str) -> StaffMember | None:
    with StateStore.open(root / "state.db", create=False) as store:
        return store.get_staff(name)


def _events(root: Path) -> list[dict[str, object]]:
    lines = (root / "audit" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _audit_text(root: Path) -> str:
    return (root / "audit" / "audit.jsonl").read_text()


def _chain_ok(root: Path) -> bool:
    public = keys.load_public_key((root / "keys/gateway_signing_ed25519.pub").read_text())
    return verify(root / "audit/audit.jsonl", root / "audit/checkpoints.jsonl", public).ok


def _authenticate(root: Path, name: str, password: str) -> StaffMember:
    with StateStore.open(root / "state.db", create=False) as store:
        return Roster(store, None).authenticate(name, password, action="open")


# -- staff add ------------------------------------------------------------------------------------


def test_add_stores_hash_and_audits_without_secret(gateway: CliRunner, root: Path) -> None:
    """staff add: argon2id hash stored, staff_added audited by the OS user, never the password."""
    done = _add(gateway, root, "suzuki", "manager", "--full-name", "鈴木 花子")
    assert (done.code, done.out, done.err) == (0, "added suzuki (manager)\n", "")
    member = _member(root, "suzuki")
    assert member is not None
    assert (member.role, member.full_name, member.active) == ("manager", "鈴木 花子", True)
    assert member.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(member.password_hash, SECRET)
    last = _events(root)[-1]
    assert {k: last[k] for k in ("event", "actor", "staff", "role")} == {
        "event": "staff_added", "actor": OPERATOR, "staff": "suzuki", "role": "manager",
    }  # fmt: skip
    text = _audit_text(root)
    assert SECRET not in text and "argon2" not in text
    assert _chain_ok(root)


def test_add_refuses_duplicate_name(gateway: CliRunner, root: Path) -> None:
    """A second staff add of a name exits 1 and changes nothing."""
    assert _add(gateway, root, "sato", "handler").code == 0
    again = _add(gateway, root, "sato", "manager")
    assert again.code == 1
    assert "staff member 'sato' already exists" in again.err
    member = _member(root, "sato")
    assert member is not None and member.role == "handler"
    assert [e["event"] for e in _events(root)].count("staff_added") == 1


def test_add_refuses_weak_password(gateway: CliRunner, root: Path) -> None:
    """A password under 12 characters: exit 2, nothing stored, the password not echoed."""
    done = _staff(
        gateway, root, "add", "sato", "--role", "handler", "--password-fd", "{fd}", secret="pw-123"
    )
    assert done.code == 2
    assert "shorter than 12 characters" in done.err and "pw-123" not in done.err
    assert _member(root, "sato") is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "sato", "--role", "boss"], "invalid choice: 'boss'"),
        (["add", "sato"], "--role"),
        (["add", "../x", "--role", "handler"], "invalid staff name"),
        (["add", "Sato", "--role", "handler"], "invalid staff name"),
    ],
)
def test_add_refuses_bad_role_or_name(
    gateway: CliRunner, root: Path, argv: list[str], message: str
) -> None:
    """A bad role, missing role or bad name is a usage error (exit 2)."""
    done = _staff(gateway, root, *argv, "--password-fd", "{fd}", secret=SECRET)
    assert done.code == 2, done.err
    assert message in done.err
    with StateStore.open(root / "state.db", create=False) as store:
        assert store.list_staff() == []


def test_add_without_terminal_or_fd_is_refused(gateway: CliRunner, root: Path) -> None:
    """Without --password-fd and no terminal: exit 2 with a hint, nothing stored."""
    done = _staff(gateway, root, "add", "sato", "--role", "handler")
    assert done.code == 2
    assert "no terminal to ask on" in done.err and "--password-fd" in done.err
    assert _member(root, "sato") is None


def test_add_on_a_missing_root_explains(gateway: CliRunner, tmp_path: Path) -> None:
    """Without an initialised root the command fails with the init hint."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/gateway.toml").write_text("")
    done = _add(gateway, tmp_path / "empty", "sato", "handler")
    assert done.code == 1
    assert "no state database" in done.err and "lgwan-gateway init" in done.err


# -- staff list -----------------------------------------------------------------------------------


def test_list_prints_json_lines_without_hash(gateway: CliRunner, root: Path) -> None:
    """staff list (not a terminal): one JSON object per member by name, no hash."""
    _add(gateway, root, "tanaka", "handler", "--full-name", "田中 次郎")
    _add(gateway, root, "suzuki", "manager")
    done = _staff(gateway, root, "list")
    assert done.code == 0
    rows = [json.loads(line) for line in done.out.splitlines()]
    assert [(r["name"], r["role"], r["full_name"], r["active"]) for r in rows] == [
        ("suzuki", "manager", "", True),
        ("tanaka", "handler", "田中 次郎", True),
    ]
    assert rows[0]["created_at"].endswith("+09:00")
    assert "argon2" not in done.out and "password" not in done.out


# -- staff disable --------------------------------------------------------------------------------


def test_disable_refuses_later_authentication(gateway: CliRunner, root: Path) -> None:
    """A disabled member stays listed but authenticate refuses them (reason disabled)."""
    _add(gateway, root, "sato", "handler")
    assert _authenticate(root, "sato", SECRET).name == "sato"
    done = _staff(gateway, root, "disable", "sato")
    assert (done.code, done.out) == (0, "disabled sato\n")
    with pytest.raises(CustodyRefusedError) as refused:
        _authenticate(root, "sato", SECRET)
    assert refused.value.reason == "disabled"
    listed = json.loads(_staff(gateway, root, "list").out)
    assert (listed["name"], listed["active"]) == ("sato", False)
    last = _events(root)[-1]
    assert (last["event"], last["actor"], last["staff"]) == ("staff_disabled", OPERATOR, "sato")
    again = _staff(gateway, root, "disable", "sato")
    assert again.code == 0 and "disabled already" in again.err
    assert [e["event"] for e in _events(root)].count("staff_disabled") == 1


def test_disable_unknown_member_fails(gateway: CliRunner, root: Path) -> None:
    """Disabling a name not on the roster exits 1 with a hint."""
    done = _staff(gateway, root, "disable", "ghost")
    assert done.code == 1
    assert "no staff member 'ghost'" in done.err and "staff list" in done.err


# -- staff passwd ---------------------------------------------------------------------------------


def test_passwd_replaces_password_and_audits(gateway: CliRunner, root: Path) -> None:
    """staff passwd: the new password works, the old one is refused; audited without secrets."""
    _add(gateway, root, "sato", "handler")
    done = _staff(gateway, root, "passwd", "sato", "--password-fd", "{fd}", secret=NEW_SECRET)
    assert (done.code, done.out) == (0, "password changed for sato\n")
    assert _authenticate(root, "sato", NEW_SECRET).name == "sato"
    with pytest.raises(CustodyRefusedError) as refused:
        _authenticate(root, "sato", SECRET)
    assert refused.value.reason == "bad_password"
    last = _events(root)[-1]
    assert (last["event"], last["actor"], last["staff"]) == (
        "staff_password_changed", OPERATOR, "sato",
    )  # fmt: skip
    text = _audit_text(root)
    assert SECRET not in text and NEW_SECRET not in text


def test_passwd_refusals(gateway: CliRunner, root: Path) -> None:
    """passwd: unknown member exit 1, weak password exit 2, no terminal exit 2; nothing changes."""
    _add(gateway, root, "sato", "handler")
    unknown = _staff(gateway, root, "passwd", "ghost", "--password-fd", "{fd}", secret=NEW_SECRET)
    assert unknown.code == 1 and "no staff member 'ghost'" in unknown.err
    weak = _staff(gateway, root, "passwd", "sato", "--password-fd", "{fd}", secret="x")
    assert weak.code == 2 and "shorter than 12" in weak.err
    no_tty = _staff(gateway, root, "passwd", "sato")
    assert no_tty.code == 2 and "no terminal" in no_tty.err
    assert _authenticate(root, "sato", SECRET).name == "sato"
    assert "staff_password_changed" not in [e["event"] for e in _events(root)]


# -- staff roster ---------------------------------------------------------------------------------


def _roster_setup(gateway: CliRunner, root: Path) -> None:
    _add(gateway, root, "tanaka", "handler", "--full-name", "田中 次郎")
    _add(gateway, root, "suzuki", "manager", "--full-name", "鈴木 花子")
    _add(gateway, root, "kato", "handler", "--full-name", "=HYPERLINK(1)")
    _staff(gateway, root, "disable", "kato")


def test_roster_csv_has_bom_bilingual_header_and_managers_first(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """roster --out F.csv: UTF-8 with BOM, managers first, disabled marked, formulas defanged."""
    _roster_setup(gateway, root)
    out = tmp_path / "roster.csv"
    done = _staff(gateway, root, "roster", "--out", out)
    assert (done.code, done.out) == (0, f"{out}\n")
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf") and b"\r\n" in data
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    rows = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    assert rows[0][:4] == ["番号 (No.)", "区分 (Role)", "氏名 (Full name)", "職員名 (Staff name)"]
    body = [(r[0], r[1], r[2], r[3], r[4], r[6] != "") for r in rows[1:]]
    assert body == [
        ("1", "取扱責任者 (manager)", "鈴木 花子", "suzuki", "有効 (active)", False),
        ("2", "取扱者 (handler)", "'=HYPERLINK(1)", "kato", "停止 (disabled)", True),
        ("3", "取扱者 (handler)", "田中 次郎", "tanaka", "有効 (active)", False),
    ]
    assert rows[1][5].endswith("+09:00")


def _pdf_text(path: Path) -> str:
    if shutil.which("pdftotext") is not None:
        done = subprocess.run(
            ["pdftotext", "-enc", "UTF-8", "-layout", str(path), "-"],
            capture_output=True,
            check=True,
        )
        return done.stdout.decode("utf-8")
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_roster_pdf_lists_everyone_with_english_headings(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """roster --out F.pdf: the 名簿 with English headings, every member, role and status."""
    _roster_setup(gateway, root)
    out = tmp_path / "roster.pdf"
    done = _staff(gateway, root, "roster", "--out", out)
    assert done.code == 0, done.err
    assert out.read_bytes().startswith(b"%PDF")
    text = _pdf_text(out)
    for expected in (
        "取扱責任者及び取扱者名簿",
        "Roster of responsible managers and handlers",
        "Full name",
        "Staff name",
        "Status",
        "鈴木 花子",
        "田中 次郎",
        "suzuki",
        "kato",
        "停止",
        "有効",
        "JST",
    ):
        assert expected in text, expected
    assert text.index("suzuki") < text.index("kato") < text.index("tanaka")


@needs_pdftotext
def test_roster_pdf_of_many_members_spans_pages(
    gateway: CliRunner, root: Path, tmp_path: Path
) -> None:
    """A roster longer than a page continues on the next with its headings, numbered n / N."""
    with StateStore.open(root / "state.db", create=False) as store:
        roster = Roster(store, None, hasher=PasswordHasher(time_cost=1, memory_cost=1024))
        for n in range(45):
            roster.add(f"staff{n:02d}", "handler", f"取扱者 {n}", SECRET)
    out = tmp_path / "roster.pdf"
    assert _staff(gateway, root, "roster", "--out", out).code == 0
    pages = _pdf_text(out).split("\f")
    assert "1 / 2" in pages[0] and "2 / 2" in pages[1]
    assert "(続き)" in pages[1] and "Staff name" in pages[1]
    assert "staff44" in pages[1]


def test_roster_refuses_unknown_format(gateway: CliRunner, root: Path, tmp_path: Path) -> None:
    """An --out that is neither .pdf nor .csv is a usage error; nothing is written."""
    done = _staff(gateway, root, "roster", "--out", tmp_path / "roster.xlsx")
    assert done.code == 2 and "name it .pdf or .csv" in done.err
    assert not (tmp_path / "roster.xlsx").exists()


# -- prompting on a terminal ----------------------------------------------------------------------


def _on_terminal(root: Path, argv: list[str], answers: list[str]) -> tuple[int, str]:
    """Run lgwan-gateway on a pseudo-terminal, typing each answer after a password prompt."""
    program = str(Path(sys.executable).parent / "lgwan-gateway")
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal and stdin
        try:
            os.chdir(root.parent)
            os.execv(program, [program, "--config", str(root / "gateway.toml"), *argv])  # noqa: S606
        finally:
            os._exit(127)  # only reached when exec failed: never run pytest twice
    seen = b""
    try:
        for number, answer in enumerate(answers):
            while seen.count(b"Password for") <= number:
                ready, _, _ = select.select([fd], [], [], 60)
                assert ready, f"no prompt; saw {seen!r}"
                seen += os.read(fd, 1024)
            os.write(fd, answer.encode() + b"\n")
        while True:
            ready, _, _ = select.select([fd], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_add_on_a_terminal_asks_twice_and_never_echoes(root: Path) -> None:
    """On a terminal staff add prompts twice; differing answers refuse, equal ones store it."""
    code, shown = _on_terminal(
        root, ["staff", "add", "sato", "--role", "handler"], [SECRET, NEW_SECRET]
    )
    assert code == 2 and "the two passwords differ" in shown
    assert _member(root, "sato") is None
    code, shown = _on_terminal(
        root, ["staff", "add", "sato", "--role", "handler"], [SECRET, SECRET]
    )
    assert code == 0 and "added sato (handler)" in shown
    assert "Password for sato (again)" in shown
    assert SECRET not in shown
    assert _authenticate(root, "sato", SECRET).name == "sato"
