"""Erasure certificates on disk: the file ``verify-certificate`` reads, the copies ``status`` saves.

:func:`verify_file` is ``lgwan-client verify-certificate FILE``: it reads the file
(size-capped), checks it (:func:`client.certificate.check_data`) and records
``erasure-verified`` in the ward ledger once per certificate.

When the gateway holds ``/receipts/<batch>.erasure.json`` (the print site's
signed erasure certificate, published once the batch is ``erased``),
``lgwan-client status`` saves it as ``<[printsite] certificate_dir>/<batch>.erasure.json``:
written to a temporary file, fsynced, then linked into place — so the file
either holds the whole certificate or does not exist, and an existing file is
never replaced. The same bytes already there are fine (a later ``status``); a
*different* file there is refused (:data:`CHECK_CONFLICT`): the gateway now
serves another certificate than the one saved earlier, or the saved one was
changed — the ward decides which to believe, not this tool.

With ``[printsite] signing_key`` set, the certificate is checked *before* it
is saved, like ``verify-certificate`` does (:func:`client.certificate.check_data`),
without recording anything (recording ``erasure-verified`` in the ledger is
``verify-certificate``'s job, and ``status`` says to run it). Only a valid one
takes the certificate's name; one that does not verify is kept as evidence
under ``<batch>.erasure.json.invalid`` (:data:`INVALID_SUFFIX`, the first such
file stays), so a forged or broken file never blocks the genuine certificate
the gateway serves later. Without a pinned key the copy is saved unchecked.
"""

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client import certificate, ledger
from client.config import ClientConfig
from client.durable import fsync_dir
from client.errors import ClientError, ConfigError, UsageError
from client.i18n import _
from envelope import manifest

CHECK_VALID = "valid"
"""Signed by the pinned print-site key and matching the ward's ledger."""
CHECK_INVALID = "invalid"
"""It does not verify, or does not match what the ward sealed."""
CHECK_UNCHECKED = "unchecked"
"""Saved, but not checked: no ``[printsite] signing_key`` (or no ward key) to check it with."""
CHECK_CONFLICT = "conflict"
"""A different file is already saved under the certificate's name; nothing was replaced."""
CHECK_UNAVAILABLE = "unavailable"
"""The gateway's file could not be read (refused, or larger than the cap)."""
FAILED_CHECKS = (CHECK_INVALID, CHECK_CONFLICT, CHECK_UNAVAILABLE)

FILE_MODE = 0o600
DIR_MODE = 0o700
INVALID_SUFFIX = ".invalid"
"""A certificate that does not verify is kept as ``<batch>.erasure.json.invalid``."""


class ConflictError(ClientError):
    """A different certificate is already saved under the name (exit 1)."""


@dataclass(frozen=True)
class CertificateCopy:
    """A batch's erasure certificate as ``status`` found, saved and checked it."""

    batch_id: str
    path: Path
    check: str
    """One of the ``CHECK_…`` values."""
    saved: bool = False
    """Written by this run (False: the same bytes were already there, or nothing was written)."""
    problem: str | None = None
    ledger_seq: int | None = None
    """The ``erasure-verified`` entry of this certificate, when already recorded."""

    @property
    def readable(self) -> bool:
        """True when ``path`` holds a certificate (the gateway's, or a different earlier one)."""
        return self.check != CHECK_UNAVAILABLE

    @property
    def failed(self) -> bool:
        """True when the certificate must not be relied on (status exits 1)."""
        return self.check in FAILED_CHECKS


def conflict_hint() -> str:
    """What to do about a conflicting saved certificate (in the chosen language)."""
    return _(
        "compare the two; to take the gateway's, move the saved file away and run status again"
    )


def target(config: ClientConfig, batch: str) -> Path:
    """Where the batch's certificate is saved."""
    directory = config.path(config.printsite.certificate_dir)
    return directory / f"{batch}{certificate.CERTIFICATE_SUFFIX}"


