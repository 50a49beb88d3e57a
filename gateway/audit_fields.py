"""What may go into an audit event: fixed event names, field rules, no secrets.

Events are snake_case past-tense facts (:data:`EVENTS` lists the fixed ones;
other snake_case names are accepted so later features can add theirs). Fields
are snake_case names with JSON values; units go in the name (``size_bytes``,
``elapsed_ms``). The common fields, in the order exports show them, are
:data:`COMMON_FIELDS`: ``user`` (account name), ``tenant``, ``source``
(``ip:port`` of the peer), ``session`` (id), ``batch`` (batch id), ``path``
(the client's virtual path), ``reason`` (why something was refused) and
``actor`` (the operator's OS user for administrative actions).

:func:`clean_fields` is the one gate every event passes. It refuses, as a
programming error (ValueError), any field that could hold a secret: a name
that is, starts with or ends with one of :data:`SECRET_NAMES` on a ``_``
boundary (``password``, ``new_password``, ``password_hash``, ``private_key``),
at any nesting depth, and any text carrying a PEM private key. It normalises
what callers naturally have at hand — enums, aware datetimes, paths, IP
addresses, tuples — and refuses floats (their text is not canonical; log
integer units) and other types (TypeError). Hostile text (a client's version
string, an SFTP path) cannot break the log: lone surrogates are escaped and
strings longer than :data:`MAX_TEXT_CHARS` are cut, saying how much was cut.
"""

import enum
import ipaddress
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import PurePath

from custody.canonical import MAX_SAFE_INTEGER

EVENTS = frozenset(
    {
        "connection_opened",
        "connection_closed",
        "connection_refused",
        "login_failed",
        "login_succeeded",
        "account_locked_out",
        "session_opened",
        "session_closed",
        "channel_refused",
        "sftp_opened",
        "sftp_closed",
        "sftp_renamed",
        "sftp_removed",
        "sftp_listed",
        "sftp_stat",
        "sftp_refused",
        "upload_completed",
        "receipt_signed",
        "upload_rejected",
        "account_added",
        "account_locked",
        "account_unlocked",
        "account_password_changed",
        "account_removed",
        "gateway_initialised",
        "server_started",
        "server_stopped",
        "incident_raised",
        "audit_repaired",
        "staff_added",
        "staff_disabled",
        "staff_password_changed",
        "custody_refused",
        "batch_opened",
        "print_logged",
        "erasure_started",
        "erasure_completed",
        "erasure_certificate_received",
        "erasure_certificate_rejected",
        "certificate_uploaded",
    }
)
"""The fixed event names of the drop service."""

COMMON_FIELDS = ("user", "tenant", "source", "session", "batch", "path", "reason", "actor")
"""Fields many events share, in the order exports and tables show them."""

SECRET_NAMES = frozenset({"password", "passwd", "passphrase", "secret", "private_key"})
"""Field-name words that are never logged (see :func:`is_secret_name`)."""

CHAIN_FIELDS = frozenset({"seq", "prev", "time", "hash"})
"""Set by the hash chain; callers may not use them."""

MAX_TEXT_CHARS = 1024
"""Longest string value kept whole; longer ones are cut."""

MAX_DEPTH = 8
"""Deepest nesting of lists and objects inside one field."""

NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
"""Syntax of event and field names: snake_case ASCII, at most 64 characters."""

_PEM_PRIVATE = "PRIVATE KEY-----"


def is_secret_name(name: str) -> bool:
    """Tell whether a field name could carry a secret.

    Args:
        name: A field name (case and ``-``/``_`` are ignored).

    Returns:
        True when the name is one of SECRET_NAMES or starts or ends with one
        on a ``_`` boundary, e.g. ``new_password`` or ``password_hash``.
    """
    norm = name.lower().replace("-", "_")
    return any(
        norm == word or norm.startswith(word + "_") or norm.endswith("_" + word)
        for word in SECRET_NAMES
    )


def check_event_name(event: object) -> str:
    """Check an event name's syntax.

    Raises:
        ValueError: Not a snake_case name.
    """
    if not isinstance(event, str) or NAME_RE.fullmatch(event) is None:
        raise ValueError(f"audit event name {_short(event)} is not snake_case")
    return event


def clean_fields(fields: Mapping[str, object]) -> dict[str, object]:
    """Check and normalise an event's fields.

    Args:
        fields: Field names and values as the caller gave them.

    Returns:
        New fields holding only canonical JSON values.

    Raises:
        ValueError: A name that is not snake_case, a chain field, a secret
            name (at any depth), PEM private-key text, a naive datetime, an
            integer outside ±(2**53 - 1) or nesting deeper than MAX_DEPTH.
        TypeError: A float, bytes, or another type with no JSON form.
    """
    cleaned: dict[str, object] = {}
    for name, value in fields.items():
        if isinstance(name, str) and is_secret_name(name):
            raise ValueError(f"refusing to write secret field {_short(name)} to the audit log")
        if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
            raise ValueError(f"audit field name {_short(name)} is not snake_case")
        if name in CHAIN_FIELDS or name == "event":
            raise ValueError(f"audit field name {name!r} is reserved")
        cleaned[name] = _clean(value, name, 1)
    return cleaned


def _clean(value: object, where: str, depth: int) -> object:
    """Normalise one value; ``where`` names it in errors (never the value itself)."""
    if depth > MAX_DEPTH:
        raise ValueError(f"audit field {where}: nested deeper than {MAX_DEPTH}")
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValueError(f"audit field {where}: integer outside ±(2**53 - 1)")
        return int(value)
    if isinstance(value, str):
        return _clean_text(value, where)
    if isinstance(value, float):
        raise TypeError(f"audit field {where}: floats are not logged; use integer units (…_ms)")
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise ValueError(f"audit field {where}: datetime without a UTC offset")
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, PurePath | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return _clean_text(str(value), where)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return _clean_text(str(value), where)
    if isinstance(value, Mapping):
        out: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit field {where}: object keys must be str")
            if is_secret_name(key):
                raise ValueError(f"refusing to write secret field {where}.{key} to the audit log")
            out[_clean_text(key, where)] = _clean(item, f"{where}.{key}", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_clean(item, f"{where}[]", depth + 1) for item in value]
    raise TypeError(f"audit field {where}: {type(value).__name__} has no JSON form")


def _clean_text(text: str, where: str) -> str:
    if _PEM_PRIVATE in text:
        raise ValueError(f"refusing to write a private key in audit field {where}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) > MAX_TEXT_CHARS:
        cut = len(text) - MAX_TEXT_CHARS
        text = f"{text[:MAX_TEXT_CHARS]}…[+{cut} chars]"
    return text


def _short(value: object) -> str:
    """Quote a name for an error message, bounded in length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
