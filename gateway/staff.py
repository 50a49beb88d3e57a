"""The print site's staff: 取扱責任者 (managers) and 取扱者 (handlers), and their authentication.

Every custody action (``open``, ``print-log add``, ``erase``) names its actor
with ``--as NAME`` and is authenticated with that person's own password (from a
terminal prompt or ``--password-fd N``), checked against an argon2id hash
(argon2-cffi's ``PasswordHasher`` defaults, as for login accounts). An erasure
also needs a manager's approval: a second authentication, by another person
unless ``[custody] allow_self_approval`` is set.

:meth:`Roster.authenticate` does the same argon2 work whether or not the name
exists (an unknown name is verified against a dummy hash) and only then looks
at the member: a wrong name or password says nothing about who exists, is
disabled or holds which role. Every refusal is written to the audit log as
``custody_refused`` (``action``, ``actor`` = the staff name given, ``reason``,
``batch``, ``os_user``) and raised as :class:`CustodyRefusedError`. The
reasons are ``unknown_staff``, ``bad_password``, ``disabled``, ``wrong_role``
and ``self_approval``.

Staff are never deleted, only disabled, so the roster (and the custody
records naming them) stays complete.
"""

from __future__ import annotations

import argparse
import builtins
import secrets
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.accounts import NAME_RE, InvalidAccountError, check_password_strength
from gateway.admin import operator
from gateway.audit import AuditLog
from gateway.errors import GatewayError, UsageError
from gateway.i18n import _
from gateway.prompt import read_secret
from gateway.state import (
    STAFF_ROLES,
    StaffMember,
    StateStore,
    UnknownStaffError,
)

ROLE_MANAGER = "manager"
"""取扱責任者: may handle batches and approve erasures."""
ROLE_HANDLER = "handler"
"""取扱者: may handle batches."""
ROLE_LABELS = {ROLE_MANAGER: "取扱責任者", ROLE_HANDLER: "取扱者"}
"""The Japanese term for each role, as printed on the roster."""

MAX_FULL_NAME_CHARS = 100

REASON_UNKNOWN_STAFF = "unknown_staff"
REASON_BAD_PASSWORD = "bad_password"  # noqa: S105 -- a reason code, not a password
REASON_DISABLED = "disabled"
REASON_WRONG_ROLE = "wrong_role"
REASON_SELF_APPROVAL = "self_approval"

PASSWORD_FD_OPTION = "--password-fd"  # noqa: S105 -- an option name
APPROVER_PASSWORD_FD_OPTION = "--approver-password-fd"  # noqa: S105 -- an option name


class InvalidStaffError(InvalidAccountError):
    """A staff name, role, full name or password is not acceptable (exit 2)."""


class CustodyRefusedError(GatewayError):
    """A custody action was refused: its actor did not authenticate or may not do it (exit 1)."""

    def __init__(self, message: str, *, reason: str, action: str, actor: str) -> None:
        """Keep the refusal's ``reason`` code, ``action`` and ``actor`` (staff name given)."""
        super().__init__(message, hint=_hint(reason))
        self.reason = reason
        self.action = action
        self.actor = actor


def _hint(reason: str) -> str | None:
    """What to do about a refusal, in the chosen language (None for other reasons)."""
    if reason in (REASON_UNKNOWN_STAFF, REASON_BAD_PASSWORD):
        return _("check --as and the password; see 'lgwan-gateway staff list'")
    if reason == REASON_DISABLED:
        return _("a disabled member cannot act; ask a manager")
    if reason == REASON_WRONG_ROLE:
        return _("only a manager (取扱責任者) may do this")
    if reason == REASON_SELF_APPROVAL:
        return _("another manager must approve (or set [custody] allow_self_approval)")
    return None


def hash_password(password: str) -> str:
    """An argon2id PHC hash of ``password`` (argon2-cffi's defaults)."""
    return PasswordHasher().hash(password)


def check_staff_name(name: str) -> str:
    """Return ``name`` if it is a valid staff name (the syntax of account names).

    Raises:
        InvalidStaffError: it is not.
    """
    if not NAME_RE.fullmatch(name):
        raise InvalidStaffError(
            _("invalid staff name {name}").format(name=repr(name[:40])),
            hint=_("2-32 characters: a-z first, then a-z 0-9 . _ -"),
        )
    return name


def check_staff_role(role: str) -> str:
    """Return ``role`` if it is ``manager`` or ``handler``.

    Raises:
        InvalidStaffError: it is not.
    """
    if role not in STAFF_ROLES:
        raise InvalidStaffError(
            _("invalid staff role {role}").format(role=repr(role[:40])),
            hint=_("use manager (取扱責任者) or handler (取扱者)"),
        )
    return role


