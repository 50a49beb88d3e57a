"""The print site's データ消去証明書 / erasure certificate, checked against what the ward sealed.

A certificate is a custody record (:mod:`custody.records`) of kind
``erasure-certificate``, signed with the print site's Ed25519 key, whose body
:mod:`custody.erasure_certificate` defines — the same rules the print site
applies before it signs and the gateway before it publishes::

    {"batch_id", "tenant", "channel": "lgwan"|"dvd",
     "items": [{"kind", "path", "size", "sha256"}, ...],   # hashes taken before erasure
     "method", "started_at", "finished_at", "handler", "approver",
     "opened": bool, "printsite_key": "SHA256:…"}

It counts only when all of these hold (:func:`parse`, then :func:`check_against`):

1. It is in the one canonical byte form, at most :data:`MAX_CERTIFICATE_BYTES`,
   signed by the print-site key pinned in ``[printsite] signing_key`` (a changed
   byte or another key fails), ``printsite_key`` names that key, and its body
   passes :func:`custody.check_erasure_body` (exact fields and types, a batch
   id, at least one ``envelope`` item, ``opened`` exactly when plaintext is listed).
2. The batch was sealed here: the ward ledger holds its ``sealed`` entry,
   signed by the ward's key (else: unknown batch).
3. ``tenant`` is the ward's ``[gateway] tenant`` when one is configured.
4. Every ``envelope``, ``retained`` and ``quarantine`` item is the sealed
   envelope: its SHA-256 and size are the ledger's ``envelope_sha256`` and
   ``envelope_size``.
5. Every ``plaintext`` item lies in the batch's work directory (its directory
   is ``<batch>``, or ``.opening-<batch>-…`` for an interrupted opening) and its
   file name is a sealed file with that size and SHA-256; and when the batch
   was opened, every sealed file is among them (a certificate of an opened
   batch that leaves a released file out does not say it was erased).
6. ``staging`` items (partial copies) are no larger than the envelope.

:func:`parse` and :func:`check_against` are pure (bytes and a ledger entry in,
:class:`Certificate` out, :class:`CertificateError` on the first failed rule).
:func:`check_data` matches a certificate against the ward ledger;
:mod:`client.certificate_store` does the file I/O: ``lgwan-client
verify-certificate FILE`` (:func:`client.certificate_store.verify_file`) and the
copies ``status`` downloads from the gateway.
"""

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client import ledger
from client.config import ClientConfig
from client.errors import ClientError, ConfigError, explain
from client.i18n import _, ngettext
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
from custody import erasure_certificate as rules

CERTIFICATE_SUFFIX = ".erasure.json"
"""``/receipts/<batch>.erasure.json`` at the gateway; the same name when saved here."""
MAX_CERTIFICATE_BYTES = rules.MAX_CERTIFICATE_BYTES
"""Largest certificate read from a file or the gateway, in bytes (the same on every side)."""
BODY_FIELDS = rules.CERTIFICATE_FIELDS
"""The body of a certificate, exactly these fields."""
ITEM_FIELDS = rules.ITEM_FIELDS
"""One erased item, exactly these fields."""
CHANNELS = rules.CHANNELS

ITEM_ENVELOPE = rules.KIND_ENVELOPE
ITEM_PLAINTEXT = rules.KIND_PLAINTEXT
ITEM_STAGING = rules.KIND_STAGING
ITEM_QUARANTINE = rules.KIND_QUARANTINE
ITEM_RETAINED = rules.KIND_RETAINED
WHOLE_ENVELOPE_ITEMS = rules.WHOLE_ENVELOPE_KINDS
"""Item kinds that are complete copies of the sealed envelope."""
ITEM_KINDS = rules.ITEM_KINDS
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


