"""The print-site spool: where sealed batches arrive, by LGWAN forwarding or by DVD.

Layout under ``[printsite] spool``, one pair per batch::

    <batch>.age           the envelope, exactly as sealed
    <batch>.arrival.json  canonical JSON: batch_id, tenant, channel, size, sha256,
                          arrived_at, source (free detail: receipt fields, disc serials)
    <batch>.erasure.json  after ``lgwan-gateway erase``: a copy of the signed erasure
                          certificate (:meth:`Spool.write_erasure`)

Delivery (:meth:`Spool.deliver`) holds the custody lock shared
(:mod:`gateway.custody_lock`; while ``erase`` runs it fails, :class:`SpoolBusyError`)
and is atomic: the envelope is streamed into ``.<batch>.age.part`` (locked with
``flock`` so two deliveries of one batch never interleave), fsynced and read
back to verify its size and SHA-256; then the arrival record is written
(temporary file, rename) and only then is the ``.part`` renamed to
``<batch>.age``. So ``<batch>.age`` present means complete, with its arrival
record beside it. A crash leaves at most a ``.part`` (reused by the next delivery)
and perhaps an arrival record without an envelope; neither counts as arrived.

Exactly once: delivering a batch already present with the same SHA-256 (and
tenant) returns the existing arrival; a different SHA-256 or tenant under the
same batch id is a :class:`SpoolConflictError`, never an overwrite.

An erased batch keeps ``<batch>.arrival.json`` and ``<batch>.erasure.json`` as
its tombstone: :meth:`Spool.get` and :meth:`Spool.list` still return it (its
envelope is gone, :func:`batch_state` says ``erased``), and delivering it again
returns that tombstone instead of bringing the envelope back. Every name read
from disk is validated (``check_batch_id``) before use; anything else is ignored.
"""

import contextlib
import enum
import fcntl
import hashlib
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

from custody.canonical import canonical_json, parse_json_strict
from custody.erasure_certificate import MAX_CERTIFICATE_BYTES
from custody.errors import RecordError
from envelope import ManifestError
from envelope.manifest import check_batch_id
from gateway.accounts import TENANT_RE
from gateway.audit import local_now
from gateway.custody_lock import custody_lock, fsync_dir
from gateway.envelope_check import _
from gateway.errors import GatewayError

AGE_SUFFIX = ".age"
ARRIVAL_SUFFIX = ".arrival.json"
ERASURE_SUFFIX = ".erasure.json"
PART_SUFFIX = ".part"
CHANNELS = ("lgwan", "dvd")
ARRIVAL_KEYS = frozenset(
    {"batch_id", "tenant", "channel", "size", "sha256", "arrived_at", "source"}
)
MAX_ARRIVAL_BYTES = 64 * 1024
MAX_ERASURE_BYTES = MAX_CERTIFICATE_BYTES
FREE_SPACE_MARGIN = 16 * 1024 * 1024
_BLOCK = 1 << 20
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_LOCK_ATTEMPTS = 5

Clock = Callable[[], datetime]
Verifier = Callable[[Path], None]


class SpoolError(GatewayError):
    """The spool cannot take or show a batch (exit 1)."""


class SpoolConflictError(SpoolError):
    """The spool holds a different batch under the same id; nothing was overwritten."""


class SpoolBusyError(SpoolError):
    """Another delivery of the same batch is in progress (exit 75: retry later)."""

    exit_code = 75


