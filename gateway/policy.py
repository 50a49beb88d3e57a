"""The drop service's virtual filesystem: what a client may name and do — pure.

Client paths ("virtual paths") arrive from outside and are hostile until
:func:`parse` has accepted them. A virtual path is one of::

    /                      the account's root
    /AREA                  an area the account's role sees
    /AREA/NAME             a file in it, NAME matching the area's pattern

A ward account sees ``/inbox`` (``<batch>.age.part`` uploads, ``<batch>.age``
completed ones) and ``/receipts`` (``<batch>.receipt.json``, the signed
status record ``<batch>.status.json`` and the print site's signed erasure
certificate ``<batch>.erasure.json``), read-only there; a forwarder
account (another gateway delivering to this print site) sees exactly what a
ward sees and may do the same. A contractor account sees ``/outbox``
(``<batch>.age`` and its ``<batch>.receipt.json``): it may read both, and
removing ``<batch>.age`` is its confirmation that the batch was pulled and
verified (:func:`check_pull_confirmation`). It may also create
``/outbox/<batch>.erasure.json`` once — its print site's erasure certificate,
checked when the file is closed (:func:`check_certificate_upload`) — and read
it back. Nothing else exists for them.

Refusals carry a short ``reason`` (snake_case) for the audit log. This module
does no I/O: it never sees a disk path (see :mod:`gateway.storage`).
"""

import enum
import re
from dataclasses import dataclass

from envelope.manifest import BATCH_ID_RE
from gateway.errors import GatewayError

ROLE_WARD = "ward"
ROLE_CONTRACTOR = "contractor"
ROLE_FORWARDER = "forwarder"
ROLES = (ROLE_WARD, ROLE_CONTRACTOR, ROLE_FORWARDER)
UPLOADER_ROLES = (ROLE_WARD, ROLE_FORWARDER)
"""Roles that upload into /inbox and read /receipts."""

AGE_SUFFIX = ".age"
PART_SUFFIX = ".age.part"
RECEIPT_SUFFIX = ".receipt.json"
STATUS_SUFFIX = ".status.json"
ERASURE_SUFFIX = ".erasure.json"

MAX_PATH_BYTES = 1024
"""Longest virtual path accepted, in UTF-8 bytes."""
MAX_NAME_BYTES = 255
"""Longest single path component accepted, in UTF-8 bytes."""

TENANT_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
"""Syntax of a tenant name (also a directory name in storage)."""


class Area(enum.Enum):
    """The top-level directories of the virtual filesystem."""

    INBOX = "inbox"
    RECEIPTS = "receipts"
    OUTBOX = "outbox"


class NameKind(enum.Enum):
    """What a file name in an area says the file is."""

    PART = "part"
    """``<batch>.age.part``: an upload in progress (resumable)."""
    COMPLETE = "complete"
    """``<batch>.age``: a completed upload (or a forwarded batch in /outbox)."""
    RECEIPT = "receipt"
    """``<batch>.receipt.json``: the gateway's signed receipt."""
    STATUS = "status"
    """``<batch>.status.json``: the gateway's signed statement of the batch's latest state."""
    ERASURE = "erasure"
    """``<batch>.erasure.json``: the print site's signed erasure certificate."""


AREAS_BY_ROLE: dict[str, tuple[Area, ...]] = {
    ROLE_WARD: (Area.INBOX, Area.RECEIPTS),
    ROLE_CONTRACTOR: (Area.OUTBOX,),
    ROLE_FORWARDER: (Area.INBOX, Area.RECEIPTS),
}
NAME_KINDS_BY_AREA: dict[Area, tuple[NameKind, ...]] = {
    Area.INBOX: (NameKind.PART, NameKind.COMPLETE),
    Area.RECEIPTS: (NameKind.RECEIPT, NameKind.STATUS, NameKind.ERASURE),
    Area.OUTBOX: (NameKind.COMPLETE, NameKind.RECEIPT, NameKind.ERASURE),
}
_SUFFIX_OF_KIND = {
    NameKind.PART: PART_SUFFIX,
    NameKind.COMPLETE: AGE_SUFFIX,
    NameKind.RECEIPT: RECEIPT_SUFFIX,
    NameKind.STATUS: STATUS_SUFFIX,
    NameKind.ERASURE: ERASURE_SUFFIX,
}

_CLASSIFY_ORDER = (
    NameKind.PART,
    NameKind.RECEIPT,
    NameKind.STATUS,
    NameKind.ERASURE,
    NameKind.COMPLETE,
)


