"""The audit log's files: opening for append, locking, and recovery at open.

Used by :mod:`gateway.audit` (the writer). At open, the log is verified in one
pass against its last signed checkpoint (the chain itself catches a change
anywhere before it); a torn last line in either file, left by a crash
mid-write, is cut and reported back so the writer can record an
``audit_repaired`` event.
"""

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody import (
    ChainError,
    ChainHead,
    CustodyError,
    VerifyReport,
    loads_record,
    verify_chain,
    verify_checkpoint,
)
from custody.chain import MAX_LINE_BYTES
from gateway.errors import GatewayError

FILE_MODE = 0o600
"""Mode of a newly created log or checkpoint file."""
_CHECKPOINT_TAIL_BYTES = 1 << 16
"""How much of the checkpoint file's end is read at open to find the last one."""


class AuditError(GatewayError):
    """The audit log cannot be opened, written or read, or it is not intact (exit 1)."""


def describe(report: VerifyReport) -> str:
    """Say what a failed verification found, naming the first bad record."""
    if report.first_bad_line is not None:
        where = f"first bad record seq {report.first_bad_seq} at line {report.first_bad_line}"
        return f"{where}: {report.reason}"
    return str(report.reason)


def open_append(path: Path) -> int:
    """Open (creating it and its directory) a file for locked appends; return its fd.

    Raises:
        AuditError: It cannot be opened (or is a symlink).
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, flags, FILE_MODE)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # a newly created file's entry survives a crash
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise AuditError(f"cannot open {path}: {exc.strerror or exc}") from None
    return fd


@contextlib.contextmanager
def flocked(fd: int) -> Iterator[None]:
    """Hold an exclusive flock on ``fd``: one appender at a time, across processes."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def recover(
    log: Path, fd: int, checkpoints: Path, cp_fd: int, key: Ed25519PrivateKey
) -> tuple[ChainHead, int, int, list[tuple[str, bytes]]]:
    """Check the log against its last checkpoint and cut torn tails.

    Returns the head, the log's size, the last checkpoint's seq and the
    repairs made as (file, dropped bytes).
    """
    public_key = key.public_key()
    repairs: list[tuple[str, bytes]] = []
    last_cp, cp_seq, torn_cp = _last_checkpoint(checkpoints, cp_fd, public_key)
    if torn_cp:
        repairs.append(("checkpoints", torn_cp))
    scan = _Scan(os.fdopen(os.dup(fd), "rb"))
    with scan.stream:
        scan.stream.seek(0)
        pins = [last_cp] if last_cp is not None else []
        report = verify_chain(scan.lines(), checkpoints=pins, public_key=public_key)
    if not report.ok:
        raise AuditError(
            f"refusing to append to the audit log {log}: {describe(report)}",
            hint="keep the file as evidence, run 'lgwan-gateway audit verify', start a new log",
        )
    if scan.torn:
        os.ftruncate(fd, scan.end)
        os.fsync(fd)
        repairs.insert(0, ("log", scan.torn))
    return report.head, scan.end, cp_seq, repairs


class _Scan:
    """Yields a log's complete lines; remembers where they end and any torn tail."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream, self.end, self.torn = stream, 0, b""

    def lines(self) -> Iterator[bytes]:
        while line := self.stream.readline(MAX_LINE_BYTES + 1):
            if not line.endswith(b"\n") and len(line) <= MAX_LINE_BYTES:
                self.torn = line  # readline stopped at the end of the file
                return
            yield line
            self.end += len(line)


def _last_checkpoint(
    path: Path, fd: int, public_key: Ed25519PublicKey
) -> tuple[dict[str, object] | None, int, bytes]:
    """Cut a torn last checkpoint line; return the last checkpoint (verified), its seq, the cut."""
    size = os.fstat(fd).st_size
    start = max(0, size - _CHECKPOINT_TAIL_BYTES)
    data = os.pread(fd, size - start, start)
    cut = data.rfind(b"\n") + 1
    torn = data[cut:]
    if torn:
        if cut == 0 and start > 0:
            raise AuditError(f"{path}: the last line is not a checkpoint record")
        os.ftruncate(fd, start + cut)
        os.fsync(fd)
    body = data[:cut]
    if not body:
        return None, 0, torn
    line_start = body.rfind(b"\n", 0, len(body) - 1) + 1
    if line_start == 0 and start > 0:
        raise AuditError(f"{path}: the last line is not a checkpoint record")
    try:
        doc = loads_record(body[line_start:])
        seq = verify_checkpoint(doc, public_key).seq
    except CustodyError as exc:
        raise AuditError(
            f"refusing to append: the last checkpoint in {path} does not verify: {exc}",
            hint="run 'lgwan-gateway audit verify'; a new signing key needs a new audit log",
        ) from None
    return doc, seq, torn


def link(entry: dict[str, object], head: ChainHead) -> ChainHead:
    """Check an entry (from parse_entry) follows ``head``; return the new head."""
    seq, prev, digest = entry["seq"], entry["prev"], entry["hash"]
    if seq != head.seq + 1 or prev != head.hash or not isinstance(digest, str):
        raise ChainError(f"record seq {seq} does not follow seq {head.seq}")
    return ChainHead(head.seq + 1, digest)


def repair_fields(which: str, dropped: bytes) -> dict[str, object]:
    """Fields of the ``audit_repaired`` event for bytes cut from ``which`` file."""
    digest = hashlib.sha256(dropped).hexdigest()
    return {"file": which, "dropped_bytes": len(dropped), "dropped_sha256": digest}