def check_full_name(full_name: str) -> str:
    """Return ``full_name`` stripped if it is printable and at most MAX_FULL_NAME_CHARS long.

    Raises:
        InvalidStaffError: it is not.
    """
    text = full_name.strip()
    if len(text) > MAX_FULL_NAME_CHARS or not text.isprintable():
        raise InvalidStaffError(
            _("the full name must be printable text of at most {limit} characters").format(
                limit=MAX_FULL_NAME_CHARS
            )
        )
    return text


def _now() -> datetime:
    return datetime.now().astimezone()


class Roster:
    """The staff roster: administration and the authentication of custody actions."""

    def __init__(
        self,
        store: StateStore,
        audit: AuditLog | None,
        *,
        clock: Callable[[], datetime] = _now,
        hasher: PasswordHasher | None = None,
        os_user: str | None = None,
    ) -> None:
        """Bind the store and (when given) the audit log.

        Args:
            store: The state database.
            audit: Where changes and refusals are written; None writes nothing.
            clock: Returns the current aware time (injectable for tests).
            hasher: The argon2id hasher; argon2-cffi's defaults when None.
            os_user: The OS user recorded as ``os_user``/``actor``; the running one when None.
        """
        self._store = store
        self._audit = audit
        self._clock = clock
        self._hasher = hasher or PasswordHasher()
        self._os_user = os_user if os_user is not None else operator()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    # -- administration ---------------------------------------------------------------------

    def add(self, name: str, role: str, full_name: str, password: str) -> StaffMember:
        """Put a new, active member on the roster (audited ``staff_added``).

        Raises:
            InvalidStaffError: a field is not acceptable or the password is too weak.
            DuplicateStaffError: the name is taken (by an active or disabled member).
        """
        check_staff_name(name)
        check_staff_role(role)
        shown = check_full_name(full_name)
        _check_strength(password)
        now = self._clock()
        member = StaffMember(name, role, shown, self._hasher.hash(password), True, now, now)
        self._store.add_staff(member)
        self._emit("staff_added", actor=self._os_user, staff=name, role=role)
        return member

    def disable(self, name: str) -> StaffMember:
        """Take a member off active duty (audited ``staff_disabled``); the record stays.

        Raises:
            UnknownStaffError: no such member.
        """
        member = self._store.set_staff_active(name, False, self._clock())
        self._emit("staff_disabled", actor=self._os_user, staff=name, role=member.role)
        return member

    def passwd(self, name: str, password: str) -> StaffMember:
        """Replace a member's password (audited ``staff_password_changed``).

        Raises:
            InvalidStaffError: the password is too weak.
            UnknownStaffError: no such member.
        """
        _check_strength(password)
        if self._store.get_staff(name) is None:
            raise UnknownStaffError(_("no staff member {name}").format(name=repr(name)))
        self._store.set_staff_password_hash(name, self._hasher.hash(password), self._clock())
        member = self._store.get_staff(name)
        if member is None:  # pragma: no cover -- staff are never deleted
            raise UnknownStaffError(_("no staff member {name}").format(name=repr(name)))
        self._emit("staff_password_changed", actor=self._os_user, staff=name)
        return member

    def get(self, name: str) -> StaffMember | None:
        """The member called ``name``, or None."""
        return self._store.get_staff(name)

    def list(self) -> builtins.list[StaffMember]:
        """Every member, active or not, by name."""
        return self._store.list_staff()

    # -- authentication ---------------------------------------------------------------------

    def authenticate(
        self,
        name: str,
        password: str,
        *,
        action: str,
        batch: str | None = None,
        roles: tuple[str, ...] = STAFF_ROLES,
    ) -> StaffMember:
        """Check that ``name`` with ``password`` is an active member holding one of ``roles``.

        Args:
            name: The staff name given with ``--as`` (or ``--approver``).
            password: What they typed.
            action: What they want to do (``open``, ``print``, ``erase``, ``approve``…).
            batch: The batch concerned, for the audit record.
            roles: The roles allowed to do ``action``.

        Returns:
            The member.

        Raises:
            CustodyRefusedError: unknown name, wrong password, disabled or a role
                not in ``roles`` (audited ``custody_refused`` first).
        """
        member = self._store.get_staff(name) if NAME_RE.fullmatch(name) else None
        matched = self._verify(member.password_hash if member else self._dummy_hash, password)
        if member is None:
            self.refuse(REASON_UNKNOWN_STAFF, action=action, actor=name, batch=batch)
        elif not matched:
            self.refuse(REASON_BAD_PASSWORD, action=action, actor=name, batch=batch)
        elif not member.active:
            self.refuse(REASON_DISABLED, action=action, actor=name, batch=batch)
        elif member.role not in roles:
            self.refuse(REASON_WRONG_ROLE, action=action, actor=name, batch=batch)
        self._rehash_if_needed(member, password)
        return member

    def refuse(self, reason: str, *, action: str, actor: str, batch: str | None = None) -> NoReturn:
        """Audit ``custody_refused`` and raise :class:`CustodyRefusedError`.

        Raises:
            CustodyRefusedError: always.
        """
        fields: dict[str, object] = {"action": action, "actor": actor, "reason": reason}
        if batch is not None:
            fields["batch"] = batch
        self._emit("custody_refused", **fields, os_user=self._os_user)
        raise CustodyRefusedError(
            _message(reason, action, actor), reason=reason, action=action, actor=actor
        )

    # -- internals --------------------------------------------------------------------------

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _rehash_if_needed(self, member: StaffMember, password: str) -> None:
        try:
            stale = self._hasher.check_needs_rehash(member.password_hash)
        except InvalidHashError:
            return
        if stale:
            self._store.set_staff_password_hash(
                member.name, self._hasher.hash(password), self._clock()
            )

    def _emit(self, event: str, **fields: object) -> None:
        if self._audit is not None:
            self._audit.emit(event, **fields)


