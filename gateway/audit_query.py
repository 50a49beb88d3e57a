"""Reading the audit log: verify it, search it, export it, follow it.

:func:`verify` is the only reader that checks anything: the chain line by line
and every signed checkpoint, on a snapshot taken under a shared flock (a
running ``serve`` appends and checkpoints under an exclusive one), so a record
being written is never mistaken for a torn, tampered line. :func:`search`,
:func:`export` and :func:`tail` trust the bytes they read (run ``audit verify``
first) but never crash on them: a line that is not a JSON object is an
:class:`AuditError` naming its line, and a torn last line (a write in progress,
or a crash the writer will repair) is skipped.

Time filters: ``since <= time < until``; naive datetimes are taken as local time.
Exports are written atomically (a temporary file in the same directory, fsynced,
then renamed) with mode 0600. CSV is UTF-8 *with* a BOM so Excel shows Japanese,
in the fixed columns :data:`CSV_COLUMNS`, the last one (``detail``) holding
the record's other fields as JSON (the chain fields ``prev`` and ``hash`` are
left out; the JSON-lines export keeps each record byte for byte). Cells that
Excel would run as a formula (starting ``= + - @``, tab or CR) get a leading
``'``.
"""

import contextlib
import csv
import fcntl
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import GENESIS, CustodyError, VerifyReport, fingerprint, loads_record, verify_chain
from custody.canonical import canonical_json, parse_json_strict
from custody.chain import MAX_LINE_BYTES
from gateway.audit_fields import COMMON_FIELDS
from gateway.audit_files import AuditError
from gateway.i18n import _

CSV_COLUMNS = ("seq", "time", "event", *COMMON_FIELDS, "detail")
"""Column order of the CSV export."""
CSV_ENCODING = "utf-8-sig"
"""UTF-8 with a byte-order mark: Excel then reads Japanese correctly."""
_NOT_IN_DETAIL = frozenset({*CSV_COLUMNS, "prev", "hash"})
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_TAIL_BLOCK = 1 << 16

Format = Literal["csv", "jsonl"]


@dataclass(frozen=True)
class AuditReport(VerifyReport):
    """A :class:`custody.VerifyReport` plus what the checkpoint file held.

    Attributes:
        checkpoints: Number of checkpoint records read.
        last_checkpoint: Highest seq a checkpoint attests, or None.
        signer: Fingerprint of the key the checkpoints were checked against.
    """

    checkpoints: int = 0
    last_checkpoint: int | None = None
    signer: str = ""


@dataclass(frozen=True)
class Filters:
    """Which records a search selects; None matches anything."""

    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    tenant: str | None = None
    batch: str | None = None
    event: str | None = None

    def match(self, record: dict[str, object]) -> bool:
        """Tell whether a record passes every filter."""
        for name in ("user", "tenant", "batch", "event"):
            wanted = getattr(self, name)
            if wanted is not None and record.get(name) != wanted:
                return False
        if self.since is None and self.until is None:
            return True
        try:
            when = datetime.fromisoformat(str(record.get("time")))
        except ValueError:
            return False
        if self.since is not None and when < _aware(self.since):
            return False
        return self.until is None or when < _aware(self.until)


def verify(log: Path, checkpoints: Path, public_key: Ed25519PublicKey) -> AuditReport:
    """Verify the whole log against every signed checkpoint.

    Args:
        log: The audit log.
        checkpoints: Its checkpoint file (a missing file fails verification:
            the writer always creates it).
        public_key: The gateway signing key's public half.

    Returns:
        The report; not ok at the first changed, removed, inserted, reordered
        or torn record, at a malformed or badly signed checkpoint line, or
        when the log ends before the last checkpoint.

    Raises:
        AuditError: The log cannot be read.
    """
    signer = fingerprint(public_key)
    try:
        stream = log.open("rb")
    except OSError as exc:
        raise _unreadable(log, exc) from None
    with stream:
        # A snapshot while serve may be writing: writers append whole lines and write
        # checkpoints under an exclusive flock on the log, so under a shared one the
        # log ends at a line boundary and every checkpoint covers what is there.
        # Only sizes are taken under the lock (serve's writers wait meanwhile).
        try:
            with _shared_lock(stream.fileno()):
                size = os.fstat(stream.fileno()).st_size
                cp_stream = _open_checkpoints(checkpoints)
                cp_size = os.fstat(cp_stream.fileno()).st_size
            with cp_stream:
                docs = _parse_checkpoints(checkpoints, _Prefix(cp_stream, cp_size))
        except AuditError as exc:
            return AuditReport(False, 0, GENESIS, None, None, str(exc), signer=signer)
        try:
            report = verify_chain(
                _lines(_Prefix(stream, size)), checkpoints=docs, public_key=public_key
            )
        except OSError as exc:
            raise _unreadable(log, exc) from None
    seqs = [body.get("seq") for body in (doc.get("body") for doc in docs) if isinstance(body, dict)]
    last = max((s for s in seqs if isinstance(s, int)), default=None)
    return AuditReport(
        report.ok,
        report.records,
        report.head,
        report.first_bad_seq,
        report.first_bad_line,
        report.reason,
        checkpoints=len(docs),
        last_checkpoint=last,
        signer=signer,
    )


