"""The erasure certificate as ``erase`` issues it: its body and its create-once JSON file.

:func:`certificate_body` builds exactly the fields of
:mod:`custody.erasure_certificate` from the erasure journal;
:func:`write_once` puts the signed certificate at
``<certificate_dir>/<batch>.erasure.json`` (0644) atomically and never over
another one, adopting a certificate of this very erasure that a killed run
left (:func:`same_erasure`).
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import (
    KIND_ERASURE_CERTIFICATE,
    MAX_CERTIFICATE_BYTES,
    fingerprint,
    loads_record,
    verify_record,
)
from custody.errors import CustodyError
from gateway.custody_lock import fsync_dir
from gateway.erasure import ErasureError, method_name
from gateway.i18n import _
from gateway.state import ErasureRecord

CERTIFICATE_MODE = 0o644
"""The certificate holds no secret: it is handed to the ward."""


def certificate_body(
    record: ErasureRecord,
    finished: datetime,
    key: Ed25519PrivateKey,
    *,
    opened: bool,
    passes: int = 1,
) -> dict[str, object]:
    """The erasure certificate's body (exactly the contract's fields) for a finished erasure.

    The method is the one the journal recorded (``passes`` only for a journal without one).
    """
    return {
        "batch_id": record.batch_id,
        "tenant": record.tenant,
        "channel": record.channel,
        "items": [
            {"kind": i.kind, "path": i.path, "size": i.size, "sha256": i.sha256}
            for i in record.items
        ],
        "method": record.method or method_name(passes),
        "started_at": record.started_at.isoformat(timespec="milliseconds"),
        "finished_at": finished.isoformat(timespec="milliseconds"),
        "handler": record.handler,
        "approver": record.approver,
        "opened": opened,
        "printsite_key": fingerprint(key.public_key()),
    }


def write_once(path: Path, data: bytes, key: Ed25519PrivateKey, record: ErasureRecord) -> bytes:
    """Put ``data`` at ``path`` atomically, never replacing another certificate.

    A certificate already there for this very erasure (a run killed after
    writing it) is adopted: its bytes are returned instead.

    Raises:
        ErasureError: a different certificate is there.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.chmod(CERTIFICATE_MODE)
        try:
            os.link(temp, path)
        except FileExistsError:
            present = read_certificate(path)
            if present != data and not same_erasure(present, key, record):
                raise ErasureError(
                    _(
                        "{path} already holds a different erasure certificate; nothing was"
                        " overwritten and the erasure is not finished"
                    ).format(path=path),
                    hint=_("move the old certificate away after checking it, then run erase again"),
                ) from None
            data = present
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return data


def same_erasure(data: bytes, key: Ed25519PrivateKey, record: ErasureRecord) -> bool:
    """Whether ``data`` is this site's certificate of exactly this (started) erasure."""
    try:
        body = verify_record(loads_record(data), key.public_key(), kind=KIND_ERASURE_CERTIFICATE)
    except CustodyError:
        return False
    mine = certificate_body(record, record.started_at, key, opened=False)
    same = ("batch_id", "tenant", "channel", "items", "started_at", "handler", "approver")
    return all(body.get(name) == mine[name] for name in same)


def refuse_foreign_certificate(
    path: Path, key: Ed25519PrivateKey, record: ErasureRecord | None
) -> None:
    """Before erasing anything: the certificate's name must be free (or hold this erasure's).

    Raises:
        ErasureError: something else is there.
    """
    if not os.path.lexists(path):
        return
    if record is not None and same_erasure(read_certificate(path), key, record):
        return
    raise ErasureError(
        _(
            "{path} already exists but is not the certificate of this erasure; nothing was erased"
        ).format(path=path),
        hint=_("move it away after checking it, then run erase again"),
    )


def read_certificate(path: Path) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ErasureError(
            _("{path} exists but cannot be read: {reason}").format(path=path, reason=exc.strerror)
        ) from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(MAX_CERTIFICATE_BYTES + 1)
