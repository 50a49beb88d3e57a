"""Accounts: validation, argon2id password hashes, lockout, throttling and allow lists.

Passwords are stored only as argon2id hashes (argon2-cffi's ``PasswordHasher``
with its defaults, the RFC 9106 "low-memory" profile: time cost 3, 64 MiB,
parallelism 4, 16-byte salt, 32-byte tag; about 0.1 s per verify here). At most
``os.cpu_count()`` verifications run at once, so a flood of logins costs at most
that many times 64 MiB of memory.

:meth:`Accounts.check_password` is the password step of the two-step login. It
does the same work whether or not the account exists (an unknown name is
verified against a dummy hash) and refuses, in this order of reasons:

- ``throttled`` — the source address has had ``source_failures_per_minute``
  refusals in the current calendar minute: everything more from it is refused
  for the rest of that minute, without hashing;
- ``unknown_user``, ``source_refused`` (address outside a non-empty allow list),
  ``admin_locked``, ``locked`` (failed-login lockout in force), ``bad_password``.

Only ``bad_password`` counts towards the account's lockout (so neither an
outsider on a refused network nor a locked account's attacker extends or
causes a lock); every refusal counts towards the source throttle, and each
waits ``failure_delay_ms`` before returning. Allow lists hold networks in
strict CIDR form: ``10.0.0.0/24`` or a single address; ``10.0.0.5/24`` (host
bits set) is refused as a probable typo.

A ``forwarder`` account (another gateway delivering batches to this print site)
has no password: it logs in with its key alone, in one step
(:meth:`Accounts.check_key_login`), and only from its allow list, which must not
be empty. Its password step always refuses (``key_only``, not counted towards a
lockout, so nobody can lock a forwarder out by guessing).
"""

from __future__ import annotations

import builtins
import hmac
import ipaddress
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import keys
from custody.errors import KeyFormatError
from gateway.config import AuthSection
from gateway.errors import GatewayError
from gateway.i18n import _
from gateway.state import (
    ROLE_FORWARDER,
    ROLES,
    Account,
    StateStore,
    UnknownAccountError,
)

NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
"""Account names: lower-case ASCII, 2–32 characters."""
TENANT_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
"""Tenant names: lower-case ASCII, 2–32 characters."""

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024

PASSWORD_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # noqa: S105 -- an alphabet
"""Crockford's base32 (no I, L, O, U): 5 bits a character, unambiguous on paper."""
PASSWORD_GROUPS = 5
PASSWORD_GROUP_LEN = 4
PASSWORD_BITS = PASSWORD_GROUPS * PASSWORD_GROUP_LEN * 5
"""Entropy of a generated password: 100 bits."""

REASON_OK = "ok"
REASON_BAD_PASSWORD = "bad_password"  # noqa: S105 -- a reason code, not a password
REASON_UNKNOWN_USER = "unknown_user"
REASON_LOCKED = "locked"
REASON_ADMIN_LOCKED = "admin_locked"
REASON_SOURCE_REFUSED = "source_refused"
REASON_THROTTLED = "throttled"
REASON_KEY_ONLY = "key_only"
REASON_NOT_KEY_ONLY = "not_key_only"
REASON_WRONG_KEY = "wrong_key"

NO_PASSWORD_HASH = "!"  # noqa: S105 -- not a hash: matches no password (as in /etc/shadow)
"""The stored "hash" of an account without a password (forwarder): no password verifies."""

_STALE_SOURCES = 4096
"""Forget other minutes' source counters once this many addresses are tracked."""


class AccountError(GatewayError):
    """An account operation failed (exit 1)."""


class InvalidAccountError(AccountError):
    """A name, tenant, role, key, network or password given for an account is not acceptable."""

    exit_code = 2


@dataclass(frozen=True)
class AuthDecision:
    """The result of a password check.

    ``reason`` is one of the ``REASON_*`` codes. ``locked_until`` is set for a
    ``locked`` decision (when the lock ends) and for the ``bad_password``
    decision that has just locked the account.
    """

    ok: bool
    reason: str
    locked_until: datetime | None = None


