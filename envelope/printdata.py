"""What counts as a record in a print file — one rule for the ward and the print site.

A ``.csv`` file must decode in the configured encoding (CP932 by default) and
have the same number of columns on every row; its record count is the number of
rows after the header. Any other file counts as one record.
"""

import codecs
import csv
import io
from collections.abc import Callable
from typing import BinaryIO

from envelope.errors import ManifestError

CSV_SUFFIX = ".csv"
_READ_BYTES = 1 << 20


def is_csv(name: str) -> bool:
    """Return True when ``name`` is counted as CSV (by its suffix, any case)."""
    return name.lower().endswith(CSV_SUFFIX)


def count_records(
    stream: BinaryIO,
    name: str,
    encoding: str,
    *,
    on_bytes: Callable[[bytes], None] | None = None,
) -> int:
    """Count the records of one print file, reading it once as a stream.

    Args:
        stream: the file's bytes, from the start.
        name: the file's name; decides whether it is parsed as CSV.
        encoding: the CSV encoding, e.g. ``cp932``.
        on_bytes: called with every block read (to hash while counting).

    Returns:
        Data rows after the header for CSV, else 1.

    Raises:
        ManifestError: the CSV does not decode, has no header, or its column
            count changes; the message names the row.
        LookupError: ``encoding`` is unknown (a configuration error).
    """
    codecs.lookup(encoding)
    if not is_csv(name):
        if on_bytes is not None:
            while block := stream.read(_READ_BYTES):
                on_bytes(block)
        return 1
    reader = _TeeReader(stream, on_bytes)
    text = io.TextIOWrapper(
        io.BufferedReader(reader, _READ_BYTES), encoding=encoding, errors="strict", newline=""
    )
    rows = 0
    width = -1
    try:
        for row in csv.reader(text, strict=True):
            if width < 0:
                width = len(row)
                if width == 0:
                    raise ManifestError(f"{name}: the header row is empty")
            elif len(row) != width:
                raise ManifestError(
                    f"{name}: row {rows + 1} has {len(row)} columns, the header has {width}"
                )
            rows += 1
    except UnicodeDecodeError:
        raise ManifestError(f"{name}: not valid {encoding} text") from None
    except csv.Error as exc:
        raise ManifestError(f"{name}: not valid CSV near row {rows + 1}: {exc}") from None
    finally:
        text.detach()
    if width < 0:
        raise ManifestError(f"{name}: the CSV has no header row")
    return rows - 1


class _TeeReader(io.RawIOBase):
    """A raw reader that hands every block it reads to a callback."""

    def __init__(self, inner: BinaryIO, on_bytes: Callable[[bytes], None] | None) -> None:
        self._inner = inner
        self._on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        if self._on_bytes is not None and data:
            self._on_bytes(data)
        buffer[: len(data)] = data
        return len(data)
