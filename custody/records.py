"""Signed records: receipts, status records, certificates and checkpoints.

A record is one JSON object with exactly these fields::

    {"kind": KIND, "body": {...}, "signer": "SHA256:…", "alg": "ed25519", "sig": BASE64}

The Ed25519 signature ``sig`` (standard base64 with padding, 64 bytes) covers::

    DOMAIN_PREFIX || canonical_json({"alg": …, "body": …, "kind": …, "signer": …})

so the kind, the body, the signer's fingerprint and the algorithm are all bound:
a record of one kind cannot be replayed as another, and a record signed by one
key cannot be passed off as another's. On disk and on the wire a record is its
canonical JSON plus one newline (:func:`dumps_record`); :func:`loads_record`
accepts only that exact byte form, so every byte of a stored record matters.
"""

import base64
import binascii
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody.canonical import canonical_json, parse_json_strict
from custody.errors import RecordError, SignatureError
from custody.keys import fingerprint

DOMAIN_PREFIX = b"lgwan-custody/v1\n"
"""Prepended to the canonical JSON before signing (domain separation)."""

ALG_ED25519 = "ed25519"

FIELD_KIND = "kind"
FIELD_BODY = "body"
FIELD_SIGNER = "signer"
FIELD_ALG = "alg"
FIELD_SIG = "sig"
SIGNED_FIELDS = frozenset({FIELD_KIND, FIELD_BODY, FIELD_SIGNER, FIELD_ALG})
"""Fields covered by the signature."""
RECORD_FIELDS = SIGNED_FIELDS | {FIELD_SIG}
"""Exactly the fields of a record."""

KIND_RECEIPT = "receipt"
"""The gateway's receipt for a completed, verified upload."""
KIND_STATUS = "status"
"""The gateway's statement of a batch's state (received, quarantined, forwarded, …)."""
KIND_ERASURE_CERTIFICATE = "erasure-certificate"
"""The contractor's データ消去報告書 / 消去証明書."""
KIND_CHECKPOINT = "checkpoint"
"""A signed head of a hash-chained log (see custody.chain)."""

KIND_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,63}")
"""Syntax of a kind: lower-case ASCII letters, digits and hyphens, 1–64 long."""

ED25519_SIGNATURE_BYTES = 64
MAX_RECORD_BYTES = 1 << 20
"""Default size cap of :func:`loads_record`, in bytes."""


def sign_record(kind: str, body: Mapping[str, object], key: Ed25519PrivateKey) -> dict[str, object]:
    """Sign a body as a record of the given kind.

    Args:
        kind: The record kind, e.g. KIND_RECEIPT; matches KIND_PATTERN.
        body: The statement; a mapping of canonical JSON values.
        key: The signer's Ed25519 private key.

    Returns:
        A new record dict with fields kind, body, signer, alg and sig,
        independent of ``body`` (later changes to ``body`` do not affect it).

    Raises:
        RecordError: A malformed kind, or a body that is not canonical JSON.
    """
    _check_kind(kind)
    if not isinstance(body, Mapping):
        raise RecordError(f"record body must be a mapping, got {type(body).__name__}")
    unsigned: dict[str, object] = {
        FIELD_KIND: kind,
        FIELD_BODY: dict(body),
        FIELD_SIGNER: fingerprint(key.public_key()),
        FIELD_ALG: ALG_ED25519,
    }
    signed_bytes = canonical_json(unsigned)
    signature = key.sign(DOMAIN_PREFIX + signed_bytes)
    doc = _as_dict(parse_json_strict(signed_bytes))
    doc[FIELD_SIG] = base64.b64encode(signature).decode("ascii")
    return doc


