"""gateway.sftp_buffers: paramiko's channel-buffer contract with O(read) reads; read-ahead."""

import random
import socket
import threading
import time

import paramiko
import pytest
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout

from gateway import sftp_buffers
from gateway.sftp_buffers import ChunkPipe, ReadAheadSocket

RNG = random.Random(7)  # noqa: S311 - reproducible test data and read sizes, not a secret


@pytest.mark.parametrize("pipe_class", [BufferedPipe, ChunkPipe], ids=["paramiko", "chunk"])
def test_same_reads_as_paramikos_pipe(pipe_class: type[BufferedPipe]) -> None:
    """Random feeds and reads give the same bytes, lengths and events as paramiko's class."""
    rng = RNG
    pipe, reference = pipe_class(), BufferedPipe()
    event, reference_event = threading.Event(), threading.Event()
    pipe.set_event(event)
    reference.set_event(reference_event)
    for _ in range(2000):
        if rng.random() < 0.5:
            data = rng.randbytes(rng.choice([0, 1, 3, 4, 100, 32768]))
            pipe.feed(data)
            reference.feed(data)
        else:
            n = rng.choice([1, 4, 5, 1000, 32768, 40000])
            if len(reference) == 0:
                with pytest.raises(PipeTimeout):
                    pipe.read(n, timeout=0.0)
                continue
            assert pipe.read(n) == reference.read(n)
        assert len(pipe) == len(reference)
        assert pipe.read_ready() == reference.read_ready()
        assert event.is_set() == reference_event.is_set()
    assert pipe.empty() == reference.empty()
    assert len(pipe) == 0 and not event.is_set()


def test_read_waits_for_a_feed_and_times_out() -> None:
    """A blocking read returns what another thread feeds; a timed read raises PipeTimeout."""
    pipe = ChunkPipe()
    threading.Timer(0.05, pipe.feed, args=(b"late",)).start()
    assert pipe.read(10) == b"late"
    started = time.monotonic()
    with pytest.raises(PipeTimeout):
        pipe.read(10, timeout=0.05)
    assert time.monotonic() - started >= 0.04


def test_close_wakes_a_reader_and_drains_first() -> None:
    """Bytes fed before the close are still read; then b"" (closed); the event stays set."""
    pipe = ChunkPipe()
    event = threading.Event()
    pipe.set_event(event)
    pipe.feed(b"abc")
    pipe.close()
    assert pipe.read(2) == b"ab" and pipe.read(5) == b"c"
    assert pipe.read(5) == b"" and event.is_set()
    waiting = ChunkPipe()
    threading.Timer(0.05, waiting.close).start()
    assert waiting.read(5) == b""


def test_concurrent_feeder_keeps_order() -> None:
    """One feeder thread, one reader: every byte arrives once, in order."""
    pipe = ChunkPipe()
    data = RNG.randbytes(3_000_000)

    def feed() -> None:
        for at in range(0, len(data), 32768):
            pipe.feed(data[at : at + 32768])
        pipe.close()

    threading.Thread(target=feed).start()
    got = bytearray()
    while chunk := pipe.read(RNG.choice([4, 33000, 100_000])):
        got += chunk
    assert bytes(got) == data


def test_install_makes_new_channels_use_it() -> None:
    """paramiko still creates channel buffers through paramiko.channel.BufferedPipe."""
    saved = paramiko.channel.BufferedPipe
    try:
        sftp_buffers.install()
        channel = paramiko.Channel(7)
        assert isinstance(channel.in_buffer, ChunkPipe)
        assert isinstance(channel.in_stderr_buffer, ChunkPipe)
    finally:
        paramiko.channel.BufferedPipe = saved


def test_read_ahead_socket_returns_the_same_stream() -> None:
    """Reads of any size see the sent bytes in order; other calls reach the socket."""
    left, right = socket.socketpair()
    data = RNG.randbytes(1_000_000)
    threading.Thread(target=lambda: (right.sendall(data), right.close())).start()
    wrapped = ReadAheadSocket(left)
    wrapped.settimeout(5)
    assert wrapped.gettimeout() == 5
    got = bytearray()
    sizes = [16, 4, 32768, 1, 300_000]
    while chunk := wrapped.recv(RNG.choice(sizes)):
        got += chunk
    assert bytes(got) == data
    wrapped.close()
    assert left.fileno() == -1


def test_read_ahead_reads_more_than_asked_but_hands_out_what_was_asked() -> None:
    """One recv of 16 bytes takes everything ready; the rest is served without the socket."""
    left, right = socket.socketpair()
    right.sendall(b"a" * 100_000)
    wrapped = ReadAheadSocket(left)
    assert wrapped.recv(16) == b"a" * 16
    left.setblocking(False)  # the socket is empty now: further reads come from read-ahead
    assert len(wrapped.recv(99_984)) == 99_984
    with pytest.raises(BlockingIOError):
        wrapped.recv(1)
    left.close()
    right.close()
