"""Tests for gateway.accounts: validation, argon2id hashes, lockout, throttling, allow lists.

A real SQLite store and the real argon2-cffi hasher (with small parameters for
speed, except where the defaults are the point), an injected clock and sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher

from custody import keys
from gateway.accounts import (
    NO_PASSWORD_HASH,
    PASSWORD_ALPHABET,
    PASSWORD_BITS,
    REASON_ADMIN_LOCKED,
    REASON_BAD_PASSWORD,
    REASON_KEY_ONLY,
    REASON_LOCKED,
    REASON_NOT_KEY_ONLY,
    REASON_OK,
    REASON_SOURCE_REFUSED,
    REASON_THROTTLED,
    REASON_UNKNOWN_USER,
    REASON_WRONG_KEY,
    Accounts,
    AuthDecision,
    InvalidAccountError,
    generate_password,
)
from gateway.config import AuthSection
from gateway.state import DuplicateAccountError, DuplicateKeyError, StateStore

T0 = datetime(2026, 7, 15, 1, 0, 5, tzinfo=UTC)
PASSWORD = "correct-horse-battery"
WARD_KEY = keys.generate_private_key().public_key()
WARD_LINE = keys.public_key_to_openssh(WARD_KEY, "ward@pc")
OTHER_KEY = keys.generate_private_key().public_key()
ALLOWED_IP = "10.1.2.3"


class CountingHasher(PasswordHasher):
    """The real argon2id hasher, small parameters, counting verify calls."""

    def __init__(self, time_cost: int = 1) -> None:
        super().__init__(time_cost=time_cost, memory_cost=1024, parallelism=1)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # type: ignore[override]
        self.verifies += 1
        return super().verify(hash, password)


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Env:
    """An Accounts under test with its clock, hasher and recorded sleeps."""

    def __init__(self, store: StateStore, auth: AuthSection) -> None:
        self.store = store
        self.clock = Clock()
        self.hasher = CountingHasher()
        self.sleeps: list[float] = []
        self.accounts = Accounts(
            store, auth, self.clock, hasher=self.hasher, sleep=self.sleeps.append
        )

    def add(self, name: str = "ward-a", allow: tuple[str, ...] = (), key: str = WARD_LINE) -> None:
        self.accounts.add(name, "ward", "shinjuku", key, list(allow), PASSWORD)

    def login(self, password: str, name: str = "ward-a", ip: str = ALLOWED_IP) -> AuthDecision:
        return self.accounts.check_password(name, password, ip, self.clock.now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    """A real SQLite store."""
    opened = StateStore.open(tmp_path / "state.db")
    yield opened
    opened.close()


@pytest.fixture
def env(store: StateStore) -> Env:
    """Accounts with the default [auth] settings and no real delay."""
    return Env(store, AuthSection())


def test_generated_password_shape_and_entropy() -> None:
    """Generated passwords are 5 hyphenated groups of 4 unambiguous characters, ≥ 100 bits."""
    seen = {generate_password() for _ in range(200)}
    assert len(seen) == 200
    assert PASSWORD_BITS >= 100
    for password in seen:
        groups = password.split("-")
        assert [len(g) for g in groups] == [4] * 5
        assert set("".join(groups)) <= set(PASSWORD_ALPHABET)
    assert not set("ILOU") & set(PASSWORD_ALPHABET)


def test_add_stores_only_an_argon2id_hash(env: Env) -> None:
    """add() stores an argon2id hash that verifies, never the password itself."""
    env.add()
    account = env.store.get_account("ward-a")
    assert account is not None
    assert account.password_hash.startswith("$argon2id$")
    assert PASSWORD not in account.password_hash
    assert PasswordHasher().verify(account.password_hash, PASSWORD)
    assert account.public_key == keys.public_key_to_openssh(WARD_KEY)
    assert account.key_fingerprint == keys.fingerprint(WARD_KEY)


def test_default_hasher_is_argon2id_rfc9106_low_memory(store: StateStore) -> None:
    """Without an injected hasher the argon2-cffi defaults (64 MiB, t=3, p=4) are used."""
    accounts = Accounts(store, AuthSection())
    accounts.add("ward-a", "ward", "shinjuku", WARD_LINE, [], PASSWORD)
    account = store.get_account("ward-a")
    assert account is not None
    assert account.password_hash.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "Ward", "account name"),
        ("name", "a", "account name"),
        ("name", "../etc", "account name"),
        ("name", "x" * 33, "account name"),
        ("name", "ward\x00", "account name"),
        ("tenant", "shin_juku", "tenant"),
        ("tenant", "", "tenant"),
        ("role", "admin", "role"),
        ("allow", ["10.0.0.5/24"], "network"),
        ("allow", ["not-an-ip"], "network"),
        ("key", "ssh-rsa AAAAB3NzaC1yc2E=", "public key"),
        ("key", WARD_LINE + "\n" + keys.public_key_to_openssh(OTHER_KEY), "public key"),
        ("password", "short", "shorter"),
        ("password", "a-long-password\x07bell", "control"),
    ],
)
def test_add_refuses_invalid_fields(env: Env, field: str, value: object, message: str) -> None:
    """Each invalid field is refused with a usage-class error, and nothing is stored."""
    args: dict[str, Any] = {
        "name": "ward-a",
        "role": "ward",
        "tenant": "shinjuku",
        "key": WARD_LINE,
        "allow": [],
        "password": PASSWORD,
        field: value,
    }
    with pytest.raises(InvalidAccountError, match=message) as caught:
        env.accounts.add(
            args["name"],
            args["role"],
            args["tenant"],
            args["key"],
            args["allow"],
            args["password"],
        )
    assert caught.value.exit_code == 2
    assert "a-long-password" not in str(caught.value)
    assert env.store.list_accounts() == []


def test_allow_list_is_normalised(env: Env) -> None:
    """Single addresses become /32 or /128 networks; duplicates are dropped."""
    env.add(allow=("192.0.2.7", "192.0.2.7/32", "2001:db8::/32"))
    account = env.store.get_account("ward-a")
    assert account is not None
    assert account.allow_cidrs == ("192.0.2.7/32", "2001:db8::/32")


def test_duplicates_refused(env: Env) -> None:
    """A taken name or a key already used by another account is refused."""
    env.add()
    with pytest.raises(DuplicateAccountError):
        env.add(key=keys.public_key_to_openssh(OTHER_KEY))
    with pytest.raises(DuplicateKeyError):
        env.add(name="ward-b")


def test_good_and_bad_password(env: Env) -> None:
    """The right password passes, a wrong one is bad_password and waits the failure delay."""
    env.add()
    assert env.login(PASSWORD) == AuthDecision(True, REASON_OK)
    assert env.sleeps == []
    assert env.login("wrong-password-1") == AuthDecision(False, REASON_BAD_PASSWORD)
    assert env.sleeps == [0.3]


def test_unknown_user_costs_one_verify_like_a_known_one(env: Env) -> None:
    """Unknown (even malformed) names are verified against a dummy hash: same work."""
    env.add()
    before = env.hasher.verifies
    assert env.login("wrong-password-1").reason == REASON_BAD_PASSWORD
    known = env.hasher.verifies - before
    for name in ("nobody", "../../etc/passwd"):
        before = env.hasher.verifies
        assert env.login(PASSWORD, name=name) == AuthDecision(False, REASON_UNKNOWN_USER)
        assert env.hasher.verifies - before == known == 1


def test_five_failures_lock_for_fifteen_minutes(env: Env) -> None:
    """The 5th failure locks the account; even the right password is refused until it expires."""
    env.add()
    decisions = [env.login(f"wrong-password-{i}") for i in range(5)]
    assert [d.reason for d in decisions] == [REASON_BAD_PASSWORD] * 5
    until = T0 + timedelta(minutes=15)
    assert [d.locked_until for d in decisions] == [None, None, None, None, until]
    env.clock.now = until - timedelta(seconds=1)
    assert env.login(PASSWORD) == AuthDecision(False, REASON_LOCKED, until)
    env.clock.now = until
    assert env.login(PASSWORD).ok


def test_lockout_counter_restarts_after_expiry_and_success(env: Env) -> None:
    """A success clears the count, so failures must again reach 5 to lock."""
    env.add()
    for i in range(4):
        env.login(f"wrong-password-{i}")
    assert env.login(PASSWORD).ok
    account = env.store.get_account("ward-a")
    assert account is not None and account.failed_logins == 0
    assert all(env.login(f"again-wrong-{i}").locked_until is None for i in range(4))


def test_locked_attempts_do_not_extend_the_lock(env: Env) -> None:
    """Attempts during a lockout neither count nor move the lock's end."""
    env.add()
    for i in range(5):
        env.login(f"wrong-password-{i}")
    env.clock.now = T0 + timedelta(minutes=10)
    assert env.login("wrong-password-x").reason == REASON_LOCKED
    account = env.store.get_account("ward-a")
    assert account is not None
    assert account.locked_until == T0 + timedelta(minutes=15)
    assert account.failed_logins == 0