def save(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically, never replacing a different file.

    Returns:
        True when written now, False when ``path`` already held these bytes.

    Raises:
        ConflictError: ``path`` exists with other content (or is not a regular file).
        ClientError: the directory or file cannot be written.
    """
    directory = path.parent
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path, follow_symlinks=False)
        except FileExistsError:
            if _existing(path) == data:
                return False
            raise ConflictError(
                _(
                    "{path} exists and differs from the certificate at the gateway; it was not "
                    "replaced"
                ).format(path=path),
                hint=conflict_hint(),
            ) from None
        fsync_dir(directory)
        return True
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot save: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def _existing(path: Path) -> bytes | None:
    """The saved file's bytes (capped), None when it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return handle.read(certificate.MAX_CERTIFICATE_BYTES + 1)


def keep(
    config: ClientConfig,
    batch: str,
    data: bytes,
    printsite_key: Ed25519PublicKey | None,
    ward_key: Ed25519PublicKey | None,
) -> CertificateCopy:
    """Save the gateway's certificate for ``batch`` and check it when a key is pinned.

    Args:
        config: The client configuration (certificate_dir, ledger, tenant).
        batch: The batch the gateway stores the certificate under.
        data: The bytes read from the gateway (already size-capped).
        printsite_key: ``[printsite] signing_key``, None when not set.
        ward_key: The ward's public key (checks the ledger's sealed entry),
            None when it is not available here.

    Returns:
        What was saved and whether it verifies; never raises for a
        certificate that does not verify or a conflicting file.
    """
    path = target(config, batch)
    if printsite_key is None or ward_key is None:
        try:
            saved = save(path, data)
        except ConflictError as exc:
            return CertificateCopy(batch, path, CHECK_CONFLICT, problem=str(exc))
        why = _("[printsite] signing_key is empty") if printsite_key is None else _("no ward key")
        return CertificateCopy(batch, path, CHECK_UNCHECKED, saved=saved, problem=why)
    try:
        checked = certificate.check_data(config, data, printsite_key, ward_key)
        if checked.batch_id != batch:
            raise certificate.CertificateError(
                _("it is the certificate of batch {found}, stored under {batch}").format(
                    found=checked.batch_id, batch=batch
                ),
                certificate.REASON_MISMATCH,
            )
    except certificate.CertificateError as exc:
        evidence = path.with_name(path.name + INVALID_SUFFIX)
        try:
            saved = save(evidence, data)
        except ConflictError:
            saved = False  # an earlier invalid file is kept as it is
        return CertificateCopy(batch, evidence, CHECK_INVALID, saved=saved, problem=str(exc))
    try:
        saved = save(path, data)
    except ConflictError as exc:
        return CertificateCopy(batch, path, CHECK_CONFLICT, problem=str(exc))
    book = config.path(config.ledger.path)
    seq = certificate.recorded_seq(ledger.entries(book, batch), checked)
    return CertificateCopy(batch, path, CHECK_VALID, saved=saved, ledger_seq=seq)


# --- verify-certificate FILE --------------------------------------------------------


def required_printsite_key(config: ClientConfig) -> Ed25519PublicKey:
    """The pinned print-site key; its absence is a configuration error.

    Raises:
        ConfigError: empty or malformed (exit 78), with a hint.
    """
    key = certificate.printsite_key(config)
    if key is None:
        error = ConfigError(
            certificate.source(config),
            certificate.SETTING,
            _("is empty: no print-site key is pinned"),
        )
        error.hint = _(
            'set [printsite] signing_key = "ssh-ed25519 AAAA…", the print site\'s key as the '
            "contractor issued it (never a key taken from the certificate itself)"
        )
        raise error
    return key


def read_file(path: Path) -> bytes:
    """Read a certificate file, at most :data:`certificate.MAX_CERTIFICATE_BYTES`.

    Raises:
        UsageError: no such file. ClientError: unreadable, not a regular
            file, or larger than the cap.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(
            _("{path}: no such file").format(path=path), hint=_("give the certificate's path")
        ) from None
    except OSError as exc:
        raise ClientError(
            _("{path}: cannot open: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ClientError(_("{path}: not a regular file").format(path=path))
        data = handle.read(certificate.MAX_CERTIFICATE_BYTES + 1)
    if len(data) > certificate.MAX_CERTIFICATE_BYTES:
        raise certificate.CertificateError(
            _("{path}: larger than {max} bytes; not an erasure certificate").format(
                path=path, max=certificate.MAX_CERTIFICATE_BYTES
            ),
            certificate.REASON_MALFORMED,
        )
    return data


def verify_file(config: ClientConfig, path: Path) -> certificate.Verified:
    """``verify-certificate FILE``: check it, then record ``erasure-verified`` once.

    Raises:
        ConfigError: no or a malformed ``[printsite] signing_key``, or the
            ward key (78). UsageError: no such file (2). CertificateError:
            the certificate does not verify or does not match (1).
    """
    key = required_printsite_key(config)
    data = read_file(path)
    ward_key = ledger.load_key(config.path(config.identity.private_key), "identity.private_key")
    try:
        checked = certificate.check_data(config, data, key, ward_key.public_key())
        named = _named_batch(path)
        if named is not None and named != checked.batch_id:  # B.erasure.json holding A's
            raise certificate.CertificateError(
                _("it is the certificate of batch {found}, stored under {batch}").format(
                    found=checked.batch_id, batch=named
                ),
                certificate.REASON_MISMATCH,
            )
    except certificate.CertificateError as exc:
        raise certificate.CertificateError(
            _("{path}: does not verify: {reason}").format(path=path, reason=exc), exc.reason
        ) from None
    return _record(config, ward_key, checked)


def _named_batch(path: Path) -> str | None:
    """The batch a ``<batch>.erasure.json`` file name claims, else None (any other name)."""
    stem = path.name.removesuffix(certificate.CERTIFICATE_SUFFIX)
    if stem == path.name or not manifest.BATCH_ID_RE.fullmatch(stem):
        return None
    return stem


def _record(
    config: ClientConfig, ward_key: Ed25519PrivateKey, cert: certificate.Certificate
) -> certificate.Verified:
    """Record ``erasure-verified`` unless this certificate already is (under the ledger lock)."""
    with ledger.Ledger.open(config.path(config.ledger.path), ward_key) as book:
        seq = certificate.recorded_seq(book.entries(cert.batch_id), cert)
        if seq is not None:
            return certificate.Verified(cert, seq, recorded=False)
        entry = book.record(
            ledger.EVENT_ERASURE_VERIFIED,
            batch=cert.batch_id,
            certificate_sha256=cert.sha256,
            certificate_signer=cert.signer,
            items=len(cert.items),
            erased_at=cert.finished_at.isoformat(),
            handler=config.handler_name(),
        )
    seq_value = entry.get("seq")
    return certificate.Verified(cert, seq_value if isinstance(seq_value, int) else 0, recorded=True)