class Readable(Protocol):
    """A binary input stream: all :meth:`Spool.deliver` needs from its source."""

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes; ``b""`` only at the end."""
        ...


@dataclass(frozen=True)
class Arrival:
    """A batch present in the spool, as its arrival record describes it."""

    batch_id: str
    tenant: str
    channel: str
    size: int
    sha256: str
    arrived_at: datetime
    path: Path
    source: dict[str, object] = field(default_factory=dict)


class BatchState(enum.Enum):
    """Where a batch stands at the print site."""

    ARRIVED = "arrived"
    OPENED = "opened"
    ERASING = "erasing"
    ERASED = "erased"


def batch_state(arrival: Arrival, work_dir: Path, *, journaled: bool = False) -> BatchState:
    """Derive a batch's state at the print site (the one place that does).

    ``erased``: ``<batch>.erasure.json`` is in the spool (``lgwan-gateway erase``
    writes it last, after every copy is gone, the journal is finished and the
    certificate is published); else ``erasing``: ``journaled`` (the state
    database holds an erasure of the batch, not completed: run ``erase`` again);
    else ``opened``: ``<work_dir>/<batch>/`` exists (``open`` creates it in
    ``work_dir``, ``[printsite] work_dir``, by one rename after full
    verification); otherwise ``arrived``.
    """
    if os.path.lexists(arrival.path.with_name(arrival.batch_id + ERASURE_SUFFIX)):
        return BatchState.ERASED
    if journaled:
        return BatchState.ERASING
    opened = work_dir / arrival.batch_id
    if opened.is_dir() and not opened.is_symlink():
        return BatchState.OPENED
    return BatchState.ARRIVED


class Spool:
    """The spool directory; creates it (0700) on the first delivery."""

    def __init__(self, root: Path, *, clock: Clock = local_now) -> None:
        """Use ``root`` (``[printsite] spool``); ``clock`` gives the aware arrival time."""
        self.root = root.absolute()
        self._clock = clock

    def path_of(self, batch_id: str) -> Path:
        """Where ``batch_id``'s envelope is (or would be); SpoolError if not a batch id."""
        return self.root / (_checked_id(batch_id) + AGE_SUFFIX)

    def erasure_path(self, batch_id: str) -> Path:
        """Where ``batch_id``'s erasure certificate copy is (or would be); SpoolError as above."""
        return self.root / (_checked_id(batch_id) + ERASURE_SUFFIX)

    def write_erasure(self, batch_id: str, data: bytes) -> Path:
        """Keep a copy of the batch's signed erasure certificate beside its arrival record.

        Written once, atomically (temporary file, fsync, hard link to the final
        name, so two writers cannot both win); the same bytes again are accepted.
        The certificate (``data``, exactly as issued) is not checked here: ``erase``
        signs it, the gateway checks it. Returns the copy's path.

        Raises:
            SpoolConflictError: a different certificate is there already (kept).
            SpoolError: a bad batch id, or ``data`` is larger than a certificate can be.
            OSError: the spool cannot be written.
        """
        target = self.erasure_path(batch_id)
        if len(data) > MAX_ERASURE_BYTES:
            raise SpoolError(
                _("an erasure certificate of {size} bytes is too large").format(size=len(data))
            )
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self.root / f".{batch_id}{ERASURE_SUFFIX}.tmp"
        _write_new(temp, data)
        try:
            os.link(temp, target)
        except FileExistsError:
            if _read_small(target, MAX_ERASURE_BYTES) != data:
                raise SpoolConflictError(
                    _(
                        "{path} holds a different erasure certificate; nothing was overwritten"
                    ).format(path=target),
                    hint=_("compare the two certificates before moving the old one away"),
                ) from None
        finally:
            _unlink_quietly(temp)
        fsync_dir(self.root)
        return target

    def deliver(
        self,
        batch_id: str,
        source: Readable,
        *,
        tenant: str,
        channel: str,
        expected_size: int,
        expected_sha256: str,
        source_detail: Mapping[str, object],
        verify: Verifier | None = None,
    ) -> Arrival:
        """Stream ``source`` into the spool as ``batch_id``, verified and atomic.

        Args:
            batch_id: the batch id (validated).
            source: the envelope's bytes, read to the end (not closed); not read
                at all when the batch is already present.
            tenant: the tenant the batch belongs to (``^[a-z][a-z0-9-]{1,31}$``).
            channel: ``lgwan`` or ``dvd``.
            expected_size: the envelope's size in bytes; expected_sha256: its SHA-256 (hex).
            source_detail: the arrival record's ``source`` (receipt fields, disc serials).
            verify: called with the verified ``.part`` before publishing; raising aborts.

        Returns the arrival (the existing one when the same batch was already here).

        Raises:
            SpoolConflictError: a different batch (SHA-256 or tenant) has this id.
            SpoolBusyError: another delivery of this batch, or an erasure, is in progress.
            SpoolError: bad arguments, not enough free space, the source's size or
                SHA-256 differs from the expected one, or the spool cannot be written.
            OSError: an I/O failure. Whatever ``source`` or ``verify`` raise.
            On any failure nothing new is left under the batch's final name.
        """
        detail = _checked_detail(source_detail)
        _check_fields(batch_id, tenant, channel, expected_size, expected_sha256)
        busy = SpoolBusyError(
            _("an erasure is running at the print site of {spool}").format(spool=self.root),
            hint=_("wait for it to finish, then run the command again"),
        )
        with custody_lock(self.root, exclusive=False, busy=lambda: busy):
            existing = self._existing(batch_id, expected_sha256, tenant)
            if existing is not None:
                return existing
            part = self.root / f".{batch_id}{AGE_SUFFIX}{PART_SUFFIX}"
            with _locked_part(part) as fd:
                try:
                    existing = self._existing(batch_id, expected_sha256, tenant)
                    if existing is not None:  # another delivery finished meanwhile
                        _unlink_quietly(part)
                        return existing
                    self._check_free(expected_size)
                    _copy(source, fd, expected_size, expected_sha256)
                    _verify_on_disk(fd, expected_size, expected_sha256)
                    if verify is not None:
                        verify(part)
                    arrival = Arrival(
                        batch_id=batch_id,
                        tenant=tenant,
                        channel=channel,
                        size=expected_size,
                        sha256=expected_sha256,
                        arrived_at=self._clock(),
                        path=self.root / (batch_id + AGE_SUFFIX),
                        source=detail,
                    )
                    self._publish(part, arrival)
                except BaseException:
                    _unlink_quietly(part)
                    if not os.path.lexists(self.root / (batch_id + AGE_SUFFIX)):
                        _unlink_quietly(self.root / (batch_id + ARRIVAL_SUFFIX))
                    raise
        return arrival

    def get(self, batch_id: str, *, erasing: bool = False) -> Arrival | None:
        """The arrival of ``batch_id``, or None when its envelope is not (yet) complete.

        An erased batch (arrival record and erasure certificate, no envelope) is
        returned too (its ``path`` names the envelope that is gone), and, when
        ``erasing`` (its erasure is recorded), one whose ``erase`` did not finish.

        Raises:
            SpoolError: not a batch id, or a damaged entry (not a regular file,
                arrival record missing or invalid, size differing from the record).
        """
        final = self.path_of(batch_id)
        try:
            info = os.lstat(final)
        except FileNotFoundError:
            return self._tombstone(batch_id, final, erasing)
        if not stat.S_ISREG(info.st_mode):
            raise SpoolError(
                _("{path} is not a regular file").format(path=final),
                hint=_("move it out of the spool"),
            )
        arrival = _read_arrival(self.root / (batch_id + ARRIVAL_SUFFIX), final)
        if arrival.size != info.st_size:
            raise SpoolError(
                _("{path} has {size} bytes, its arrival record says {recorded}").format(
                    path=final, size=info.st_size, recorded=arrival.size
                ),
                hint=_("the envelope was changed after it arrived; move it out of the spool"),
            )
        return arrival

    def list(self, *, erasing: Collection[str] = ()) -> list[Arrival]:
        """Every complete batch (erased too), oldest arrival first; ``.part``, links… ignored.

        ``erasing``: batches whose erasure is recorded; listed while their arrival record is.

        Raises:
            SpoolError: a batch's entry is damaged (see :meth:`get`).
            OSError: the spool cannot be read (a missing spool is empty).
        """
        try:
            names = sorted(entry.name for entry in self.root.iterdir())
        except FileNotFoundError:
            return []
        stems: set[str] = set()
        for name in names:
            if name.startswith("."):
                continue
            suffix = next((s for s in (AGE_SUFFIX, ERASURE_SUFFIX) if name.endswith(s)), None)
            if suffix is None:
                continue
            stem = name[: -len(suffix)]
            try:
                check_batch_id(stem)
            except ManifestError:
                continue
            try:
                if not stat.S_ISREG(os.lstat(self.root / name).st_mode):
                    continue
            except FileNotFoundError:
                continue
            stems.add(stem)
        stems.update(b for b in erasing if f"{b}{ARRIVAL_SUFFIX}" in names)
        arrivals: list[Arrival] = []
        for stem in sorted(stems):
            arrival = self.get(stem, erasing=stem in erasing)
            if arrival is not None:
                arrivals.append(arrival)
        arrivals.sort(key=lambda a: (a.arrived_at, a.batch_id))
        return arrivals

    def _existing(self, batch_id: str, sha256: str, tenant: str) -> Arrival | None:
        """The present arrival if it is this very batch; raise if it is another."""
        final = self.root / (batch_id + AGE_SUFFIX)
        if not os.path.lexists(final) and not os.path.lexists(self.erasure_path(batch_id)):
            return None
        try:
            present = self.get(batch_id)
        except SpoolError as exc:
            raise SpoolConflictError(
                _("{batch} is already in the spool but its entry is damaged: {reason}").format(
                    batch=batch_id, reason=exc
                ),
                hint=_("compare it with the ward's records before moving it out of the spool"),
            ) from None
        if present is None:
            return None
        if present.sha256 != sha256:
            raise SpoolConflictError(
                _(
                    "{batch} is already in the spool with a different SHA-256"
                    " ({present}…, this one {sha256}…); nothing was overwritten"
                ).format(batch=batch_id, present=present.sha256[:16], sha256=sha256[:16]),
                hint=_("ask the ward which file is the sealed batch"),
            )
        if present.tenant != tenant:
            raise SpoolConflictError(
                _("{batch} is already in the spool for tenant {present}, not {tenant}").format(
                    batch=batch_id, present=present.tenant, tenant=tenant
                ),
                hint=_("ask the ward which tenant the batch belongs to"),
            )
        return present

    def _tombstone(self, batch_id: str, final: Path, erasing: bool) -> Arrival | None:
        """An erased (or ``erasing``) batch's arrival: its record, no envelope; or None."""
        if not erasing and not os.path.lexists(self.erasure_path(batch_id)):
            return None
        record = self.root / (batch_id + ARRIVAL_SUFFIX)
        if not os.path.lexists(record):
            return None
        return _read_arrival(record, final)

    def _check_free(self, size: int) -> None:
        try:
            info = os.statvfs(self.root)
        except OSError:
            return  # a share that cannot say: the write itself will fail if it is full
        free = info.f_bavail * info.f_frsize
        if free < size + FREE_SPACE_MARGIN:
            raise SpoolError(
                _("the spool {path} has {free} bytes free; the batch needs {size}").format(
                    path=self.root, free=free, size=size
                ),
                hint=_("make room in the spool, then run the command again"),
            )

    def _publish(self, part: Path, arrival: Arrival) -> None:
        """Write the arrival record, then rename the verified .part to its final name."""
        record = self.root / (arrival.batch_id + ARRIVAL_SUFFIX)
        temp = self.root / f".{arrival.batch_id}{ARRIVAL_SUFFIX}.tmp"
        _write_new(temp, canonical_json(_arrival_doc(arrival)) + b"\n")
        temp.replace(record)
        final = arrival.path
        if os.path.lexists(final):  # we hold the batch's lock: only a stranger's file
            raise SpoolConflictError(
                _("{path} appeared during the delivery; nothing overwritten").format(path=final)
            )
        part.rename(final)
        fsync_dir(self.root)