def search(
    log: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    tenant: str | None = None,
    batch: str | None = None,
    event: str | None = None,
) -> Iterator[dict[str, object]]:
    """Stream the records that match every given filter, in log order.

    Raises:
        AuditError: The log cannot be read, or a line is not a JSON object.
    """
    filters = Filters(since, until, user, tenant, batch, event)
    for record in records(log):
        if filters.match(record):
            yield record


def export(
    log: Path,
    out: Path,
    fmt: Format,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    user: str | None = None,
    tenant: str | None = None,
    batch: str | None = None,
    event: str | None = None,
) -> int:
    """Write the matching records to ``out`` atomically, as CSV or JSON lines.

    Args:
        log: The audit log.
        out: The file to create or replace.
        fmt: ``"csv"`` (UTF-8 with BOM, CSV_COLUMNS) or ``"jsonl"`` (the
            records' lines as in the log).
        since, until, user, tenant, batch, event: As for :func:`search`.

    Returns:
        The number of records written.

    Raises:
        AuditError: The log cannot be read or ``out`` cannot be written.
        ValueError: An unknown format.
    """
    if fmt not in ("csv", "jsonl"):
        raise ValueError(f"unknown export format {fmt!r}")
    selected = search(
        log, since=since, until=until, user=user, tenant=tenant, batch=batch, event=event
    )
    try:
        with _atomic(out) as handle:
            if fmt == "jsonl":
                return _write_jsonl(selected, handle)
            return _write_csv(selected, handle)
    except OSError as exc:
        raise AuditError(
            _("cannot write {path}: {reason}").format(path=out, reason=exc.strerror or exc)
        ) from None


def tail(
    log: Path,
    n: int = 10,
    follow: bool = False,
    *,
    poll_seconds: float = 0.5,
    stop: threading.Event | None = None,
) -> Iterator[dict[str, object]]:
    """Yield the last ``n`` records, then, when following, each new one.

    Args:
        log: The audit log.
        n: How many existing records to show first.
        follow: Keep waiting for new records until ``stop`` is set (or forever).
        poll_seconds: How often to look for new records.
        stop: Set it to end a follow.

    Raises:
        AuditError: The log cannot be read, a line is not a JSON object, or
            the log shrank while followed.
    """
    try:
        stream = log.open("rb")
    except OSError as exc:
        raise _unreadable(log, exc) from None
    with stream:
        pos = _tail_offset(stream, max(n, 0))
        stream.seek(pos)
        while True:
            line = stream.readline(MAX_LINE_BYTES + 1)
            if line.endswith(b"\n"):
                pos += len(line)
                yield _record(line, log, None)
                continue
            if not follow:
                return
            if os.fstat(stream.fileno()).st_size < pos:
                raise AuditError(
                    _("the audit log {path} shrank while being followed").format(path=log)
                )
            stream.seek(pos)  # re-read a line still being written
            if stop is not None and stop.wait(poll_seconds):
                return
            if stop is None:
                time.sleep(poll_seconds)


def records(log: Path) -> Iterator[dict[str, object]]:
    """Stream every complete record of the log, unverified.

    Raises:
        AuditError: The log cannot be read, or a line is not a JSON object.
    """
    try:
        stream = log.open("rb")
    except OSError as exc:
        raise _unreadable(log, exc) from None
    with stream:
        for line_no, line in enumerate(_lines(stream), 1):
            if not line.endswith(b"\n"):
                return  # a torn last line
            yield _record(line, log, line_no)