def generate_password() -> str:
    """A fresh random password for a credential notice, e.g. ``7F3K-Q2AB-M9XD-4HTR-0WZC``.

    Returns:
        ``PASSWORD_GROUPS`` hyphen-joined groups of ``PASSWORD_GROUP_LEN``
        characters of :data:`PASSWORD_ALPHABET` (100 random bits), typed exactly as printed.
    """
    chars = [
        secrets.choice(PASSWORD_ALPHABET) for _i in range(PASSWORD_GROUPS * PASSWORD_GROUP_LEN)
    ]
    groups = (
        "".join(chars[i : i + PASSWORD_GROUP_LEN]) for i in range(0, len(chars), PASSWORD_GROUP_LEN)
    )
    return "-".join(groups)


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid account name.

    Raises:
        InvalidAccountError: it is not.
    """
    if not NAME_RE.fullmatch(name):
        raise InvalidAccountError(
            _("invalid account name {name}").format(name=repr(name)),
            hint=_("2-32 characters: a-z first, then a-z 0-9 . _ -"),
        )
    return name


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant name.

    Raises:
        InvalidAccountError: it is not.
    """
    if not TENANT_RE.fullmatch(tenant):
        raise InvalidAccountError(
            _("invalid tenant {tenant}").format(tenant=repr(tenant)),
            hint=_("2-32 characters: a-z first, then a-z 0-9 -"),
        )
    return tenant


def check_role(role: str) -> str:
    """Return ``role`` if it is ``ward``, ``contractor`` or ``forwarder``.

    Raises:
        InvalidAccountError: it is not.
    """
    if role not in ROLES:
        raise InvalidAccountError(
            _("invalid role {role}").format(role=repr(role)),
            hint=_("use ward, contractor or forwarder"),
        )
    return role


def check_key_only(role: str, allow: tuple[str, ...], password: str | None) -> None:
    """Check the password/allow-list rules of a role: a forwarder has an allow list, no password.

    Raises:
        InvalidAccountError: a forwarder without an allow list or with a
            password; a ward or contractor without a password.
    """
    if role == ROLE_FORWARDER:
        if not allow:
            raise InvalidAccountError(
                _("a forwarder account needs an allow list"),
                hint=_("give --allow CIDR with the forwarding gateway's address(es)"),
            )
        if password is not None:
            raise InvalidAccountError(
                _("a forwarder account has no password (it logs in with its key only)")
            )
    elif password is None:
        raise InvalidAccountError(_("a {role} account needs a password").format(role=role))


def parse_allow(allow: Iterable[str]) -> tuple[str, ...]:
    """Normalise an allow list of networks (``10.0.0.0/24``, ``192.0.2.7``, ``2001:db8::/32``).

    Returns:
        The networks in canonical form, duplicates removed, in the given order.

    Raises:
        InvalidAccountError: an entry is not a network, or has host bits set.
    """
    networks: list[str] = []
    for entry in allow:
        try:
            network = ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError:
            raise InvalidAccountError(
                _("invalid network {entry} in the allow list").format(entry=repr(entry)),
                hint=_("give a network address like 10.20.0.0/16 (no host bits) or one address"),
            ) from None
        if str(network) not in networks:
            networks.append(str(network))
    return tuple(networks)


