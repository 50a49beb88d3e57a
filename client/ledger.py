"""The ward's local hand-over ledger: a hash-chained log of signed entries.

One JSON line per event, built on :mod:`custody.chain`::

    {"seq": N, "prev": H, "time": T, "event": "sent", "batch": B, ...fields...,
     "signer": "SHA256:…", "alg": "ed25519", "sig": BASE64, "hash": H'}

``hash`` chains the lines (custody.chain). ``sig`` is the ward key's Ed25519
signature with :mod:`custody.records` semantics: the entry without ``hash``,
``signer``, ``alg`` and ``sig`` is the *body* of a record of kind
:data:`KIND_LEDGER_ENTRY`, so the signature binds every field **and** the
entry's place in the chain (``seq``, ``prev``, ``time``). Rewriting the ledger
therefore needs the ward's private key; dropping entries at the end is the one
change it cannot show by itself (there is no external checkpoint yet).

Events are lower-case words with hyphens: ``sealed`` (by ``seal``), ``sent``
(by ``send``), ``erasure-verified`` (by ``verify-certificate``) and ``repaired``
(a torn last line was cut off at open); the DVD and hand-over events
(``media-out``, ``notice-out``, ``media-return`` …) use the same
:meth:`Ledger.record`. An open :class:`Ledger` holds an exclusive
``flock`` on the file, so a caller may read :meth:`Ledger.entries`, check its
rules and then record, without another process writing in between.
"""

import fcntl
import os
import re
import stat
import time as time_mod
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client.errors import ClientError, ConfigError
from client.i18n import _
from custody import (
    ChainError,
    ChainHead,
    ChainWriter,
    CustodyError,
    VerifyReport,
    parse_entry,
    recover_head,
    sign_record,
    verify_chain,
    verify_record,
)
from custody.chain import MAX_LINE_BYTES, RESERVED_FIELDS
from custody.keys import load_private_key

KIND_LEDGER_ENTRY = "ledger-entry"
"""The custody record kind a ledger entry's signature is made as."""

FIELD_EVENT = "event"
FIELD_BATCH = "batch"
FIELD_SIGNER = "signer"
FIELD_ALG = "alg"
FIELD_SIG = "sig"
SIGNATURE_FIELDS = frozenset({FIELD_SIGNER, FIELD_ALG, FIELD_SIG})
LEDGER_RESERVED = RESERVED_FIELDS | SIGNATURE_FIELDS | {FIELD_EVENT}
"""Fields the ledger sets itself; callers' fields may not use these names."""

EVENT_SEALED = "sealed"
EVENT_SENT = "sent"
EVENT_REPAIRED = "repaired"
EVENT_MEDIA_OUT = "media-out"
EVENT_NOTICE_OUT = "notice-out"
EVENT_MEDIA_RETURN = "media-return"
EVENT_NOTICE_RETURN = "notice-return"
EVENT_DELIVERY = "delivery"
EVENT_DVD_CREATED = "dvd-created"
"""The hand-over events, recorded by ``lgwan-client ledger record`` (rules: client.handover)."""
EVENT_ERASURE_VERIFIED = "erasure-verified"
"""A print site's erasure certificate verified (by ``lgwan-client verify-certificate``)."""
EVENT_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")

LOCK_TIMEOUT_SECONDS = 30.0
_LOCK_POLL_SECONDS = 0.05
MAX_KEY_FILE_BYTES = 16384


