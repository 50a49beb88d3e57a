"""``lgwan-gateway erase BATCH``: erase every copy of a batch and issue its erasure certificate.

``erase BATCH --as HANDLER [--password-fd N] --approver MANAGER [--approver-password-fd N]``

The handler (an active 取扱者 or 取扱責任者) and the approving manager (an
active 取扱責任者; the handler himself only with ``[custody]
allow_self_approval``) each authenticate with their own password; refusals are
audited ``custody_refused`` by :class:`gateway.staff.Roster`. The batch must be
known here: in the spool, in the state database, or in the erasure journal.

Then, one erasure at a time at this site (a ``flock`` on the certificate
directory; a second ``erase`` exits 75):

1. **Journal.** Every copy is found and measured (:mod:`gateway.erasure`) and
   recorded with ``store.start_erasure`` (audited ``erasure_started``). If an
   unfinished erasure of the batch is recorded (the last run was killed), its
   items are reused: their hashes were taken before anything was touched.
2. **Wipe.** Every recorded copy still present is overwritten and unlinked;
   the work directory's tree goes.
3. **Check and certify.** Only when none of the recorded paths exists any more
   is the certificate signed with the site's key (``[keys] signing_key``) and
   written, create-once, to ``<certificate_dir>/<batch>.erasure.json`` (0644)
   with its PDF beside it and a copy in the spool (``<spool>/<batch>.erasure.json``,
   when the batch came through the spool); then the journal is finished
   (audited ``erasure_completed``) and, if this site's state database knows the
   batch (it came through this site's own ``serve``), the certificate is
   published to the ward (:func:`gateway.certificates.publish_certificate`).

The certificate paths are printed on stdout. Erasing a batch already erased
prints its certificate and changes nothing (an interrupted publication is
completed). Anything that cannot be removed: exit 1, no certificate, the
journal stays unfinished for the next run. A run killed after writing the
certificate but before finishing the journal is completed by the next run,
which adopts that certificate (same batch, start and items, signed by this site).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import (
    KIND_ERASURE_CERTIFICATE,
    dumps_record,
    fingerprint,
    loads_record,
    sign_record,
    verify_record,
)
from custody.errors import CustodyError
from envelope import ManifestError
from envelope.manifest import check_batch_id
from gateway import config as config_mod
from gateway.admin import operator
from gateway.app import INIT_HINT, load_key
from gateway.audit import AuditLog, local_now
from gateway.certificate_pdf import CertificateView, render_certificate
from gateway.certificates import publish_certificate
from gateway.erasure import (
    ErasureError,
    Places,
    find_copies,
    measure,
    method_name,
    remaining,
    unrecorded,
    wipe,
)
from gateway.errors import ConfigError, GatewayError, UsageError
from gateway.spool import ARRIVAL_SUFFIX, ERASURE_SUFFIX, Spool, SpoolError
from gateway.staff import Roster, add_actor_arguments, authenticate_actor, authenticate_approver
from gateway.state import ErasureRecord, StateError, StateStore
from gateway.status import StatusWriter
from gateway.storage import Limits, Storage
from gateway.ui import progress_bar

EXIT_OK = 0
ACTION = "erase"
PDF_SUFFIX = ".erasure.pdf"
CERTIFICATE_MODE = 0o644


class ErasureBusyError(ErasureError):
    """Another ``erase`` is running at this site (exit 75: try again when it is done)."""

    exit_code = 75


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``erase`` to the top-level subcommands."""
    p = sub.add_parser(
        "erase",
        help="erase every copy of a batch here and issue its signed erasure certificate",
    )
    p.add_argument("batch", metavar="BATCH", help="the batch id")
    add_actor_arguments(p, approver=True)
    p.set_defaults(run=cmd_erase)


@dataclass
class _Site:
    """What ``erase`` works with."""

    cfg: config_mod.GatewayConfig
    store: StateStore
    audit: AuditLog
    key: Ed25519PrivateKey
    places: Places
    certificates: Path

    def json_path(self, batch_id: str) -> Path:
        return self.certificates / (batch_id + ERASURE_SUFFIX)