def _check_strength(password: str) -> None:
    try:
        check_password_strength(password)
    except InvalidAccountError as exc:
        raise InvalidStaffError(
            str(exc), hint=_("choose a passphrase of at least 12 characters")
        ) from None


def _message(reason: str, action: str, actor: str) -> str:
    if reason in (REASON_UNKNOWN_STAFF, REASON_BAD_PASSWORD):
        message = _("{action} refused: wrong staff name or password for {who}")
    elif reason == REASON_DISABLED:
        message = _("{action} refused: staff member {who} is disabled")
    elif reason == REASON_WRONG_ROLE:
        message = _("{action} refused: staff member {who} does not hold the role it needs")
    elif reason == REASON_SELF_APPROVAL:
        message = _("{action} refused: {who} may not approve their own erasure")
    else:
        message = _("{action} refused for {who}: {reason}")
    return message.format(action=action, who=repr(actor[:40]), reason=reason)


# -- command-line helpers ---------------------------------------------------------------------


def read_staff_password(fd: int | None, name: str) -> str:
    """A staff member's password from ``fd`` or, without one, a terminal prompt.

    Raises:
        UsageError: no terminal and no fd, or an unreadable fd.
    """
    return read_secret(fd, _("Password for {name}: ").format(name=name), option=PASSWORD_FD_OPTION)


def add_actor_arguments(parser: argparse.ArgumentParser, *, approver: bool = False) -> None:
    """Add ``--as NAME`` (required) and ``--password-fd N``; with ``approver`` also
    ``--approver NAME`` (required) and ``--approver-password-fd N``.
    """
    parser.add_argument(
        "--as", dest="staff", required=True, metavar="NAME",
        help=_("the staff member doing this (取扱者 or 取扱責任者)"),
    )  # fmt: skip
    parser.add_argument(
        PASSWORD_FD_OPTION, dest="password_fd", type=int, metavar="N",
        help=_("read their password from file descriptor N (else prompt)"),
    )  # fmt: skip
    if approver:
        parser.add_argument(
            "--approver", required=True, metavar="NAME",
            help=_("the approving manager (取扱責任者)"),
        )  # fmt: skip
        parser.add_argument(
            APPROVER_PASSWORD_FD_OPTION, dest="approver_password_fd", type=int, metavar="N",
            help=_("read the approver's password from file descriptor N (else prompt)"),
        )  # fmt: skip


def authenticate_actor(
    args: argparse.Namespace, roster: Roster, *, action: str, batch: str | None = None
) -> StaffMember:
    """Authenticate ``--as`` with the password from ``--password-fd`` or a prompt.

    Raises:
        UsageError: the password cannot be read.
        CustodyRefusedError: the authentication failed (audited).
    """
    name: str = args.staff
    password = read_staff_password(args.password_fd, name)
    return roster.authenticate(name, password, action=action, batch=batch)


def authenticate_approver(
    args: argparse.Namespace,
    roster: Roster,
    handler: StaffMember,
    *,
    action: str,
    batch: str | None,
    allow_self: bool,
) -> StaffMember:
    """Authenticate ``--approver``: an active manager, another person unless ``allow_self``.

    Raises:
        UsageError: ``--approver`` is missing or its password cannot be read.
        CustodyRefusedError: the approver is the handler (``self_approval``,
            refused before asking for a password), not an active manager, or
            the authentication failed (audited).
    """
    name: str | None = getattr(args, "approver", None)
    if not name:
        raise UsageError(_("an approving manager is needed"), hint=_("give --approver NAME"))
    if name == handler.name and not allow_self:
        roster.refuse(REASON_SELF_APPROVAL, action=action, actor=name, batch=batch)
    password = read_secret(
        getattr(args, "approver_password_fd", None),
        _("Password for {name} (approving): ").format(name=name),
        option=APPROVER_PASSWORD_FD_OPTION,
    )
    return roster.authenticate(name, password, action=action, batch=batch, roles=(ROLE_MANAGER,))