def check_password_strength(password: str) -> str:
    """Return ``password`` if it is long enough to be a login password.

    Raises:
        InvalidAccountError: shorter than MIN_PASSWORD_LENGTH, longer than
            MAX_PASSWORD_LENGTH, or with control characters (the message never
            contains the password).
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidAccountError(
            _("the password is shorter than {count} characters").format(count=MIN_PASSWORD_LENGTH),
            hint=_("omit --password-fd to have a strong one generated"),
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidAccountError(
            _("the password is longer than {count} characters").format(count=MAX_PASSWORD_LENGTH)
        )
    if not password.isprintable():
        raise InvalidAccountError(_("the password contains control characters"))
    return password


def parse_public_key(text: str) -> tuple[str, str]:
    """Validate one OpenSSH ``ssh-ed25519`` line.

    Returns:
        The canonical line (without comment) and its ``SHA256:`` fingerprint.

    Raises:
        InvalidAccountError: not exactly one ssh-ed25519 public-key line.
    """
    try:
        public = keys.load_public_key(text)
    except KeyFormatError as exc:
        raise InvalidAccountError(
            _("not a usable public key: {reason}").format(reason=exc),
            hint=_("give the .pub file written by 'lgwan-client keygen' (one ssh-ed25519 line)"),
        ) from None
    return keys.public_key_to_openssh(public), keys.fingerprint(public)


def _now() -> datetime:
    return datetime.now().astimezone()


class Accounts:
    """Account administration and the password step of login; safe to share between threads."""

    def __init__(
        self,
        store: StateStore,
        auth: AuthSection,
        clock: Callable[[], datetime] = _now,
        *,
        hasher: PasswordHasher | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Bind the store and the ``[auth]`` settings.

        Args:
            store: The state database.
            auth: Lockout and throttling settings.
            clock: Returns the current aware time (injectable for tests).
            hasher: The argon2id hasher; argon2-cffi's defaults when None.
            sleep: Waits the failure delay (injectable for tests).
        """
        self._store = store
        self._auth = auth
        self._clock = clock
        self._hasher = hasher or PasswordHasher()
        self._sleep = sleep
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))
        self._verify_slots = threading.BoundedSemaphore(max(2, os.cpu_count() or 2))
        self._sources_lock = threading.Lock()
        self._sources: dict[str, tuple[datetime, int]] = {}

    # -- administration ---------------------------------------------------------------------

    def add(
        self,
        name: str,
        role: str,
        tenant: str,
        public_key_text: str,
        allow: Iterable[str],
        password: str | None,
    ) -> Account:
        """Create an account after validating every field.

        ``password`` is None for a ``forwarder`` (key-only, allow list required)
        and required for the other roles (see :func:`check_key_only`).

        Returns:
            The stored account.

        Raises:
            InvalidAccountError: a field is not acceptable.
            DuplicateAccountError: the name is taken.
            DuplicateKeyError: the public key belongs to another account.
        """
        check_name(name)
        check_role(role)
        check_tenant(tenant)
        line, key_fingerprint = parse_public_key(public_key_text)
        networks = parse_allow(allow)
        check_key_only(role, networks, password)
        if password is not None:
            check_password_strength(password)
        now = self._clock()
        account = Account(
            name=name,
            role=role,
            tenant=tenant,
            public_key=line,
            key_fingerprint=key_fingerprint,
            password_hash=NO_PASSWORD_HASH if password is None else self._hash(password),
            allow_cidrs=networks,
            admin_locked=False,
            locked_until=None,
            failed_logins=0,
            created_at=now,
            updated_at=now,
        )
        self._store.add_account(account)
        return account

    def get(self, name: str) -> Account | None:
        """The account called ``name``, or None."""
        return self._store.get_account(name)

    def list(self) -> builtins.list[Account]:
        """Every account, by name."""
        return self._store.list_accounts()

    def lock(self, name: str) -> Account:
        """Lock an account administratively (until :meth:`unlock`).

        Raises:
            UnknownAccountError: no such account.
        """
        return self._store.update_account(name, self._clock(), admin_locked=True)

    def unlock(self, name: str) -> Account:
        """Clear the administrative lock, any failed-login lockout and the failure count.

        Raises:
            UnknownAccountError: no such account.
        """
        return self._store.update_account(
            name, self._clock(), admin_locked=False, locked_until=None, failed_logins=0
        )

    def passwd(self, name: str, password: str) -> Account:
        """Replace the password; also clears a failed-login lockout (not an admin lock).

        Raises:
            InvalidAccountError: the password is too weak, or the account is a
                forwarder (which has none).
            UnknownAccountError: no such account.
        """
        check_password_strength(password)
        account = self._store.get_account(name)
        if account is None:
            raise UnknownAccountError(_("no account {name}").format(name=repr(name)))
        if account.role == ROLE_FORWARDER:
            raise InvalidAccountError(
                _("{name} is a forwarder account: it has no password (key only)").format(
                    name=repr(name)
                )
            )
        return self._store.update_account(
            name,
            self._clock(),
            password_hash=self._hash(password),
            locked_until=None,
            failed_logins=0,
        )

    def remove(self, name: str) -> Account:
        """Delete an account and return what it was.

        Raises:
            UnknownAccountError: no such account.
        """
        return self._store.remove_account(name)

    # -- login ------------------------------------------------------------------------------

    def check_password(
        self, name: str, password: str, source_ip: str, now: datetime | None = None
    ) -> AuthDecision:
        """The password step of a login from ``source_ip`` (see the module docstring).

        Never raises for a bad name or password; the decision carries the reason.
        """
        now = now or self._clock()
        if self._throttled(source_ip, now):
            return self._refuse(AuthDecision(False, REASON_THROTTLED))
        account = self._store.get_account(name) if NAME_RE.fullmatch(name) else None
        matched = self._verify(account.password_hash if account else self._dummy_hash, password)
        if account is None:
            decision = AuthDecision(False, REASON_UNKNOWN_USER)
        elif account.role == ROLE_FORWARDER:
            decision = AuthDecision(False, REASON_KEY_ONLY)
        elif not _source_allowed(source_ip, account.allow_cidrs):
            decision = AuthDecision(False, REASON_SOURCE_REFUSED)
        elif account.admin_locked:
            decision = AuthDecision(False, REASON_ADMIN_LOCKED)
        elif account.locked_at(now):
            decision = AuthDecision(False, REASON_LOCKED, account.locked_until)
        elif not matched:
            until = self._store.record_failure(
                name, now, self._auth.max_failures, timedelta(minutes=self._auth.lockout_minutes)
            )
            decision = AuthDecision(False, REASON_BAD_PASSWORD, until)
        else:
            if account.failed_logins or account.locked_until is not None:
                self._store.reset_failures(name, now)
            self._rehash_if_needed(account, password, now)
            return AuthDecision(True, REASON_OK)
        self._count_source_failure(source_ip, now)
        return self._refuse(decision)

    def check_key_login(
        self, name: str, key_fingerprint: str, source_ip: str, now: datetime | None = None
    ) -> AuthDecision:
        """The one login step of a key-only (``forwarder``) account from ``source_ip``.

        Refuses, in this order: ``throttled``, ``unknown_user``, ``not_key_only``
        (a ward or contractor: they log in with the password first),
        ``source_refused`` (outside the allow list — an empty list refuses too),
        ``admin_locked``, ``locked``, ``wrong_key``. Refusals count towards the
        source throttle (never towards a lockout) and wait the failure delay.
        Runs before the client's signature is verified: an ``ok`` decision means
        "this key may log in", not "logged in".
        """
        now = now or self._clock()
        if self._throttled(source_ip, now):
            return self._refuse(AuthDecision(False, REASON_THROTTLED))
        account = self._store.get_account(name) if NAME_RE.fullmatch(name) else None
        if account is None:
            decision = AuthDecision(False, REASON_UNKNOWN_USER)
        elif account.role != ROLE_FORWARDER:
            decision = AuthDecision(False, REASON_NOT_KEY_ONLY)
        elif not account.allow_cidrs or not _source_allowed(source_ip, account.allow_cidrs):
            decision = AuthDecision(False, REASON_SOURCE_REFUSED)
        elif account.admin_locked:
            decision = AuthDecision(False, REASON_ADMIN_LOCKED)
        elif account.locked_at(now):
            decision = AuthDecision(False, REASON_LOCKED, account.locked_until)
        elif not hmac.compare_digest(key_fingerprint.encode(), account.key_fingerprint.encode()):
            decision = AuthDecision(False, REASON_WRONG_KEY)
        else:
            return AuthDecision(True, REASON_OK)
        self._count_source_failure(source_ip, now)
        return self._refuse(decision)

    def check_public_key(self, name: str, key: Ed25519PublicKey | str) -> bool:
        """Whether ``key`` (a public key or its ``SHA256:`` fingerprint) is the account's.

        False as well for an unknown or administratively locked account, and for
        one whose failed-login lockout is in force: the key step fails closed.
        """
        account = self._store.get_account(name)
        if account is None or account.admin_locked or account.locked_at(self._clock()):
            return False
        if isinstance(key, str):
            offered = key
        else:
            try:
                offered = keys.fingerprint(key)
            except KeyFormatError:
                return False
        return hmac.compare_digest(offered.encode(), account.key_fingerprint.encode())

    # -- internals --------------------------------------------------------------------------

    def _hash(self, password: str) -> str:
        with self._verify_slots:
            return self._hasher.hash(password)

    def _verify(self, password_hash: str, password: str) -> bool:
        with self._verify_slots:
            try:
                return self._hasher.verify(password_hash, password)
            except (VerificationError, InvalidHashError):
                return False

    def _rehash_if_needed(self, account: Account, password: str, now: datetime) -> None:
        """Upgrade a hash made with older argon2 parameters after a successful login."""
        try:
            stale = self._hasher.check_needs_rehash(account.password_hash)
        except InvalidHashError:
            return
        if stale:
            try:
                self._store.update_account(account.name, now, password_hash=self._hash(password))
            except UnknownAccountError:
                return  # removed meanwhile; the next login fails anyway

    def _refuse(self, decision: AuthDecision) -> AuthDecision:
        if self._auth.failure_delay_ms:
            self._sleep(self._auth.failure_delay_ms / 1000)
        return decision

    def _throttled(self, source_ip: str, now: datetime) -> bool:
        minute = _minute(now)
        with self._sources_lock:
            seen = self._sources.get(source_ip)
        return (
            seen is not None
            and seen[0] == minute
            and seen[1] >= self._auth.source_failures_per_minute
        )

    def _count_source_failure(self, source_ip: str, now: datetime) -> None:
        minute = _minute(now)
        with self._sources_lock:
            seen = self._sources.get(source_ip)
            count = seen[1] + 1 if seen is not None and seen[0] == minute else 1
            self._sources[source_ip] = (minute, count)
            if len(self._sources) > _STALE_SOURCES:
                self._sources = {ip: v for ip, v in self._sources.items() if v[0] == minute}


def _minute(now: datetime) -> datetime:
    return now.replace(second=0, microsecond=0)


def _source_allowed(source_ip: str, allow: tuple[str, ...]) -> bool:
    """Whether ``source_ip`` lies in one of the ``allow`` networks (an empty list allows all)."""
    if not allow:
        return True
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in ipaddress.ip_network(network) for network in allow)
