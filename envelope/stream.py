"""The age v1 payload: the "Payload" section of https://age-encryption.org/v1.

After the header comes a 16-byte nonce, then the plaintext in 64 KiB chunks,
each sealed with ChaCha20-Poly1305 under HKDF-SHA-256(ikm=file key,
salt=nonce, info="payload"). The 12-byte chunk nonce is an 11-byte big-endian
counter and a flag byte that is 0x01 only on the final chunk (STREAM).

Rules enforced when reading: every chunk but the last is full; the last may be
full or short, and empty only when the whole payload is empty; a missing final
chunk, a truncated chunk, trailing data or a counter overflow is a
:class:`~envelope.errors.PayloadError`. Plaintext is released only chunk by
chunk, each after it authenticated; trailing data after an authenticated final
chunk is reported on the next read, before end of payload (as the reference
implementation and the vectors' released-payload hashes expect).
"""

from __future__ import annotations

from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from envelope.errors import PayloadError

PAYLOAD_LABEL = b"payload"
NONCE_SIZE = 16
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENCRYPTED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
COUNTER_SIZE = 11
LAST_CHUNK_FLAG = b"\x01"
NOT_LAST_CHUNK_FLAG = b"\x00"
MAX_COUNTER = 2 ** (8 * COUNTER_SIZE) - 1


class ReadableInto(Protocol):
    """A binary input that can fill a caller's buffer."""

    def readinto(self, buffer: memoryview, /) -> int:
        """Read into ``buffer``; return the count, 0 only at end of stream."""
        ...


class Writable(Protocol):
    """A binary output."""

    def write(self, data: memoryview, /) -> int | None:
        """Write ``data`` (it is only borrowed for the duration of the call)."""
        ...


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    """Derive the payload key: HKDF-SHA-256(ikm=file key, salt=nonce, info="payload").

    Args:
        file_key: the 16-byte file key.
        nonce: the 16-byte payload nonce from the file.

    Returns:
        The 32-byte ChaCha20-Poly1305 key.
    """
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=PAYLOAD_LABEL)
    return hkdf.derive(file_key)


def chunk_nonce(counter: int, last: bool) -> bytes:
    """The 12-byte nonce of chunk number ``counter``.

    Args:
        counter: the chunk index, from 0.
        last: whether this is the final chunk.

    Returns:
        11-byte big-endian counter followed by the final-chunk flag.

    Raises:
        PayloadError: the counter no longer fits in 11 bytes.
    """
    if counter > MAX_COUNTER:
        raise PayloadError("STREAM chunk counter overflow")
    return counter.to_bytes(COUNTER_SIZE, "big") + (
        LAST_CHUNK_FLAG if last else NOT_LAST_CHUNK_FLAG
    )


def write_all(dst: Writable, data: memoryview) -> None:
    """Write all of ``data``, looping over short writes of raw streams."""
    while data:
        n = dst.write(data)
        if n is None or n >= len(data):
            return
        data = data[n:]


