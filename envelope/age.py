"""Passphrase-encrypted age v1 files: the public API of the envelope format.

:func:`encrypt` / :class:`EncryptingWriter` write binary age files with a
single scrypt stanza at exactly the requested work factor. :func:`decrypt` /
:class:`DecryptingReader` read binary or armored age files, check every cheap
rule first, refuse a work factor above ``max_work_factor`` before any scrypt
work, verify the header MAC and release plaintext only chunk by chunk, each
after it authenticated. :func:`read_header` validates a header without a
passphrase (to quarantine anything that is not ours).

Errors are the classes of :mod:`envelope.errors`; messages never carry a
passphrase or a key.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

from envelope.armor import DETECT_WINDOW, ArmorReader, looks_armored
from envelope.errors import HeaderError
from envelope.format import (
    FILE_KEY_SIZE,
    BufferedSource,
    Header,
    parse_header,
    serialize_header,
    verify_mac,
)
from envelope.recipient import (
    SCRYPT_STANZA_TYPE,
    find_scrypt_stanza,
    parse_scrypt_stanza,
    unwrap,
    wrap,
)
from envelope.stream import (
    CHUNK_SIZE,
    NONCE_SIZE,
    StreamReader,
    StreamWriter,
    payload_key,
    write_all,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

DEFAULT_WORK_FACTOR = 18
DEFAULT_MAX_WORK_FACTOR = 20
_COPY_BLOCK = 16 * CHUNK_SIZE


@dataclass(frozen=True)
class HeaderInfo:
    """What a header says, learnt without a passphrase.

    Attributes:
        stanzas: each stanza's type and arguments, in file order.
        work_factor: log2 of scrypt's N when the header is a (valid) scrypt
            header, else None.
        header_length: size in bytes of the header (decoded, for armor),
            MAC line included, nonce excluded.
        armored: whether the file is ASCII-armored.
    """

    stanzas: tuple[tuple[str, tuple[str, ...]], ...]
    work_factor: int | None
    header_length: int
    armored: bool

    @property
    def is_scrypt(self) -> bool:
        """True when the header is exactly one scrypt stanza (passphrase-encrypted)."""
        return len(self.stanzas) == 1 and self.stanzas[0][0] == SCRYPT_STANZA_TYPE


def _open_header(src: BinaryIO) -> tuple[Header, HeaderInfo, BufferedSource, bytes]:
    """Detect armor, parse and check the header, read the nonce."""
    source = BufferedSource(src)
    armored = looks_armored(source.peek(DETECT_WINDOW))
    if armored:
        source = BufferedSource(ArmorReader(source))
    header = parse_header(source)
    scrypt = find_scrypt_stanza(header.stanzas)
    nonce = source.read(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise HeaderError("the file ends before the payload nonce")
    info = HeaderInfo(
        stanzas=tuple((s.type, s.args) for s in header.stanzas),
        work_factor=None if scrypt is None else parse_scrypt_stanza(scrypt).work_factor,
        header_length=header.length,
        armored=armored,
    )
    return header, info, source, nonce


def read_header(src: BinaryIO) -> HeaderInfo:
    """Parse and validate an age header without a passphrase (no MAC check is possible).

    Checks everything that needs no key: armor, version line, stanza syntax,
    canonical base64, a scrypt stanza's form (alone, 16-byte salt, decimal work
    factor in 1..30, 32-byte body) and the presence of the payload nonce. The
    caller decides whether the work factor is acceptable.

    Args:
        src: the file, at its start; it is left at an unspecified position.

    Returns:
        The header summary.

    Raises:
        HeaderError: the header is malformed.
        ArmorError: the armor is malformed.
    """
    return _open_header(src)[1]


class EncryptingWriter:
    """A write-only stream that encrypts what is written into an age file.

    The header is written on construction. ``close()`` (or leaving a ``with``
    block normally) writes the final chunk; leaving the block with an
    exception, or :meth:`abort`, never does, so an interrupted producer never
    yields a file that decrypts without error. ``dst`` is never closed here.
    Usable as ``tarfile.open(mode="w|", fileobj=...)``.
    """

    def __init__(
        self, dst: BinaryIO, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR
    ) -> None:
        """Wrap a fresh file key with scrypt and write the header and nonce.

        Args:
            dst: where the age file is written.
            passphrase: the non-empty passphrase.
            work_factor: log2 of scrypt's N, used exactly (1..30).

        Raises:
            ValueError: empty passphrase or work factor out of range.
        """
        file_key = os.urandom(FILE_KEY_SIZE)
        stanza = wrap(file_key, passphrase, work_factor)
        nonce = os.urandom(NONCE_SIZE)
        self._dst = dst
        self._closed = False
        self._failed = False
        self._written = 0
        write_all(dst, memoryview(serialize_header((stanza,), file_key) + nonce))
        self._stream = StreamWriter(payload_key(file_key, nonce), dst)

    @property
    def closed(self) -> bool:
        """True after close() or abort()."""
        return self._closed

    def writable(self) -> bool:
        """Always True."""
        return True

    def readable(self) -> bool:
        """Always False."""
        return False

    def seekable(self) -> bool:
        """Always False."""
        return False

    def tell(self) -> int:
        """Plaintext bytes accepted so far."""
        return self._written

    def seek(self, offset: int, whence: int = 0, /) -> int:
        """Not supported (a stream): always raises io.UnsupportedOperation."""
        raise io.UnsupportedOperation("EncryptingWriter is not seekable")

    def read(self, size: int = -1, /) -> bytes:
        """Not supported (write-only): always raises io.UnsupportedOperation."""
        raise io.UnsupportedOperation("EncryptingWriter is write-only")

    def write(self, data: ReadableBuffer) -> int:
        """Encrypt ``data``; full chunks are written out as soon as they are known not final.

        Args:
            data: plaintext.

        Returns:
            ``len(data)``.

        Raises:
            ValueError: the writer is closed or an earlier write failed.
        """
        if self._closed or self._failed:
            raise ValueError("write to a closed or failed EncryptingWriter")
        try:
            n = self._stream.write(memoryview(data))
        except BaseException:
            self._failed = True
            raise
        self._written += n
        return n

    def flush(self) -> None:
        """Flush ``dst`` (buffered plaintext stays until its chunk is complete)."""
        flush = getattr(self._dst, "flush", None)
        if flush is not None:
            flush()

    def close(self) -> None:
        """Write the final chunk and flush ``dst``; a second call does nothing.

        Raises:
            ValueError: an earlier write failed, so the file must stay incomplete.
        """
        if self._closed:
            return
        if self._failed:
            self._closed = True
            raise ValueError("an earlier write failed: the age file was left incomplete")
        self._closed = True
        self._stream.close()
        self.flush()

    def abort(self) -> None:
        """Stop without writing the final chunk: the output will not decrypt."""
        self._closed = True

    def __enter__(self) -> EncryptingWriter:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """close() on success, abort() on an exception (no final chunk)."""
        if exc_type is None:
            self.close()
        else:
            self.abort()


class DecryptingReader(io.RawIOBase):
    """A read-only stream of the authenticated plaintext of an age file.

    Construction reads and authenticates the header. ``read`` returns ``b""``
    only once the final chunk authenticated and no data follows it. ``src``
    is never closed here. Usable as ``tarfile.open(mode="r|", fileobj=...)``;
    tarfile stops reading at the archive's end marker, so read on to ``b""``
    afterwards to authenticate the end of the file.
    """

    def __init__(
        self, src: BinaryIO, passphrase: str, *, max_work_factor: int = DEFAULT_MAX_WORK_FACTOR
    ) -> None:
        """Open the header with ``passphrase`` and verify its MAC.

        Args:
            src: the age file (binary or armored), at its start.
            passphrase: the non-empty passphrase.
            max_work_factor: the largest scrypt work factor to compute (1..30).

        Raises:
            ArmorError: malformed armor.
            HeaderError: malformed header, or work factor above ``max_work_factor``.
            NoMatchError: no scrypt stanza, or the wrong passphrase.
            HmacError: the header was modified.
            ValueError: empty passphrase or ``max_work_factor`` out of range.
        """
        super().__init__()
        header, info, source, nonce = _open_header(src)
        file_key = unwrap(header.stanzas, passphrase, max_work_factor)
        verify_mac(header, file_key)
        self.header = info
        self._stream = StreamReader(payload_key(file_key, nonce), source)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        """Always True."""
        return True

    def _next(self) -> memoryview:
        """The next authenticated plaintext (pending rest first); empty at EOF."""
        if self.closed:
            raise ValueError("read from a closed DecryptingReader")
        if not self._pending:
            self._pending = self._stream.next_chunk()
        return self._pending

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read authenticated plaintext into ``buffer``.

        Returns:
            The count; 0 only at the verified end of the payload.

        Raises:
            PayloadError: the payload is truncated, tampered with or has trailing data.
            ArmorError: the armor around the payload is malformed.
        """
        view = memoryview(buffer).cast("B")
        data = self._next()
        n = min(len(view), len(data))
        view[:n] = data[:n]
        self._pending = data[n:]
        return n

    def read(self, size: int = -1, /) -> bytes:
        """Read up to ``size`` bytes of authenticated plaintext (all when ``size`` < 0).

        Returns:
            The bytes; ``b""`` only at the verified end of the payload.

        Raises:
            PayloadError: the payload is truncated, tampered with or has trailing data.
            ArmorError: the armor around the payload is malformed.
        """
        if size < 0:
            return b"".join(iter(self._take_chunk, b""))
        if size == 0:
            return b""
        data = self._next()
        self._pending = data[size:]
        return bytes(data[:size])

    def _take_chunk(self) -> bytes:
        """The rest of the current chunk as bytes."""
        data = self._next()
        self._pending = memoryview(b"")
        return bytes(data)

    def copy_to(self, dst: BinaryIO) -> None:
        """Write all remaining plaintext to ``dst``, chunk by chunk, without extra copies.

        Raises:
            PayloadError: as :meth:`read`; chunks before the failure were written.
            ArmorError: as :meth:`read`.
        """
        while data := self._next():
            self._pending = memoryview(b"")
            write_all(dst, data)