def _hint(reason: str) -> str | None:
    """What the person should do about a certificate failing ``reason``."""
    hints = {
        REASON_SIGNATURE: _(
            "it is not signed by the pinned [printsite] signing_key, or it was changed after "
            "signing; do not accept it — ask the contractor for the original"
        ),
        REASON_MALFORMED: _(
            "it is not an erasure certificate as the print site writes one; do not accept it — "
            "ask the contractor for the original"
        ),
        REASON_UNKNOWN_BATCH: _(
            "only batches sealed with this ward's ledger can be checked here; check the file, "
            "and the [ledger] path of the configuration"
        ),
        REASON_MISMATCH: _(
            "the certificate does not describe what this ward sealed; do not accept it — "
            "tell the contractor"
        ),
        REASON_LEDGER: _("run 'lgwan-client ledger verify'"),
    }
    return hints.get(reason)


class CertificateError(ClientError):
    """A certificate that does not verify or does not match the ward's ledger (exit 1).

    Attributes:
        reason: which rule failed (``REASON_…``).
    """

    def __init__(self, message: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint or _hint(reason))
        self.reason = reason


Item = rules.ErasedItem
"""One erased copy: what it was, where, and its size and SHA-256 before erasure."""


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
    signer = fingerprint(key)
    try:
        checked = rules.check_erasure_body(body, signer=signer)
    except rules.BodyError as exc:
        reason = REASON_MISMATCH if exc.code in rules.CONSISTENCY_CODES else REASON_MALFORMED
        raise CertificateError(
            _("certificate: {problem}").format(problem=_body_problem(exc)), reason
        ) from None
    return Certificate(
        batch_id=checked.batch_id,
        tenant=checked.tenant,
        channel=checked.channel,
        items=checked.items,
        method=checked.method,
        started_at=checked.started_at,
        finished_at=checked.finished_at,
        handler=checked.handler,
        approver=checked.approver,
        opened=checked.opened,
        signer=signer,
        sha256=hashlib.sha256(canonical).hexdigest(),
    )


def _body_problem(error: rules.BodyError) -> str:
    """What the shared body check found, in the chosen language."""
    messages = {
        "fields": _("the body has fields {fields}, expected {expected}"),
        "text": _("{field} is not text: {value}"),
        "batch_id": _("batch_id {value} is not a batch id"),
        "channel": _("channel {value} is not one of {choices}"),
        "opened": _("opened is not true or false"),
        "time": _("{field} is not an ISO 8601 time with a UTC offset: {value}"),
        "time_order": _("finished_at is before started_at"),
        "printsite_key": _("printsite_key {value} is not the signer's {signer}"),
        "items": _("items is not a non-empty list"),
        "item_fields": _("item {number} has fields {fields}, expected {expected}"),
        "item_kind": _("item {number}: unknown kind {value}"),
        "item_path": _("item {number}: path is not text"),
        "item_size": _("item {number}: size is not a byte count: {value}"),
        "item_sha256": _("item {number}: sha256 is not 64 hex digits: {value}"),
        "no_envelope": _("no envelope item (the spool's sealed batch)"),
        "plaintext_not_opened": _(
            "item {number}: plaintext listed but the certificate says not opened"
        ),
        "opened_without_plaintext": _("the certificate says opened but lists no plaintext item"),
    }
    template = messages.get(error.code)
    return template.format(**error.values) if template is not None else str(error)


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
            _("unknown batch {batch}: this ward's ledger has no sealed entry").format(batch=batch),
            REASON_UNKNOWN_BATCH,
        )
    if tenant and certificate.tenant != tenant:
        raise _mismatch(
            _("certificate is for tenant {value}, this ward is {tenant}"),
            value=_short(certificate.tenant),
            tenant=repr(tenant),
        )
    envelope_sha, envelope_size, files = _sealed(sealed, batch)
    for number, item in enumerate(certificate.items, 1):
        where = _("item {number} ({kind} {path})").format(
            number=number, kind=item.kind, path=_short(item.path)
        )
        if item.kind in WHOLE_ENVELOPE_ITEMS:
            if item.sha256 != envelope_sha or item.size != envelope_size:
                raise _mismatch(
                    _(
                        "{where}: {size} bytes, SHA-256 {sha256}…; the sealed envelope is "
                        "{sealed_size} bytes, SHA-256 {sealed_sha256}…"
                    ).format(
                        where=where,
                        size=item.size,
                        sha256=item.sha256[:16],
                        sealed_size=envelope_size,
                        sealed_sha256=envelope_sha[:16],
                    )
                )
        elif item.kind == ITEM_PLAINTEXT:
            _check_plaintext(where, item, files, batch)
        elif item.kind == ITEM_STAGING and item.size > envelope_size:
            raise _mismatch(
                _("{where}: {size} bytes, larger than the sealed envelope ({sealed} bytes)"),
                where=where,
                size=item.size,
                sealed=envelope_size,
            )
    if certificate.opened:
        erased = {item.name for item in certificate.items if item.kind == ITEM_PLAINTEXT}
        left = sorted(set(files) - erased)
        if left:
            raise _mismatch(
                _(
                    "the batch was opened, but the sealed file {name} is not among the erased"
                    " plaintext ({count} file(s) missing)"
                ),
                name=_short(left[0]),
                count=len(left),
            )