def test_admin_lock_refuses_until_unlock(env: Env) -> None:
    """An admin-locked account is refused with the right password; unlock restores it."""
    env.add()
    env.accounts.lock("ward-a")
    assert env.login(PASSWORD) == AuthDecision(False, REASON_ADMIN_LOCKED)
    env.accounts.unlock("ward-a")
    assert env.login(PASSWORD).ok


def test_unlock_clears_lockout_and_failures(env: Env) -> None:
    """unlock lifts a failed-login lockout and zeroes the failure count."""
    env.add()
    for i in range(5):
        env.login(f"wrong-password-{i}")
    env.login("wrong-password-5")
    env.accounts.unlock("ward-a")
    account = env.store.get_account("ward-a")
    assert account is not None
    assert (account.locked_until, account.failed_logins, account.admin_locked) == (None, 0, False)
    assert env.login(PASSWORD).ok


def test_allow_list_refuses_other_sources(env: Env) -> None:
    """Outside the allow list even the right password is refused, without counting a failure."""
    env.add(allow=("10.0.0.0/8",))
    for _ in range(6):
        assert env.login(PASSWORD, ip="192.0.2.1").reason == REASON_SOURCE_REFUSED
    assert env.login(PASSWORD, ip="not-an-address").reason == REASON_SOURCE_REFUSED
    assert env.login(PASSWORD, ip="10.200.0.1").ok
    assert env.login(PASSWORD, ip="::ffff:10.1.2.3").ok