def _unreadable(log: Path, exc: OSError) -> AuditError:
    return AuditError(
        _("cannot read the audit log {path}: {reason}").format(path=log, reason=exc.strerror or exc)
    )


def _record(line: bytes, log: Path, line_no: int | None) -> dict[str, object]:
    try:
        value = parse_json_strict(line[:-1], max_bytes=MAX_LINE_BYTES)
    except CustodyError:
        value = None
    if not isinstance(value, dict):
        if line_no is None:
            problem = _("{path}: not an audit record").format(path=log)
        else:
            problem = _("{path} line {line}: not an audit record").format(path=log, line=line_no)
        raise AuditError(problem, hint=_("run 'lgwan-gateway audit verify'"))
    return value


@contextlib.contextmanager
def _shared_lock(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class _Prefix:
    """The first ``size`` bytes of a stream, read line by line."""

    def __init__(self, stream: IO[bytes], size: int) -> None:
        self._stream = stream
        self._left = size

    def readline(self, limit: int) -> bytes:
        if self._left <= 0:
            return b""
        line = self._stream.readline(min(limit, self._left))
        self._left -= len(line)
        return line


def _lines(stream: "IO[bytes] | _Prefix") -> Iterator[bytes]:
    """A file's lines, each cut at MAX_LINE_BYTES + 1 so a huge line cannot exhaust memory."""
    while line := stream.readline(MAX_LINE_BYTES + 1):
        yield line


def _open_checkpoints(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise AuditError(_("checkpoint file {path} is missing").format(path=path)) from None
    except OSError as exc:
        raise AuditError(
            _("cannot read {path}: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None


def _parse_checkpoints(path: Path, stream: "IO[bytes] | _Prefix") -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for line_no, line in enumerate(_lines(stream), 1):
        try:
            if not line.endswith(b"\n"):
                raise AuditError(_("torn or overlong line"))
            docs.append(loads_record(line))
        except (AuditError, CustodyError) as exc:
            raise AuditError(
                _("checkpoint file line {line}: {problem}").format(line=line_no, problem=exc)
            ) from None
    return docs


def _tail_offset(stream: IO[bytes], n: int) -> int:
    """Byte offset where the last ``n`` complete lines start (reading backwards by blocks)."""
    pos = stream.seek(0, os.SEEK_END)
    blocks: list[bytes] = []
    newlines = 0
    while pos > 0 and newlines <= n:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        stream.seek(pos)
        blocks.append(stream.read(step))
        newlines += blocks[-1].count(b"\n")
    data = b"".join(reversed(blocks))
    cut = data.rfind(b"\n")  # anything after it is a torn last line
    if n == 0:
        return pos + cut + 1
    for _line in range(n):
        cut = data.rfind(b"\n", 0, cut)
        if cut < 0:
            return pos
    return pos + cut + 1


@contextlib.contextmanager
def _atomic(out: Path) -> Iterator[IO[bytes]]:
    """Write a temporary file beside ``out``; fsync and rename it into place on success."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(out)
    except BaseException:
        with contextlib.suppress(OSError):
            Path(tmp).unlink()
        raise
    dir_fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_jsonl(selected: Iterator[dict[str, object]], handle: IO[bytes]) -> int:
    count = 0
    for record in selected:
        handle.write(canonical_json(record) + b"\n")
        count += 1
    return count


def _write_csv(selected: Iterator[dict[str, object]], handle: IO[bytes]) -> int:
    text = io.TextIOWrapper(handle, encoding=CSV_ENCODING, newline="")
    writer = csv.writer(text)
    writer.writerow(CSV_COLUMNS)
    count = 0
    for record in selected:
        writer.writerow(csv_row(record))
        count += 1
    text.flush()
    text.detach()
    return count


def csv_row(record: dict[str, object]) -> list[str]:
    """One record as the cells of CSV_COLUMNS."""
    detail = {k: v for k, v in record.items() if k not in _NOT_IN_DETAIL}
    cells = [_cell(record.get(name)) for name in CSV_COLUMNS[:-1]]
    text = json.dumps(detail, ensure_ascii=False, sort_keys=True) if detail else ""
    return [*cells, text]


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _aware(when: datetime) -> datetime:
    return when if when.utcoffset() is not None else when.astimezone()
