"""The print site's データ消去証明書 / erasure certificate, checked against what the ward sealed.

A certificate is a custody record (:mod:`custody.records`) of kind
``erasure-certificate``, signed with the print site's Ed25519 key, whose body
has exactly :data:`BODY_FIELDS`::

    {"batch_id", "tenant", "channel": "lgwan"|"dvd",
     "items": [{"kind", "path", "size", "sha256"}, ...],   # hashes taken before erasure
     "method", "started_at", "finished_at", "handler", "approver",
     "opened": bool, "printsite_key": "SHA256:…"}

It counts only when all of these hold (:func:`parse`, then :func:`check_against`):

1. It is in the one canonical byte form, at most :data:`MAX_CERTIFICATE_BYTES`,
   signed by the print-site key pinned in ``[printsite] signing_key`` (a changed
   byte or another key fails), and ``printsite_key`` names that key.
2. The batch was sealed here: the ward ledger holds its ``sealed`` entry,
   signed by the ward's key (else: unknown batch).
3. ``tenant`` is the ward's ``[gateway] tenant`` when one is configured.
4. Every ``envelope``, ``retained`` and ``quarantine`` item is the sealed
   envelope: its SHA-256 and size are the ledger's ``envelope_sha256`` and
   ``envelope_size``; there is at least one ``envelope`` item.
5. Every ``plaintext`` item's file name (the last path component) is a sealed
   file with that size and SHA-256; plaintext items need ``opened`` true.
6. ``staging`` items (partial copies) are no larger than the envelope;
   ``receipt-copy`` items are the gateway's receipts and are only shape-checked.

:func:`parse` and :func:`check_against` are pure (bytes and a ledger entry in,
:class:`Certificate` out, :class:`CertificateError` on the first failed rule).
:func:`verify_file` is ``lgwan-client verify-certificate FILE``: it reads the file
(size-capped), checks it and records ``erasure-verified`` in the ward ledger once
per certificate. :mod:`client.certificate_store` saves the copies ``status``
downloads from the gateway.
"""

import hashlib
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client import ledger
from client.config import ClientConfig
from client.errors import ClientError, ConfigError, UsageError
from custody import (
    KIND_ERASURE_CERTIFICATE,
    CustodyError,
    SignatureError,
    dumps_record,
    fingerprint,
    load_public_key,
    loads_record,
    verify_record,
)
from envelope.manifest import BATCH_ID_RE

CERTIFICATE_SUFFIX = ".erasure.json"
"""``/receipts/<batch>.erasure.json`` at the gateway; the same name when saved here."""
MAX_CERTIFICATE_BYTES = 256 * 1024
"""Largest certificate read from a file or the gateway, in bytes."""