def test_source_throttle_refuses_for_rest_of_minute(store: StateStore) -> None:
    """After N refusals from one address in a minute, all of its attempts are refused, unhashed."""
    env = Env(store, AuthSection(source_failures_per_minute=3))
    env.add()
    for name in ("nobody", "ward-a", "nobody"):
        assert not env.login("wrong-password-1", name=name).ok
    before = env.hasher.verifies
    assert env.login(PASSWORD).reason == REASON_THROTTLED
    assert env.hasher.verifies == before
    assert env.login(PASSWORD, ip="10.9.9.9").ok
    env.clock.now = T0.replace(second=59)
    assert env.login(PASSWORD).reason == REASON_THROTTLED
    env.clock.now = T0.replace(second=0) + timedelta(minutes=1)
    assert env.login(PASSWORD).ok


def test_passwd_replaces_password_and_lifts_lockout(env: Env) -> None:
    """After passwd the old password fails, the new one works even after a lockout."""
    env.add()
    for i in range(5):
        env.login(f"wrong-password-{i}")
    env.accounts.passwd("ward-a", "a-brand-new-password")
    assert env.login("a-brand-new-password").ok
    assert env.login(PASSWORD).reason == REASON_BAD_PASSWORD
    with pytest.raises(InvalidAccountError):
        env.accounts.passwd("ward-a", "short")


def test_check_public_key(env: Env) -> None:
    """Only the account's own key (object or fingerprint) matches, and never when locked."""
    env.add()
    assert env.accounts.check_public_key("ward-a", WARD_KEY)
    assert env.accounts.check_public_key("ward-a", keys.fingerprint(WARD_KEY))
    assert not env.accounts.check_public_key("ward-a", OTHER_KEY)
    assert not env.accounts.check_public_key("nobody", WARD_KEY)
    env.accounts.lock("ward-a")
    assert not env.accounts.check_public_key("ward-a", WARD_KEY)


