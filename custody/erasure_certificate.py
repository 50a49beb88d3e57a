"""The erasure certificate's body: the rules the print site, the gateway and the ward share.

A データ消去証明書 / erasure certificate is a custody record
(:mod:`custody.records`) of kind ``erasure-certificate``, signed by the print
site. Its body has exactly :data:`CERTIFICATE_FIELDS`::

    {"batch_id", "tenant", "channel": "lgwan"|"dvd",
     "items": [{"kind", "path", "size", "sha256"}, ...],   # hashes taken before erasure
     "method", "started_at", "finished_at", "handler", "approver",
     "opened": bool, "printsite_key": "SHA256:…"}

:func:`check_erasure_body` is the one check of a body's shape and inner
consistency, used by ``erase`` before it signs, by the gateway before it
publishes, and by the ward before it believes one. It returns a typed
:class:`ErasureBody`; what each side can check beyond the body (the batch the
gateway received, the files the ward sealed) it checks itself. The rules:

- exactly the fields above; texts non-blank and at most :data:`MAX_TEXT_CHARS`;
  ``batch_id`` a batch id (``YYYYMMDD-TYPE-XXXXXX`` with a real date);
  ``channel`` one of :data:`CHANNELS`; times ISO 8601 with a UTC offset,
  ``finished_at`` not before ``started_at``; ``printsite_key`` the signer;
- ``items`` a non-empty list of exactly :data:`ITEM_FIELDS`, ``kind`` one of
  :data:`ITEM_KINDS`, ``size`` a byte count, ``sha256`` 64 lower-case hex digits;
- at least one ``envelope`` item (the spool's sealed batch);
- ``opened`` is true exactly when there is a ``plaintext`` item.

:func:`in_work_directory` is where released plaintext lies: directly in the
batch's work directory (``…/<batch>/NAME``) or in an interrupted opening of
that batch (``…/.opening-<batch>-XXXX/NAME``, :data:`OPENING_PREFIX`). The ward
requires it of every plaintext item it matches against a sealed file.

Failures raise :class:`BodyError` with a stable :attr:`~BodyError.code` and the
values of its message, so each side can say it in its own language; ``str()``
is the English. A certificate file is at most :data:`MAX_CERTIFICATE_BYTES` on
every side (a manifest of 1000 files with 255-byte names fits several times).
Pure: no I/O, and neither side's package is imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath

from custody.errors import CustodyError

MAX_CERTIFICATE_BYTES = 1 << 20
"""Largest erasure certificate file (canonical JSON plus newline) anyone writes or reads."""

CERTIFICATE_FIELDS = (
    "batch_id",
    "tenant",
    "channel",
    "items",
    "method",
    "started_at",
    "finished_at",
    "handler",
    "approver",
    "opened",
    "printsite_key",
)
"""The body of an erasure certificate, exactly these fields."""
ITEM_FIELDS = ("kind", "path", "size", "sha256")
"""Each erased item, exactly these fields."""

KIND_ENVELOPE = "envelope"
"""The spool's ``<batch>.age``: the sealed envelope."""
KIND_PLAINTEXT = "plaintext"
"""A released file: ``<work_dir>/<batch>/NAME`` (or an interrupted opening's)."""
KIND_STAGING = "staging"
"""A partial copy (``.age.part``): never larger than the envelope."""
KIND_QUARANTINE = "quarantine"
"""A whole copy moved to the storage's quarantine."""
KIND_RETAINED = "retained"
"""A whole copy kept in the storage's inbox or outbox."""
WHOLE_ENVELOPE_KINDS = (KIND_ENVELOPE, KIND_RETAINED, KIND_QUARANTINE)
"""Kinds that are complete copies of the sealed envelope (its size and SHA-256)."""
ITEM_KINDS = (KIND_ENVELOPE, KIND_PLAINTEXT, KIND_STAGING, KIND_QUARANTINE, KIND_RETAINED)
"""Every kind of erased item."""
CHANNELS = ("lgwan", "dvd")

