"""Append-only, hash-chained JSON-lines logs and their signed checkpoints.

Each line of a log is the canonical JSON of one entry plus ``\\n``::

    {"seq": N, "prev": PREV, "time": "2025-07-01T09:00:00+09:00", ...fields..., "hash": H}

``seq`` counts from 1; ``prev`` is the ``hash`` of the entry before
(:data:`GENESIS_HASH`, 64 zeros, for the first); ``time`` is ISO 8601 with a UTC
offset, given by the caller; and ``H`` is the lower-case hex SHA-256 of the
canonical JSON of the entry *without* its ``hash`` field. A line's bytes are
therefore fully determined by its content: change, drop, insert or reorder any
line and verification fails at that line. Dropping records at the *end* leaves a
shorter valid chain; that is caught by a signed checkpoint
(:func:`make_checkpoint`), a record of kind ``checkpoint`` saying "seq S had hash
H" — the log must still contain seq S with hash H.

Pure: the caller opens, locks, fsyncs and truncates files; this module reads
and writes only the streams and lines it is given, one line at a time.
"""

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody.canonical import canonical_json, parse_json_strict
from custody.errors import ChainError, CustodyError, RecordError
from custody.records import KIND_CHECKPOINT, sign_record, verify_record

FIELD_SEQ = "seq"
FIELD_PREV = "prev"
FIELD_TIME = "time"
FIELD_HASH = "hash"
RESERVED_FIELDS = frozenset({FIELD_SEQ, FIELD_PREV, FIELD_TIME, FIELD_HASH})
"""Entry fields set by the chain; callers' fields may not use these names."""
CHECKPOINT_FIELDS = frozenset({FIELD_SEQ, FIELD_HASH, FIELD_TIME})
"""Exactly the fields of a checkpoint record's body."""

GENESIS_HASH = "0" * 64
"""The ``prev`` of the first entry."""

MAX_LINE_BYTES = 1 << 16
"""Longest line written or accepted, newline included, in bytes."""
MAX_TIME_CHARS = 64

_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ChainHead:
    """The last entry of a chain: its sequence number and hash.

    Attributes:
        seq: Sequence number of the last entry; 0 for an empty log.
        hash: Its hex SHA-256; GENESIS_HASH for an empty log.
    """

    seq: int
    hash: str

    def __post_init__(self) -> None:
        """Check the head is well formed.

        Raises:
            ChainError: A negative or non-int seq, or a hash that is not 64
                lower-case hex digits.
        """
        if not isinstance(self.seq, int) or isinstance(self.seq, bool) or self.seq < 0:
            raise ChainError(f"chain head seq must be an integer >= 0, got {self.seq!r}")
        if not isinstance(self.hash, str) or _HEX_SHA256.fullmatch(self.hash) is None:
            raise ChainError("chain head hash must be 64 lower-case hex digits")


