"""Where each tenant's batches go: the ``[tenants.<name>]`` tables of ``gateway.toml``.

A tenant's ``forward`` is one of:

- ``file:///abs/path`` — a print-site spool directory (a mounted share);
- ``sftp://user@host:port/path`` — the print site's SFTP service (another
  ``lgwan-gateway serve``), key authentication, host key and receipt key pinned;
- ``pull`` — the batch waits in the tenant's ``/outbox`` for the contractor's
  ``lgwan-gateway pull``;
- empty — nothing is forwarded: batches stay RECEIVED and an incident is raised.

``receipt_key`` pins the print site's Ed25519 signing key (``ssh-ed25519 AAAA…``):
for ``sftp://`` it is required (it signs the print site's receipts); for
``file://`` and ``pull`` it is optional and verifies the print site's erasure
certificates (:mod:`gateway.certificate_intake`) — without it those batches
never become ERASED at this gateway. ``user add --client-config-out`` copies it
into the ward's ``[printsite] signing_key``.

Any other scheme is a configuration error at start-up (exit 78).
"""

import enum
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from urllib.parse import unquote, urlsplit

from gateway.i18n import _

TENANT_RE = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_USER_RE = re.compile(r"^[a-z][a-z0-9._-]{1,31}$")
DEFAULT_SFTP_PORT = 22


class RouteKind(enum.Enum):
    """How a tenant's batches leave the gateway."""

    NONE = "none"
    FILE = "file"
    SFTP = "sftp"
    PULL = "pull"


@dataclass(frozen=True)
class TenantSection:
    """One ``[tenants.<name>]`` table; every key optional."""

    forward: str = ""
    forward_key: str = "keys/forward_ed25519"
    host_key: str = ""
    receipt_key: str = ""
    """The print site's signing key (receipts for sftp://; erasure certificates for all)."""
    max_attempts: int = 12
    max_age_minutes: int = 120


@dataclass(frozen=True)
class Route:
    """A parsed ``forward`` value."""

    kind: RouteKind
    path: str = ""
    user: str = ""
    host: str = ""
    port: int = DEFAULT_SFTP_PORT

    def describe(self) -> str:
        """A printable form without secrets (there are none in a route)."""
        if self.kind is RouteKind.FILE:
            return f"file://{self.path}"
        if self.kind is RouteKind.SFTP:
            return f"sftp://{self.user}@{self.host}:{self.port}{self.path}"
        return str(self.kind.value)


def parse_route(value: str) -> Route:
    """Parse a ``forward`` value.

    Raises:
        ValueError: an unknown scheme or a malformed URL (the message says which part).
    """
    if value == "":
        return Route(RouteKind.NONE)
    if value == "pull":
        return Route(RouteKind.PULL)
    parts = urlsplit(value)
    if parts.query or parts.fragment:
        raise ValueError(_("a forward URL takes no query or fragment"))
    if parts.scheme == "file":
        path = unquote(parts.path)
        if parts.netloc not in ("", "localhost") or not PurePosixPath(path).is_absolute():
            raise ValueError(_("file:// needs an absolute local path, e.g. file:///srv/spool"))
        if ".." in PurePosixPath(path).parts:
            raise ValueError(_("file:// path must not contain '..'"))
        return Route(RouteKind.FILE, path=path)
    if parts.scheme == "sftp":
        user, host = parts.username or "", parts.hostname or ""
        if parts.password is not None:
            raise ValueError(_("sftp:// must not carry a password (key authentication only)"))
        if not _USER_RE.fullmatch(user) or not host:
            raise ValueError(_("sftp:// needs user@host, e.g. sftp://printsite@10.0.0.5:22/inbox"))
        try:
            port = parts.port or DEFAULT_SFTP_PORT
        except ValueError:
            raise ValueError(_("sftp:// port must be 1-65535")) from None
        return Route(
            RouteKind.SFTP, path=unquote(parts.path) or "/", user=user, host=host, port=port
        )
    raise ValueError(
        _("unknown forward scheme {scheme} (file://, sftp:// or pull)").format(
            scheme=repr(parts.scheme or value)
        )
    )
