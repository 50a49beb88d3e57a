"""``lgwan-gateway erase BATCH``: erase every copy of a batch and issue its erasure certificate.

``erase BATCH --as HANDLER [--password-fd N] --approver MANAGER [--approver-password-fd N]``

The handler (an active 取扱者 or 取扱責任者) and the approving manager (an
active 取扱責任者; the handler himself only with ``[custody]
allow_self_approval``) each authenticate with their own password; refusals are
audited ``custody_refused`` by :class:`gateway.staff.Roster`. The batch must be
known here: in the spool, in the state database, or in the erasure journal.

Then, holding the print site's custody lock exclusively for the whole run
(:mod:`gateway.custody_lock`: no ``open`` or delivery adds a copy meanwhile; a
second ``erase``, or one while an ``open`` or a delivery runs, exits 75):

1. **Journal.** Every copy is found and measured (:mod:`gateway.erasure`) and
   recorded with ``store.start_erasure``, with the overwrite method (audited
   ``erasure_started``). Nothing is erased, and no journal is written, unless
   the spool holds the batch's envelope (a batch this site's ``serve`` holds
   must be FORWARDED or PULLED: a batch that never reached the spool is not
   the print site's to certify); unless, when the custody log records an
   opening of the batch, the plaintext found covers every file of every
   opening (``custody_refused`` reason ``plaintext_missing`` otherwise: the
   certificate must not say less than the log); and unless the certificate
   will be valid and at most :data:`custody.MAX_CERTIFICATE_BYTES`. If an
   unfinished erasure of the batch is recorded (the last run was killed), its
   items and method are reused: the hashes were taken before anything was
   touched (audited ``erasure_started`` with ``resumed_by``).
2. **Wipe.** Every recorded copy still present is overwritten and unlinked;
   the batch's work trees go.
3. **Check and certify.** Only when none of the recorded paths exists any more
   and a new search finds no copy either is the certificate signed with the
   site's key (``[keys] signing_key``) and written, create-once, to
   ``<certificate_dir>/<batch>.erasure.json`` (0644) with its PDF beside it; the
   journal is finished (audited ``erasure_completed``); if this site's state
   database knows the batch (it came through this site's own ``serve``), the
   certificate is published to the ward
   (:func:`gateway.certificates.publish_certificate`; a refusal is audited
   ``erasure_certificate_rejected`` and raised as an incident); and last the
   copy in the spool (``<spool>/<batch>.erasure.json``, when the batch came
   through the spool) — the tombstone that makes ``batches`` say ``erased``
   and that an ASP gateway polls. Until it is written, ``batches`` and
   ``overdue`` say ``erasing``.

The certificate paths are printed on stdout. Erasing a batch already erased
prints its certificate and changes nothing (an interrupted publication or
spool copy is completed). Anything that cannot be removed: exit 1, no
certificate, the journal stays unfinished for the next run. A run killed after
writing the certificate but before finishing the journal is completed by the
next run, which adopts that certificate (same batch, start and items, signed by
this site).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import (
    KIND_ERASURE_CERTIFICATE,
    MAX_CERTIFICATE_BYTES,
    BodyError,
    ErasedItem,
    canonical_json,
    check_erasure_body,
    dumps_record,
    fingerprint,
    loads_record,
    sign_record,
    verify_record,
)
from custody.erasure_certificate import KIND_ENVELOPE, KIND_PLAINTEXT, in_work_directory
from envelope import ManifestError
from envelope.manifest import check_batch_id
from gateway import config as config_mod
from gateway.audit import local_now
from gateway.certificate_pdf import CertificateView, render_certificate
from gateway.certificates import CertificateError, publish_certificate, reject_certificate
from gateway.custody_lock import custody_lock
from gateway.erase_certificate import certificate_body, refuse_foreign_certificate, write_once
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
from gateway.errors import UsageError
from gateway.i18n import _
from gateway.pipeline import DELIVERED
from gateway.printlog import Custody, custody_session
from gateway.spool import ARRIVAL_SUFFIX, ERASURE_SUFFIX, SpoolError
from gateway.staff import Roster, add_actor_arguments, authenticate_actor, authenticate_approver
from gateway.state import ErasureRecord, StateStore
from gateway.status import StatusWriter
from gateway.storage import Limits, Storage
from gateway.ui import progress_bar

EXIT_OK = 0
ACTION = "erase"
PDF_SUFFIX = ".erasure.pdf"
REASON_PLAINTEXT_MISSING = "plaintext_missing"
"""``custody_refused`` reason: an opened batch's released files are not all where they were."""
_METHOD_RE = re.compile(r"zero-overwrite-([1-9][0-9]{0,2})-pass\+unlink")
_SIZE_MARGIN = 256
"""Bytes the finished certificate may grow by over the one measured before wiping."""
_SIGNATURE_CHARS = 88
"""An Ed25519 signature in base64: the record's ``sig``."""


