"""The envelope check: is this file a sealed batch we may pass on? Decided without decrypting.

The forwarding pipeline (before a batch leaves the gateway) and ``dvd-import``
(before a disc's batch enters the print-site spool) apply the same rules:

- the file is a binary age v1 file (a plaintext CSV renamed ``.age``, a ZIP, a
  PDF, or an ASCII-armored age file are not: the ward's client writes binary
  envelopes only);
- its header is well formed (:func:`envelope.read_header`) and holds exactly
  one ``scrypt`` stanza (an X25519 or any other recipient is refused);
- the scrypt work factor is within the configured bounds;
- the payload has a length an age STREAM can have (16-byte nonce, then 64 KiB
  chunks each with a 16-byte tag, a non-empty final chunk unless it is the only
  one): a file cut off inside a chunk is refused as truncated;
- size and SHA-256 equal the expected values (the signed receipt, the disc's
  manifest), when given.

:func:`check_envelope` never raises for bad content: it returns a
:class:`CheckResult` whose ``reason`` (a :class:`QuarantineReason`) says what is
wrong. It reads the file once, in blocks, in constant memory, and always to its
end so the result carries the file's size and SHA-256 for the incident record.

Its verdict is recorded in English (:attr:`CheckResult.message`, for the
quarantine record) and shown to a person in the chosen language
(:attr:`CheckResult.shown`). :class:`Text` and :func:`english` serve every
print-site module whose messages are both shown and recorded: a message made
with this module's :func:`_` is in the chosen language and keeps its English.
"""

from __future__ import annotations

import codecs
import enum
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from envelope import EnvelopeError, HeaderError, read_header
from envelope.armor import DETECT_WINDOW, looks_armored
from envelope.format import INTRO_PREFIX
from envelope.recipient import MAX_WORK_FACTOR
from envelope.stream import ENCRYPTED_CHUNK_SIZE, NONCE_SIZE, TAG_SIZE
from gateway import i18n

_BLOCK = 1 << 20
_SNIFF = max(DETECT_WINDOW, 64)
# envelope.read_header's messages for a file that ends inside the header or before the nonce.
_TRUNCATION_MESSAGES = ("header is truncated", "the file ends before the payload nonce")
_NOT_ALONE_MESSAGE = "a scrypt stanza must be the only stanza"


# -- messages shown translated, recorded in English ----------------------------------------------


class Text(str):
    """A message in the chosen language that keeps its English (``english``) for records.

    ``format`` fills both with the same values (a :class:`Text` value gives
    each side its own language), so ``_("{path}: bad").format(path=p)`` stays one.
    """

    english: str

    def __new__(cls, shown: str, english: str) -> Text:
        """``shown`` is the text itself; ``english`` its English original."""
        text = super().__new__(cls, shown)
        text.english = english
        return text

    def format(self, *args: object, **kwargs: object) -> Text:
        """Both languages formatted with the same values."""
        plain = {key: _english_value(value) for key, value in kwargs.items()}
        return Text(
            str.format(self, *args, **kwargs),
            self.english.format(*map(_english_value, args), **plain),
        )


def _(message: str) -> Text:
    """:func:`gateway.i18n._` that keeps the English ``message`` too."""
    return Text(i18n._(message), message)


def english(value: object) -> str:
    """The English of a :class:`Text`, or of an exception whose message is one; else ``str()``."""
    if isinstance(value, BaseException) and value.args:
        value = value.args[0] if isinstance(value.args[0], Text) else str(value)
    return value.english if isinstance(value, Text) else str(value)


def _english_value(value: object) -> object:
    if isinstance(value, Text) or (isinstance(value, BaseException) and value.args):
        return english(value)
    return value


class QuarantineReason(enum.Enum):
    """Why a file is not an acceptable envelope; the value is the code used in records."""

    NOT_AGE = "not_age"
    ARMORED = "armored"
    MALFORMED_HEADER = "malformed_header"
    NOT_SCRYPT = "not_scrypt"
    WORK_FACTOR_LOW = "work_factor_low"
    WORK_FACTOR_HIGH = "work_factor_high"
    TRUNCATED = "truncated"
    SIZE_MISMATCH = "size_mismatch"
    SHA256_MISMATCH = "sha256_mismatch"

    @property
    def message(self) -> str:
        """One line in English (for records): what is wrong with the file."""
        return _reason_text(self).english

    @property
    def shown(self) -> Text:
        """:attr:`message` in the chosen language."""
        return _reason_text(self)


