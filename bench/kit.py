"""Small pieces the benchmarks share: batch ids, envelopes to send, file hashes."""

import hashlib
import os
import secrets
from pathlib import Path

from envelope import EncryptingWriter

MIB = 1024 * 1024
WORK_FACTOR = 10
"""The benchmark envelopes' scrypt work factor (the gateways' minimum is lowered to it)."""
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch_id() -> str:
    """A fresh batch id (``YYYYMMDD-TYPE-XXXXXX``)."""
    return "20260715-BENCH-" + "".join(secrets.choice(_SUFFIX) for _ in range(6))


def write_envelope(path: Path, size: int) -> None:
    """A valid age envelope (scrypt, WORK_FACTOR) of ``size`` bytes of random plaintext."""
    block = os.urandom(MIB)
    with (
        path.open("wb") as handle,
        EncryptingWriter(handle, "bench passphrase", work_factor=WORK_FACTOR) as writer,
    ):
        left = size
        while left > 0:
            writer.write(block[: min(left, MIB)])
            left -= MIB


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()
