"""Erasure certificates for tests: bodies built from a ward's `sealed` ledger entry, signed here.

The print site's real `erase` builds the same body (contract of issue 6); these
helpers let the ward-side tests sign certificates with a generated key without
running a print site.
"""

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import KIND_ERASURE_CERTIFICATE, dumps_record, fingerprint, sign_record

TENANT = "shinjuku"
WORK_DIR = "/srv/printsite/work"
SPOOL = "/srv/printsite/spool"


def body(sealed: Mapping[str, Any], key: Ed25519PrivateKey, **changes: object) -> dict[str, object]:
    """A certificate body for ``sealed``'s batch: envelope, staging and (if opened) plaintext items.

    ``changes`` replace body fields; ``opened=False`` also leaves the plaintext items out.
    """
    batch = str(sealed["batch"])
    opened = changes.get("opened", True)
    items: list[dict[str, object]] = [
        {
            "kind": "envelope",
            "path": f"{SPOOL}/{batch}.age",
            "size": sealed["envelope_size"],
            "sha256": sealed["envelope_sha256"],
        },
        {
            "kind": "staging",
            "path": f"{SPOOL}/.pull/{batch}.age.part",
            "size": int(sealed["envelope_size"]) // 2,
            "sha256": "0" * 64,
        },
    ]
    if opened:
        items += [
            {
                "kind": "plaintext",
                "path": f"{WORK_DIR}/{batch}/{spec['name']}",
                "size": spec["size"],
                "sha256": spec["sha256"],
            }
            for spec in sealed["files"]
        ]
    made: dict[str, object] = {
        "batch_id": batch,
        "tenant": TENANT,
        "channel": "lgwan",
        "items": items,
        "method": "zero-overwrite-1-pass+unlink",
        "started_at": "2026-07-20T10:00:00.000+09:00",
        "finished_at": "2026-07-20T10:00:05.000+09:00",
        "handler": "印刷 太郎",
        "approver": "管理 花子",
        "opened": opened,
        "printsite_key": fingerprint(key.public_key()),
    }
    made.update(changes)
    return made


def signed(made: Mapping[str, object], key: Ed25519PrivateKey) -> bytes:
    """The certificate file's bytes: the record signed by ``key`` in its one byte form."""
    return dumps_record(sign_record(KIND_ERASURE_CERTIFICATE, made, key))


def with_item(made: Mapping[str, object], which: str, /, **changes: object) -> dict[str, object]:
    """``made`` with the first item of kind ``which`` changed."""
    items = [dict(item) for item in made["items"]]  # type: ignore[attr-defined]
    first = next(item for item in items if item["kind"] == which)
    first.update(changes)
    return {**made, "items": items}


def plus_items(made: Mapping[str, object], *items: Mapping[str, object]) -> dict[str, object]:
    """``made`` with ``items`` appended to its item list."""
    listed: list[object] = list(made["items"])  # type: ignore[call-overload]
    return {**made, "items": [*listed, *(dict(item) for item in items)]}
