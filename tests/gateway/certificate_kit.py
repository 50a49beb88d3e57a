"""Erasure certificates for the gateway's tests: the contract's body, signed like ``erase`` does."""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import KIND_ERASURE_CERTIFICATE, dumps_record, fingerprint, sign_record

STARTED = "2026-07-20T10:00:00.000+09:00"
FINISHED = "2026-07-20T10:00:03.250+09:00"


def certificate_body(
    key: Ed25519PrivateKey,
    batch_id: str,
    tenant: str,
    size: int,
    sha256: str,
    /,
    **overrides: object,
) -> dict[str, object]:
    """The body ``erase`` signs for a batch whose envelope has ``size`` and ``sha256``."""
    body: dict[str, object] = {
        "batch_id": batch_id,
        "tenant": tenant,
        "channel": "lgwan",
        "items": [
            {
                "kind": "envelope",
                "path": f"/srv/spool/{batch_id}.age",
                "size": size,
                "sha256": sha256,
            },
            {
                "kind": "plaintext",
                "path": f"/srv/work/{batch_id}/notices.csv",
                "size": 120,
                "sha256": "ab" * 32,
            },
        ],
        "method": "zero-overwrite-1-pass+unlink",
        "started_at": STARTED,
        "finished_at": FINISHED,
        "handler": "yamada",
        "approver": "sato",
        "opened": True,
        "printsite_key": fingerprint(key.public_key()),
    }
    body.update(overrides)
    return body


def sign(key: Ed25519PrivateKey, body: Mapping[str, object], kind: str = "") -> bytes:
    """The certificate file's bytes (``kind`` defaults to the erasure certificate's)."""
    return dumps_record(sign_record(kind or KIND_ERASURE_CERTIFICATE, body, key))


def certificate(
    key: Ed25519PrivateKey,
    batch_id: str,
    tenant: str,
    size: int,
    sha256: str,
    /,
    **overrides: object,
) -> bytes:
    """A signed erasure certificate (see :func:`certificate_body`)."""
    return sign(key, certificate_body(key, batch_id, tenant, size, sha256, **overrides))
