"""Reading the ASCII armor of age files ("ASCII armor" in https://age-encryption.org/v1).

Armor is strict PEM: ``-----BEGIN AGE ENCRYPTED FILE-----``, padded canonical
base64 in lines of exactly 64 columns except a shorter, non-empty last one,
then ``-----END AGE ENCRYPTED FILE-----``. No PEM headers, no checksum. Lines
may end in LF or CRLF. Whitespace-only lines (at most 1 KiB in all) may precede
the armor, and at most 1 KiB of whitespace may follow it. Anything else is an
:class:`~envelope.errors.ArmorError`.

Decoding streams line by line: memory is bounded whatever the input size.
"""

from __future__ import annotations

from envelope.errors import ArmorError
from envelope.format import COLUMNS_PER_LINE, INTRO_PREFIX, BufferedSource, b64decode

ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
ARMOR_MARKER = b"-----"
ARMOR_BEGIN_MARKER = b"-----BEGIN"
MAX_WHITESPACE = 1024
"""Most whitespace accepted before and after the armor, as in the reference implementation."""

ARMOR_BYTES_PER_LINE = COLUMNS_PER_LINE // 4 * 3
DETECT_WINDOW = MAX_WHITESPACE + len(ARMOR_BEGIN) + 2
DEFAULT_READ_SIZE = 64 * 1024
_LINE_LIMIT = max(len(ARMOR_BEGIN), COLUMNS_PER_LINE) + 2
_WHITESPACE = b" \t\r\n\v\f"


def looks_armored(start: bytes) -> bool:
    """Guess from the first bytes whether a file is armored rather than binary.

    Binary age files begin with the version line. Anything else that shows a
    PEM marker near its start is read as armor, so malformed armor is reported
    as such; the rest (empty files, plaintext) is read as binary and fails as
    a header error.

    Args:
        start: up to :data:`DETECT_WINDOW` first bytes of the file.

    Returns:
        True to read the file through :class:`ArmorReader`.
    """
    if start.startswith(INTRO_PREFIX):
        return False
    return start.lstrip(_WHITESPACE).startswith(ARMOR_MARKER) or ARMOR_BEGIN_MARKER in start


class ArmorReader:
    """Decodes an armored age file on the fly; a readable binary stream."""

    def __init__(self, src: BufferedSource) -> None:
        """Read armor from ``src``, positioned at the start of the file.

        Args:
            src: the buffered armored input.
        """
        self._src = src
        self._started = False
        self._done = False
        self._pending = memoryview(b"")

    def _line(self) -> bytes:
        """Next line without its LF or CRLF."""
        line = self._src.readline(_LINE_LIMIT)
        if not line:
            raise ArmorError("armor ends before its END line")
        if not line.endswith(b"\n") and len(line) == _LINE_LIMIT:
            raise ArmorError("armor line is longer than 64 columns")
        return line.removesuffix(b"\n").removesuffix(b"\r")

    def _begin(self) -> None:
        """Skip leading whitespace lines and check the BEGIN line."""
        skipped = 0
        while True:
            raw = self._src.readline(_LINE_LIMIT)
            if not raw:
                raise ArmorError("no armor BEGIN line")
            if raw.strip(_WHITESPACE):
                break
            skipped += len(raw)
            if skipped > MAX_WHITESPACE:
                raise ArmorError("too much whitespace before the armor")
        if raw.removesuffix(b"\n").removesuffix(b"\r") != ARMOR_BEGIN:
            raise ArmorError("the first line is not the age armor BEGIN line")
        self._started = True

    def _end(self) -> None:
        """After the END line: allow only a little trailing whitespace."""
        rest = self._src.read(MAX_WHITESPACE)
        if rest.strip(_WHITESPACE):
            raise ArmorError("trailing data after the armor")
        if len(rest) == MAX_WHITESPACE:
            raise ArmorError("too much whitespace after the armor")
        self._done = True

    def _decode_line(self) -> bytes:
        """Decode the next armor line; b"" once the armor ended."""
        if not self._started:
            self._begin()
        line = self._line()
        if line == ARMOR_END:
            self._end()
            return b""
        if not line or len(line) > COLUMNS_PER_LINE:
            raise ArmorError("armor line is empty or longer than 64 columns")
        try:
            data = b64decode(line, padded=True)
        except ValueError:
            raise ArmorError("armor is not canonical padded base64") from None
        if len(data) < ARMOR_BYTES_PER_LINE:
            if self._line() != ARMOR_END:
                raise ArmorError("a short armor line must be the last before the END line")
            self._end()
        return data

    def readinto(self, buffer: memoryview | bytearray) -> int:
        """Read decoded bytes into ``buffer``, decoding as many lines as fit.

        Returns:
            The count; 0 only at the end of well-formed armor.

        Raises:
            ArmorError: the armor is malformed.
        """
        view = memoryview(buffer).cast("B")
        total = 0
        while total < len(view):
            if not self._pending:
                if self._done:
                    break
                self._pending = memoryview(self._decode_line())
                continue
            n = min(len(view) - total, len(self._pending))
            view[total : total + n] = self._pending[:n]
            self._pending = self._pending[n:]
            total += n
        return total

    def read(self, size: int = DEFAULT_READ_SIZE, /) -> bytes:
        """Read up to ``size`` decoded bytes (a negative size reads the default amount)."""
        buffer = bytearray(size if size >= 0 else DEFAULT_READ_SIZE)
        return bytes(buffer[: self.readinto(buffer)])
