"""Input buffering for the drop service's SSH connections (paramiko's, made cheaper).

Two costs paid under the GIL by every connection at once, found by profiling an
upload (``bench/sftp.py``): how a channel buffers what arrives, and how often
the transport's thread calls ``recv``.

**Channel buffer.**

paramiko's :class:`paramiko.buffered_pipe.BufferedPipe` keeps a channel's
incoming bytes in one ``array`` and reads from its front with
``del buffer[:n]``: every read moves everything still buffered. The SFTP loop
reads each request as a 4-byte length and then its body, while the client may
have up to a whole channel window (2 MiB here) in flight, so an upload of 32 KiB
writes moved about 4 MiB of memory per request — the largest single cost of an
upload in the profile, and one paid under the GIL by every connection at once.

:class:`ChunkPipe` keeps the fed chunks (SSH packets, at most 32 KiB each) in a
deque and a read takes from the front: a read of ``n`` bytes copies at most
``n`` bytes plus one chunk's remainder. Same contract, same locking and the
same event handling as paramiko's class (which it subclasses, so
``isinstance`` checks and :class:`paramiko.buffered_pipe.PipeTimeout` hold).

:func:`install` makes every channel paramiko creates in this process use it
(``paramiko.channel`` looks ``BufferedPipe`` up when a channel is made); the
drop service calls it before its first transport starts. paramiko is pinned
``<6`` and ``tests/gateway/test_sftp_buffers.py`` fails if the attribute or
the contract changes.

**Socket reads.** paramiko's packetizer reads each SSH packet with two
``recv`` calls of exactly the bytes it needs (the first block, then the rest),
and every call releases and re-takes the GIL — a thread switch whenever other
connections are busy. :class:`ReadAheadSocket` reads up to
:data:`READ_AHEAD_BYTES` at once and serves the packetizer from that, so a
busy connection reads several packets per system call. It wraps the accepted
socket for the transport only; everything else is passed through.
"""

import collections
import socket
import threading
import time

import paramiko.channel
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout


class ChunkPipe(BufferedPipe):  # type: ignore[misc]  # paramiko is untyped
    """:class:`paramiko.buffered_pipe.BufferedPipe` with O(read) reads (chunk deque)."""

    def __init__(self) -> None:
        super().__init__()
        self._event: threading.Event | None = None
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0

    def set_event(self, event: threading.Event) -> None:
        """Set ``event`` whenever data is ready or the pipe closed, clear it otherwise."""
        with self._lock:
            self._event = event
            if self._closed or self._size > 0:
                event.set()
            else:
                event.clear()

    def feed(self, data: bytes | str) -> None:
        """Append ``data`` (called from the transport's thread)."""
        chunk = data.encode() if isinstance(data, str) else bytes(data)
        with self._lock:
            if self._event is not None:
                self._event.set()
            if chunk:
                self._chunks.append(chunk)
                self._size += len(chunk)
            self._cv.notify_all()

    def read_ready(self) -> bool:
        """Whether a :meth:`read` would return at least one byte at once."""
        with self._lock:
            return self._size > 0

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """Up to ``nbytes`` buffered bytes; ``b""`` once closed and drained.

        Raises:
            PipeTimeout: nothing arrived within ``timeout`` seconds.
        """
        with self._lock:
            if self._size == 0:
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                while self._size == 0 and not self._closed:
                    then = time.time()
                    self._cv.wait(timeout)
                    if timeout is not None:
                        timeout -= time.time() - then
                        if timeout <= 0.0:
                            raise PipeTimeout()
                if self._size == 0:
                    return b""  # closed while waiting
            out = self._take(nbytes)
            if self._size == 0 and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def _take(self, nbytes: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        if len(first) > nbytes:  # the usual SFTP case: a length, or part of a packet
            chunks[0] = first[nbytes:]
            self._size -= nbytes
            return first[:nbytes]
        parts = []
        wanted = nbytes
        while chunks and len(chunks[0]) <= wanted:
            chunk = chunks.popleft()
            parts.append(chunk)
            wanted -= len(chunk)
        if chunks and wanted > 0:
            head = chunks[0]
            parts.append(head[:wanted])
            chunks[0] = head[wanted:]
            wanted = 0
        self._size -= nbytes - wanted
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def empty(self) -> bytes:
        """Remove and return everything buffered."""
        with self._lock:
            out = b"".join(self._chunks)
            self._chunks.clear()
            self._size = 0
            if self._event is not None and not self._closed:
                self._event.clear()
            return out

    def __len__(self) -> int:
        with self._lock:
            return self._size


def install() -> None:
    """Make every paramiko channel created from now on in this process buffer with ChunkPipe."""
    paramiko.channel.BufferedPipe = ChunkPipe


READ_AHEAD_BYTES = 256 * 1024
"""Largest single ``recv`` of a connection (what the kernel has ready, up to this)."""


class ReadAheadSocket:
    """A connected socket whose ``recv`` reads ahead; every other attribute is the socket's.

    Only for one reader (paramiko's transport thread); ``send``, ``settimeout``,
    ``close`` and the rest go straight to the socket. Bytes read ahead are
    returned before the socket is asked again, so a timeout never loses them.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._ahead = b""
        self._at = 0

    def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes: from what was read ahead, else one ``recv`` of up to 256 KiB."""
        if self._at < len(self._ahead):
            end = self._at + n
            out = self._ahead[self._at : end]
            self._at = end
            return out
        data = self._sock.recv(max(n, READ_AHEAD_BYTES))
        if len(data) <= n:
            return data
        self._ahead, self._at = data, n
        return data[:n]

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)