def verify_record(
    doc: Mapping[str, object], public_key: Ed25519PublicKey, *, kind: str
) -> dict[str, object]:
    """Verify a record against a pinned public key and an expected kind.

    Args:
        doc: The record, as returned by sign_record or loads_record.
        public_key: The key the record must be signed with.
        kind: The kind the caller expects.

    Returns:
        A copy of the record's body.

    Raises:
        RecordError: The record is malformed (missing or extra fields, wrong
            types, unsupported alg, a signature that is not 64 bytes of
            canonical base64, a body that is not canonical JSON).
        SignatureError: The kind is not ``kind``, the signer is not the
            fingerprint of ``public_key``, or the signature does not verify.
    """
    signature = _check_shape(doc)
    doc_kind = doc[FIELD_KIND]
    if doc_kind != kind:
        raise SignatureError(f"record of kind {doc_kind!r}, expected {kind!r}")
    expected_signer = fingerprint(public_key)
    signer = doc[FIELD_SIGNER]
    if signer != expected_signer:
        raise SignatureError(f"record signed by {_short(signer)}, expected {expected_signer}")
    unsigned = {name: doc[name] for name in SIGNED_FIELDS}
    signed_bytes = canonical_json(unsigned)
    try:
        public_key.verify(signature, DOMAIN_PREFIX + signed_bytes)
    except InvalidSignature:
        raise SignatureError(f"bad signature on {kind!r} record by {expected_signer}") from None
    return _as_dict(parse_json_strict(canonical_json(doc[FIELD_BODY])))


def dumps_record(doc: Mapping[str, object]) -> bytes:
    """Serialize a record in its one byte form: canonical JSON plus a newline.

    Args:
        doc: The record.

    Returns:
        The bytes to store or send.

    Raises:
        RecordError: The record is malformed (see verify_record); the
            signature itself is not checked.
    """
    _check_shape(doc)
    return canonical_json(dict(doc)) + b"\n"


def loads_record(data: bytes, *, max_bytes: int = MAX_RECORD_BYTES) -> dict[str, object]:
    """Parse a record written by dumps_record; the signature is not checked.

    Args:
        data: The bytes: canonical JSON, optionally followed by one newline.
        max_bytes: Refuse inputs longer than this many bytes.

    Returns:
        The record dict, to pass to verify_record.

    Raises:
        RecordError: Too large, not strict JSON, not exactly canonical, or
            not a well-formed record.
    """
    value = parse_json_strict(data, max_bytes=max_bytes)
    if bytes(data).removesuffix(b"\n") != canonical_json(value):
        raise RecordError("record is not in canonical form")
    doc = _as_dict(value)
    _check_shape(doc)
    return doc


def _check_shape(doc: Mapping[str, object]) -> bytes:
    """Check a record's fields and types; return the decoded signature."""
    if not isinstance(doc, Mapping):
        raise RecordError(f"record must be a JSON object, got {type(doc).__name__}")
    names = set(doc)
    if names != RECORD_FIELDS:
        missing = sorted(RECORD_FIELDS - names)
        extra = sorted(_short(name) for name in names - RECORD_FIELDS)
        raise RecordError(f"record fields: missing {missing}, unexpected {extra}")
    kind = doc[FIELD_KIND]
    if not isinstance(kind, str):
        raise RecordError("record kind is not a string")
    _check_kind(kind)
    if not isinstance(doc[FIELD_BODY], dict):
        raise RecordError("record body is not a JSON object")
    if not isinstance(doc[FIELD_SIGNER], str):
        raise RecordError("record signer is not a string")
    if doc[FIELD_ALG] != ALG_ED25519:
        raise RecordError(f"unsupported signature algorithm {_short(doc[FIELD_ALG])}")
    sig = doc[FIELD_SIG]
    if not isinstance(sig, str):
        raise RecordError("record signature is not a string")
    try:
        signature = base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        raise RecordError("record signature is not base64") from None
    if len(signature) != ED25519_SIGNATURE_BYTES or base64.b64encode(signature).decode() != sig:
        raise RecordError("record signature is not 64 bytes of canonical base64")
    return signature


def _check_kind(kind: str) -> None:
    if not isinstance(kind, str) or KIND_PATTERN.fullmatch(kind) is None:
        raise RecordError(f"malformed record kind {_short(kind)}")


def _as_dict(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise RecordError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _short(value: object) -> str:
    """Quote an untrusted value for a message, bounded in length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