def _checked_id(batch_id: str) -> str:
    try:
        return check_batch_id(batch_id)
    except ManifestError as exc:
        raise SpoolError(f"{str(batch_id)[:40]!r}: {exc}") from None


def _check_fields(batch_id: str, tenant: str, channel: str, size: int, sha256: str) -> None:
    _checked_id(batch_id)
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise SpoolError(_("invalid tenant {tenant}").format(tenant=repr(str(tenant)[:40])))
    if channel not in CHANNELS:
        raise SpoolError(
            _("unknown channel {channel} (one of {channels})").format(
                channel=repr(str(channel)[:20]), channels=", ".join(CHANNELS)
            )
        )
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SpoolError(_("the expected size must be a non-negative integer"))
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise SpoolError(_("the expected SHA-256 must be 64 lower-case hex digits"))


def _checked_detail(detail: Mapping[str, object]) -> dict[str, object]:
    copied = dict(detail)
    try:
        canonical_json(copied)
    except RecordError as exc:
        raise SpoolError(
            _("the source detail is not canonical JSON: {reason}").format(reason=exc)
        ) from None
    return copied


@contextlib.contextmanager
def _locked_part(part: Path) -> Iterator[int]:
    """Open ``part`` (created 0600), hold an exclusive flock on it, truncate it.

    The lock is on the inode still named ``part`` (not on one a delivery just renamed away).
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    for _attempt in range(_LOCK_ATTEMPTS):
        fd = os.open(part, flags, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpoolBusyError(
                    _("another delivery of {name} is in progress").format(
                        name=part.name[1 : -len(PART_SUFFIX)]
                    ),
                    hint=_("wait for it to finish, then run the command again"),
                ) from None
            mine = os.fstat(fd)
            try:
                named = os.lstat(part)
            except FileNotFoundError:
                continue
            if (named.st_dev, named.st_ino) != (mine.st_dev, mine.st_ino):
                continue
            if not stat.S_ISREG(mine.st_mode):
                raise SpoolError(_("{path} is not a regular file").format(path=part))
            os.ftruncate(fd, 0)
            yield fd
            return
        finally:
            os.close(fd)
    raise SpoolBusyError(
        _("{path}: the delivery lock keeps changing hands; try again").format(path=part)
    )


def _copy(source: Readable, fd: int, size: int, sha256: str) -> None:
    """Stream ``source`` to ``fd`` (at most ``size`` bytes), check size and hash, fsync."""
    digest = hashlib.sha256()
    written = 0
    while data := source.read(_BLOCK):
        written += len(data)
        if written > size:
            raise SpoolError(
                _("the source is longer than the expected {size} bytes").format(size=size)
            )
        digest.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    if written != size:
        raise SpoolError(
            _("the source has {written} bytes, expected {size}").format(written=written, size=size)
        )
    if digest.hexdigest() != sha256:
        raise SpoolError(_("the source's SHA-256 differs from the expected one"))
    os.fsync(fd)


def _verify_on_disk(fd: int, size: int, sha256: str) -> None:
    """Read the written file back: what is on disk must be what was expected."""
    if os.fstat(fd).st_size != size:
        raise SpoolError(_("the spooled copy has the wrong size after writing"))
    digest = hashlib.sha256()
    offset = 0
    while data := os.pread(fd, _BLOCK, offset):
        digest.update(data)
        offset += len(data)
    if offset != size or digest.hexdigest() != sha256:
        raise SpoolError(_("the spooled copy differs from the source after writing (SHA-256)"))


def _arrival_doc(arrival: Arrival) -> dict[str, object]:
    return {
        "batch_id": arrival.batch_id,
        "tenant": arrival.tenant,
        "channel": arrival.channel,
        "size": arrival.size,
        "sha256": arrival.sha256,
        "arrived_at": arrival.arrived_at.isoformat(timespec="milliseconds"),
        "source": arrival.source,
    }


def _read_arrival(record: Path, final: Path) -> Arrival:
    """Read and validate an arrival record (it is on disk: trust nothing in it)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(record, flags)
    except FileNotFoundError:
        raise SpoolError(
            _("{name} has no arrival record ({record})").format(
                name=final.name, record=record.name
            ),
            hint=_("it was not put there by a delivery; move it out of the spool"),
        ) from None
    except OSError as exc:
        raise SpoolError(
            _("{path}: cannot open: {reason}").format(path=record, reason=exc.strerror)
        ) from None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_ARRIVAL_BYTES + 1)
    try:
        doc = parse_json_strict(data, max_bytes=MAX_ARRIVAL_BYTES)
        return _parse_arrival(doc, final)
    except (RecordError, SpoolError, ValueError) as exc:
        raise SpoolError(
            _("{name}: invalid arrival record: {reason}").format(name=record.name, reason=exc)
        ) from None