class ErasureBusyError(ErasureError):
    """Another ``erase``, an ``open`` or a delivery is running at this site (exit 75: retry)."""

    exit_code = 75


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``erase`` to the top-level subcommands."""
    p = sub.add_parser(
        "erase",
        help=_("erase every copy of a batch here and issue its signed erasure certificate"),
    )
    p.add_argument("batch", metavar="BATCH", help=_("the batch id"))
    add_actor_arguments(p, approver=True)
    p.set_defaults(run=cmd_erase)


@dataclass
class _Site:
    """What ``erase`` works with: the custody session, the roots, the certificate directory."""

    custody: Custody
    places: Places
    certificates: Path

    @property
    def cfg(self) -> config_mod.GatewayConfig:
        return self.custody.cfg

    @property
    def store(self) -> StateStore:
        return self.custody.store

    @property
    def key(self) -> Ed25519PrivateKey:
        return self.custody.key

    def json_path(self, batch_id: str) -> Path:
        return self.certificates / (batch_id + ERASURE_SUFFIX)


def cmd_erase(args: argparse.Namespace) -> int:
    """``erase BATCH``: prints the certificate (JSON, then PDF) paths; see the module doc."""
    batch_id = _checked_batch(args.batch)
    cfg = config_mod.load(args.config)
    with custody_session(cfg) as custody:
        places = Places(
            spool=cfg.path(cfg.printsite.spool),
            work_dir=custody.work_dir,
            storage=cfg.path(cfg.storage.root),
        )
        certificates = cfg.path(cfg.custody.certificate_dir)
        certificates.mkdir(mode=0o700, parents=True, exist_ok=True)
        site = _Site(custody, places, certificates)
        with custody_lock(places.spool, exclusive=True, busy=_busy):
            paths = _erase(args, site, batch_id)
    for path in paths:
        print(path)
    return EXIT_OK


def _busy() -> ErasureBusyError:
    return ErasureBusyError(
        _("another erase, an open or a delivery is running at this site"),
        hint=_("wait for it to finish, then run the command again"),
    )


def _erase(args: argparse.Namespace, site: _Site, batch_id: str) -> list[Path]:
    """Authenticate, then journal, wipe, check and certify (the custody lock is held)."""
    tenant, channel = _known(site, batch_id)
    roster = site.custody.roster
    handler = authenticate_actor(args, roster, action=ACTION, batch=batch_id)
    approver = authenticate_approver(
        args,
        roster,
        handler,
        action=ACTION,
        batch=batch_id,
        allow_self=site.cfg.custody.allow_self_approval,
    )
    record = site.store.get_erasure(batch_id)
    if record is not None and record.finished_at is not None:
        return _already_erased(site, record)
    refuse_foreign_certificate(site.json_path(batch_id), site.key, record)
    record = _journal(site, record, batch_id, tenant, channel, handler.name, approver.name)
    passes = _passes(site, record)
    total = sum(i.size for i in record.items) * passes
    with progress_bar(_("erasing"), total) as advance:
        wipe(record.items, batch_id, site.places, passes=passes, progress=advance)
    left = remaining(record.items, batch_id, site.places)
    left += [str(c.path) for c in find_copies(batch_id, tenant, site.places)]
    if left:
        raise ErasureError(
            _(
                "{count} path(s) of {batch} still exist after erasing ({path});"
                " no certificate was issued"
            ).format(count=len(left), batch=batch_id, path=left[0]),
            hint=_("find out what keeps them, then run erase again"),
        )
    return list(_certify(site, record, roster, handler.name, approver.name))


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
                _(
                    "{path} appeared after the erasure of {batch} began"
                    " ({count} such file(s)); nothing more was erased"
                ).format(path=strangers[0].path, batch=batch_id, count=len(strangers)),
                hint=_("find out where it came from; move it out, then run erase again"),
            )
        _audit_started(site, record, handler, approver, resumed=True)
        return record
    total = sum(_size(c.path) for c in copies)
    with progress_bar(_("measuring"), total) as advance:
        items = measure(copies, site.places, advance)
    if not items:
        raise ErasureError(
            _("there is no copy of {batch} here to erase").format(batch=batch_id),
            hint=_("check the batch id with 'lgwan-gateway batches'"),
        )
    if not any(i.kind == KIND_ENVELOPE for i in items):
        raise ErasureError(
            _(
                "the spool holds no envelope of {batch} ({path}); nothing was erased"
                " (a certificate without it would be refused)"
            ).format(batch=batch_id, path=site.places.spool / f"{batch_id}.age"),
            hint=_("erase the batch at the print site whose spool it was delivered to"),
        )
    now = local_now()
    started = now.replace(microsecond=now.microsecond // 1000 * 1000)
    method = method_name(site.cfg.custody.overwrite_passes)
    fresh = ErasureRecord(
        batch_id, tenant, channel, handler, approver, started, None, tuple(items), None, method
    )
    _check_opened(site, fresh, handler)
    _check_certificate(site, fresh)
    _audit_started(site, fresh, handler, approver, resumed=False)  # before: a crash keeps it
    return site.store.start_erasure(fresh)


def _check_opened(site: _Site, record: ErasureRecord, handler: str) -> None:
    """An opened batch's certificate must list every file the custody log says was released.

    Raises:
        CustodyRefusedError: a released file is not among the plaintext found
            (audited ``custody_refused``, reason ``plaintext_missing``).
    """
    opens = site.store.opens(record.batch_id)
    released = {name for opening in opens for name in opening.files}
    found = {
        erased.name
        for erased in (ErasedItem(i.kind, i.path, i.size, i.sha256) for i in record.items)
        if erased.kind == KIND_PLAINTEXT and in_work_directory(erased, record.batch_id)
    }
    missing = sorted(released - found)
    if not missing:
        return
    site.custody.refuse(
        REASON_PLAINTEXT_MISSING,
        _(
            "batch {batch} was opened here ({times} time(s)), but {count} released file(s)"
            " are not in {directory} (first: {name}); nothing was erased"
        ).format(
            batch=record.batch_id,
            times=len(opens),
            count=len(missing),
            directory=site.places.work_dir / record.batch_id,
            name=repr(missing[0][:80]),
        ),
        action=ACTION,
        actor=handler,
        batch=record.batch_id,
        hint=_(
            "find the files (they may have been moved) and put them back, then run erase"
            " again; if they cannot be found, report it to the ward as an incident"
        ),
    )


def _check_certificate(site: _Site, record: ErasureRecord) -> None:
    """Before anything is erased: the certificate this erasure will issue is valid and fits.

    Raises:
        ErasureError: it would break the shared body rules, or exceed the size every side reads.
    """
    body = certificate_body(record, record.started_at, site.key, opened=_opened(site, record))
    signer = fingerprint(site.key.public_key())
    unsigned = {"alg": "ed25519", "body": body, "kind": KIND_ERASURE_CERTIFICATE, "signer": signer}
    size = len(canonical_json({**unsigned, "sig": "=" * _SIGNATURE_CHARS})) + 1
    try:
        check_erasure_body(body, signer=signer)
    except BodyError as exc:
        raise ErasureError(
            _(
                "the certificate of this erasure would be invalid ({reason}); nothing was erased"
            ).format(reason=exc)
        ) from None
    if size + _SIZE_MARGIN > MAX_CERTIFICATE_BYTES:
        raise ErasureError(
            _(
                "the certificate of {batch} would be {size} bytes, more than the {limit} every"
                " side accepts ({count} items); nothing was erased"
            ).format(
                batch=record.batch_id, size=size, limit=MAX_CERTIFICATE_BYTES,
                count=len(record.items),
            ),
            hint=_(
                "move files that are not part of the batch out of its work directory,"
                " then run erase again"
            ),
        )  # fmt: skip


def _audit_started(
    site: _Site, record: ErasureRecord, handler: str, approver: str, *, resumed: bool
) -> None:
    site.custody.audit.emit(
        "erasure_started",
        batch=record.batch_id,
        tenant=record.tenant,
        actor=handler,
        approver=approver,
        items=len(record.items),
        size_bytes=sum(i.size for i in record.items),
        method=record.method,
        resumed=resumed,
        resumed_by=handler if resumed else None,
        journal_handler=record.handler,
        journal_approver=record.approver,
        os_user=site.custody.os_user,
    )


def _passes(site: _Site, record: ErasureRecord) -> int:
    """The overwrite passes the journal fixed (the configured ones for an old journal)."""
    match = _METHOD_RE.fullmatch(record.method or "")
    return int(match[1]) if match else site.cfg.custody.overwrite_passes


def _opened(site: _Site, record: ErasureRecord) -> bool:
    """Opened: the custody log records an opening, or plaintext was found."""
    return bool(site.store.opens(record.batch_id)) or any(
        i.kind == KIND_PLAINTEXT for i in record.items
    )


def _certify(
    site: _Site, record: ErasureRecord, roster: Roster, handler: str, approver: str
) -> tuple[Path, Path]:
    """Phase 3: sign, write (create-once), finish the journal, publish, copy to the spool."""
    finished = local_now()
    if finished < record.started_at:
        finished = record.started_at
    opened = _opened(site, record)
    body = certificate_body(record, finished, site.key, opened=opened, passes=_passes(site, record))
    data = dumps_record(sign_record(KIND_ERASURE_CERTIFICATE, body, site.key))
    json_path = site.json_path(record.batch_id)
    data = write_once(json_path, data, site.key, record)
    body = verify_record(loads_record(data), site.key.public_key(), kind=KIND_ERASURE_CERTIFICATE)
    pdf_path = _render(site, roster, json_path, body)
    site.custody.audit.emit(
        "erasure_completed",
        batch=record.batch_id,
        tenant=record.tenant,
        actor=handler,
        approver=approver,
        items=len(record.items),
        certificate=str(json_path),
        certificate_handler=record.handler,
        certificate_approver=record.approver,
        os_user=site.custody.os_user,
    )
    finished_at = datetime.fromisoformat(str(body["finished_at"]))
    site.store.finish_erasure(record.batch_id, finished_at, str(json_path))
    _publish(site, record.batch_id, data)
    _spool_copy(site, record.batch_id, data)
    return json_path, pdf_path


def _already_erased(site: _Site, record: ErasureRecord) -> list[Path]:
    """The batch was erased before: its certificate; finish a missed publication or copy."""
    json_path = Path(record.certificate or site.json_path(record.batch_id))
    try:
        data = json_path.read_bytes()
    except OSError as exc:
        raise ErasureError(
            _("{batch} was erased, but its certificate {path} cannot be read: {reason}").format(
                batch=record.batch_id, path=json_path, reason=exc.strerror
            ),
            hint=_("restore the certificate from a backup (the erasure itself is complete)"),
        ) from None
    _publish(site, record.batch_id, data)
    _spool_copy(site, record.batch_id, data)
    pdf_path = json_path.with_name(record.batch_id + PDF_SUFFIX)
    return [json_path, pdf_path] if pdf_path.is_file() else [json_path]


def _publish(site: _Site, batch_id: str, data: bytes) -> bool:
    """Publish to the ward when this site's own ``serve`` received the batch (LGWAN path).

    Raises:
        CertificateError: the certificate was refused (audited, the incident raised once).
    """
    batch = site.store.get_batch(batch_id)
    if batch is None:
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
            site.store, storage, status, site.custody.audit, batch_id, data,
            site.key.public_key(),
        )  # fmt: skip
    except CertificateError as exc:
        reject_certificate(site.store, site.custody.audit, batch, exc, via="erase")
        raise
    finally:
        storage.close()


def _spool_copy(site: _Site, batch_id: str, data: bytes) -> None:
    """Last: the spool's copy, the tombstone (only for a batch that came through the spool)."""
    spool = site.custody.spool
    if (spool.root / (batch_id + ARRIVAL_SUFFIX)).is_file():
        spool.write_erasure(batch_id, data)