GENESIS = ChainHead(0, GENESIS_HASH)
"""The head of an empty log."""


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify_chain`.

    Attributes:
        ok: True only if every line and every checkpoint verified.
        records: Number of entries verified before the first failure (all of
            them when ok).
        head: Head after the last verified entry.
        first_bad_seq: The seq expected at the first failure, or None.
        first_bad_line: 1-based line number of the first bad line, or None
            (also None for truncation and checkpoint failures).
        reason: What failed, or None when ok.
    """

    ok: bool
    records: int
    head: ChainHead
    first_bad_seq: int | None
    first_bad_line: int | None
    reason: str | None


def make_entry(head: ChainHead, fields: Mapping[str, object], time: str) -> tuple[bytes, ChainHead]:
    """Build the next line of a chain.

    Args:
        head: The head of the chain so far (GENESIS for an empty log).
        fields: The caller's fields; canonical JSON values, no reserved names.
        time: ISO 8601 date-time with a UTC offset, e.g. ``2025-07-01T09:00:00+09:00``.

    Returns:
        The line (canonical JSON plus ``\\n``) and the new head.

    Raises:
        ChainError: A reserved field name, a time without offset, or a line
            longer than MAX_LINE_BYTES.
        RecordError: A field value that is not canonical JSON.
    """
    if not isinstance(fields, Mapping):
        raise ChainError(f"entry fields must be a mapping, got {type(fields).__name__}")
    reserved = RESERVED_FIELDS.intersection(fields)
    if reserved:
        raise ChainError(f"reserved field names in entry: {sorted(reserved)}")
    _check_time(time)
    entry: dict[str, object] = dict(fields)
    entry[FIELD_SEQ] = head.seq + 1
    entry[FIELD_PREV] = head.hash
    entry[FIELD_TIME] = time
    digest = hashlib.sha256(canonical_json(entry)).hexdigest()
    entry[FIELD_HASH] = digest
    line = canonical_json(entry) + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ChainError(f"entry of {len(line)} bytes exceeds the cap of {MAX_LINE_BYTES}")
    return line, ChainHead(head.seq + 1, digest)


def parse_entry(line: bytes, *, max_line_bytes: int = MAX_LINE_BYTES) -> dict[str, object]:
    """Parse one line and check it on its own (not its place in the chain).

    Args:
        line: The line, including its trailing newline.
        max_line_bytes: Refuse longer lines.

    Returns:
        The entry, including seq, prev, time and hash.

    Raises:
        ChainError: Torn (no newline), too long, not strict canonical JSON, a
            reserved field missing or malformed, or a hash that does not match.
    """
    if not isinstance(line, bytes | bytearray):
        raise ChainError(f"line must be bytes, got {type(line).__name__}")
    if len(line) > max_line_bytes:
        raise ChainError(f"line longer than the cap of {max_line_bytes} bytes")
    if not line.endswith(b"\n"):
        raise ChainError("line is not newline-terminated (torn write)")
    body = bytes(line[:-1])
    try:
        entry = parse_json_strict(body, max_bytes=max_line_bytes)
        canonical = canonical_json(entry)
    except RecordError as exc:
        raise ChainError(f"unparseable line: {exc}") from None
    if not isinstance(entry, dict):
        raise ChainError("line is not a JSON object")
    if canonical != body:
        raise ChainError("line is not in canonical form")
    digest = entry.get(FIELD_HASH)
    if not isinstance(digest, str) or _HEX_SHA256.fullmatch(digest) is None:
        raise ChainError("hash field missing or not 64 hex digits")
    unhashed = {name: value for name, value in entry.items() if name != FIELD_HASH}
    if hashlib.sha256(canonical_json(unhashed)).hexdigest() != digest:
        raise ChainError("hash mismatch: the line's content was changed")
    seq = entry.get(FIELD_SEQ)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise ChainError("seq field missing or not an integer >= 1")
    prev = entry.get(FIELD_PREV)
    if not isinstance(prev, str) or _HEX_SHA256.fullmatch(prev) is None:
        raise ChainError("prev field missing or not 64 hex digits")
    _check_time(entry.get(FIELD_TIME))
    return entry


class ChainWriter:
    """Appends entries to a log through a binary stream the caller opened.

    Each entry is written with a single ``write()`` followed by ``flush()``;
    fsync and locking are the caller's. After a failed write the writer
    refuses further appends: the caller must re-open the log, call
    :func:`recover_head` and truncate any torn tail.
    """

    def __init__(self, stream: BinaryIO, head: ChainHead) -> None:
        """Wrap an append stream positioned at the end of a log.

        Args:
            stream: Binary stream opened for appending.
            head: The head of the log already in the stream (GENESIS if empty).
        """
        self._stream = stream
        self._head = head
        self._failed = False

    @property
    def head(self) -> ChainHead:
        """The head after the last successful append."""
        return self._head

    def append(self, fields: Mapping[str, object], time: str) -> ChainHead:
        """Append one entry.

        Args:
            fields: The caller's fields (see make_entry).
            time: ISO 8601 date-time with a UTC offset.

        Returns:
            The new head.

        Raises:
            ChainError: As for make_entry; a short write; or an earlier write failed.
            RecordError: A field value that is not canonical JSON.
            OSError: Writing or flushing failed (the writer is then unusable).
        """
        if self._failed:
            raise ChainError("an earlier write failed; recover the head and reopen the log")
        line, head = make_entry(self._head, fields, time)
        try:
            written = self._stream.write(line)
            if written is not None and written != len(line):
                raise ChainError(f"short write: {written} of {len(line)} bytes")
            self._stream.flush()
        except BaseException:
            self._failed = True
            raise
        self._head = head
        return head

    def __repr__(self) -> str:
        """Show the head, not the stream."""
        return f"ChainWriter(head=ChainHead(seq={self._head.seq}, hash={self._head.hash!r}))"


def recover_head(
    stream: BinaryIO, *, max_line_bytes: int = MAX_LINE_BYTES
) -> tuple[ChainHead, int]:
    """Scan an existing log to find where to resume appending.

    Reads from the stream's current position (normally 0), one line at a time.

    Args:
        stream: Binary stream over the log.
        max_line_bytes: Refuse longer lines.

    Returns:
        The head of the last complete entry, and the byte offset (from where
        reading started) at which the log's complete lines end. A torn final
        line from a crash mid-write starts at that offset; the caller
        truncates the file there before appending. Without a torn line the
        offset is the stream's length.

    Raises:
        ChainError: A complete line is broken or out of chain, or the final
            unterminated fragment is longer than any entry could be.
    """
    head = GENESIS
    offset = 0
    line_no = 0
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return head, offset
        line_no += 1
        if not line.endswith(b"\n"):
            if len(line) > max_line_bytes:
                raise ChainError(f"line {line_no}: longer than {max_line_bytes} bytes")
            return head, offset
        try:
            head = _link(parse_entry(line, max_line_bytes=max_line_bytes), head)
        except ChainError as exc:
            raise ChainError(f"line {line_no} (seq {head.seq + 1}): {exc}") from None
        offset += len(line)


def verify_chain(
    lines: Iterable[bytes],
    *,
    checkpoints: Sequence[Mapping[str, object]] = (),
    public_key: Ed25519PublicKey | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> VerifyReport:
    """Verify a whole log, streaming, against optional signed checkpoints.

    Args:
        lines: The log's lines with their newlines, e.g. a binary file object
            (read with a bounded ``readline``, so a hostile line without a
            newline costs at most ``max_line_bytes + 1`` bytes of memory).
        checkpoints: Checkpoint records (make_checkpoint) to hold the log to.
        public_key: The key the checkpoints must be signed with.
        max_line_bytes: Refuse longer lines.

    Returns:
        A report; ``ok`` is False at the first changed, torn, missing,
        inserted or reordered line, a checkpoint that does not verify or does
        not match, or a log that ends before the last checkpoint.

    Raises:
        ChainError: Checkpoints were given without a public key (a usage error,
            raised rather than reported).
    """
    if checkpoints and public_key is None:
        raise ChainError("checkpoints given without a public key to verify them")
    try:
        pinned = _pin_checkpoints(checkpoints, public_key)
    except CustodyError as exc:
        return VerifyReport(False, 0, GENESIS, None, None, str(exc))
    head = GENESIS
    records = 0
    for line_no, line in enumerate(_bounded_lines(lines, max_line_bytes), 1):
        try:
            new_head = _link(parse_entry(line, max_line_bytes=max_line_bytes), head)
            signed_hash = pinned.get(new_head.seq)
            if signed_hash is not None and signed_hash != new_head.hash:
                raise ChainError(f"seq {new_head.seq} differs from its signed checkpoint")
        except ChainError as exc:
            return VerifyReport(False, records, head, head.seq + 1, line_no, str(exc))
        head = new_head
        records += 1
    last_checkpoint = max(pinned, default=0)
    if last_checkpoint > head.seq:
        reason = f"log truncated: checkpoint at seq {last_checkpoint}, log ends at seq {head.seq}"
        return VerifyReport(False, records, head, head.seq + 1, None, reason)
    return VerifyReport(True, records, head, None, None, None)


def _bounded_lines(lines: Iterable[bytes], max_line_bytes: int) -> Iterator[bytes]:
    """The lines of ``lines``; a stream is read with ``readline(max_line_bytes + 1)``.

    Iterating a file object reads a whole line whatever its length, so a log
    with a gigabyte-long line would be held in memory before parse_entry
    refused it; the bounded read hands parse_entry a piece just over the cap.
    """
    readline = getattr(lines, "readline", None)
    if not callable(readline):
        yield from lines
        return
    while True:
        line: bytes = readline(max_line_bytes + 1)
        if not line:
            return
        yield line


def make_checkpoint(head: ChainHead, time: str, key: Ed25519PrivateKey) -> dict[str, object]:
    """Sign a chain head as a checkpoint record.

    Args:
        head: The head to attest.
        time: ISO 8601 date-time with a UTC offset, when the checkpoint was made.
        key: The signing key.

    Returns:
        ``sign_record("checkpoint", {"seq", "hash", "time"}, key)``.

    Raises:
        ChainError: A time without offset.
    """
    _check_time(time)
    body = {FIELD_SEQ: head.seq, FIELD_HASH: head.hash, FIELD_TIME: time}
    return sign_record(KIND_CHECKPOINT, body, key)


def verify_checkpoint(doc: Mapping[str, object], public_key: Ed25519PublicKey) -> ChainHead:
    """Verify a checkpoint record and return the head it attests.

    Args:
        doc: The checkpoint record.
        public_key: The key it must be signed with.

    Returns:
        The attested head.

    Raises:
        SignatureError: Not a checkpoint, another signer, or a bad signature.
        RecordError: A malformed record.
        ChainError: A body without exactly seq, hash and a valid time.
    """
    body = verify_record(doc, public_key, kind=KIND_CHECKPOINT)
    if set(body) != CHECKPOINT_FIELDS:
        raise ChainError(f"checkpoint body must have exactly {sorted(CHECKPOINT_FIELDS)}")
    _check_time(body[FIELD_TIME])
    seq, digest = body[FIELD_SEQ], body[FIELD_HASH]
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise ChainError("checkpoint seq or hash has the wrong type")
    return ChainHead(seq, digest)


def _pin_checkpoints(
    checkpoints: Sequence[Mapping[str, object]], public_key: Ed25519PublicKey | None
) -> dict[int, str]:
    """Verify checkpoints; map each attested seq to its hash."""
    pinned: dict[int, str] = {}
    for index, doc in enumerate(checkpoints, 1):
        if public_key is None:
            raise ChainError("checkpoints given without a public key to verify them")
        try:
            cp = verify_checkpoint(doc, public_key)
        except CustodyError as exc:
            raise ChainError(f"checkpoint {index}: {exc}") from None
        if pinned.setdefault(cp.seq, cp.hash) != cp.hash:
            raise ChainError(f"checkpoint {index}: checkpoints disagree about seq {cp.seq}")
        if cp.seq == 0 and cp.hash != GENESIS_HASH:
            raise ChainError(f"checkpoint {index}: seq 0 with a hash other than genesis")
    return pinned


def _link(entry: Mapping[str, object], head: ChainHead) -> ChainHead:
    """Check an entry follows ``head``; return the new head."""
    seq, prev, digest = entry[FIELD_SEQ], entry[FIELD_PREV], entry[FIELD_HASH]
    if not isinstance(seq, int) or not isinstance(digest, str):
        raise ChainError("entry was not checked by parse_entry")
    if seq != head.seq + 1:
        raise ChainError(
            f"seq {seq} where {head.seq + 1} was expected (record removed, inserted or reordered)"
        )
    if prev != head.hash:
        raise ChainError(f"prev is not the hash of seq {head.seq} (record removed or replaced)")
    return ChainHead(seq, digest)


def _check_time(time: object) -> None:
    if not isinstance(time, str) or len(time) > MAX_TIME_CHARS:
        raise ChainError("time must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(time)
    except ValueError:
        raise ChainError(f"time {time!r} is not ISO 8601") from None
    if parsed.utcoffset() is None:
        raise ChainError(f"time {time!r} has no UTC offset")