class Op(enum.Enum):
    """Operations a client can ask for, as the policy sees them."""

    LIST = "list"
    STAT = "stat"
    READ = "read"
    WRITE = "write"
    REMOVE = "remove"
    SETSTAT = "setstat"


_UPLOADER_PERMISSIONS: dict[tuple[Area, NameKind], frozenset[Op]] = {
    (Area.INBOX, NameKind.PART): frozenset({Op.STAT, Op.WRITE, Op.REMOVE, Op.SETSTAT}),
    (Area.INBOX, NameKind.COMPLETE): frozenset({Op.STAT}),
    (Area.RECEIPTS, NameKind.RECEIPT): frozenset({Op.STAT, Op.READ}),
    (Area.RECEIPTS, NameKind.STATUS): frozenset({Op.STAT, Op.READ}),
    (Area.RECEIPTS, NameKind.ERASURE): frozenset({Op.STAT, Op.READ}),
}
_FILE_PERMISSIONS: dict[tuple[str, Area, NameKind], frozenset[Op]] = {
    **{(role, *key): ops for role in UPLOADER_ROLES for key, ops in _UPLOADER_PERMISSIONS.items()},
    (ROLE_CONTRACTOR, Area.OUTBOX, NameKind.COMPLETE): frozenset({Op.STAT, Op.READ, Op.REMOVE}),
    (ROLE_CONTRACTOR, Area.OUTBOX, NameKind.RECEIPT): frozenset({Op.STAT, Op.READ}),
    (ROLE_CONTRACTOR, Area.OUTBOX, NameKind.ERASURE): frozenset({Op.STAT, Op.READ, Op.WRITE}),
}
_DIRECTORY_OPS = frozenset({Op.LIST, Op.STAT})


class PolicyError(GatewayError):
    """A client request the policy refuses (SFTP permission denied).

    Attributes:
        reason: snake_case cause for the audit log, e.g. ``dot_dot``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VirtualPath:
    """A parsed, accepted client path: the root, an area, or a file in an area."""

    area: Area | None = None
    name: str | None = None

    @property
    def is_root(self) -> bool:
        """True for ``/``."""
        return self.area is None

    @property
    def is_file(self) -> bool:
        """True for ``/AREA/NAME``."""
        return self.name is not None

    @property
    def kind(self) -> NameKind | None:
        """What the file name says the file is (None for directories)."""
        return None if self.name is None else name_kind(self.name)

    @property
    def batch_id(self) -> str | None:
        """The batch id in the file name (None for directories)."""
        return None if self.name is None else batch_of(self.name)

    def __str__(self) -> str:
        if self.area is None:
            return "/"
        if self.name is None:
            return f"/{self.area.value}"
        return f"/{self.area.value}/{self.name}"


ROOT = VirtualPath()


def name_kind(name: str) -> NameKind | None:
    """Classify a file name by its pattern; None when it matches none."""
    for kind in _CLASSIFY_ORDER:
        suffix = _SUFFIX_OF_KIND[kind]
        if name.endswith(suffix) and BATCH_ID_RE.fullmatch(name[: -len(suffix)]):
            return kind
    return None


def batch_of(name: str) -> str | None:
    """The batch id of a name matching one of the patterns, else None."""
    kind = name_kind(name)
    return None if kind is None else name[: -len(_SUFFIX_OF_KIND[kind])]


def file_name(batch_id: str, kind: NameKind) -> str:
    """The file name of ``kind`` for a batch id (``<batch>.age`` and so on).

    Raises:
        PolicyError: ``batch_id`` is not a batch id.
    """
    if not isinstance(batch_id, str) or not BATCH_ID_RE.fullmatch(batch_id):
        raise PolicyError("bad_name", "not a batch id")
    return batch_id + _SUFFIX_OF_KIND[kind]


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant name.

    Raises:
        PolicyError: it is not.
    """
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise PolicyError("bad_tenant", "not a tenant name")
    return tenant