def test_successful_login_upgrades_stale_hash(store: StateStore) -> None:
    """A hash made with weaker parameters is replaced on the next successful login."""
    Env(store, AuthSection()).add()
    stronger = Env(store, AuthSection())
    stronger.accounts = Accounts(
        store, AuthSection(), stronger.clock, hasher=CountingHasher(time_cost=2)
    )
    assert stronger.login(PASSWORD).ok
    account = store.get_account("ward-a")
    assert account is not None
    assert ",t=2," in account.password_hash


def test_concurrent_failures_are_all_counted(store: StateStore) -> None:
    """Failed logins from many threads at once each count exactly once."""
    env = Env(store, AuthSection(max_failures=1000, source_failures_per_minute=1000))
    env.add()

    def attempt() -> None:
        for _ in range(5):
            env.login("wrong-password-1")

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    account = store.get_account("ward-a")
    assert account is not None
    assert account.failed_logins == 40


# -- forwarder accounts (key only) ----------------------------------------------------------------

FORWARDER_KEY = keys.generate_private_key().public_key()
FORWARDER_LINE = keys.public_key_to_openssh(FORWARDER_KEY)


def test_forwarder_needs_an_allow_list_and_no_password(env: Env) -> None:
    """A forwarder is refused without an allow list or with a password; its hash matches nothing."""
    add = env.accounts.add
    with pytest.raises(InvalidAccountError, match="allow list"):
        add("relay", "forwarder", "shinjuku", FORWARDER_LINE, [], None)
    with pytest.raises(InvalidAccountError, match="no password"):
        add("relay", "forwarder", "shinjuku", FORWARDER_LINE, ["10.0.0.0/8"], PASSWORD)
    with pytest.raises(InvalidAccountError, match="needs a password"):
        add("ward-b", "ward", "shinjuku", WARD_LINE, [], None)
    account = add("relay", "forwarder", "shinjuku", FORWARDER_LINE, ["10.0.0.0/8"], None)
    assert account.password_hash == NO_PASSWORD_HASH
    with pytest.raises(InvalidAccountError):
        env.accounts.passwd("relay", "a-brand-new-password")


def test_forwarder_password_step_always_refuses_without_lockout(env: Env) -> None:
    """Password guesses at a forwarder are refused as key_only and never lock it out."""
    env.accounts.add("relay", "forwarder", "shinjuku", FORWARDER_LINE, ["10.0.0.0/8"], None)
    for password in ("!", "", PASSWORD, NO_PASSWORD_HASH, "x" * 20, "y" * 20):
        assert env.login(password, name="relay").reason == REASON_KEY_ONLY
    account = env.accounts.get("relay")
    assert account is not None and (account.failed_logins, account.locked_until) == (0, None)


def test_forwarder_key_login_rules(env: Env) -> None:
    """Key-only login: its key, from its allow list, not locked; a ward cannot log in this way."""
    env.accounts.add("relay", "forwarder", "shinjuku", FORWARDER_LINE, ["10.0.0.0/8"], None)
    env.add()
    good = keys.fingerprint(FORWARDER_KEY)

    def key_login(name: str, fingerprint: str, ip: str = ALLOWED_IP) -> str:
        return env.accounts.check_key_login(name, fingerprint, ip, env.clock.now).reason

    assert key_login("relay", good) == REASON_OK
    assert key_login("relay", keys.fingerprint(OTHER_KEY)) == REASON_WRONG_KEY
    assert key_login("relay", good, ip="192.0.2.1") == REASON_SOURCE_REFUSED
    assert key_login("ward-a", keys.fingerprint(WARD_KEY)) == REASON_NOT_KEY_ONLY
    assert key_login("nobody", good) == REASON_UNKNOWN_USER
    env.accounts.lock("relay")
    assert key_login("relay", good) == REASON_ADMIN_LOCKED
    assert env.sleeps  # refusals wait the failure delay
