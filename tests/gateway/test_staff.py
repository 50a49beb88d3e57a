"""Tests for gateway.staff: the roster and the authentication of custody actions (in process)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from argon2 import PasswordHasher, extract_parameters

from gateway.accounts import InvalidAccountError
from gateway.errors import UsageError
from gateway.staff import (
    CustodyRefusedError,
    InvalidStaffError,
    Roster,
    add_actor_arguments,
    authenticate_actor,
    authenticate_approver,
    hash_password,
    read_staff_password,
)
from gateway.state import DuplicateStaffError, StateStore, UnknownStaffError

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)
GOOD = "correct horse battery staple"
OTHER_GOOD = "another long passphrase"
BATCH = "20260715-KAIGO-7F3KQ2"


class CountingHasher(PasswordHasher):
    """A cheap argon2id hasher that remembers every hash it verified against."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified.append(hash if isinstance(hash, str) else hash.decode())
        return super().verify(hash, password)


class Recorder:
    """Stands in for the audit log: keeps (event, fields)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, event: str, /, **fields: object) -> None:
        self.events.append((event, fields))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A fresh state database."""
    opened = StateStore.open(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def audit() -> Recorder:
    """The events the roster wrote."""
    return Recorder()


@pytest.fixture
def hasher() -> CountingHasher:
    """The roster's hasher."""
    return CountingHasher()


@pytest.fixture
def roster(store: StateStore, audit: Recorder, hasher: CountingHasher) -> Roster:
    """A roster with a manager (suzuki), a handler (sato) and a disabled handler (kato)."""
    made = Roster(store, audit, clock=lambda: T0, hasher=hasher, os_user="operator")  # type: ignore[arg-type]
    made.add("suzuki", "manager", "鈴木 花子", GOOD)
    made.add("sato", "handler", "佐藤 一郎", OTHER_GOOD)
    made.add("kato", "handler", "", GOOD)
    made.disable("kato")
    audit.events.clear()
    hasher.verified.clear()
    return made


def _refusal(roster: Roster, name: str, password: str, **kw: object) -> CustodyRefusedError:
    with pytest.raises(CustodyRefusedError) as refused:
        roster.authenticate(name, password, action="open", batch=BATCH, **kw)  # type: ignore[arg-type]
    return refused.value


def _pipe(text: str) -> int:
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode() + b"\n")
    os.close(write_end)
    return read_end


