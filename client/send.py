"""``lgwan-client send``: upload a sealed batch and prove the gateway received it intact.

Steps, in order, and what each failure means (exit codes in ``cli``):

1. Find ``<batch>.age`` (a batch id in ``[seal] out_dir``, or a path) and
   check the gateway settings and the ward's key — before asking for the password.
2. Connect (:mod:`client.transfer`: pinned host key, password then key).
3. If the gateway already holds the batch's receipt (or ``/inbox/<batch>.age``),
   it was completed earlier: verify that receipt against the local file (an
   idempotent re-send; nothing is uploaded).
4. Otherwise resume ``/inbox/<batch>.age.part`` from the size the gateway
   holds (the gateway never lets us read it back: the receipt's SHA-256 is
   what proves the resumed prefix), upload the rest, rename to ``.age``. When
   the ledger recorded the envelope's SHA-256 at ``seal`` and the local file
   no longer matches it, the ``.part`` is removed instead and nothing completes.
5. Fetch ``/receipts/<batch>.receipt.json``, verify its signature with the
   pinned ``gateway.receipt_key`` and that batch, tenant, size and SHA-256
   match the local file; record ``sent`` in the ledger. Only then exit 0.

The local file is read once: bytes before the resume point are hashed only,
the rest hashed and sent, so memory stays flat whatever the size. The ``sent``
entry is signed with the ward's ``identity.private_key`` (``--key`` only logs in).
"""

import fcntl
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client import ledger, transfer
from client.config import ClientConfig
from client.errors import ClientError, ConfigError, TemporaryError, UsageError, explain
from client.i18n import _
from client.ui import progress_bar
from custody import CustodyError, fingerprint, load_public_key, loads_record, verify_record
from custody.records import KIND_RECEIPT
from envelope.manifest import BATCH_ID_RE

INBOX = "/inbox"
RECEIPTS = "/receipts"
AGE_SUFFIX = ".age"
PART_SUFFIX = ".age.part"
RECEIPT_SUFFIX = ".receipt.json"

READ_BLOCK_BYTES = 1 << 20
"""Local read and SFTP write size (paramiko splits it into pipelined 32 KiB requests)."""
MAX_RECEIPT_BYTES = 64 << 10
RECEIPT_WAIT_SECONDS = 10.0
GATEWAY_HASH_BYTES_PER_SECOND = 32 << 20
"""Slowest hashing speed assumed when waiting for the gateway to complete a rename."""

PasswordSource = Callable[[], str]


@dataclass(frozen=True)
class SendResult:
    """What ``send`` proved."""

    batch_id: str
    size: int
    sha256: str
    resumed_from: int
    already_received: bool
    received_at: str
    receipt_signer: str
    ledger_entry: dict[str, object] | None


def resolve(target: str, config: ClientConfig) -> tuple[str, Path]:
    """The batch id and local envelope named by ``BATCH`` or ``FILE.age``.

    Raises:
        UsageError: not a batch id, a file whose stem is not one, or no such file.
    """
    if BATCH_ID_RE.fullmatch(target):
        batch = target
        path = config.path(config.seal.out_dir) / f"{batch}{AGE_SUFFIX}"
    else:
        path = Path(target)
        if path.suffix != AGE_SUFFIX:
            raise UsageError(
                _("{target} is neither a batch id nor a .age file").format(target=repr(target)),
                hint=_("give the batch id printed by seal, e.g. {example}").format(
                    example="20260715-KAIGO-7F3KQ2"
                ),
            )
        batch = path.name[: -len(AGE_SUFFIX)]
        if not BATCH_ID_RE.fullmatch(batch):
            raise UsageError(
                _("{name}: the file name is not <batch-id>.age").format(name=path.name),
                hint=_("send the envelope under the name seal gave it"),
            )
    if not path.is_file():
        raise UsageError(
            _("{path}: no such sealed batch").format(path=path),
            hint=_("check the batch id or the path"),
        )
    return batch, path


def settings(config: ClientConfig) -> tuple[transfer.Endpoint, Ed25519PublicKey]:
    """The gateway endpoint and pinned receipt key from ``[gateway]``.

    Raises:
        ConfigError: an empty user, tenant, host_key or receipt_key, or a key
            line that is not ``ssh-ed25519`` (exit 78).
    """
    gw = config.gateway
    file = str(config.source) if config.source else _("(defaults)")
    for name in ("user", "tenant", "host_key", "receipt_key"):
        if not getattr(gw, name).strip():
            raise ConfigError(
                file,
                f"gateway.{name}",
                _(
                    "is empty; use the client configuration the contractor issued with the "
                    "account (never trust a gateway key on first use)"
                ),
            )
    keys: list[Ed25519PublicKey] = []
    for name in ("host_key", "receipt_key"):
        try:
            keys.append(load_public_key(getattr(gw, name)))
        except CustodyError as exc:
            raise ConfigError(file, f"gateway.{name}", explain(exc)) from None
    endpoint = transfer.Endpoint(
        gw.host, gw.port, gw.user, keys[0], float(gw.connect_timeout_seconds)
    )
    return endpoint, keys[1]