def _parse_arrival(doc: object, final: Path) -> Arrival:
    if not isinstance(doc, dict) or set(doc) != ARRIVAL_KEYS:
        raise ValueError(
            _("expected exactly the keys {keys}").format(keys=", ".join(sorted(ARRIVAL_KEYS)))
        )
    batch_id, tenant, channel = doc["batch_id"], doc["tenant"], doc["channel"]
    size, sha256, arrived, source = doc["size"], doc["sha256"], doc["arrived_at"], doc["source"]
    if batch_id != final.name[: -len(AGE_SUFFIX)]:
        raise ValueError(_("batch_id differs from the file name"))
    _check_fields(batch_id, tenant, channel, size, sha256)
    if not isinstance(arrived, str):
        raise ValueError(_("arrived_at is not text"))
    arrived_at = datetime.fromisoformat(arrived)
    if arrived_at.utcoffset() is None:
        raise ValueError(_("arrived_at has no UTC offset"))
    if not isinstance(source, dict):
        raise ValueError(_("source is not an object"))
    return Arrival(batch_id, tenant, channel, size, sha256, arrived_at, final, source)


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600, replacing a stale temporary file) and fsync it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_small(path: Path, limit: int) -> bytes:
    """Read at most ``limit`` + 1 bytes of a regular file, never through a symlink."""
    flags = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