def cmd_erase(args: argparse.Namespace) -> int:
    """``erase BATCH``: prints the certificate (JSON, then PDF) paths; see the module doc."""
    batch_id = _checked_batch(args.batch)
    cfg = config_mod.load(args.config)
    with _site(cfg) as site, _exclusive(site.certificates):
        tenant, channel = _known(site, batch_id)
        roster = Roster(site.store, site.audit)
        handler = authenticate_actor(args, roster, action=ACTION, batch=batch_id)
        approver = authenticate_approver(
            args,
            roster,
            handler,
            action=ACTION,
            batch=batch_id,
            allow_self=cfg.custody.allow_self_approval,
        )
        record = site.store.get_erasure(batch_id)
        if record is not None and record.finished_at is not None:
            return _already_erased(site, record)
        _refuse_foreign_certificate(site, batch_id, record)
        record = _journal(site, record, batch_id, tenant, channel, handler.name, approver.name)
        passes = cfg.custody.overwrite_passes
        with progress_bar("erasing", sum(i.size for i in record.items) * passes) as advance:
            wipe(record.items, batch_id, site.places, passes=passes, progress=advance)
        left = remaining(record.items, batch_id, site.places)
        if left:
            raise ErasureError(
                f"{len(left)} path(s) of {batch_id} still exist after erasing ({left[0]});"
                " no certificate was issued",
                hint="find out what keeps them, then run erase again",
            )
        json_path, pdf_path = _certify(site, record, roster, handler.name, approver.name)
    print(json_path)
    print(pdf_path)
    return EXIT_OK


# -- the phases -------------------------------------------------------------------------------