def _check_plaintext(
    where: str, item: Item, files: Mapping[str, tuple[int, str]], batch: str
) -> None:
    if not rules.in_work_directory(item, batch):
        raise _mismatch(
            _("{where}: not in the work directory of {batch} (…/{batch}/NAME)"),
            where=where,
            batch=batch,
        )
    sealed = files.get(item.name)
    if sealed is None:
        raise _mismatch(
            _("{where}: {name} is not a file of the sealed batch"),
            where=where,
            name=_short(item.name),
        )
    size, sha = sealed
    if item.size != size or item.sha256 != sha:
        raise _mismatch(
            _(
                "{where}: {size} bytes, SHA-256 {sha256}…; the sealed file {name} is "
                "{sealed_size} bytes, SHA-256 {sealed_sha256}…"
            ).format(
                where=where,
                size=item.size,
                sha256=item.sha256[:16],
                name=item.name,
                sealed_size=size,
                sealed_sha256=sha[:16],
            )
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
            _("ledger: the sealed entry of {batch} lacks the envelope or files").format(
                batch=batch
            ),
            REASON_LEDGER,
        )
    return sha, int(str(size)), files


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _mismatch(message: str, **values: object) -> CertificateError:
    return CertificateError(message.format(**values), REASON_MISMATCH)


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
    values = {
        "batch": cert.batch_id,
        "count": len(cert.items),
        "kinds": kinds,
        "handler": display(cert.handler),
        "approver": display(cert.approver),
        "done": done,
        "signer": cert.signer,
        "seq": verified.ledger_seq,
    }
    if verified.recorded:
        text = ngettext(
            "ok: {batch}: erasure certificate verified: {count} item erased ({kinds}) by "
            "{handler}, approved by {approver}, finished {done}; signed by {signer}; "
            "recorded as ledger seq {seq}",
            "ok: {batch}: erasure certificate verified: {count} items erased ({kinds}) by "
            "{handler}, approved by {approver}, finished {done}; signed by {signer}; "
            "recorded as ledger seq {seq}",
            len(cert.items),
        )
    else:
        text = ngettext(
            "ok: {batch}: erasure certificate verified: {count} item erased ({kinds}) by "
            "{handler}, approved by {approver}, finished {done}; signed by {signer}; "
            "already recorded as ledger seq {seq}",
            "ok: {batch}: erasure certificate verified: {count} items erased ({kinds}) by "
            "{handler}, approved by {approver}, finished {done}; signed by {signer}; "
            "already recorded as ledger seq {seq}",
            len(cert.items),
        )
    return text.format(**values)


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
        raise ConfigError(source(config), SETTING, explain(exc)) from None


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
                _("ledger: the sealed entry of {batch} is not valid: {reason}").format(
                    batch=batch, reason=exc
                ),
                REASON_LEDGER,
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


def source(config: ClientConfig) -> str:
    """The configuration file's name for messages."""
    return str(config.source) if config.source else _("(defaults)")
