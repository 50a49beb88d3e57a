"""The newest status record the ward has seen of each batch: an older one served again is stale.

Status records are signed and bound to their batch and tenant, but an older
genuine record of the *same* batch still verifies. The gateway numbers each
batch's records (``seq``); ``status`` keeps the highest ``seq`` it accepted per
batch in ``status-seen.json`` beside the ledger and refuses a lower one as
stale (exit 1): the gateway, or whoever can write its storage, served an
earlier state again (for instance ``forwarded`` over ``quarantined``).

The file is JSON ``{"<batch>": seq}``, written atomically (temporary file,
fsync, rename, directory fsync) with mode 0600. Concurrent ``status`` runs
merge: each keeps the higher ``seq`` already in the file.
"""

import json
import os
import secrets
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from client.config import ClientConfig
from client.durable import fsync_dir
from client.errors import ClientError
from client.i18n import _

if TYPE_CHECKING:
    from client.status import BatchStatus

SEEN_NAME = "status-seen.json"
MAX_SEEN_BYTES = 64 << 20


def path_for(config: ClientConfig) -> Path:
    """``status-seen.json`` in the ledger's directory."""
    return config.path(config.ledger.path).with_name(SEEN_NAME)


def load(path: Path) -> dict[str, int]:
    """The recorded seqs ({} when there is no file yet).

    Raises:
        ClientError: the file exists but is not a ``{batch: seq}`` object.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot read: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    try:
        if len(data) > MAX_SEEN_BYTES:
            raise ValueError("too large")
        value = json.loads(data)
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in value.items()
        ):
            raise ValueError("not an object of batch ids and counts")
    except ValueError as exc:
        raise ClientError(
            _("{path}: not a valid status-seen file: {reason}").format(path=path, reason=exc),
            hint=_(
                "it records the newest status record seen of each batch; restore it from a "
                "backup, or remove it to start over"
            ),
        ) from None
    return value


def check(items: Iterable["BatchStatus"], seen: dict[str, int]) -> tuple[list["BatchStatus"], bool]:
    """Mark valid items older than what ``seen`` holds as stale; raise ``seen`` for newer ones.

    Returns:
        The items (stale ones replaced) and whether ``seen`` changed.
    """
    checked, changed = [], False
    for item in items:
        seq = item.seq
        if item.valid and seq is not None:
            before = seen.get(item.batch_id)
            if before is not None and seq < before:
                item = replace(
                    item, state=None, at=None, reason=None, stale=True,
                    problem=_(
                        "status record seq {seq} is older than seq {seen} seen before "
                        "(an earlier record served again)"
                    ).format(seq=seq, seen=before),
                )  # fmt: skip
            elif before is None or seq > before:
                seen[item.batch_id] = seq
                changed = True
        checked.append(item)
    return checked, changed


def save(path: Path, seen: dict[str, int]) -> None:
    """Write ``seen`` merged with the file's current content (the higher seq wins).

    Raises:
        ClientError: the file cannot be read or written.
    """
    merged = load(path)
    for batch, seq in seen.items():
        merged[batch] = max(seq, merged.get(batch, seq))
    data = json.dumps(merged, sort_keys=True, indent=0).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # beside the ledger-to-be
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
        fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ClientError(
            _("{path}: cannot write: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