def encrypt(
    src: BinaryIO, dst: BinaryIO, passphrase: str, *, work_factor: int = DEFAULT_WORK_FACTOR
) -> None:
    """Encrypt all of ``src`` into a binary age file written to ``dst``.

    Args:
        src: plaintext input, read to its end (not closed).
        dst: age file output (not closed).
        passphrase: the non-empty passphrase.
        work_factor: log2 of scrypt's N, used exactly (1..30); never chosen by timing.

    Raises:
        ValueError: empty passphrase or work factor out of range.
    """
    with EncryptingWriter(dst, passphrase, work_factor=work_factor) as writer:
        readinto = getattr(src, "readinto", None)
        buffer = memoryview(bytearray(_COPY_BLOCK))
        while True:
            if readinto is not None:
                data = buffer[: readinto(buffer) or 0]
            else:
                data = memoryview(src.read(_COPY_BLOCK))
            if not data:
                break
            writer.write(data)


def decrypt(
    src: BinaryIO,
    dst: BinaryIO,
    passphrase: str,
    *,
    max_work_factor: int = DEFAULT_MAX_WORK_FACTOR,
) -> None:
    """Decrypt an age file (binary or armored) from ``src`` to ``dst``.

    Only authenticated plaintext reaches ``dst``, one 64 KiB chunk at a time;
    on a payload failure the chunks before it have been written, so callers
    must treat ``dst`` as garbage unless this returns.

    Args:
        src: the age file, at its start (not closed).
        dst: plaintext output (not closed).
        passphrase: the non-empty passphrase.
        max_work_factor: the largest scrypt work factor to compute (1..30).

    Raises:
        ArmorError: malformed armor.
        HeaderError: malformed header, or work factor above ``max_work_factor``.
        NoMatchError: not passphrase-encrypted, or the wrong passphrase.
        HmacError: the header was modified.
        PayloadError: the payload is truncated, tampered with or has trailing data.
        ValueError: empty passphrase or ``max_work_factor`` out of range.
    """
    DecryptingReader(src, passphrase, max_work_factor=max_work_factor).copy_to(dst)