def send(
    target: str,
    config: ClientConfig,
    *,
    password: PasswordSource,
    key_path: Path | None = None,
) -> SendResult:
    """Upload a sealed batch, verify the signed receipt, record ``sent`` in the ledger.

    ``--key`` (``key_path``) only changes the key that logs in; the ledger
    entry is always signed with the ward's ``identity.private_key``, so the
    whole ledger verifies against one key.

    Raises:
        UsageError: bad target. ConfigError: gateway settings or key (78).
        TemporaryError: unreachable or dropped (75). ClientError: refused,
        a receipt that does not verify or does not match (1).
    """
    batch, local = resolve(target, config)
    endpoint, receipt_key = settings(config)
    ledger_key = ledger.load_key(config.path(config.identity.private_key), "identity.private_key")
    key = ledger.load_key(key_path, "--key") if key_path is not None else ledger_key
    book = config.path(config.ledger.path)
    sealed = _sealed_sha256(book, batch)
    with _locked_local(local) as handle:
        size = os.fstat(handle.fileno()).st_size
        with transfer.connect(endpoint, password(), key) as session:
            final = f"{INBOX}/{batch}{AGE_SUFFIX}"
            part = f"{INBOX}/{batch}{PART_SUFFIX}"
            receipt = f"{RECEIPTS}/{batch}{RECEIPT_SUFFIX}"
            # A receipt (or a completed file) means the gateway already has this batch,
            # even once it has moved the file on from /inbox.
            already = session.size(receipt) is not None or session.size(final) is not None
            if already:
                resumed_from = 0
                with progress_bar(_("checking {batch}").format(batch=batch), size) as advance:
                    digest = _sha256(handle, local, 0, size, hashlib.sha256(), advance)
            else:
                resumed_from, digest = _upload(session, handle, local, part, size)
                if sealed is not None and digest != sealed:
                    session.remove(part)
                    raise ClientError(
                        _(
                            "{path} changed since it was sealed (its SHA-256 differs from the "
                            "ledger's); the upload was withdrawn"
                        ).format(path=local),
                        hint=_("seal the print data again"),
                    )
                rename_timeout = endpoint.timeout + size / GATEWAY_HASH_BYTES_PER_SECOND
                session.rename(part, final, timeout=rename_timeout)
            doc, body = _fetch_receipt(session, batch, receipt_key, endpoint.timeout)
            signer = fingerprint(receipt_key)
            _compare(body, signer, batch, config.gateway.tenant, size, digest, resumed_from)
            host_key = session.host_key_fingerprint
    entry = _record(config, ledger_key, book, batch, doc, body, host_key, resumed_from, already)
    return SendResult(
        batch_id=batch,
        size=size,
        sha256=digest,
        resumed_from=resumed_from,
        already_received=already,
        received_at=str(body.get("received_at", "")),
        receipt_signer=fingerprint(receipt_key),
        ledger_entry=entry,
    )


def _upload(
    session: transfer.Session, handle: BinaryIO, local: Path, part: str, size: int
) -> tuple[int, str]:
    """Resume or start the ``.part`` upload. Returns the resume offset and the file's SHA-256."""
    offset = session.size(part) or 0
    if offset > size:  # not a prefix of this file: start again
        session.remove(part)
        offset = 0
    digest = hashlib.sha256()
    with progress_bar(_("sending {name}").format(name=local.name), size) as advance:
        _sha256(handle, local, 0, offset, digest, advance)
        if offset < size:
            blocks = _blocks(handle, local, offset, size, digest)
            session.upload(part, blocks, offset=offset, sent=advance)
    remote = session.size(part)
    if remote != size:
        raise ClientError(
            _("the gateway holds {remote} bytes of {path}, expected {size}").format(
                remote=remote, path=part, size=size
            ),
            hint=_("another send of this batch may be running; run send again later"),
        )
    return offset, digest.hexdigest()


def _blocks(
    handle: BinaryIO, local: Path, start: int, end: int, digest: "hashlib._Hash"
) -> Iterator[bytes]:
    """Yield the file's bytes from ``start`` to ``end``, hashing them."""
    try:
        handle.seek(start)
        remaining = end - start
        while remaining:
            block = handle.read(min(READ_BLOCK_BYTES, remaining))
            if not block:
                raise ClientError(
                    _("{path}: the file shrank while it was being sent").format(path=local)
                )
            digest.update(block)
            remaining -= len(block)
            yield block
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot read: {reason}").format(path=local, reason=exc.strerror or exc)
        ) from None


def _sha256(
    handle: BinaryIO,
    local: Path,
    start: int,
    end: int,
    digest: "hashlib._Hash",
    advance: Callable[[int], None],
) -> str:
    """Hash the file's bytes from ``start`` to ``end`` into ``digest``; return its hex."""
    for block in _blocks(handle, local, start, end, digest):
        advance(len(block))
    return digest.hexdigest()