def _args(*argv: str, approver: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_actor_arguments(parser, approver=approver)
    return parser.parse_args(argv)


# -- administration -------------------------------------------------------------------------------


def test_add_stores_argon2id_hash_and_audits_without_secret(
    store: StateStore, audit: Recorder
) -> None:
    """add hashes the password (argon2id) and audits staff_added with no password or hash."""
    roster = Roster(store, audit, os_user="operator")  # type: ignore[arg-type]
    member = roster.add("yamada", "handler", "  山田 太郎 ", GOOD)
    assert member.full_name == "山田 太郎" and member.active
    assert member.password_hash.startswith("$argon2id$")
    assert PasswordHasher().verify(member.password_hash, GOOD)
    assert audit.events == [
        ("staff_added", {"actor": "operator", "staff": "yamada", "role": "handler"})
    ]
    assert GOOD not in repr(audit.events) and "argon2" not in repr(audit.events)


@pytest.mark.parametrize(
    ("name", "role", "full_name", "password", "message"),
    [
        ("../x", "handler", "", GOOD, "invalid staff name"),
        ("A", "handler", "", GOOD, "invalid staff name"),
        ("ok-name", "boss", "", GOOD, "invalid staff role"),
        ("ok-name", "handler", "a\nb", GOOD, "full name"),
        ("ok-name", "handler", "x" * 101, GOOD, "full name"),
        ("ok-name", "handler", "", "tiny-secret", "shorter than 12"),
        ("ok-name", "handler", "", "long enough\x00but not", "control characters"),
    ],
)
def test_add_refuses_bad_fields(
    roster: Roster, name: str, role: str, full_name: str, password: str, message: str
) -> None:
    """Bad names, roles, full names and weak passwords are refused (exit 2), nothing stored."""
    with pytest.raises(InvalidStaffError, match=message) as refused:
        roster.add(name, role, full_name, password)
    assert refused.value.exit_code == 2 and isinstance(refused.value, InvalidAccountError)
    assert password not in str(refused.value)
    assert [m.name for m in roster.list()] == ["kato", "sato", "suzuki"]


def test_add_refuses_a_duplicate(roster: Roster) -> None:
    """A taken name (here a disabled member's) cannot be added again."""
    with pytest.raises(DuplicateStaffError):
        roster.add("kato", "manager", "", GOOD)


def test_passwd_replaces_the_password(roster: Roster, audit: Recorder) -> None:
    """After passwd the old password is refused and the new one accepted; audited, no secret."""
    roster.passwd("sato", "a brand new passphrase")
    assert _refusal(roster, "sato", OTHER_GOOD).reason == "bad_password"
    assert roster.authenticate("sato", "a brand new passphrase", action="open").name == "sato"
    assert ("staff_password_changed", {"actor": "operator", "staff": "sato"}) in audit.events
    with pytest.raises(InvalidStaffError):
        roster.passwd("sato", "short")
    with pytest.raises(UnknownStaffError):
        roster.passwd("ghost", "a brand new passphrase")


# -- authentication -------------------------------------------------------------------------------


def test_authenticate_returns_the_active_member(roster: Roster, audit: Recorder) -> None:
    """The right password for an active member of an allowed role: the member, nothing audited."""
    member = roster.authenticate("suzuki", GOOD, action="erase", roles=("manager",))
    assert (member.name, member.role) == ("suzuki", "manager")
    assert audit.events == []


@pytest.mark.parametrize(
    ("name", "password", "roles", "reason"),
    [
        ("nobody", GOOD, ("manager", "handler"), "unknown_staff"),
        ("../../etc/passwd", GOOD, ("manager", "handler"), "unknown_staff"),
        ("sato", GOOD, ("manager", "handler"), "bad_password"),
        ("kato", GOOD, ("manager", "handler"), "disabled"),
        ("sato", OTHER_GOOD, ("manager",), "wrong_role"),
    ],
)
def test_refusals_are_audited_then_raised(
    roster: Roster,
    audit: Recorder,
    name: str,
    password: str,
    roles: tuple[str, ...],
    reason: str,
) -> None:
    """Each refusal writes custody_refused (action, actor, reason, batch, os_user), no secret."""
    refused = _refusal(roster, name, password, roles=roles)
    assert (refused.reason, refused.action, refused.actor, refused.exit_code) == (
        reason, "open", name, 1,
    )  # fmt: skip
    assert audit.events == [
        (
            "custody_refused",
            {"action": "open", "actor": name, "reason": reason, "batch": BATCH,
             "os_user": "operator"},
        )
    ]  # fmt: skip
    assert password not in str(refused) and password not in repr(audit.events)


def test_disabled_member_with_wrong_password_learns_nothing_more(roster: Roster) -> None:
    """Without the right password a disabled member is refused as bad_password, not disabled."""
    refused = _refusal(roster, "kato", "not the password at all")
    assert refused.reason == "bad_password"
    assert "disabled" not in str(refused)


def test_unknown_name_costs_the_same_argon2_work(roster: Roster, hasher: CountingHasher) -> None:
    """An unknown name is verified once against a dummy hash with the real hashes' parameters."""
    _refusal(roster, "nobody", GOOD)
    _refusal(roster, "sato", GOOD)
    dummy, real = hasher.verified
    known = roster.get("sato")
    assert known is not None and real == known.password_hash
    assert dummy != real
    assert extract_parameters(dummy) == extract_parameters(real)


def test_hash_password_is_argon2id() -> None:
    """hash_password makes an argon2id hash that verifies the password."""
    hashed = hash_password(GOOD)
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, GOOD)