def parse(role: str, raw: str) -> VirtualPath:
    """Parse and accept a client-supplied path for an account of ``role``.

    Relative paths are taken relative to ``/``; one trailing slash is allowed
    on directories. Anything else unusual is refused rather than normalised.

    Args:
        role: ``ward`` or ``contractor``.
        raw: the path exactly as the client sent it.

    Returns:
        The accepted virtual path.

    Raises:
        PolicyError: NUL, control characters, backslashes, overlong paths or
            names, ``..``, ``.``, empty components (``//``), areas the role does
            not see, names not matching the area's pattern, deeper paths.
    """
    areas = AREAS_BY_ROLE.get(role)
    if areas is None:
        raise PolicyError("unknown_role", "account role not allowed")
    if not isinstance(raw, str):
        raise PolicyError("not_text", "path is not text")
    _check_characters(raw)
    if raw in ("", ".", "/", "/."):
        return ROOT
    parts = (raw[1:] if raw.startswith("/") else raw).split("/")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
        if len(parts) > 1:
            raise PolicyError("trailing_slash", "a file name cannot end with '/'")
    for part in parts:
        _check_component(part)
    if len(parts) > 2:
        raise PolicyError("too_deep", "no such directory")
    area = next((a for a in areas if a.value == parts[0]), None)
    if area is None:
        raise PolicyError("unknown_area", "no such directory for this account")
    if len(parts) == 1:
        return VirtualPath(area)
    name = parts[1]
    if name_kind(name) not in NAME_KINDS_BY_AREA[area]:
        raise PolicyError("bad_name", f"names in /{area.value} must be {_pattern(area)}")
    return VirtualPath(area, name)


def check(role: str, op: Op, path: VirtualPath) -> None:
    """Refuse ``op`` on ``path`` unless the role may do it.

    Raises:
        PolicyError: reason ``not_permitted``.
    """
    if not path.is_file:
        if op in _DIRECTORY_OPS:
            return
        raise PolicyError("not_permitted", f"{op.value} is not permitted on directories")
    kind = path.kind
    allowed = None
    if path.area is not None and kind is not None:
        allowed = _FILE_PERMISSIONS.get((role, path.area, kind))
    if not allowed or op not in allowed:
        raise PolicyError("not_permitted", f"{op.value} is not permitted on {path}")


def check_completion(role: str, source: VirtualPath, target: VirtualPath) -> str:
    """Accept a rename only as the completion of an upload; return its batch id.

    The one rename a ward (or forwarder) may do is ``/inbox/X.age.part`` → ``/inbox/X.age``.

    Raises:
        PolicyError: any other rename (reason ``not_permitted``).
    """
    if (
        role in UPLOADER_ROLES
        and source.area is Area.INBOX
        and target.area is Area.INBOX
        and source.kind is NameKind.PART
        and target.kind is NameKind.COMPLETE
        and source.batch_id is not None
        and source.batch_id == target.batch_id
    ):
        return source.batch_id
    raise PolicyError(
        "not_permitted", "the only rename allowed is /inbox/<batch>.age.part to /inbox/<batch>.age"
    )


def check_pull_confirmation(role: str, path: VirtualPath) -> str | None:
    """Whether removing ``path`` is a contractor's pull confirmation; its batch id if so.

    Returns:
        The batch id for a contractor removing ``/outbox/<batch>.age``; None for
        any other removal (judged by :func:`check` as usual).
    """
    if role == ROLE_CONTRACTOR and path.area is Area.OUTBOX and path.kind is NameKind.COMPLETE:
        return path.batch_id
    return None


def check_certificate_upload(role: str, path: VirtualPath) -> str | None:
    """Whether writing ``path`` is a contractor's upload of an erasure certificate.

    Returns:
        The batch id for a contractor writing ``/outbox/<batch>.erasure.json``
        (create-once, checked when closed); None for any other write (judged
        by :func:`check` as usual).
    """
    if role == ROLE_CONTRACTOR and path.area is Area.OUTBOX and path.kind is NameKind.ERASURE:
        return path.batch_id
    return None


def visible(area: Area, name: str) -> bool:
    """True when a stored file name belongs in a listing of ``area``."""
    return name_kind(name) in NAME_KINDS_BY_AREA[area]


def _check_characters(raw: str) -> None:
    if "\x00" in raw:
        raise PolicyError("nul_byte", "path contains NUL")
    if "\\" in raw:
        raise PolicyError("backslash", "path contains a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise PolicyError("control_character", "path contains a control character")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise PolicyError("not_utf8", "path is not UTF-8") from None
    if size > MAX_PATH_BYTES:
        raise PolicyError("overlong", "path is too long")


def _check_component(part: str) -> None:
    if part == "..":
        raise PolicyError("dot_dot", "'..' is not allowed")
    if part == ".":
        raise PolicyError("dot_component", "'.' is not allowed inside a path")
    if part == "":
        raise PolicyError("empty_component", "'//' is not allowed")
    if len(part.encode("utf-8")) > MAX_NAME_BYTES:
        raise PolicyError("overlong", "name is too long")


def _pattern(area: Area) -> str:
    return " or ".join(f"<batch-id>{_SUFFIX_OF_KIND[k]}" for k in NAME_KINDS_BY_AREA[area])