class Ledger:
    """An open, locked ledger that appends signed entries.

    Use :meth:`open`, then :meth:`record`; :meth:`close` (or leaving a ``with``
    block) releases the lock.
    """

    def __init__(self, path: Path, stream: BinaryIO, head: ChainHead, key: Ed25519PrivateKey):
        """Use :meth:`open`."""
        self._path = path
        self._stream = stream
        self._writer = ChainWriter(stream, head)
        self._key = key

    @classmethod
    def open(
        cls, path: Path, key: Ed25519PrivateKey, *, lock_timeout: float = LOCK_TIMEOUT_SECONDS
    ) -> Self:
        """Open (creating it, mode 0600) and lock the ledger, repairing a torn last line.

        A line cut short by a crash mid-write is truncated away and a
        ``repaired`` entry records how many bytes were dropped.

        Args:
            path: the ledger file.
            key: the ward's private key; every entry is signed with it.
            lock_timeout: seconds to wait for another process's lock.

        Raises:
            ClientError: the file cannot be opened or locked, or a complete
                line is broken (the ledger was changed: run verify).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ClientError(
                _("ledger {path}: cannot open: {reason}").format(
                    path=path, reason=exc.strerror or exc
                )
            ) from None
        stream = os.fdopen(fd, "r+b", buffering=0)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ClientError(_("ledger {path}: not a regular file").format(path=path))
            _lock(fd, fcntl.LOCK_EX, path, lock_timeout)
            head, torn = _recover(path, fd)
            ledger = cls(path, stream, head, key)
            if torn:
                ledger.record(EVENT_REPAIRED, truncated_bytes=torn)
        except BaseException:
            stream.close()
            raise
        return ledger

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def head(self) -> ChainHead:
        """The last entry's seq and hash (seq 0 for an empty ledger)."""
        return self._writer.head

    def record(self, event: str, /, **fields: object) -> dict[str, object]:
        """Append one signed entry and make it durable (fsync) before returning.

        Args:
            event: what happened, e.g. ``sealed``; lower-case words and hyphens.
            **fields: the event's fields (canonical JSON values), e.g. ``batch=…``.

        Returns:
            The entry as written, with seq, prev, time, signature and hash.

        Raises:
            ClientError: a bad event name, a reserved or non-JSON field, or
                the write failed (nothing is then recorded).
        """
        if EVENT_PATTERN.fullmatch(event) is None:
            raise ClientError(
                _("ledger: malformed event name {event}").format(event=repr(event[:40]))
            )
        reserved = LEDGER_RESERVED.intersection(fields)
        if reserved:
            raise ClientError(
                _("ledger: reserved field names {names}").format(names=sorted(reserved))
            )
        head = self._writer.head
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        body: dict[str, object] = {**fields, FIELD_EVENT: event}
        body.update({"seq": head.seq + 1, "prev": head.hash, "time": now})
        try:
            signed = sign_record(KIND_LEDGER_ENTRY, body, self._key)
            entry = {**fields, FIELD_EVENT: event}
            entry.update({name: signed[name] for name in SIGNATURE_FIELDS})
            new_head = self._writer.append(entry, now)
            os.fsync(self._stream.fileno())
        except CustodyError as exc:
            raise ClientError(
                _("ledger: cannot record {event}: {reason}").format(event=repr(event), reason=exc)
            ) from None
        except OSError as exc:
            raise ClientError(
                _("ledger {path}: write failed: {reason}").format(
                    path=self._path, reason=exc.strerror or exc
                )
            ) from None
        return {**body, **entry, "hash": new_head.hash}

    def entries(self, batch: str | None = None) -> Iterator[dict[str, object]]:
        """The entries recorded so far (read under this ledger's lock)."""
        return entries(self._path, batch, _locked=True)

    def close(self) -> None:
        """Release the lock and close the file."""
        self._stream.close()

    def __enter__(self) -> Self:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close."""
        self.close()

    def __repr__(self) -> str:
        """Show the path and head, never the key."""
        return f"Ledger({str(self._path)!r}, seq={self.head.seq})"

    @staticmethod
    def verify(path: Path, public_key: Ed25519PublicKey) -> VerifyReport:
        """Check the chain and every entry's signature against the ward's public key.

        Returns:
            custody's report; ``ok`` is False at the first changed, missing,
            reordered or torn line or the first entry not signed by ``public_key``,
            naming its line and seq.

        Raises:
            ClientError: the ledger cannot be read.
        """
        try:
            with path.open("rb") as handle:
                _lock(handle.fileno(), fcntl.LOCK_SH, path, LOCK_TIMEOUT_SECONDS)
                chain = verify_chain(handle)
                handle.seek(0)
                for line_no in range(1, chain.records + 1):
                    entry = parse_entry(handle.readline())
                    try:
                        check_signature(entry, public_key)
                    except CustodyError as exc:
                        previous = ChainHead(line_no - 1, str(entry["prev"]))
                        reason = f"seq {line_no}: {exc}"
                        return VerifyReport(False, line_no - 1, previous, line_no, line_no, reason)
        except OSError as exc:
            raise ClientError(
                _("ledger {path}: cannot read: {reason}").format(
                    path=path, reason=exc.strerror or exc
                )
            ) from None
        return chain


def check_signature(entry: Mapping[str, object], public_key: Ed25519PublicKey) -> None:
    """Verify one parsed entry's signature.

    Raises:
        RecordError: signature fields missing or malformed.
        SignatureError: another signer, or the entry was changed.
    """
    body = {name: value for name, value in entry.items() if name not in SIGNATURE_FIELDS}
    body.pop("hash", None)
    doc = {
        "kind": KIND_LEDGER_ENTRY,
        "body": body,
        **{name: entry.get(name) for name in SIGNATURE_FIELDS},
    }
    verify_record(doc, public_key, kind=KIND_LEDGER_ENTRY)


def entries(
    path: Path, batch: str | None = None, *, _locked: bool = False
) -> Iterator[dict[str, object]]:
    """Read the ledger's entries in order, optionally only one batch's.

    Each line's own hash is checked; the chain and signatures are checked by
    :meth:`Ledger.verify`. A torn last line is skipped. A missing ledger has
    no entries.

    Raises:
        ClientError: a complete line is malformed or changed.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ClientError(
            _("ledger {path}: cannot read: {reason}").format(path=path, reason=exc.strerror or exc)
        ) from None
    with handle:
        if not _locked:
            _lock(handle.fileno(), fcntl.LOCK_SH, path, LOCK_TIMEOUT_SECONDS)
        line_no = 0
        while line := handle.readline(MAX_LINE_BYTES + 1):
            line_no += 1
            if not line.endswith(b"\n") and len(line) <= MAX_LINE_BYTES:
                return  # a torn last line
            try:
                entry = parse_entry(line)
            except ChainError as exc:
                raise ClientError(
                    _("ledger {path}: line {line}: {reason}").format(
                        path=path, line=line_no, reason=exc
                    ),
                    hint=_("run the ledger verification"),
                ) from None
            if batch is None or entry.get(FIELD_BATCH) == batch:
                yield entry


