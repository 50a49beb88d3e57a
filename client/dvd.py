"""``lgwan-client dvd``: put a sealed batch on DVD images, verified, with disc serials.

The DVD path is for contractors without an LGWAN-ASP service and for line
failures. Steps, each refusing with one line before anything is written:

1. Find ``<batch>.age`` (a batch id in ``[seal] out_dir``, or a path), load the
   ward's key (the ledger is signed: missing key = configuration error) and the
   batch's signed ``sealed`` ledger entry (a batch never sealed is refused).
2. ``age`` format: the envelope itself is the payload; its SHA-256 must still be
   the one recorded at ``seal``. ``7z`` format: the passphrase is asked for and
   proven by opening the envelope (:mod:`client.dvd_7z`); the payload is an
   AES-256 7z archive with encrypted headers built from the verified files.
3. Free space is checked; the payload is split into byte ranges when it does not
   fit in ``[dvd] split_bytes``, one image per range (:mod:`client.dvd_iso`).
4. Under the ledger's lock: one serial per disc (``DVD-20260715-001``), each image
   written to ``.<name>.part``, read back and verified, then all are given their
   names and one signed ``dvd-created`` entry is recorded. Any failure removes
   every image of the run; plaintext copies never outlive the command.
"""

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import dvd_7z, dvd_iso, dvd_layout, ledger
from client.config import ClientConfig
from client.durable import fsync_dir
from client.dvd_layout import KIND_7Z, KIND_AGE, DiscSet
from client.errors import ClientError, UsageError
from client.i18n import _
from custody import CustodyError
from envelope import PassphraseError, passphrase
from envelope.manifest import BATCH_ID_RE

KINDS = (KIND_AGE, KIND_7Z)
EVENT_DVD_CREATED = ledger.EVENT_DVD_CREATED
AGE_SUFFIX = ".age"
ISO_SUFFIX = ".iso"
SPACE_MARGIN_BYTES = 16 << 20
ARCHIVE_OVERHEAD_BYTES = 1 << 20
"""Upper bound of what 7z headers and AES padding add to the plaintext (per batch)."""

Progress = Callable[[int], None]
_T = TypeVar("_T")


@dataclass(frozen=True)
class Disc:
    """One verified disc image."""

    serial: str
    label: str
    part: int
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class DvdResult:
    """What ``dvd`` produced."""

    batch_id: str
    kind: str
    discs: tuple[Disc, ...]
    payload_sha256: str
    entry: dict[str, object]


def resolve(target: str, config: ClientConfig) -> tuple[str, Path]:
    """The batch id and envelope named by ``BATCH`` or ``FILE.age``.

    Raises:
        UsageError: not a batch id, a file not named ``<batch-id>.age``, or no such file.
    """
    if BATCH_ID_RE.fullmatch(target):
        batch, path = target, config.path(config.seal.out_dir) / f"{target}{AGE_SUFFIX}"
    else:
        path = Path(target)
        batch = path.name.removesuffix(AGE_SUFFIX)
        if path.suffix != AGE_SUFFIX or not BATCH_ID_RE.fullmatch(batch):
            raise UsageError(
                _("{target} is neither a batch id nor a <batch-id>.age file").format(
                    target=repr(target)
                ),
                hint=_("give the batch id printed by seal, e.g. {example}").format(
                    example="20260715-KAIGO-7F3KQ2"
                ),
            )
    if not path.is_file():
        raise UsageError(
            _("{path}: no such sealed batch").format(path=path),
            hint=_("check the batch id or the path"),
        )
    return batch, path.absolute()


def sealed_entry(path: Path, batch: str, key: Ed25519PrivateKey) -> dict[str, object]:
    """The batch's ``sealed`` ledger entry, its signature checked against the ward's key.

    Raises:
        ClientError: the batch was never sealed here, or the entry is not the ward's.
    """
    found = [e for e in ledger.entries(path, batch) if e.get("event") == ledger.EVENT_SEALED]
    if not found:
        raise ClientError(
            _("batch {batch} was never sealed (no sealed entry in the ledger {path})").format(
                batch=batch, path=path
            ),
            hint=_("only batches sealed with the ward's key can be put on DVD"),
        )
    try:
        ledger.check_signature(found[-1], key.public_key())
    except CustodyError as exc:
        raise ClientError(
            _("ledger: the sealed entry of {batch} is not valid: {reason}").format(
                batch=batch, reason=exc
            )
        ) from None
    return found[-1]


