"""The age v1 header: the "Header" section of https://age-encryption.org/v1.

An age header is a version line, one or more recipient stanzas and a MAC line::

    age-encryption.org/v1
    -> scrypt <salt> <log2 N>
    <body, base64, 64 columns, ending with a short (possibly empty) line>
    --- <HMAC-SHA-256, base64>

This module parses and serializes it strictly (canonical unpadded base64, LF
line ends only, 64-column body lines) and computes the header MAC. It knows no
recipient type: stanzas are just a type, arguments and a body.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from envelope.errors import HeaderError, HmacError

VERSION_LINE = b"age-encryption.org/v1"
INTRO = VERSION_LINE + b"\n"
INTRO_PREFIX = b"age-encryption.org/"
STANZA_PREFIX = b"->"
MAC_PREFIX = b"---"
HEADER_MAC_LABEL = b"header"
LF = b"\n"
SP = b" "

COLUMNS_PER_LINE = 64
BYTES_PER_LINE = COLUMNS_PER_LINE // 4 * 3
FILE_KEY_SIZE = 16
MAC_SIZE = 32
MAX_HEADER_SIZE = 256 * 1024
"""Largest header we parse; ours is ~200 bytes, this bounds hostile input."""
MAX_STANZAS = 1024
"""Most recipient stanzas we parse (ours has one; age files to many recipients stay far below)."""
MAX_STANZA_ARGS = 32
"""Most arguments of one stanza (the types the spec defines take at most two)."""

_ARG_CHARS = re.compile(rb"[\x21-\x7e]+")
_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")
_BLOCK_SIZE = 64 * 1024


class Readable(Protocol):
    """The one method we need from a binary input stream."""

    def read(self, size: int = ..., /) -> bytes:
        """Read up to ``size`` bytes; ``b""`` only at end of stream."""
        ...


def b64encode(data: bytes) -> bytes:
    """Encode ``data`` as canonical unpadded standard base64.

    Args:
        data: bytes to encode.

    Returns:
        The base64 text without ``=`` padding.
    """
    return binascii.b2a_base64(data, newline=False).rstrip(b"=")


def b64decode(text: bytes, *, padded: bool = False) -> bytes:
    """Decode standard base64, accepting only its canonical encoding.

    Args:
        text: the base64 text (no whitespace, no line breaks).
        padded: True when ``=`` padding is required (armor), False when it is
            forbidden (the header).

    Returns:
        The decoded bytes.

    Raises:
        ValueError: the text is not the canonical encoding of any byte string.
    """
    body = text.rstrip(b"=") if padded else text
    if not _B64_CHARS.fullmatch(body) or len(body) % 4 == 1:
        raise ValueError("invalid base64")
    data = binascii.a2b_base64(body + b"=" * (-len(body) % 4))
    canonical = binascii.b2a_base64(data, newline=False)
    if (canonical if padded else canonical.rstrip(b"=")) != text:
        raise ValueError("non-canonical base64")
    return data


class BufferedSource:
    """A read buffer over a binary stream with peek, bounded lines and readinto.

    The header is read through this buffer; whatever it over-read stays in it
    and is handed out first by :meth:`readinto`, so the payload reader
    continues exactly where the header ended.
    """

    def __init__(self, raw: Readable) -> None:
        """Wrap ``raw``.

        Args:
            raw: the stream to read; it is never closed here.
        """
        self._raw = raw
        self._buf = bytearray()
        self._pos = 0
        self._readinto = getattr(raw, "readinto", None)

    def _fill(self) -> bool:
        """Append one block from the stream; False at end of stream."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        block = self._raw.read(_BLOCK_SIZE)
        if not block:
            return False
        self._buf += block
        return True

    def peek(self, size: int) -> bytes:
        """Return up to ``size`` upcoming bytes without consuming them."""
        while len(self._buf) - self._pos < size and self._fill():
            pass
        return bytes(self._buf[self._pos : self._pos + size])

    def readline(self, limit: int) -> bytes:
        """Read through the next LF, or ``limit`` bytes, or to end of stream.

        Args:
            limit: the most bytes to return.

        Returns:
            The line including its LF; without one when ``limit`` was reached
            or the stream ended (``b""`` at end of stream).
        """
        scanned = 0
        while True:
            available = len(self._buf) - self._pos
            window_end = self._pos + min(available, limit)
            end = self._buf.find(LF, self._pos + scanned, window_end)
            if end >= 0:
                return self.read(end + 1 - self._pos)
            if available >= limit:
                return self.read(limit)
            scanned = available
            if not self._fill():
                return self.read(available)

    def read(self, size: int) -> bytes:
        """Read up to ``size`` bytes (fewer only at end of stream)."""
        while len(self._buf) - self._pos < size and self._fill():
            pass
        data = bytes(self._buf[self._pos : self._pos + size])
        self._pos += len(data)
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Read into ``buffer``: buffered bytes first, then straight from the stream.

        Returns:
            The number of bytes read; 0 only at end of stream.
        """
        view = memoryview(buffer).cast("B")
        buffered = len(self._buf) - self._pos
        if buffered:
            n = min(buffered, len(view))
            view[:n] = self._buf[self._pos : self._pos + n]
            self._pos += n
            return n
        if self._readinto is not None:
            return int(self._readinto(view) or 0)
        data = self._raw.read(len(view))
        view[: len(data)] = data
        return len(data)


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: ``-> type args...`` and a binary body."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def serialize(self) -> bytes:
        """Encode the stanza as header lines.

        Returns:
            The argument line and the wrapped body, each line ending in LF.

        Raises:
            ValueError: the type or an argument is not a valid arbitrary string.
        """
        words = [w.encode("ascii") for w in (self.type, *self.args)]
        if not all(_ARG_CHARS.fullmatch(w) for w in words):
            raise ValueError("stanza type and arguments must be printable ASCII words")
        text = b64encode(self.body)
        lines = [text[i : i + COLUMNS_PER_LINE] for i in range(0, len(text), COLUMNS_PER_LINE)]
        if not lines or len(lines[-1]) == COLUMNS_PER_LINE:
            lines.append(b"")
        return SP.join([STANZA_PREFIX, *words]) + LF + b"".join(line + LF for line in lines)


@dataclass(frozen=True)
class Header:
    """A parsed header: its stanzas, its MAC and the bytes the MAC covers."""

    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes

    @property
    def length(self) -> int:
        """Size in bytes of the whole header, MAC line included."""
        return len(self.mac_input) + len(SP) + len(b64encode(self.mac)) + len(LF)


def _read_line(src: BufferedSource, used: int) -> bytes:
    """Read one LF-terminated header line within the header size budget."""
    line = src.readline(MAX_HEADER_SIZE - used)
    if not line.endswith(LF):
        if used + len(line) >= MAX_HEADER_SIZE:
            raise HeaderError(f"header exceeds {MAX_HEADER_SIZE} bytes")
        raise HeaderError("header is truncated")
    return line


def _parse_stanza(src: BufferedSource, first: bytes, raw: bytearray) -> Stanza:
    """Parse a stanza whose argument line ``first`` was read; append its lines to ``raw``.

    The split is bounded: a 256 KiB line of one-letter words would otherwise
    become a hundred thousand objects (tens of MiB) before any check.
    """
    words = first[:-1].split(SP, MAX_STANZA_ARGS + 2)
    if words[0] != STANZA_PREFIX or len(words) < 2:
        raise HeaderError("malformed stanza line")
    if len(words) > MAX_STANZA_ARGS + 2:
        raise HeaderError(f"stanza has more than {MAX_STANZA_ARGS} arguments")
    if not all(_ARG_CHARS.fullmatch(w) for w in words[1:]):
        raise HeaderError("stanza arguments must be non-empty printable ASCII")
    raw += first
    body = bytearray()
    while True:
        line = _read_line(src, len(raw))
        raw += line
        text = line[:-1]
        if len(text) > COLUMNS_PER_LINE:
            raise HeaderError("stanza body line is longer than 64 columns")
        try:
            chunk = b64decode(text)
        except ValueError:
            raise HeaderError(
                "stanza body is not canonical base64 ending in a short line"
            ) from None
        body += chunk
        if len(chunk) < BYTES_PER_LINE:
            args = tuple(w.decode("ascii") for w in words[2:])
            return Stanza(words[1].decode("ascii"), args, bytes(body))


def parse_header(src: BufferedSource) -> Header:
    """Read and validate an age v1 header, consuming exactly its bytes.

    Args:
        src: the buffered input, positioned at the start of the file; it is
            left positioned at the first byte after the header.

    Returns:
        The parsed header (the MAC is not verified here).

    Raises:
        HeaderError: the header is malformed, truncated, too large, or has
            more than MAX_STANZAS stanzas or MAX_STANZA_ARGS arguments in one.
    """
    raw = bytearray(src.readline(len(INTRO)))
    if raw != INTRO:
        raise HeaderError("not an age v1 file (unexpected version line)")
    stanzas: list[Stanza] = []
    while not src.peek(len(MAC_PREFIX)).startswith(MAC_PREFIX):
        first = _read_line(src, len(raw))
        if not first.startswith(STANZA_PREFIX):
            raise HeaderError("expected a stanza or the MAC line")
        if len(stanzas) == MAX_STANZAS:
            raise HeaderError(f"header has more than {MAX_STANZAS} stanzas")
        stanzas.append(_parse_stanza(src, first, raw))
    line = _read_line(src, len(raw))
    words = line[:-1].split(SP, 2)  # bounded: the line may be 256 KiB of words
    if words[0] != MAC_PREFIX or len(words) != 2:
        raise HeaderError("malformed MAC line")
    try:
        mac = b64decode(words[1])
    except ValueError:
        raise HeaderError("header MAC is not canonical base64") from None
    if len(mac) != MAC_SIZE:
        raise HeaderError("header MAC has the wrong length")
    if not stanzas:
        raise HeaderError("header has no recipient stanza")
    return Header(tuple(stanzas), mac, bytes(raw + MAC_PREFIX))


def compute_mac(file_key: bytes, mac_input: bytes) -> bytes:
    """HMAC-SHA-256 of the header under HKDF(file key, salt empty, info "header").

    Args:
        file_key: the 16-byte file key.
        mac_input: the header bytes up to and including ``---``.

    Returns:
        The 32-byte MAC.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HEADER_MAC_LABEL)
    return hmac.new(hkdf.derive(file_key), mac_input, hashlib.sha256).digest()


def verify_mac(header: Header, file_key: bytes) -> None:
    """Check the header MAC in constant time.

    Args:
        header: the parsed header.
        file_key: the unwrapped file key.

    Raises:
        HmacError: the MAC does not match (the header was changed).
    """
    if not hmac.compare_digest(compute_mac(file_key, header.mac_input), header.mac):
        raise HmacError("header MAC does not verify: the header was modified")


def serialize_header(stanzas: tuple[Stanza, ...], file_key: bytes) -> bytes:
    """Encode a complete header with its MAC.

    Args:
        stanzas: the recipient stanzas (at least one).
        file_key: the file key the MAC is keyed from.

    Returns:
        The header bytes, ending with the MAC line's LF.

    Raises:
        ValueError: no stanza, or a stanza cannot be encoded.
    """
    if not stanzas:
        raise ValueError("a header needs at least one stanza")
    mac_input = INTRO + b"".join(s.serialize() for s in stanzas) + MAC_PREFIX
    return mac_input + SP + b64encode(compute_mac(file_key, mac_input)) + LF