def _render(site: _Site, roster: Roster, json_path: Path, body: dict[str, object]) -> Path:
    names: dict[str, str] = {}
    for who in (body.get("handler"), body.get("approver")):
        member = roster.get(str(who))
        if member is not None and member.full_name:
            names[member.name] = member.full_name
    pdf_path = json_path.with_name(str(body["batch_id"]) + PDF_SUFFIX)
    render_certificate(pdf_path, CertificateView(body, json_path.name, names))
    return pdf_path


# -- the batch --------------------------------------------------------------------------------


def _known(site: _Site, batch_id: str) -> tuple[str, str]:
    """The batch's tenant and channel, from the journal, the spool or the state database.

    Raises:
        ErasureError: unknown here; or this site's state database holds it in a
            state other than FORWARDED or PULLED (it never reached the spool).
    """
    record = site.store.get_erasure(batch_id)
    if record is not None:
        return record.tenant, record.channel
    batch = site.store.get_batch(batch_id)
    if batch is not None and batch.state not in DELIVERED:
        raise ErasureError(
            _(
                "batch {batch} is {state} here: it was never delivered to the print site's"
                " spool; nothing was erased"
            ).format(batch=batch_id, state=batch.state.value),
            hint=_(
                "only a batch forwarded or pulled to the print site is erased with a"
                " certificate; see 'lgwan-gateway status'"
            ),
        )
    damaged: SpoolError | None = None
    try:
        arrival = site.custody.spool.get(batch_id)
    except SpoolError as exc:
        arrival, damaged = None, exc
    if arrival is not None:
        return arrival.tenant, arrival.channel
    if batch is not None:
        return batch.tenant, "lgwan"
    if damaged is not None:
        raise ErasureError(f"{batch_id}: {damaged}", hint=damaged.hint)
    raise ErasureError(
        _(
            "unknown batch {batch}: it is not in the spool, the state database or the"
            " erasure journal"
        ).format(batch=batch_id),
        hint=_("check the batch id with 'lgwan-gateway batches'"),
    )


def _checked_batch(batch_id: str) -> str:
    try:
        return check_batch_id(batch_id)
    except ManifestError as exc:
        raise UsageError(
            _("{value} is not a batch id: {reason}").format(value=repr(batch_id[:40]), reason=exc)
        ) from None


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0
