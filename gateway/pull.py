"""Pull mode at the print site: fetch a tenant's batches from the gateway's ``/outbox``.

``lgwan-gateway pull`` (:mod:`gateway.pull_cli`) logs in to the gateway named by
``[pull]`` as the contractor account — pinned host key, password and then key —
and, for every ``/outbox/<batch>.age``, in batch-id order:

1. reads ``/outbox/<batch>.receipt.json`` and verifies it with the pinned
   ``[pull] receipt_key``: a receipt of that batch (and tenant), whose size is
   the listed size — otherwise the batch is refused and never confirmed;
2. downloads the envelope into ``<spool>/.pull/<batch>.age.part``, resuming
   from that file's size (an interrupted pull continues where it stopped);
3. checks the whole staged file's size and SHA-256 against the receipt (a
   mismatch discards the staged file, nothing is confirmed);
4. delivers it into the print-site spool (:meth:`gateway.spool.Spool.deliver`,
   channel ``lgwan``, the receipt body as the arrival's source), which verifies
   its copy again — a batch already in the spool with the same SHA-256 is not
   downloaded again, a different one is a conflict;
5. confirms by removing ``/outbox/<batch>.age``: the gateway then marks the
   batch PULLED and deletes its copy. Nothing is confirmed before step 4 succeeded.
   A batch erased here already (``<spool>/<batch>.erasure.json``) is confirmed
   without being downloaded again.

Then it hands back the erasure certificates: every ``<spool>/<batch>.erasure.json``
(written by ``lgwan-gateway erase``) of a batch that arrived from *this* gateway
(its arrival record's ``source.gateway_key`` is the pinned receipt key's, and its
tenant is ``[pull] tenant`` when set) that ``/outbox`` does not list yet is
uploaded as ``/outbox/<batch>.erasure.json``. The gateway checks it when the file
is closed and keeps it there only when it published it (batch ERASED), so the
certificate is read back: present and identical means accepted (an upload that
fails because an identical file is there is done too); absent means refused.

Names from the gateway are hostile until checked: only ``<batch-id>.age``
names are acted on (:func:`gateway.policy.batch_of`).
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from custody import fingerprint
from custody.canonical import parse_json_strict
from custody.errors import CustodyError
from gateway import policy
from gateway.certificates import MAX_CERTIFICATE_BYTES
from gateway.config import GatewayConfig
from gateway.destinations import read_regular
from gateway.errors import ConfigError, GatewayError
from gateway.i18n import _
from gateway.policy import NameKind
from gateway.relay import (
    BLOCK_BYTES,
    Link,
    LinkError,
    Peer,
    check_receipt,
    connect,
    load_pinned_key,
    load_private_key_file,
)
from gateway.spool import Spool

OUTBOX = "/outbox"
EXIT_TEMPORARY = 75
STAGING_DIR = ".pull"
"""Staging directory inside the spool (hidden: the spool ignores dot names)."""
ARRIVAL_SUFFIX = ".arrival.json"
MAX_ARRIVAL_BYTES = 64 * 1024

Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]
"""``progress(label, total_bytes)``: a context yielding a callback that advances by bytes."""


@dataclass(frozen=True)
class PullSettings:
    """``[pull]`` resolved: the gateway, its pinned keys and our key."""

    peer: Peer
    receipt_key: Ed25519PublicKey
    key: Ed25519PrivateKey = field(repr=False)
    tenant: str
    spool: Path


@dataclass
class PullReport:
    """What one run did: batches pulled (or confirmed again) and refused, with reasons."""

    pulled: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    certificates: list[str] = field(default_factory=list)
    """Batches whose erasure certificate the gateway accepted in this run."""


def settings(config: GatewayConfig) -> PullSettings:
    """Read ``[pull]`` and ``[printsite] spool``.

    Raises:
        ConfigError: host or user missing, a pinned key missing or malformed,
            the private key missing or readable by others (exit 78).
    """
    pull = config.pull
    file = str(config.source) if config.source else _("(defaults)")
    for name in ("host", "user"):
        if not getattr(pull, name):
            raise ConfigError(file, f"pull.{name}", _("is not set (the gateway to pull from)"))
    if pull.tenant and not policy.TENANT_RE.fullmatch(pull.tenant):
        raise ConfigError(file, "pull.tenant", _("is not a tenant name"))
    peer = Peer(
        host=pull.host,
        port=pull.port,
        user=pull.user,
        host_key=load_pinned_key(pull.host_key, file, "pull.host_key"),
        timeout=float(config.forwarder.connect_timeout_seconds),
    )
    return PullSettings(
        peer=peer,
        receipt_key=load_pinned_key(pull.receipt_key, file, "pull.receipt_key"),
        key=load_private_key_file(config, pull.private_key, "pull.private_key"),
        tenant=pull.tenant,
        spool=config.path(config.printsite.spool),
    )


def pull(config: PullSettings, password: str, *, progress: Progress | None = None) -> PullReport:
    """Pull every batch in ``/outbox`` (see the module docstring).

    Returns:
        The report; refused batches stay in the outbox, unconfirmed.

    Raises:
        LinkError: the gateway is unreachable or the connection dropped
            (retryable: staged downloads resume next time), or it refused the
            login or presented another host key (not retryable).
    """
    report = PullReport()
    with connect(config.peer, config.key, password) as link:
        listing = link.listdir(OUTBOX)
        for name in sorted(listing):
            batch_id = policy.batch_of(name)
            if batch_id is None or policy.name_kind(name) is not NameKind.COMPLETE:
                continue
            try:
                _pull_one(link, config, batch_id, listing[name], progress)
            except LinkError as exc:
                if exc.retryable:
                    raise
                report.refused[batch_id] = str(exc)
            except (GatewayError, OSError) as exc:  # the spool refused or failed
                if getattr(exc, "exit_code", 1) == EXIT_TEMPORARY:
                    raise  # busy: another pull of this batch is running
                report.refused[batch_id] = _("{batch}: spool: {reason}; not confirmed").format(
                    batch=batch_id, reason=exc
                )
            else:
                report.pulled.append(batch_id)
        upload_certificates(link, config, listing, report)
    return report


def _pull_one(
    link: Link, config: PullSettings, batch_id: str, listed: int, progress: Progress | None
) -> None:
    receipt = link.read_small(f"{OUTBOX}/{policy.file_name(batch_id, NameKind.RECEIPT)}")
    if receipt is None:
        raise _refused(
            _("{batch}: no receipt in /outbox; not confirmed").format(batch=batch_id), "no_receipt"
        )
    body = check_receipt(receipt, config.receipt_key, batch_id)
    size, sha256, tenant = body["size"], str(body["sha256"]), body.get("tenant")
    assert isinstance(size, int)  # checked by check_receipt
    if not isinstance(tenant, str) or (config.tenant and tenant != config.tenant):
        raise _refused(
            _("{batch}: the receipt is for tenant {tenant}; not confirmed").format(
                batch=batch_id, tenant=repr(tenant)
            ),
            "wrong_tenant",
        )
    if size != listed:
        raise _refused(
            _(
                "{batch}: /outbox holds {listed} bytes, the receipt says {size}; not confirmed"
            ).format(batch=batch_id, listed=listed, size=size),
            "size",
        )
    spool = Spool(config.spool)
    present = spool.get(batch_id)
    erased = os.path.lexists(config.spool / policy.file_name(batch_id, NameKind.ERASURE))
    if present is None and erased:
        pass  # delivered and erased here before: confirm, never bring the envelope back
    elif present is None:
        staged = _download(link, config.spool, batch_id, size, sha256, progress)
        with staged.open("rb") as source:
            spool.deliver(
                batch_id, source, tenant=tenant, channel="lgwan", expected_size=size,
                expected_sha256=sha256, source_detail=body,
            )  # fmt: skip
    elif present.sha256 != sha256:
        raise _refused(
            _("{batch}: the spool holds a different file under this id; not confirmed").format(
                batch=batch_id
            ),
            "conflict",
        )
    link.remove(f"{OUTBOX}/{policy.file_name(batch_id, NameKind.COMPLETE)}")
    _staging_path(config.spool, batch_id).unlink(missing_ok=True)


def _download(
    link: Link, spool: Path, batch_id: str, size: int, sha256: str, progress: Progress | None
) -> Path:
    """Download (resuming) into the staging ``.part`` and check its size and SHA-256."""
    staged = _staging_path(spool, batch_id)
    staged.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(staged, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "r+b") as out:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LinkError(
                _("{batch}: another pull is downloading it").format(batch=batch_id),
                reason="busy",
                retryable=True,
            ) from None
        have = os.fstat(fd).st_size
        if have > size:
            out.truncate(0)
            have = 0
        digest = hashlib.sha256()
        _hash_file(out, have, digest)
        out.seek(have)
        label = _("pulling {batch}").format(batch=batch_id)
        shown = progress(label, size - have) if progress else nullcontext(None)
        with shown as advance:

            def sink(data: bytes) -> None:
                out.write(data)
                digest.update(data)
                if advance is not None:
                    advance(len(data))

            link.download(f"{OUTBOX}/{batch_id}.age", sink, offset=have, size=size)
        out.flush()
        os.fsync(out.fileno())
        complete = out.tell() == size and digest.hexdigest() == sha256
    if not complete:
        staged.unlink(missing_ok=True)
        raise _refused(
            _("{batch}: the download does not match the signed receipt; not confirmed").format(
                batch=batch_id
            ),
            "sha256",
        )
    return staged


def upload_certificates(
    link: Link, config: PullSettings, listing: dict[str, int], report: PullReport
) -> None:
    """Upload this gateway's batches' erasure certificates not yet in ``/outbox`` (module doc).

    Accepted ones go to ``report.certificates``, refused ones to ``report.refused``.

    Raises:
        LinkError: the connection dropped (retryable).
    """
    gateway_key = fingerprint(config.receipt_key)
    try:
        names = sorted(e.name for e in os.scandir(config.spool) if e.is_file(follow_symlinks=False))
    except FileNotFoundError:
        return
    for name in names:
        batch_id = policy.batch_of(name)
        if batch_id is None or policy.name_kind(name) is not NameKind.ERASURE:
            continue
        if not _from_gateway(config, batch_id, gateway_key):
            continue
        data = read_regular(config.spool / name, MAX_CERTIFICATE_BYTES + 1)
        if data is None:
            continue
        if name in listing and listing[name] == len(data):
            continue  # the gateway acknowledged it on an earlier run
        try:
            if len(data) > MAX_CERTIFICATE_BYTES:
                raise _refused(
                    _("{batch}: the erasure certificate is too large; not confirmed").format(
                        batch=batch_id
                    ),
                    "too_large",
                )
            _upload_certificate(link, batch_id, f"{OUTBOX}/{name}", data, name in listing)
        except LinkError as exc:
            if exc.retryable and not link.active:
                raise
            report.refused[batch_id] = str(exc)
        else:
            report.certificates.append(batch_id)


def _upload_certificate(link: Link, batch_id: str, path: str, data: bytes, listed: bool) -> None:
    """Upload one certificate (unless listed) and read it back: there and identical, or refused."""
    failure: LinkError | None = None
    if not listed:
        try:
            link.upload(path, iter((data,)), offset=0)
        except LinkError as exc:
            if not link.active:
                raise
            failure = exc  # perhaps an identical one is there already: read it back
    there = link.read_small(path, MAX_CERTIFICATE_BYTES)
    if there is None:
        if failure is not None:
            message = _("{batch}: the gateway refused the erasure certificate: {reason}").format(
                batch=batch_id, reason=failure
            )
        else:
            message = _(
                "{batch}: the gateway refused the erasure certificate (see its audit log)"
            ).format(batch=batch_id)
        raise LinkError(
            message,
            reason="certificate_refused",
            retryable=False,
            hint=_(
                "tell the gateway's operator: its tenant route must pin this print site's "
                "signing key as receipt_key"
            ),
        )
    if there != data:
        raise _refused(
            _("{batch}: the gateway holds a different erasure certificate; not confirmed").format(
                batch=batch_id
            ),
            "conflict",
        )


def _from_gateway(config: PullSettings, batch_id: str, gateway_key: str) -> bool:
    """Whether the spool's arrival record says the batch came from this gateway (and tenant)."""
    try:
        raw = read_regular(config.spool / f"{batch_id}{ARRIVAL_SUFFIX}", MAX_ARRIVAL_BYTES)
        doc = parse_json_strict(raw, max_bytes=MAX_ARRIVAL_BYTES) if raw is not None else None
    except (OSError, CustodyError):
        return False
    if not isinstance(doc, dict) or doc.get("channel") != "lgwan":
        return False
    source = doc.get("source")
    tenant = doc.get("tenant")
    if config.tenant and tenant != config.tenant:
        return False
    return isinstance(source, dict) and source.get("gateway_key") == gateway_key


def _hash_file(handle: io.BufferedRandom, length: int, digest: hashlib._Hash) -> None:
    handle.seek(0)
    left = length
    while left:
        data = handle.read(min(BLOCK_BYTES, left))
        if not data:
            raise GatewayError(_("the staged download shrank while being read"))
        digest.update(data)
        left -= len(data)


def _staging_path(spool: Path, batch_id: str) -> Path:
    return spool / STAGING_DIR / policy.file_name(batch_id, NameKind.PART)


def _refused(message: str, reason: str) -> LinkError:
    """A non-retryable refusal; ``message`` names the batch and says it is not confirmed."""
    return LinkError(message, reason=reason, retryable=False)