def next_serials(
    entries: Iterable[Mapping[str, object]], prefix: str, day: datetime, count: int
) -> list[str]:
    """``count`` new serials ``<prefix>-YYYYMMDD-NNN`` after any recorded for that day."""
    stem = f"{prefix}-{day:%Y%m%d}-"
    pattern = re.compile(re.escape(stem) + r"([0-9]{3,})")
    used = 0
    for entry in entries:
        serials = entry.get("serials") if entry.get("event") == EVENT_DVD_CREATED else None
        for serial in serials if isinstance(serials, list) else []:
            match = pattern.fullmatch(serial) if isinstance(serial, str) else None
            used = max(used, int(match.group(1))) if match else used
    return [f"{stem}{n:03d}" for n in range(used + 1, used + 1 + count)]


def check(
    target: str, out: Path, config: ClientConfig
) -> tuple[str, Path, Path, Ed25519PrivateKey, dict[str, object]]:
    """What is checked before anything is asked or written.

    Returns:
        The batch id, the envelope, the absolute image path, the ward's key
        and the batch's ``sealed`` ledger entry.

    Raises:
        UsageError, ConfigError, ClientError: as :func:`make_dvd`.
    """
    batch, envelope = resolve(target, config)
    out = _check_out(out)
    key = ledger.load_key(config.path(config.identity.private_key), "identity.private_key")
    return batch, envelope, out, key, sealed_entry(config.path(config.ledger.path), batch, key)