BODY_FIELDS = (
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
"""The body of a certificate, exactly these fields."""
ITEM_FIELDS = ("kind", "path", "size", "sha256")
"""One erased item, exactly these fields."""
CHANNELS = ("lgwan", "dvd")

ITEM_ENVELOPE = "envelope"
ITEM_PLAINTEXT = "plaintext"
ITEM_STAGING = "staging"
ITEM_QUARANTINE = "quarantine"
ITEM_RETAINED = "retained"
ITEM_RECEIPT_COPY = "receipt-copy"
WHOLE_ENVELOPE_ITEMS = (ITEM_ENVELOPE, ITEM_RETAINED, ITEM_QUARANTINE)
"""Item kinds that are complete copies of the sealed envelope."""
ITEM_KINDS = (*WHOLE_ENVELOPE_ITEMS, ITEM_PLAINTEXT, ITEM_STAGING, ITEM_RECEIPT_COPY)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_TEXT_CHARS = 4096
JST = ZoneInfo("Asia/Tokyo")

SETTING = "printsite.signing_key"


REASON_SIGNATURE = "signature"
"""Another signer, another kind, or a changed byte."""
REASON_MALFORMED = "malformed"
REASON_UNKNOWN_BATCH = "unknown_batch"
REASON_MISMATCH = "mismatch"
"""Another tenant, or an item that is not what the ward sealed."""
REASON_LEDGER = "ledger"
"""The ward ledger's sealed entry is not usable."""

_HINTS = {
    REASON_SIGNATURE: "it is not signed by the pinned [printsite] signing_key, or it was changed "
    "after signing; do not accept it — ask the contractor for the original",
    REASON_MALFORMED: "it is not an erasure certificate as the print site writes one; do not "
    "accept it — ask the contractor for the original",
    REASON_UNKNOWN_BATCH: "only batches sealed with this ward's ledger can be checked here; "
    "check the file, and the [ledger] path of the configuration",
    REASON_MISMATCH: "the certificate does not describe what this ward sealed; do not accept "
    "it — tell the contractor",
    REASON_LEDGER: "run 'lgwan-client ledger verify'",
}


class CertificateError(ClientError):
    """A certificate that does not verify or does not match the ward's ledger (exit 1).

    Attributes:
        reason: which rule failed (``REASON_…``).
    """

    def __init__(self, message: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or _HINTS.get(reason))
        self.reason = reason


@dataclass(frozen=True)
class Item:
    """One erased copy: what it was, where, and its size and SHA-256 before erasure."""

    kind: str
    path: str
    size: int
    sha256: str

    @property
    def name(self) -> str:
        """The last component of ``path`` (a plaintext item's sealed file name)."""
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class Certificate:
    """A certificate whose signature and shape verified (see :func:`parse`)."""

    batch_id: str
    tenant: str
    channel: str
    items: tuple[Item, ...]
    method: str
    started_at: datetime
    finished_at: datetime
    handler: str
    approver: str
    opened: bool
    signer: str
    sha256: str
    """SHA-256 of the certificate's canonical bytes (as the print site wrote them)."""

    def counts(self) -> dict[str, int]:
        """Items per kind, in :data:`ITEM_KINDS` order."""
        found = Counter(item.kind for item in self.items)
        return {kind: found[kind] for kind in ITEM_KINDS if found[kind]}


@dataclass(frozen=True)
class Verified:
    """What ``verify-certificate`` established and recorded."""

    certificate: Certificate
    ledger_seq: int
    recorded: bool
    """False when the same certificate had been recorded before (no new entry)."""


def parse(data: bytes, key: Ed25519PublicKey) -> Certificate:
    """Verify a certificate's bytes, signature, kind and body shape.

    Args:
        data: The file's bytes (canonical JSON plus one newline).
        key: The pinned print-site key.

    Returns:
        The certificate, not yet matched against the ledger.

    Raises:
        CertificateError: too large, not canonical, another kind, another
            signer, a bad signature, or a body that is not exactly the
            certificate's fields with their types.
    """
    try:
        doc = loads_record(data, max_bytes=MAX_CERTIFICATE_BYTES)
        body = verify_record(doc, key, kind=KIND_ERASURE_CERTIFICATE)
        canonical = dumps_record(doc)
    except SignatureError as exc:
        raise CertificateError(str(exc), REASON_SIGNATURE) from None
    except CustodyError as exc:
        raise CertificateError(str(exc), REASON_MALFORMED) from None
    if set(body) != set(BODY_FIELDS):
        raise _malformed(f"certificate has fields {sorted(body)}, expected {list(BODY_FIELDS)}")
    signer = fingerprint(key)
    if body["printsite_key"] != signer:
        raise _malformed(
            f"certificate names printsite_key {_short(body['printsite_key'])}, signed by {signer}"
        )
    batch = _text(body, "batch_id")
    if not BATCH_ID_RE.fullmatch(batch):
        raise _malformed(f"certificate batch_id {_short(batch)} is not a batch id")
    channel = _text(body, "channel")
    if channel not in CHANNELS:
        raise _malformed(f"certificate channel {_short(channel)} is not one of {CHANNELS}")
    opened = body["opened"]
    if not isinstance(opened, bool):
        raise _malformed("certificate field opened is not true or false")
    started, finished = _time(body, "started_at"), _time(body, "finished_at")
    if finished < started:
        raise _malformed("certificate finished_at is before started_at")
    return Certificate(
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
        signer=signer,
        sha256=hashlib.sha256(canonical).hexdigest(),
    )


def check_against(
    certificate: Certificate, sealed: Mapping[str, object] | None, tenant: str
) -> None:
    """Check the certificate's items against the batch's ``sealed`` ledger entry.

    Args:
        certificate: A parsed certificate.
        sealed: The batch's ``sealed`` entry, None when the ledger has none.
        tenant: The ward's ``[gateway] tenant`` ("" = not checked).

    Raises:
        CertificateError: an unknown batch, another tenant, or the first item
            that is not what the ward sealed (see the module docstring).
    """
    batch = certificate.batch_id
    if sealed is None:
        raise CertificateError(
            f"unknown batch {batch}: this ward's ledger has no sealed entry", REASON_UNKNOWN_BATCH
        )
    if tenant and certificate.tenant != tenant:
        raise _mismatch(
            f"certificate is for tenant {_short(certificate.tenant)}, this ward is {tenant!r}"
        )
    envelope_sha, envelope_size, files = _sealed(sealed, batch)
    if not any(item.kind == ITEM_ENVELOPE for item in certificate.items):
        raise _mismatch("certificate lists no envelope item (the spool's sealed batch)")
    for number, item in enumerate(certificate.items, 1):
        where = f"item {number} ({item.kind} {_short(item.path)})"
        if item.kind in WHOLE_ENVELOPE_ITEMS:
            if item.sha256 != envelope_sha or item.size != envelope_size:
                raise _mismatch(
                    f"{where}: {item.size} bytes, SHA-256 {item.sha256[:16]}…; the sealed "
                    f"envelope is {envelope_size} bytes, SHA-256 {envelope_sha[:16]}…"
                )
        elif item.kind == ITEM_PLAINTEXT:
            _check_plaintext(where, item, files, certificate.opened)
        elif item.kind == ITEM_STAGING and item.size > envelope_size:
            raise _mismatch(
                f"{where}: {item.size} bytes, larger than the sealed envelope "
                f"({envelope_size} bytes)"
            )


def _check_plaintext(
    where: str, item: Item, files: Mapping[str, tuple[int, str]], opened: bool
) -> None:
    if not opened:
        raise _mismatch(f"{where}: plaintext listed but the certificate says not opened")
    sealed = files.get(item.name)
    if sealed is None:
        raise _mismatch(f"{where}: {_short(item.name)} is not a file of the sealed batch")
    size, sha = sealed
    if item.size != size or item.sha256 != sha:
        raise _mismatch(
            f"{where}: {item.size} bytes, SHA-256 {item.sha256[:16]}…; the sealed file "
            f"{item.name} is {size} bytes, SHA-256 {sha[:16]}…"
        )


def _sealed(entry: Mapping[str, object], batch: str) -> tuple[str, int, dict[str, tuple[int, str]]]:
    """The envelope's SHA-256 and size, and file name → (size, SHA-256), from a sealed entry."""
    sha, size, listed = entry.get("envelope_sha256"), entry.get("envelope_size"), entry.get("files")
    files: dict[str, tuple[int, str]] = {}
    for spec in listed if isinstance(listed, list) else []:
        name = spec.get("name") if isinstance(spec, dict) else None
        file_size = spec.get("size") if isinstance(spec, dict) else None
        file_sha = spec.get("sha256") if isinstance(spec, dict) else None
        if isinstance(name, str) and _is_size(file_size) and isinstance(file_sha, str):
            files[name] = (int(str(file_size)), file_sha)
    if not isinstance(sha, str) or not _is_size(size) or not files:
        raise CertificateError(
            f"ledger: the sealed entry of {batch} lacks the envelope or files", REASON_LEDGER
        )
    return sha, int(str(size)), files


def _items(value: object) -> tuple[Item, ...]:
    if not isinstance(value, list) or not value:
        raise _malformed("certificate items is not a non-empty list")
    items = []
    for number, raw in enumerate(value, 1):
        if not isinstance(raw, dict) or set(raw) != set(ITEM_FIELDS):
            shown = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
            raise _malformed(f"item {number} has fields {shown}, expected {list(ITEM_FIELDS)}")
        kind, path, size, sha = raw["kind"], raw["path"], raw["size"], raw["sha256"]
        if kind not in ITEM_KINDS:
            raise _malformed(f"item {number}: unknown kind {_short(kind)}")
        if not isinstance(path, str) or not path or len(path) > MAX_TEXT_CHARS:
            raise _malformed(f"item {number}: path is not text")
        if not _is_size(size):
            raise _malformed(f"item {number}: size is not a byte count: {_short(size)}")
        if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
            raise _malformed(f"item {number}: sha256 is not 64 hex digits: {_short(sha)}")
        items.append(Item(str(kind), path, int(str(size)), sha))
    return tuple(items)


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(body: Mapping[str, object], name: str) -> str:
    value = body[name]
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT_CHARS:
        raise _malformed(f"certificate {name} is not text: {_short(value)}")
    return value


def _time(body: Mapping[str, object], name: str) -> datetime:
    value = body[name]
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise _malformed(f"certificate {name} is not an ISO 8601 time with offset: {_short(value)}")
    return moment


def _malformed(message: str) -> CertificateError:
    return CertificateError(message, REASON_MALFORMED)


def _mismatch(message: str) -> CertificateError:
    return CertificateError(message, REASON_MISMATCH)


def _short(value: object) -> str:
    text = display(value if isinstance(value, str) else repr(value))
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


def display(text: str) -> str:
    """Text safe for a terminal: control characters shown escaped."""
    return "".join(
        f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text
    )


def summary(verified: Verified) -> str:
    """The one line ``verify-certificate`` prints on success."""
    cert = verified.certificate
    kinds = ", ".join(f"{count} {kind}" for kind, count in cert.counts().items())
    done = f"{cert.finished_at.astimezone(JST):%Y-%m-%d %H:%M:%S} JST"
    ledger_note = (
        f"recorded as ledger seq {verified.ledger_seq}"
        if verified.recorded
        else f"already recorded as ledger seq {verified.ledger_seq}"
    )
    return (
        f"ok: {cert.batch_id}: erasure certificate verified: {len(cert.items)} "
        f"item{'' if len(cert.items) == 1 else 's'} erased ({kinds}) by {display(cert.handler)}, "
        f"approved by {display(cert.approver)}, finished {done}; signed by {cert.signer}; "
        f"{ledger_note}"
    )


# --- I/O: configuration, files and the ledger ----------------------------------------


def printsite_key(config: ClientConfig) -> Ed25519PublicKey | None:
    """The pinned print-site key from ``[printsite] signing_key``, None when it is empty.

    Raises:
        ConfigError: the line is not an ``ssh-ed25519`` public key (exit 78).
    """
    line = config.printsite.signing_key
    if not line.strip():
        return None
    try:
        return load_public_key(line)
    except CustodyError as exc:
        raise ConfigError(_source(config), SETTING, str(exc)) from None


def required_printsite_key(config: ClientConfig) -> Ed25519PublicKey:
    """The pinned print-site key; its absence is a configuration error.

    Raises:
        ConfigError: empty or malformed (exit 78), with a hint.
    """
    key = printsite_key(config)
    if key is None:
        error = ConfigError(_source(config), SETTING, "is empty: no print-site key is pinned")
        error.hint = (
            'set [printsite] signing_key = "ssh-ed25519 AAAA…", the print site\'s key as the '
            "contractor issued it (never a key taken from the certificate itself)"
        )
        raise error
    return key


def read_file(path: Path) -> bytes:
    """Read a certificate file, at most :data:`MAX_CERTIFICATE_BYTES`.

    Raises:
        UsageError: no such file. ClientError: unreadable, not a regular
            file, or larger than the cap.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file", hint="give the certificate's path") from None
    except OSError as exc:
        raise ClientError(f"{path}: cannot open: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ClientError(f"{path}: not a regular file")
        data = handle.read(MAX_CERTIFICATE_BYTES + 1)
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise CertificateError(
            f"{path}: larger than {MAX_CERTIFICATE_BYTES} bytes; not an erasure certificate",
            REASON_MALFORMED,
        )
    return data


def sealed_entry(
    entries: Iterable[Mapping[str, object]], batch: str, ward_key: Ed25519PublicKey
) -> Mapping[str, object] | None:
    """The batch's last ``sealed`` entry among ``entries``, its signature checked.

    Raises:
        CertificateError: the entry is not signed by the ward's key.
    """
    found = None
    for entry in entries:
        if entry.get(ledger.FIELD_BATCH) == batch and entry.get("event") == ledger.EVENT_SEALED:
            found = entry
    if found is not None:
        try:
            ledger.check_signature(found, ward_key)
        except CustodyError as exc:
            raise CertificateError(
                f"ledger: the sealed entry of {batch} is not valid: {exc}", REASON_LEDGER
            ) from None
    return found


def recorded_seq(entries: Iterable[Mapping[str, object]], certificate: Certificate) -> int | None:
    """The seq of the ``erasure-verified`` entry of this very certificate, if recorded."""
    for entry in entries:
        if (
            entry.get("event") == ledger.EVENT_ERASURE_VERIFIED
            and entry.get(ledger.FIELD_BATCH) == certificate.batch_id
            and entry.get("certificate_sha256") == certificate.sha256
        ):
            seq = entry.get("seq")
            return seq if isinstance(seq, int) else 0
    return None


def check_data(
    config: ClientConfig, data: bytes, key: Ed25519PublicKey, ward_key: Ed25519PublicKey
) -> Certificate:
    """Parse ``data`` and match it against the ward ledger (read only).

    Raises:
        CertificateError: any rule fails (see the module docstring).
    """
    certificate = parse(data, key)
    book = config.path(config.ledger.path)
    sealed = sealed_entry(
        ledger.entries(book, certificate.batch_id), certificate.batch_id, ward_key
    )
    check_against(certificate, sealed, config.gateway.tenant)
    return certificate


def verify_file(config: ClientConfig, path: Path) -> Verified:
    """``verify-certificate FILE``: check it, then record ``erasure-verified`` once.

    Raises:
        ConfigError: no or a malformed ``[printsite] signing_key``, or the
            ward key (78). UsageError: no such file (2). CertificateError:
            the certificate does not verify or does not match (1).
    """
    key = required_printsite_key(config)
    data = read_file(path)
    ward_key = ledger.load_key(config.path(config.identity.private_key), "identity.private_key")
    try:
        certificate = check_data(config, data, key, ward_key.public_key())
    except CertificateError as exc:
        raise CertificateError(f"{path}: does not verify: {exc}", exc.reason) from None
    return _record(config, ward_key, certificate)


def _record(config: ClientConfig, ward_key: Ed25519PrivateKey, cert: Certificate) -> Verified:
    """Record ``erasure-verified`` unless this certificate already is (under the ledger lock)."""
    with ledger.Ledger.open(config.path(config.ledger.path), ward_key) as book:
        seq = recorded_seq(book.entries(cert.batch_id), cert)
        if seq is not None:
            return Verified(cert, seq, recorded=False)
        entry = book.record(
            ledger.EVENT_ERASURE_VERIFIED,
            batch=cert.batch_id,
            certificate_sha256=cert.sha256,
            certificate_signer=cert.signer,
            items=len(cert.items),
            erased_at=cert.finished_at.isoformat(),
            handler=config.handler_name(),
        )
    seq_value = entry.get("seq")
    return Verified(cert, seq_value if isinstance(seq_value, int) else 0, recorded=True)


def _source(config: ClientConfig) -> str:
    return str(config.source) if config.source else "(defaults)"