def read_full(src: ReadableInto, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``src`` unless the stream ends first.

    Returns:
        The number of bytes read; less than ``len(buffer)`` only at end of stream.
    """
    total = 0
    while total < len(buffer):
        n = src.readinto(buffer[total:])
        if not n:
            break
        total += n
    return total


class StreamWriter:
    """Encrypts a plaintext stream into STREAM chunks written to ``dst``."""

    def __init__(self, key: bytes, dst: Writable) -> None:
        """Start a payload (the caller has already written header and nonce).

        Args:
            key: the 32-byte payload key.
            dst: where sealed chunks are written.
        """
        self._aead = ChaCha20Poly1305(key)
        self._dst = dst
        self._plain = bytearray(CHUNK_SIZE)
        self._filled = 0
        self._sealed = bytearray(ENCRYPTED_CHUNK_SIZE)
        self._counter = 0
        self._closed = False

    def _seal(self, plain: memoryview, last: bool) -> None:
        """Seal one chunk and write it out."""
        nonce = chunk_nonce(self._counter, last)
        out = memoryview(self._sealed)[: len(plain) + TAG_SIZE]
        self._aead.encrypt_into(nonce, plain, None, out)
        write_all(self._dst, out)
        self._counter += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Buffer plaintext and seal every chunk known not to be the last.

        A full chunk is kept back until more data arrives, so that a payload
        whose size is a multiple of 64 KiB ends with a full final chunk.

        Args:
            data: plaintext bytes.

        Returns:
            ``len(data)``: all of it is consumed.

        Raises:
            ValueError: the writer is closed.
        """
        if self._closed:
            raise ValueError("write to a closed StreamWriter")
        view = memoryview(data).cast("B")
        total = len(view)
        plain = memoryview(self._plain)
        while view:
            if self._filled == CHUNK_SIZE:
                self._seal(plain, last=False)
                self._filled = 0
            if self._filled == 0 and len(view) > CHUNK_SIZE:
                self._seal(view[:CHUNK_SIZE], last=False)
                view = view[CHUNK_SIZE:]
                continue
            n = min(CHUNK_SIZE - self._filled, len(view))
            plain[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
        return total

    def close(self) -> None:
        """Seal the buffered rest as the final chunk (empty only for an empty payload)."""
        if self._closed:
            return
        self._closed = True
        self._seal(memoryview(self._plain)[: self._filled], last=True)


class StreamReader:
    """Decrypts STREAM chunks from ``src``, releasing each only once authenticated."""

    def __init__(self, key: bytes, src: ReadableInto) -> None:
        """Start reading a payload positioned just after the nonce.

        Args:
            key: the 32-byte payload key.
            src: the ciphertext input.
        """
        self._aead = ChaCha20Poly1305(key)
        self._src = src
        self._sealed = bytearray(ENCRYPTED_CHUNK_SIZE)
        self._plain = bytearray(CHUNK_SIZE)
        self._counter = 0
        self._last_seen = False
        self._done = False
        self._error: PayloadError | None = None

    def _open(self, sealed: memoryview, last: bool) -> memoryview | None:
        """Authenticate and decrypt one chunk; None when the tag does not verify."""
        out = memoryview(self._plain)[: len(sealed) - TAG_SIZE]
        try:
            self._aead.decrypt_into(chunk_nonce(self._counter, last), sealed, None, out)
        except InvalidTag:
            return None
        return out

    def _next_chunk(self) -> memoryview:
        """Read, authenticate and decrypt the next chunk."""
        buffer = memoryview(self._sealed)
        n = read_full(self._src, buffer)
        if n < TAG_SIZE:
            raise PayloadError("payload is truncated: the final chunk is missing")
        sealed = buffer[:n]
        if n < ENCRYPTED_CHUNK_SIZE:
            if n == TAG_SIZE and self._counter:
                raise PayloadError("final chunk is empty but the payload is not")
            plain, last = self._open(sealed, last=True), True
        else:
            plain, last = self._open(sealed, last=False), False
            if plain is None:
                plain, last = self._open(sealed, last=True), True
        if plain is None:
            raise PayloadError("payload chunk failed to authenticate")
        self._last_seen = last
        self._counter += 1
        return plain

    def _check_end(self) -> None:
        """After the final chunk: the input must end."""
        if read_full(self._src, memoryview(self._sealed)[:1]):
            raise PayloadError("trailing data after the final chunk")
        self._done = True

    def next_chunk(self) -> memoryview:
        """Return the next authenticated plaintext chunk.

        The view is valid until the next call. The final chunk is returned as
        soon as it authenticates; the call after it checks that the input ends
        there, and only then returns an empty view (end of payload).

        Returns:
            The chunk's plaintext.

        Raises:
            PayloadError: truncation, a bad tag, an empty final chunk after
                data, trailing data or a counter overflow (sticky: every later
                call raises it again).
        """
        if self._error is not None:
            raise self._error
        try:
            if self._last_seen and not self._done:
                self._check_end()
            if self._done:
                return memoryview(b"")
            chunk = self._next_chunk()
            if not chunk:  # the empty final chunk of an empty payload: end now
                self._check_end()
            return chunk
        except PayloadError as exc:
            self._error = exc
            raise