def make_dvd(
    target: str,
    out: Path,
    config: ClientConfig,
    *,
    kind: str = KIND_AGE,
    secret: str | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> DvdResult:
    """Write the batch's disc image(s), read them back, record ``dvd-created``.

    Args:
        target: a batch id in ``[seal] out_dir`` or a ``<batch-id>.age`` path.
        out: the image path (``FILE.iso``); split images are ``FILE-1of3.iso`` ….
        config: the client configuration.
        kind: ``age`` (the envelope) or ``7z`` (an AES-256 7z of the files).
        secret: the batch passphrase as typed (``7z`` only).
        now: the creation time (serial date, DISC.json); default now.
        progress: called with bytes processed.

    Raises:
        UsageError: bad target, output name or kind (exit 2).
        ConfigError: the ward's key is missing or unusable (exit 78).
        ClientError: never sealed, wrong passphrase, changed envelope, not
            enough space, or an image that does not verify (exit 1).
    """
    if kind not in KINDS:
        raise UsageError(
            _("unknown format {kind}").format(kind=repr(kind)), hint=_("use age or 7z")
        )
    batch, envelope, out, key, sealed = check(target, out, config)
    created = (now or datetime.now().astimezone()).astimezone().replace(microsecond=0)
    job = DiscSet(
        batch=batch,
        kind=kind,
        notice_type=_field(sealed, "notice_type", str),
        envelope_size=_field(sealed, "envelope_size", int),
        envelope_sha256=_field(sealed, "envelope_sha256", str),
        created_at=created.isoformat(),
        created_by=config.handler_name(),
    )
    capacity = dvd_layout.payload_capacity(config.dvd.split_bytes)
    if kind == KIND_AGE:
        ranges = dvd_layout.plan_ranges(envelope.stat().st_size, capacity)
        _check_space(out.parent, dvd_layout.image_estimate(ranges))
        return _burn(job, envelope, out, config, key, created, progress)
    if secret is None:
        raise UsageError(_("the 7z format needs the batch passphrase"))
    try:
        canonical = passphrase.normalize(secret)
    except PassphraseError as exc:
        raise ClientError(str(exc), hint=_("type it again from the password notice")) from None
    files = _sealed_files(sealed)
    plain = sum(int(str(f["size"])) for f in files)
    archive_bytes = plain + ARCHIVE_OVERHEAD_BYTES
    images = dvd_layout.image_estimate(dvd_layout.plan_ranges(archive_bytes, capacity))
    _check_space(out.parent, plain + archive_bytes + images)
    with dvd_7z.archive_of(
        envelope,
        canonical,
        batch,
        out.parent,
        envelope_sha256=job.envelope_sha256,
        sealed_files=files,
        progress=progress,
    ) as archive:
        return _burn(job, archive, out, config, key, created, progress)


def _burn(
    job: DiscSet,
    payload: Path,
    out: Path,
    config: ClientConfig,
    key: Ed25519PrivateKey,
    created: datetime,
    progress: Progress | None,
) -> DvdResult:
    """Split, write, verify and name the images; record them in the ledger."""
    capacity = dvd_layout.payload_capacity(config.dvd.split_bytes)
    payload_size = payload.stat().st_size
    ranges = dvd_layout.plan_ranges(payload_size, capacity)
    whole, part_sums = dvd_iso.hash_ranges(payload, ranges, progress)
    if job.kind == KIND_AGE and whole != job.envelope_sha256:
        raise ClientError(
            _("{name}: the envelope differs from the one sealed (SHA-256)").format(
                name=payload.name
            ),
            hint=_("seal the print data again"),
        )
    paths = dvd_layout.image_paths(out, len(ranges))
    _refuse_existing(paths)
    temps = [p.with_name(f".{p.name}.part") for p in paths]
    named: list[Path] = []
    with ledger.Ledger.open(config.path(config.ledger.path), key) as book:
        serials = next_serials(book.entries(), config.dvd.serial_prefix, created, len(ranges))
        try:
            discs: list[Disc] = []
            for part, (span, part_sum, serial, temp) in enumerate(
                zip(ranges, part_sums, serials, temps, strict=True), 1
            ):
                label = dvd_layout.volume_label(job.batch, part, len(ranges))
                layout = dvd_layout.disc_files(
                    job, payload, span, part_sum, serial, part, len(ranges), whole
                )
                temp.unlink(missing_ok=True)  # left by a killed run; writers hold the lock
                os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
                limit = config.dvd.split_bytes
                dvd_iso.write_image(temp, label, layout, limit=limit, progress=progress)
                size, sha = dvd_iso.verify_image(temp, label, layout, progress)
                if size > limit:
                    raise ClientError(
                        _("{name}: {size} bytes exceed dvd.split_bytes").format(
                            name=temp.name, size=size
                        )
                    )
                discs.append(Disc(serial, label, part, paths[part - 1], size, sha))
            for disc, temp in zip(discs, temps, strict=True):
                _publish(temp, disc.path)
                named.append(disc.path)
            fsync_dir(out.parent)
            entry = book.record(EVENT_DVD_CREATED, **_entry_fields(job, discs, payload_size, whole))
        except FileExistsError as exc:
            _remove(named)
            raise ClientError(
                _("{path}: already exists; nothing was written").format(path=exc.filename)
            ) from None
        except BaseException:
            _remove(named)
            raise
        finally:
            _remove(temps)
    return DvdResult(job.batch, job.kind, tuple(discs), whole, entry)


def _entry_fields(job: DiscSet, discs: list[Disc], size: int, whole: str) -> dict[str, object]:
    fields: dict[str, object] = {
        "batch": job.batch,
        "kind": job.kind,
        "parts": len(discs),
        "serials": [d.serial for d in discs],
        "discs": [
            {
                "serial": d.serial,
                "label": d.label,
                "part": d.part,
                "image": d.path.name,
                "size": d.size,
                "sha256": d.sha256,
            }
            for d in discs
        ],
        "envelope_size": job.envelope_size,
        "envelope_sha256": job.envelope_sha256,
        "handler": job.created_by,
    }
    if job.kind == KIND_7Z:
        fields.update(archive_size=size, archive_sha256=whole)
    return fields


def _field(entry: Mapping[str, object], name: str, kind: type[_T]) -> _T:
    value = entry.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ClientError(
            _("ledger: the sealed entry has no valid {field}").format(field=repr(name))
        )
    return value


def _sealed_files(entry: Mapping[str, object]) -> list[dict[str, object]]:
    files = entry.get("files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and isinstance(f.get("size"), int) for f in files
    ):
        raise ClientError(
            _("ledger: the sealed entry has no valid {field}").format(field=repr("files"))
        )
    return files


def _check_out(out: Path) -> Path:
    """The absolute image path; its directory is created (0700) when missing."""
    if out.suffix.lower() != ISO_SUFFIX or out.name.startswith("."):
        raise UsageError(
            _("{path}: the image name must end in .iso").format(path=out),
            hint=_("e.g. --out batch.iso"),
        )
    out = out.absolute()
    try:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot create directory: {reason}").format(
                path=out.parent, reason=exc.strerror
            )
        ) from None
    return out


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise ClientError(
                _("{path} already exists").format(path=path), hint=_("choose another --out name")
            )


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed + SPACE_MARGIN_BYTES:
        raise ClientError(
            _(
                "not enough space in {path}: {needed} bytes needed, {free} free; "
                "nothing was written"
            ).format(path=directory, needed=needed + SPACE_MARGIN_BYTES, free=free)
        )


def _publish(temp: Path, final: Path) -> None:
    """Give a verified image its name, never replacing a file that appeared meanwhile."""
    try:
        os.link(temp, final)
    except FileExistsError:
        raise
    except OSError:  # no hard links (a FAT stick, some shares): check, then rename
        if final.exists() or final.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from None
        temp.rename(final)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