@contextmanager
def _locked_local(local: Path) -> Iterator[BinaryIO]:
    """Open the envelope and hold an exclusive lock: one send per batch at a time."""
    try:
        handle = local.open("rb")
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot open: {reason}").format(path=local, reason=exc.strerror or exc)
        ) from None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ClientError(
                _("another lgwan-client is already sending {name}").format(name=local.name),
                hint=_("wait for it to finish"),
            ) from None
        yield handle


def _sealed_sha256(book: Path, batch: str) -> str | None:
    """The envelope SHA-256 recorded when the batch was sealed, if the ledger has it."""
    found = None
    for entry in ledger.entries(book, batch):
        if entry.get("event") == ledger.EVENT_SEALED and isinstance(
            entry.get("envelope_sha256"), str
        ):
            found = str(entry["envelope_sha256"])
    return found


def _fetch_receipt(
    session: transfer.Session, batch: str, receipt_key: Ed25519PublicKey, wait: float
) -> tuple[dict[str, object], dict[str, object]]:
    """Read and verify the gateway's receipt; return the record and its body.

    Raises:
        TemporaryError: no receipt within ``wait`` seconds (run send again to fetch it).
        ClientError: malformed, or not signed by the pinned receipt key.
    """
    path = f"{RECEIPTS}/{batch}{RECEIPT_SUFFIX}"
    deadline = time.monotonic() + max(wait, RECEIPT_WAIT_SECONDS)
    while (data := session.read(path, MAX_RECEIPT_BYTES)) is None:
        if time.monotonic() >= deadline:
            raise TemporaryError(
                _("the gateway has not issued the receipt {path} yet").format(path=path),
                hint=_(
                    "the upload is complete; run send again later to fetch and verify the receipt"
                ),
            )
        time.sleep(0.2)
    try:
        doc = loads_record(data, max_bytes=MAX_RECEIPT_BYTES)
        body = verify_record(doc, receipt_key, kind=KIND_RECEIPT)
    except CustodyError as exc:
        raise ClientError(
            _("the gateway's receipt for {batch} does not verify: {reason}").format(
                batch=batch, reason=exc
            ),
            hint=_(
                "the receipt is not signed by the pinned gateway.receipt_key; "
                "do not treat the batch as delivered — tell the contractor"
            ),
        ) from None
    return doc, body


def _compare(
    body: dict[str, object],
    signer: str,
    batch: str,
    tenant: str,
    size: int,
    sha256: str,
    resumed_from: int,
) -> None:
    """Check the receipt speaks about this batch, for this tenant, with the local bytes.

    Raises:
        ClientError: naming the first field that differs.
    """
    expected_fields = (
        ("batch_id", batch),
        ("tenant", tenant),
        ("file", f"{batch}{AGE_SUFFIX}"),
        ("gateway_key", signer),
    )
    for name, expected in expected_fields:
        if body.get(name) != expected:
            raise ClientError(
                _("the gateway's receipt names {field} {value}, expected {expected}").format(
                    field=name, value=repr(body.get(name)), expected=repr(expected)
                )
            )
    if body.get("size") != size or body.get("sha256") != sha256:
        values = {
            "batch": batch,
            "size": body.get("size"),
            "sha256": body.get("sha256"),
            "local_size": size,
            "local_sha256": sha256,
            "resumed": resumed_from,
        }
        if resumed_from:
            message = _(
                "the gateway received different content for {batch}: {size} bytes, SHA-256 "
                "{sha256}; the local file is {local_size} bytes, SHA-256 {local_sha256}; the "
                "partial upload the gateway kept from an earlier attempt ({resumed} bytes) was "
                "damaged"
            )
        else:
            message = _(
                "the gateway received different content for {batch}: {size} bytes, SHA-256 "
                "{sha256}; the local file is {local_size} bytes, SHA-256 {local_sha256}"
            )
        raise ClientError(
            message.format(**values),
            hint=_(
                "do not treat the batch as delivered; ask the contractor to quarantine it, "
                "then seal the print data again"
            ),
        )


def _record(
    config: ClientConfig,
    key: Ed25519PrivateKey,
    book: Path,
    batch: str,
    receipt: dict[str, object],
    body: dict[str, object],
    host_key: str,
    resumed_from: int,
    already: bool,
) -> dict[str, object] | None:
    """Record ``sent`` once per receipt (a re-send of a received batch adds nothing)."""
    with ledger.Ledger.open(book, key) as opened:
        for entry in opened.entries(batch):
            if entry.get("event") == ledger.EVENT_SENT and entry.get("receipt") == receipt:
                return None
        gw = config.gateway
        return opened.record(
            ledger.EVENT_SENT,
            batch=batch,
            handler=config.handler_name(),
            gateway=f"{gw.host}:{gw.port}",
            user=gw.user,
            tenant=gw.tenant,
            file=f"{batch}{AGE_SUFFIX}",
            size=body.get("size"),
            sha256=body.get("sha256"),
            received_at=body.get("received_at"),
            uploader=body.get("uploader"),
            receipt_signer=receipt.get("signer"),
            host_key=host_key,
            resumed_from=resumed_from,
            already_received=already,
            receipt=receipt,
        )