# -- command-line helpers -------------------------------------------------------------------------


def test_actor_arguments_need_as(capsys: pytest.CaptureFixture[str]) -> None:
    """--as is required; --approver too when the command needs an approval."""
    assert _args("--as", "sato").staff == "sato"
    with pytest.raises(SystemExit):
        _args()
    with pytest.raises(SystemExit):
        _args("--as", "sato", approver=True)
    args = _args(
        "--as", "sato", "--approver", "suzuki", "--approver-password-fd", "7", approver=True
    )
    assert (args.approver, args.approver_password_fd, args.password_fd) == ("suzuki", 7, None)
    capsys.readouterr()


def test_authenticate_actor_reads_the_password_fd(roster: Roster) -> None:
    """authenticate_actor takes the password from --password-fd."""
    fd = _pipe(OTHER_GOOD)
    try:
        member = authenticate_actor(
            _args("--as", "sato", "--password-fd", str(fd)), roster, action="print", batch=BATCH
        )
    finally:
        os.close(fd)
    assert member.name == "sato"


def test_no_terminal_and_no_fd_is_a_usage_error() -> None:
    """Without --password-fd and without a terminal the password is not asked for."""
    with pytest.raises(UsageError, match="no terminal") as refused:
        read_staff_password(None, "sato")
    assert refused.value.hint == "give --password-fd N"


def test_self_approval_refused_before_any_password(roster: Roster, audit: Recorder) -> None:
    """The handler approving their own erasure is refused (audited) without reading a password."""
    handler = roster.authenticate("suzuki", GOOD, action="erase")
    args = _args("--as", "suzuki", "--approver", "suzuki", approver=True)  # no fd, no terminal
    with pytest.raises(CustodyRefusedError) as refused:
        authenticate_approver(args, roster, handler, action="erase", batch=BATCH, allow_self=False)
    assert refused.value.reason == "self_approval"
    assert [(e, f["reason"]) for e, f in audit.events] == [("custody_refused", "self_approval")]


def test_self_approval_allowed_by_configuration_still_authenticates(roster: Roster) -> None:
    """With allow_self the same manager approves, after a second authentication."""
    handler = roster.authenticate("suzuki", GOOD, action="erase")
    for password, ok in ((GOOD, True), (OTHER_GOOD, False)):
        fd = _pipe(password)
        args = _args(
            "--as", "suzuki", "--approver", "suzuki", "--approver-password-fd", str(fd),
            approver=True,
        )  # fmt: skip
        try:
            if ok:
                approver = authenticate_approver(
                    args, roster, handler, action="erase", batch=BATCH, allow_self=True
                )
                assert approver.name == "suzuki"
            else:
                with pytest.raises(CustodyRefusedError, match="wrong staff name or password"):
                    authenticate_approver(
                        args, roster, handler, action="erase", batch=BATCH, allow_self=True
                    )
        finally:
            os.close(fd)


def test_approver_must_be_a_manager(roster: Roster, audit: Recorder) -> None:
    """A handler cannot approve an erasure: wrong_role, audited."""
    handler = roster.authenticate("suzuki", GOOD, action="erase")
    fd = _pipe(OTHER_GOOD)
    args = _args(
        "--as", "suzuki", "--approver", "sato", "--approver-password-fd", str(fd), approver=True
    )  # fmt: skip
    try:
        with pytest.raises(CustodyRefusedError) as refused:
            authenticate_approver(
                args, roster, handler, action="erase", batch=BATCH, allow_self=False
            )
    finally:
        os.close(fd)
    assert (refused.value.reason, refused.value.actor) == ("wrong_role", "sato")
    assert audit.events[-1][1]["reason"] == "wrong_role"