def _journal(
    site: _Site,
    record: ErasureRecord | None,
    batch_id: str,
    tenant: str,
    channel: str,
    handler: str,
    approver: str,
) -> ErasureRecord:
    """Phase 1: measure and record every copy, or resume the recorded erasure."""
    copies = find_copies(batch_id, tenant, site.places)
    if record is not None:
        strangers = unrecorded(copies, record.items)
        if strangers:
            raise ErasureError(
                f"{strangers[0].path} appeared after the erasure of {batch_id} began"
                f" ({len(strangers)} such file(s)); nothing more was erased",
                hint="find out where it came from; move it out, then run erase again",
            )
        _audit_started(site, record, handler, approver, resumed=True)
        return record
    total = sum(_size(c.path) for c in copies)
    with progress_bar("measuring", total) as advance:
        items = measure(copies, site.places, advance)
    if not items:
        raise ErasureError(
            f"there is no copy of {batch_id} here to erase",
            hint="check the batch id with 'lgwan-gateway batches'",
        )
    now = local_now()
    started = now.replace(microsecond=now.microsecond // 1000 * 1000)
    fresh = ErasureRecord(
        batch_id, tenant, channel, handler, approver, started, None, tuple(items), None
    )
    _audit_started(site, fresh, handler, approver, resumed=False)  # before: a crash keeps it
    return site.store.start_erasure(fresh)


def _audit_started(
    site: _Site, record: ErasureRecord, handler: str, approver: str, *, resumed: bool
) -> None:
    site.audit.emit(
        "erasure_started",
        batch=record.batch_id,
        tenant=record.tenant,
        actor=handler,
        approver=approver,
        items=len(record.items),
        size_bytes=sum(i.size for i in record.items),
        resumed=resumed,
        os_user=operator(),
    )


def _certify(
    site: _Site, record: ErasureRecord, roster: Roster, handler: str, approver: str
) -> tuple[Path, Path]:
    """Phase 3: sign, write (create-once), copy to the spool, finish the journal, publish."""
    finished = local_now()
    if finished < record.started_at:
        finished = record.started_at
    body = certificate_body(record, finished, site.cfg.custody.overwrite_passes, site.key)
    data = dumps_record(sign_record(KIND_ERASURE_CERTIFICATE, body, site.key))
    json_path = site.json_path(record.batch_id)
    data = _write_once(json_path, data, site.key, record)
    body = verify_record(loads_record(data), site.key.public_key(), kind=KIND_ERASURE_CERTIFICATE)
    pdf_path = _render(site, roster, json_path, body)
    spool = Spool(site.places.spool)
    if (spool.root / (record.batch_id + ARRIVAL_SUFFIX)).is_file():
        spool.write_erasure(record.batch_id, data)
    site.audit.emit(
        "erasure_completed",
        batch=record.batch_id,
        tenant=record.tenant,
        actor=handler,
        approver=approver,
        items=len(record.items),
        certificate=str(json_path),
        certificate_handler=record.handler,
        certificate_approver=record.approver,
        os_user=operator(),
    )
    finished_at = datetime.fromisoformat(str(body["finished_at"]))
    site.store.finish_erasure(record.batch_id, finished_at, str(json_path))
    _publish(site, record.batch_id, data)
    return json_path, pdf_path


def certificate_body(
    record: ErasureRecord, finished: datetime, passes: int, key: Ed25519PrivateKey
) -> dict[str, object]:
    """The erasure certificate's body (exactly the contract's fields) for a finished erasure."""
    return {
        "batch_id": record.batch_id,
        "tenant": record.tenant,
        "channel": record.channel,
        "items": [
            {"kind": i.kind, "path": i.path, "size": i.size, "sha256": i.sha256}
            for i in record.items
        ],
        "method": method_name(passes),
        "started_at": record.started_at.isoformat(timespec="milliseconds"),
        "finished_at": finished.isoformat(timespec="milliseconds"),
        "handler": record.handler,
        "approver": record.approver,
        "opened": any(i.kind == "plaintext" for i in record.items),
        "printsite_key": fingerprint(key.public_key()),
    }


def _already_erased(site: _Site, record: ErasureRecord) -> int:
    """The batch was erased before: print its certificate, finish a missed publication."""
    json_path = Path(record.certificate or site.json_path(record.batch_id))
    try:
        data = json_path.read_bytes()
    except OSError as exc:
        raise ErasureError(
            f"{record.batch_id} was erased, but its certificate {json_path} cannot be read:"
            f" {exc.strerror}",
            hint="restore the certificate from a backup (the erasure itself is complete)",
        ) from None
    _publish(site, record.batch_id, data)
    print(json_path)
    pdf_path = json_path.with_name(record.batch_id + PDF_SUFFIX)
    if pdf_path.is_file():
        print(pdf_path)
    return EXIT_OK


def _publish(site: _Site, batch_id: str, data: bytes) -> bool:
    """Publish to the ward when this site's own ``serve`` received the batch (LGWAN path)."""
    if site.store.get_batch(batch_id) is None:
        return False
    cfg = site.cfg
    limits = Limits(
        max_upload_bytes=cfg.storage.max_upload_bytes,
        tenant_quota_bytes=cfg.storage.tenant_quota_bytes,
        reserve_free_bytes=cfg.storage.reserve_free_bytes,
    )
    storage = Storage(cfg.path(cfg.storage.root), limits)
    try:
        status = StatusWriter(storage, site.store, site.key)
        return publish_certificate(
            site.store, storage, status, site.audit, batch_id, data, site.key.public_key()
        )
    finally:
        storage.close()


def _render(site: _Site, roster: Roster, json_path: Path, body: dict[str, object]) -> Path:
    names: dict[str, str] = {}
    for who in (body.get("handler"), body.get("approver")):
        member = roster.get(str(who))
        if member is not None and member.full_name:
            names[member.name] = member.full_name
    pdf_path = json_path.with_name(str(body["batch_id"]) + PDF_SUFFIX)
    render_certificate(pdf_path, CertificateView(body, json_path.name, names))
    return pdf_path


# -- certificate files ------------------------------------------------------------------------


def _write_once(path: Path, data: bytes, key: Ed25519PrivateKey, record: ErasureRecord) -> bytes:
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
            present = _read_certificate(path)
            if present != data and not _same_erasure(present, key, record):
                raise ErasureError(
                    f"{path} already holds a different erasure certificate; nothing was"
                    " overwritten and the erasure is not finished",
                    hint="move the old certificate away after checking it, then run erase again",
                ) from None
            data = present
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return data


def _same_erasure(data: bytes, key: Ed25519PrivateKey, record: ErasureRecord) -> bool:
    """Whether ``data`` is this site's certificate of exactly this (started) erasure."""
    try:
        body = verify_record(loads_record(data), key.public_key(), kind=KIND_ERASURE_CERTIFICATE)
    except CustodyError:
        return False
    mine = certificate_body(record, record.started_at, 1, key)
    same = ("batch_id", "tenant", "channel", "items", "started_at", "handler", "approver")
    return all(body.get(name) == mine[name] for name in same)


def _refuse_foreign_certificate(site: _Site, batch_id: str, record: ErasureRecord | None) -> None:
    """Before erasing anything: the certificate's name must be free (or hold this erasure's)."""
    path = site.json_path(batch_id)
    if not os.path.lexists(path):
        return
    if record is not None and _same_erasure(_read_certificate(path), site.key, record):
        return
    raise ErasureError(
        f"{path} already exists but is not the certificate of this erasure; nothing was erased",
        hint="move it away after checking it, then run erase again",
    )


def _read_certificate(path: Path) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ErasureError(f"{path} exists but cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(1 << 20)


# -- the site ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _site(cfg: config_mod.GatewayConfig) -> Iterator[_Site]:
    """The state database, audit log and key of this site (``init`` made them)."""
    key = load_key(cfg, "keys.signing_key", cfg.keys.signing_key)
    log = cfg.path(cfg.audit.log)
    if not log.is_file():
        file = str(cfg.source) if cfg.source else "(defaults)"
        raise ConfigError(file, "audit.log", f"{log} does not exist ({INIT_HINT})")
    try:
        store = StateStore.open(cfg.path(cfg.state.database), create=False)
    except StateError as exc:
        raise GatewayError(str(exc), hint=INIT_HINT) from None
    try:
        audit = AuditLog.open(
            log,
            cfg.path(cfg.audit.checkpoints),
            key,
            every_records=cfg.audit.checkpoint_every_records,
            every_seconds=cfg.audit.checkpoint_every_seconds,
            timer=False,  # a short-lived command: close() writes the checkpoint
        )
        try:
            places = Places(
                spool=cfg.path(cfg.printsite.spool),
                work_dir=cfg.path(cfg.printsite.work_dir),
                storage=cfg.path(cfg.storage.root),
            )
            certificates = cfg.path(cfg.custody.certificate_dir)
            certificates.mkdir(mode=0o700, parents=True, exist_ok=True)
            yield _Site(cfg, store, audit, key, places, certificates)
        finally:
            audit.close()
    finally:
        store.close()


@contextlib.contextmanager
def _exclusive(directory: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the certificate directory: one erase at a time."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ErasureBusyError(
                "another erase is running at this site",
                hint="wait for it to finish, then run the command again",
            ) from None
        yield
    finally:
        os.close(fd)


def _known(site: _Site, batch_id: str) -> tuple[str, str]:
    """The batch's tenant and channel, from the journal, the spool or the state database."""
    record = site.store.get_erasure(batch_id)
    if record is not None:
        return record.tenant, record.channel
    damaged: SpoolError | None = None
    try:
        arrival = Spool(site.places.spool).get(batch_id)
    except SpoolError as exc:
        arrival, damaged = None, exc
    if arrival is not None:
        return arrival.tenant, arrival.channel
    batch = site.store.get_batch(batch_id)
    if batch is not None:
        return batch.tenant, "lgwan"
    if damaged is not None:
        raise ErasureError(f"{batch_id}: {damaged}", hint=damaged.hint)
    raise ErasureError(
        f"unknown batch {batch_id}: it is not in the spool, the state database or the"
        " erasure journal",
        hint="check the batch id with 'lgwan-gateway batches'",
    )


def _checked_batch(batch_id: str) -> str:
    try:
        return check_batch_id(batch_id)
    except ManifestError as exc:
        raise UsageError(f"{batch_id[:40]!r} is not a batch id: {exc}") from None


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)