OPENING_PREFIX = ".opening-"
"""``open`` decrypts into ``<work_dir>/.opening-<batch>-XXXX/`` before the one rename."""
MAX_TEXT_CHARS = 4096

BATCH_ID_RE = re.compile(r"^[0-9]{8}-[A-Z][A-Z0-9]{1,15}-[0-9A-Z]{6}$")
"""A batch id's syntax (the same as :data:`envelope.manifest.BATCH_ID_RE`)."""
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_OPENING_RE = re.compile(
    re.escape(OPENING_PREFIX) + r"(?P<batch>[0-9]{8}-[A-Z][A-Z0-9]{1,15}-[0-9A-Z]{6})-[a-z0-9_]+"
)

MESSAGES = {
    "fields": "the body has fields {fields}, expected {expected}",
    "text": "{field} is not text: {value}",
    "batch_id": "batch_id {value} is not a batch id",
    "channel": "channel {value} is not one of {choices}",
    "opened": "opened is not true or false",
    "time": "{field} is not an ISO 8601 time with a UTC offset: {value}",
    "time_order": "finished_at is before started_at",
    "printsite_key": "printsite_key {value} is not the signer's {signer}",
    "items": "items is not a non-empty list",
    "item_fields": "item {number} has fields {fields}, expected {expected}",
    "item_kind": "item {number}: unknown kind {value}",
    "item_path": "item {number}: path is not text",
    "item_size": "item {number}: size is not a byte count: {value}",
    "item_sha256": "item {number}: sha256 is not 64 hex digits: {value}",
    "no_envelope": "no envelope item (the spool's sealed batch)",
    "plaintext_not_opened": "item {number}: plaintext listed but the certificate says not opened",
    "opened_without_plaintext": "the certificate says opened but lists no plaintext item",
}
"""English message of each :attr:`BodyError.code` (``str.format`` with its values)."""
CONSISTENCY_CODES = frozenset({"no_envelope", "plaintext_not_opened", "opened_without_plaintext"})
"""Codes of bodies well formed but contradicting themselves (the others are malformed)."""


class BodyError(CustodyError):
    """An erasure certificate's body breaks a rule.

    Attributes:
        code: which rule (a key of :data:`MESSAGES`).
        values: the message's values, already quoted and bounded.
    """

    def __init__(self, code: str, **values: object) -> None:
        self.code = code
        self.values = values
        super().__init__(MESSAGES[code].format(**values))


@dataclass(frozen=True)
class ErasedItem:
    """One erased copy: what it was, where, and its size and SHA-256 before erasure."""

    kind: str
    path: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        """The last component of ``path`` (a plaintext item's file name)."""
        return PurePosixPath(self.path).name

    @property
    def folder(self) -> str:
        """The name of the directory ``path`` lies in (``<batch>`` for released plaintext)."""
        return PurePosixPath(self.path).parent.name


@dataclass(frozen=True)
class ErasureBody:
    """A body that passed :func:`check_erasure_body`."""

    batch_id: str
    tenant: str
    channel: str
    items: tuple[ErasedItem, ...]
    method: str
    started_at: datetime
    finished_at: datetime
    handler: str
    approver: str
    opened: bool
    printsite_key: str

    def of_kind(self, *kinds: str) -> tuple[ErasedItem, ...]:
        """The items of these kinds, in order."""
        return tuple(item for item in self.items if item.kind in kinds)


def in_work_directory(item: ErasedItem, batch_id: str) -> bool:
    """Whether a plaintext item lies where ``open`` releases ``batch_id``'s files."""
    return item.folder == batch_id or opening_of(item.folder) == batch_id


def opening_of(name: str) -> str | None:
    """The batch an interrupted opening's directory name (``.opening-<batch>-XXXX``) is of."""
    match = _OPENING_RE.fullmatch(name)
    return match["batch"] if match and is_batch_id(match["batch"]) else None