def load_key(path: Path, setting: str) -> Ed25519PrivateKey:
    """Load the ward's Ed25519 private key, refusing one that others may read.

    Args:
        path: the key file.
        setting: what named it, for messages (``identity.private_key`` or ``--key``).

    Raises:
        ConfigError: missing, not a regular file, readable by group or others,
            or not an unencrypted Ed25519 key (exit 78).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        message = _("no private key at {path} (create one with: lgwan-client keygen)")
        raise ConfigError(setting, None, message.format(path=path)) from None
    except OSError as exc:
        message = _("cannot open {path}: {reason}").format(path=path, reason=exc.strerror or exc)
        raise ConfigError(setting, None, message) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(setting, None, _("{path} is not a regular file").format(path=path))
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            message = _("{path} is readable by others (mode {mode}); run: chmod 600 {path}").format(
                path=path, mode=f"{mode:04o}"
            )
            raise ConfigError(setting, None, message)
        data = handle.read(MAX_KEY_FILE_BYTES + 1)
    try:
        if len(data) > MAX_KEY_FILE_BYTES:
            raise ConfigError(setting, None, _("{path} is too large to be a key").format(path=path))
        return load_private_key(data)
    except CustodyError as exc:
        raise ConfigError(setting, None, f"{path}: {exc}") from None


def _recover(path: Path, fd: int) -> tuple[ChainHead, int]:
    """Find the head; cut off a torn last line. Returns the head and bytes dropped."""
    size = os.fstat(fd).st_size
    with os.fdopen(os.dup(fd), "rb") as reader:
        reader.seek(0)
        try:
            head, end = recover_head(reader)
        except ChainError as exc:
            raise ClientError(
                _("ledger {path} is damaged: {reason}").format(path=path, reason=exc),
                hint=_("nothing was recorded; have the ledger verified before using it again"),
            ) from None
    if end < size:
        os.ftruncate(fd, end)
        os.fsync(fd)
    return head, size - end


def _lock(fd: int, operation: int, path: Path, timeout: float) -> None:
    """flock ``fd``, waiting up to ``timeout`` seconds for another process."""
    deadline = time_mod.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time_mod.monotonic() >= deadline:
                raise ClientError(
                    _("ledger {path} is locked by another lgwan-client process").format(path=path),
                    hint=_("wait until it finishes, then run the command again"),
                ) from None
            time_mod.sleep(_LOCK_POLL_SECONDS)