def _reason_text(reason: QuarantineReason) -> Text:
    """What is wrong, for each reason (literal messages, so the catalog has them)."""
    texts = {
        QuarantineReason.NOT_AGE: _("not an age file"),
        QuarantineReason.ARMORED: _("an ASCII-armored age file (envelopes are binary)"),
        QuarantineReason.MALFORMED_HEADER: _("the age header is malformed"),
        QuarantineReason.NOT_SCRYPT: _(
            "not passphrase-encrypted (the header must hold exactly one scrypt stanza)"
        ),
        QuarantineReason.WORK_FACTOR_LOW: _("the scrypt work factor is below the minimum"),
        QuarantineReason.WORK_FACTOR_HIGH: _("the scrypt work factor is above the maximum"),
        QuarantineReason.TRUNCATED: _("the file is truncated"),
        QuarantineReason.SIZE_MISMATCH: _("the size differs from the expected size"),
        QuarantineReason.SHA256_MISMATCH: _("the SHA-256 differs from the expected one"),
    }
    return texts[reason]


@dataclass(frozen=True)
class CheckResult:
    """The verdict on one file.

    Attributes:
        reason: None when the file is acceptable, else why it is not.
        detail: specifics for a person (never file content beyond a type guess);
            a :class:`Text` when this module wrote it (English in :attr:`message`).
        size: bytes read (the whole file).
        sha256: SHA-256 of the whole file, lower-case hex.
        work_factor: the scrypt work factor when the header has a valid scrypt stanza.
        stanzas: the header's stanza types, in order, when the header parsed.
    """

    reason: QuarantineReason | None
    detail: str
    size: int
    sha256: str
    work_factor: int | None = None
    stanzas: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the file passed every check."""
        return self.reason is None

    @property
    def message(self) -> str:
        """The verdict in one line, in English (records): ``accepted`` or the reason and detail."""
        return self.shown.english

    @property
    def shown(self) -> Text:
        """The verdict in the chosen language (its ``english`` is :attr:`message`)."""
        if self.reason is None:
            return _("accepted")
        if not self.detail:
            return self.reason.shown
        detail = self.detail if isinstance(self.detail, Text) else Text(self.detail, self.detail)
        return _("{reason}: {detail}").format(reason=self.reason.shown, detail=detail)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Hashing:
    """Reads through to ``inner``, counting and hashing every byte."""

    def __init__(self, inner: _Readable) -> None:
        self._inner = inner
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._inner.read(size if size >= 0 else _BLOCK)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_BLOCK):
            pass


class _Replay:
    """Hands out ``head`` first, then reads on from ``rest``."""

    def __init__(self, head: bytes, rest: _Readable) -> None:
        self._head = head
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._head:
            n = len(self._head) if size < 0 else size
            data, self._head = self._head[:n], self._head[n:]
            return data
        return self._rest.read(size)


def check_envelope(
    path_or_stream: Path | BinaryIO,
    *,
    min_work_factor: int,
    max_work_factor: int,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
) -> CheckResult:
    """Check a file against the envelope rules without decrypting it.

    Args:
        path_or_stream: the file, or a binary stream at its start (read to its
            end, not closed).
        min_work_factor: the lowest acceptable scrypt work factor.
        max_work_factor: the highest acceptable scrypt work factor.
        expected_size: the size the file must have, when known.
        expected_sha256: the SHA-256 (hex) the file must have, when known.

    Returns:
        The verdict; ``result.ok`` is True only when every check passed.

    Raises:
        ValueError: the work factor bounds are out of 1..30 or reversed.
        OSError: the file cannot be opened or read (an I/O failure is not a verdict).
    """
    if not 1 <= min_work_factor <= max_work_factor <= MAX_WORK_FACTOR:
        raise ValueError(f"work factor bounds must satisfy 1 <= min <= max <= {MAX_WORK_FACTOR}")
    bounds = (min_work_factor, max_work_factor)
    if isinstance(path_or_stream, Path):
        with path_or_stream.open("rb") as handle:
            return _check(handle, bounds, expected_size, expected_sha256)
    return _check(path_or_stream, bounds, expected_size, expected_sha256)


def _check(
    src: _Readable,
    bounds: tuple[int, int],
    expected_size: int | None,
    expected_sha256: str | None,
) -> CheckResult:
    """Read the whole file once, then decide (the first failing rule wins)."""
    hashing = _Hashing(src)
    head = _read_head(hashing)
    reason, detail, work_factor, stanzas, header_length = _check_header(head, hashing, bounds)
    hashing.drain()
    size, sha256 = hashing.size, hashing.digest.hexdigest()
    if reason is None:
        reason, detail = _check_payload_length(size - header_length - NONCE_SIZE)
    if reason is None and expected_size is not None and size != expected_size:
        reason = QuarantineReason.SIZE_MISMATCH
        detail = _("{size} bytes, expected {expected}").format(size=size, expected=expected_size)
    if reason is None and expected_sha256 is not None and sha256 != expected_sha256.lower():
        reason = QuarantineReason.SHA256_MISMATCH
        detail = _("{sha256}, expected {expected}").format(sha256=sha256, expected=expected_sha256)
    return CheckResult(reason, detail, size, sha256, work_factor, stanzas)


def _read_head(src: _Hashing) -> bytes:
    """The first bytes of the file (fewer only at its end)."""
    head = b""
    while len(head) < _SNIFF and (data := src.read(_SNIFF - len(head))):
        head += data
    return head


_Verdict = tuple[QuarantineReason | None, str, int | None, tuple[str, ...], int]


def _check_header(head: bytes, rest: _Hashing, bounds: tuple[int, int]) -> _Verdict:
    """Classify the header: reason, detail, work factor, stanza types, header length."""
    if not head:
        return QuarantineReason.NOT_AGE, _("the file is empty"), None, (), 0
    if looks_armored(head):
        return QuarantineReason.ARMORED, "", None, (), 0
    if not head.startswith(INTRO_PREFIX):
        looks = _("it looks like {kind}").format(kind=_sniff(head))
        return QuarantineReason.NOT_AGE, looks, None, (), 0
    try:
        info = read_header(_Replay(head, rest))  # type: ignore[arg-type]
    except HeaderError as exc:
        text = str(exc)
        if text.startswith(_TRUNCATION_MESSAGES):
            return QuarantineReason.TRUNCATED, text, None, (), 0
        if text.startswith(_NOT_ALONE_MESSAGE):
            return QuarantineReason.NOT_SCRYPT, text, None, (), 0
        return QuarantineReason.MALFORMED_HEADER, text, None, (), 0
    except EnvelopeError as exc:
        return QuarantineReason.MALFORMED_HEADER, str(exc), None, (), 0
    stanzas = tuple(kind for kind, _args in info.stanzas)
    if not info.is_scrypt or info.work_factor is None:
        shown = ", ".join(s[:32] for s in stanzas[:5])
        return (
            QuarantineReason.NOT_SCRYPT,
            _("stanzas: {types}").format(types=shown),
            None,
            stanzas,
            0,
        )
    low, high = bounds
    wf = info.work_factor
    if wf < low:
        return QuarantineReason.WORK_FACTOR_LOW, f"{wf} < {low}", wf, stanzas, 0
    if wf > high:
        return QuarantineReason.WORK_FACTOR_HIGH, f"{wf} > {high}", wf, stanzas, 0
    return None, "", wf, stanzas, info.header_length


def _check_payload_length(payload: int) -> tuple[QuarantineReason | None, str]:
    """Can an age STREAM payload (after the nonce) be ``payload`` bytes long?"""
    if payload < TAG_SIZE:
        return QuarantineReason.TRUNCATED, _("the payload ends before its first chunk is complete")
    last = payload % ENCRYPTED_CHUNK_SIZE
    if 0 < last < TAG_SIZE:
        return QuarantineReason.TRUNCATED, _("the payload ends inside a chunk's tag")
    if last == TAG_SIZE and payload > TAG_SIZE:
        return QuarantineReason.TRUNCATED, _("the payload ends with an empty chunk after full ones")
    return None, ""


def _sniff(head: bytes) -> Text:
    """A guess at what a non-age file is, for the operator's message."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")):
        return _("a ZIP archive")
    if head.startswith(b"%PDF-"):
        return _("a PDF document")
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return _("a 7z archive")
    if head.startswith(b"\x1f\x8b"):
        return _("a gzip file")
    sample = head.removeprefix(b"\xef\xbb\xbf")
    for encoding in ("utf-8", "cp932"):
        try:  # the sample may end inside a character: decode incrementally
            text = codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
        except UnicodeDecodeError:
            continue
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return _("plain text (a CSV file?)")
    return _("binary data of an unknown kind")