def check_erasure_body(body: Mapping[str, object], *, signer: str) -> ErasureBody:
    """Check a certificate body's shape and consistency (see the module docstring).

    Args:
        body: The verified record's body.
        signer: The fingerprint of the key that signed it (``printsite_key`` must name it).

    Returns:
        The body, typed.

    Raises:
        BodyError: the first rule broken.
    """
    if set(body) != set(CERTIFICATE_FIELDS):
        raise BodyError("fields", fields=_names(body), expected=", ".join(CERTIFICATE_FIELDS))
    if body["printsite_key"] != signer:
        raise BodyError("printsite_key", value=_short(body["printsite_key"]), signer=signer)
    batch = _text(body, "batch_id")
    if not is_batch_id(batch):
        raise BodyError("batch_id", value=_short(batch))
    channel = _text(body, "channel")
    if channel not in CHANNELS:
        raise BodyError("channel", value=_short(channel), choices=list(CHANNELS))
    opened = body["opened"]
    if not isinstance(opened, bool):
        raise BodyError("opened")
    started, finished = _time(body, "started_at"), _time(body, "finished_at")
    if finished < started:
        raise BodyError("time_order")
    parsed = ErasureBody(
        batch_id=batch,
        tenant=_text(body, "tenant"),
        channel=channel,
        items=_items(body["items"]),
        method=_text(body, "method"),
        started_at=started,
        finished_at=finished,
        handler=_text(body, "handler"),
        approver=_text(body, "approver"),
        opened=opened,
        printsite_key=signer,
    )
    _check_consistency(parsed)
    return parsed


def is_batch_id(value: str) -> bool:
    """Whether ``value`` is a batch id: the syntax, and a real date in front."""
    if not BATCH_ID_RE.fullmatch(value):
        return False
    try:
        datetime.strptime(value[:8], "%Y%m%d")
    except ValueError:
        return False
    return True


def _check_consistency(body: ErasureBody) -> None:
    if not body.of_kind(KIND_ENVELOPE):
        raise BodyError("no_envelope")
    plaintext = False
    for number, item in enumerate(body.items, 1):
        if item.kind != KIND_PLAINTEXT:
            continue
        plaintext = True
        if not body.opened:
            raise BodyError("plaintext_not_opened", number=number)
    if body.opened and not plaintext:
        raise BodyError("opened_without_plaintext")


def _items(value: object) -> tuple[ErasedItem, ...]:
    if not isinstance(value, list) or not value:
        raise BodyError("items")
    items: list[ErasedItem] = []
    for number, raw in enumerate(value, 1):
        if not isinstance(raw, dict) or set(raw) != set(ITEM_FIELDS):
            shown = _names(raw) if isinstance(raw, dict) else type(raw).__name__
            raise BodyError(
                "item_fields", number=number, fields=shown, expected=", ".join(ITEM_FIELDS)
            )
        kind, path, size, sha = raw["kind"], raw["path"], raw["size"], raw["sha256"]
        if kind not in ITEM_KINDS:
            raise BodyError("item_kind", number=number, value=_short(kind))
        if not isinstance(path, str) or not path or len(path) > MAX_TEXT_CHARS:
            raise BodyError("item_path", number=number)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BodyError("item_size", number=number, value=_short(size))
        if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
            raise BodyError("item_sha256", number=number, value=_short(sha))
        items.append(ErasedItem(str(kind), path, size, sha))
    return tuple(items)


def _text(body: Mapping[str, object], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_CHARS:
        raise BodyError("text", field=name, value=_short(value))
    return value


def _time(body: Mapping[str, object], name: str) -> datetime:
    value = body[name]
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.utcoffset() is None:
        raise BodyError("time", field=name, value=_short(value))
    return moment


def _short(value: object) -> str:
    """An untrusted value quoted for a message: bounded, control characters escaped."""
    text = _escape(value if isinstance(value, str) else repr(value))
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def _names(fields: Mapping[str, object]) -> str:
    """A body's or item's field names for a message (sorted, escaped, bounded)."""
    shown = ", ".join(sorted(_escape(str(name))[:40] for name in fields))
    return shown if len(shown) <= 400 else shown[:397] + "..."


def _escape(text: str) -> str:
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )
