"""The SFTP surface under a raw client (issue 8 §1), against a real ``serve`` on 127.0.0.1.

After a real login (password, then key, over a paramiko Transport) the tests
open the ``sftp`` subsystem and send hand-made packets (``struct``-packed):
malformed and truncated fields, oversized declared lengths (2^31, 2^32 - 1,
just under 16 MiB), unknown packet types and extensions, requests out of order
(READ before INIT, INIT twice), and operations on handles the session does not
own (another session's handle bytes, random handles). Each time the server
answers with an error status for that request or closes *that* channel: the
connection's other channels, other users and the server go on, and the audit
log records the refusal. A huge declared length is refused from its header,
never buffered (the server's RSS is watched); attributes claiming 2^32 - 1
extended pairs are refused before paramiko would loop over them for an hour;
open directory listings are capped; a client that stops reading answers cannot
hold its session past the idle timeout; and 10,000 random packets leave another
ward's concurrent upload intact. See :mod:`gateway.sftp_protocol`.
"""

import hashlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from gateway import sftp_fs, sftp_protocol
from tests.integration.sites import Site, key_pair, new_batch, paramiko_key, transport

PASSWORD = "raw-client-password-0123"

INIT, VERSION, OPEN, CLOSE, READ, WRITE = 1, 2, 3, 4, 5, 6
LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR = 7, 8, 9, 10, 11, 12
REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME = 13, 14, 15, 16, 17, 18
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED = 101, 102, 103, 104, 105, 200
OK, EOF, NO_SUCH_FILE, DENIED, FAILURE, BAD_MESSAGE, UNSUPPORTED = 0, 1, 2, 3, 4, 5, 8
FXF_READ, FXF_WRITE, FXF_CREAT = 0x01, 0x02, 0x08
ERRORS = (NO_SUCH_FILE, DENIED, FAILURE, BAD_MESSAGE, UNSUPPORTED)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return u32(len(raw)) + raw


class Raw:
    """One ``sftp`` channel driven by hand-made packets."""

    def __init__(self, client: paramiko.Transport, *, init: bool = True) -> None:
        self.chan = client.open_session(timeout=10)
        self.chan.invoke_subsystem("sftp")
        self.chan.settimeout(10)
        self.ids = 100
        if init:
            self.send(INIT, u32(3))
            kind, _body = self.read()
            assert kind == VERSION

    def send(self, kind: int, body: bytes) -> None:
        """One well-framed packet of ``kind``."""
        self.chan.sendall(u32(len(body) + 1) + bytes([kind]) + body)

    def request(self, kind: int, body: bytes = b"") -> int:
        """A request with a fresh id; returns the id."""
        self.ids += 1
        self.send(kind, u32(self.ids) + body)
        return self.ids

    def read(self) -> tuple[int, bytes]:
        """One answer packet: its type and body."""
        size = struct.unpack(">I", self._exactly(4))[0]
        assert 0 < size <= 1 << 20, size
        data = self._exactly(size)
        return data[0], data[1:]

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.chan.recv(n - len(out))
            if not chunk:
                raise EOFError("channel closed")
            out += chunk
        return out

    def answer(self, rid: int) -> tuple[int, bytes]:
        """The answer to request ``rid`` (its type and the rest after the id)."""
        kind, body = self.read()
        assert struct.unpack(">I", body[:4])[0] == rid, (kind, body[:40])
        return kind, body[4:]

    def status(self, rid: int) -> int:
        """The status code answering ``rid`` (fails on any other answer)."""
        kind, body = self.answer(rid)
        assert kind == STATUS, (kind, body[:40])
        return int(struct.unpack(">I", body[:4])[0])

    def handle(self, rid: int) -> bytes:
        kind, body = self.answer(rid)
        assert kind == HANDLE, (kind, body[:60])
        return body[4 : 4 + struct.unpack(">I", body[:4])[0]]

    def works(self) -> bool:
        """Whether the channel still answers a plain request (REALPATH of /)."""
        rid = self.request(REALPATH, text("/"))
        return self.answer(rid)[0] == NAME

    def closed(self, timeout: float = 10) -> bool:
        """Whether the server closes the channel within ``timeout`` (answers are skipped)."""
        self.chan.settimeout(timeout)
        try:
            while self.chan.recv(65536):
                pass
        except TimeoutError:
            return False
        return True


@dataclass
class Account:
    name: str
    tenant: str
    key: paramiko.PKey


def _account(site: Site, name: str, tenant: str) -> Account:
    private, _path = key_pair(site.base / "keys", name)
    site.accounts.add(name, "ward", tenant, (site.base / "keys" / f"{name}.pub").read_text(),
                      [], PASSWORD)  # fmt: skip
    return Account(name, tenant, paramiko_key(private))


def _login(site: Site, who: Account) -> paramiko.Transport:
    client = transport(site)
    assert client.auth_password(who.name, PASSWORD, fallback=False) == ["publickey"]
    client.auth_publickey(who.name, who.key)
    return client


def _where(client: paramiko.Transport) -> str:
    host, port = client.sock.getsockname()[:2]
    return f"{host}:{port}"


def _rss_kib(site: Site) -> int:
    assert site.proc is not None
    for line in Path(f"/proc/{site.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@dataclass
class Served:
    site: Site
    alice: Account
    bob: Account
    carol: Account


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One gateway serving three wards of two tenants."""
    site = Site(tmp_path_factory.mktemp("fuzz"), "gw")
    accounts = Served(
        site,
        _account(site, "alice", "shinjuku"),
        _account(site, "bob", "minato"),
        _account(site, "carol", "minato"),
    )
    site.start()
    try:
        yield accounts
    finally:
        code, _out, err = site.stop()
        assert (code, err) == (0, b"")  # a clean exit after everything below, nothing printed
        site.close()


@pytest.fixture
def alice(served: Served) -> Iterator[paramiko.Transport]:
    client = _login(served.site, served.alice)
    yield client
    client.close()


def _refused(site: Site, where: str, **match: object) -> list[dict[str, object]]:
    deadline = time.monotonic() + 5
    while not (found := site.events("sftp_refused", source=where, **match)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return found


# -- out of order, unknown, truncated ------------------------------------------------------------


def test_read_before_init_closes_only_that_channel(
    served: Served, alice: paramiko.Transport
) -> None:
    """A first packet that is not INIT: that channel is closed, the connection's other works."""
    other = Raw(alice)
    raw = Raw(alice, init=False)
    raw.send(READ, u32(1) + text("hx1") + u64(0) + u32(100))
    assert raw.closed()
    assert other.works()
    assert _refused(served.site, _where(alice), op="init", reason="not_init")


def test_init_twice_and_unknown_types_are_answered(
    served: Served, alice: paramiko.Transport
) -> None:
    """INIT again, VERSION from a client, unknown and reply types: OP_UNSUPPORTED, audited."""
    raw = Raw(alice)
    for kind in (INIT, VERSION, 0, 21, 22, 99, STATUS, DATA, 199, 201, 255):
        assert raw.status(raw.request(kind, b"\x00" * 8)) == UNSUPPORTED, kind
    assert raw.works()
    refused = _refused(served.site, _where(alice), reason="unknown_request")
    assert len(refused) >= 11


def test_unknown_extensions_are_refused_and_audited(
    served: Served, alice: paramiko.Transport
) -> None:
    """Extensions the gateway does not offer get OP_UNSUPPORTED and are audited."""
    raw = Raw(alice)
    names = ["evil@example.com", "limits@openssh.com", "statvfs@openssh.com",
             "hardlink@openssh.com", "fsync@openssh.com", "copy-data", "check-file",
             "\udcff" * 3, "x" * 5000]  # fmt: skip
    for name in names:
        rid = raw.request(EXTENDED, text(name.encode("utf-8", "surrogateescape")) + b"\x00" * 16)
        assert raw.status(rid) in (UNSUPPORTED, DENIED), name
    assert raw.works()
    assert len(_refused(served.site, _where(alice), op="extended")) >= len(names) - 1


# (request type, body after the request id, answers allowed besides an error status)
TRUNCATED = [
    (OPEN, u32(0xFFFFFFF0) + b"/inbox/x", ()),  # a string longer than the packet
    (OPEN, b"", ()),
    (STAT, b"", (ATTRS,)),  # the empty path is the root, as "." is in OpenSSH
    (STAT, u32(5) + b"/in", ()),
    (RENAME, text("/inbox/a.age.part"), ()),  # the second path missing
    (WRITE, text("hx1"), ()),  # no offset, no data
    (READ, u32(2), ()),
    (SETSTAT, text("/inbox") + u32(0xFFFFFFFF), ()),  # every attribute flag, no values
    (OPENDIR, u32(0x7FFFFFFF), (HANDLE,)),  # a length past the packet reads as "": the root
    (REALPATH, b"\xff" * 3, (NAME,)),
    (REMOVE, text(b"/inbox/\xff\xfe.age.part"), ()),
]


@pytest.mark.parametrize(
    ("kind", "body", "allowed"), TRUNCATED, ids=[str(i) for i in range(len(TRUNCATED))]
)
def test_truncated_fields_are_refused(
    served: Served, alice: paramiko.Transport, kind: int, body: bytes, allowed: tuple[int, ...]
) -> None:
    """Fields cut short or lying about their length: an error status, the channel goes on."""
    raw = Raw(alice)
    answered, rest = raw.answer(raw.request(kind, body))
    if answered != STATUS:
        assert answered in allowed, (kind, answered)
    else:
        assert struct.unpack(">I", rest[:4])[0] in ERRORS
    assert raw.works()
    inbox = served.site.tenant_dir("shinjuku") / "inbox"
    assert not [p.name for p in inbox.iterdir() if not p.name.startswith("20")]


def _huge_attribute_count(kind: int, path: str) -> bytes:
    """A request whose attributes claim 2^32 - 1 extended pairs (and carry none)."""
    prefix = text(path) + (u32(FXF_WRITE | FXF_CREAT) if kind == OPEN else b"")
    return prefix + u32(0x80000000) + u32(0xFFFFFFFF)


@pytest.mark.parametrize("kind", [SETSTAT, OPEN, MKDIR])
def test_attribute_counts_beyond_the_packet_are_refused_at_once(
    served: Served, alice: paramiko.Transport, kind: int
) -> None:
    """Attributes claiming 2^32 - 1 extended pairs: refused at once, the server stays responsive.

    paramiko alone would loop over the count, holding the interpreter (every connection's
    thread) for hours.
    """
    raw, other = Raw(alice), Raw(alice)
    started = time.monotonic()
    rid = raw.request(kind, _huge_attribute_count(kind, f"/inbox/{new_batch()}.age.part"))
    assert raw.status(rid) == BAD_MESSAGE
    assert other.works()
    assert time.monotonic() - started < 5
    assert _refused(served.site, _where(alice), reason="bad_attributes")


def test_truncated_packet_then_eof_ends_only_that_channel(
    served: Served, alice: paramiko.Transport
) -> None:
    """A packet cut off by the client closing: the session ends and is audited, others go on."""
    other = Raw(alice)
    raw = Raw(alice)
    raw.chan.sendall(u32(100) + bytes([STAT]) + b"\x00" * 10)
    raw.chan.shutdown_write()
    assert raw.closed()
    assert other.works()


# -- oversized lengths ---------------------------------------------------------------------------


@pytest.mark.parametrize("declared", [1 << 31, 0xFFFFFFFF, (1 << 24) - 1, 1 << 20])
def test_oversized_declared_length_is_refused_unbuffered(
    served: Served, alice: paramiko.Transport, declared: int
) -> None:
    """A length beyond the packet limit closes that channel at once; nothing is buffered."""
    other = Raw(alice)
    raw = Raw(alice)
    before = _rss_kib(served.site)
    raw.chan.sendall(u32(declared) + bytes([WRITE]))
    sent = 0
    try:  # keep pushing junk, as an attacker would, until the server stops taking it
        while sent < 8 << 20:
            raw.chan.settimeout(2)
            sent += raw.chan.send(os.urandom(64 * 1024))
    except (OSError, TimeoutError, EOFError):
        pass
    assert raw.closed()
    grown = _rss_kib(served.site) - before
    assert grown < 16 * 1024, f"RSS grew {grown} KiB after {sent} bytes"
    print(f"\noversized: declared {declared} B, pushed {sent} B, server RSS {grown:+d} KiB")
    assert other.works()
    assert _refused(served.site, _where(alice), op="packet", reason="packet_too_large")


def test_largest_accepted_packet_is_served(served: Served, alice: paramiko.Transport) -> None:
    """A WRITE of MAX_PACKET_BYTES' worth of data (as some clients send) still works."""
    raw = Raw(alice)
    part = f"/inbox/{new_batch()}.age.part"
    handle = raw.handle(raw.request(OPEN, text(part) + u32(FXF_WRITE | FXF_CREAT) + u32(0)))
    data = os.urandom(sftp_protocol.MAX_PACKET_BYTES - 64)
    assert raw.status(raw.request(WRITE, text(handle) + u64(0) + text(data))) == OK
    assert raw.status(raw.request(CLOSE, text(handle))) == OK
    stored = served.site.tenant_dir("shinjuku") / "inbox" / part.rsplit("/", 1)[1]
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()


# -- handles -------------------------------------------------------------------------------------


def _handle_attacks(handle: bytes) -> list[tuple[int, bytes]]:
    return [
        (READ, text(handle) + u64(0) + u32(1024)),
        (WRITE, text(handle) + u64(0) + text(b"overwrite")),
        (FSTAT, text(handle)),
        (FSETSTAT, text(handle) + u32(0)),
        (READDIR, text(handle)),
        (CLOSE, text(handle)),
    ]


def test_handles_of_another_session_are_refused(served: Served) -> None:
    """Bob replays Alice's handle bytes and random handles: refused, audited; her file intact."""
    site = served.site
    mine = _login(site, served.alice)
    theirs = _login(site, served.bob)
    try:
        raw = Raw(mine)
        part = f"/inbox/{new_batch()}.age.part"
        handle = raw.handle(raw.request(OPEN, text(part) + u32(FXF_WRITE | FXF_CREAT) + u32(0)))
        assert raw.status(raw.request(WRITE, text(handle) + u64(0) + text(b"alice's"))) == OK
        sibling = Raw(mine)  # another channel of the same connection: its own handles
        attacker = Raw(theirs)
        rng = random.Random(8)  # noqa: S311 - reproducible junk, not a secret
        forged = [handle, b"", b"hx0", b"hx-1", b"\x00" * 4, rng.randbytes(16), b"h" * 65536]
        for target in (attacker, sibling):
            for candidate in forged:
                for kind, body in _handle_attacks(candidate):
                    assert target.status(target.request(kind, body)) in ERRORS
        assert raw.status(raw.request(CLOSE, text(handle))) == OK
        stored = site.tenant_dir("shinjuku") / "inbox" / part.rsplit("/", 1)[1]
        assert stored.read_bytes() == b"alice's"
        assert not (site.tenant_dir("minato") / "inbox" / part.rsplit("/", 1)[1]).exists()
        assert _refused(site, _where(theirs), reason="bad_handle")
        assert attacker.works() and sibling.works()
    finally:
        mine.close()
        theirs.close()


def test_open_files_and_directories_are_capped(served: Served, alice: paramiko.Transport) -> None:
    """Files and directory listings held open at once are both capped; closing frees them."""
    raw = Raw(alice)
    dirs = []
    for _ in range(sftp_fs.MAX_OPEN_HANDLES + 8):
        kind, body = raw.answer(raw.request(OPENDIR, text("/inbox")))
        if kind != HANDLE:
            assert kind == STATUS and struct.unpack(">I", body[:4])[0] == DENIED
            break
        dirs.append(body)  # the handle as an SSH string: its length, then its bytes
    assert len(dirs) <= sftp_fs.MAX_OPEN_HANDLES
    assert _refused(served.site, _where(alice), op="opendir", reason="too_many_handles")
    for framed in dirs:
        assert raw.status(raw.request(CLOSE, framed)) == OK
    assert raw.answer(raw.request(OPENDIR, text("/inbox")))[0] == HANDLE


def test_huge_reads_and_offsets(served: Served, alice: paramiko.Transport) -> None:
    """A 4 GiB read is served capped; offsets at 2^63 and 2^64 - 1 are EOF or refused."""
    site = served.site
    raw = Raw(alice)
    batch = new_batch()
    receipts = site.tenant_dir("shinjuku") / "receipts"
    receipts.mkdir(parents=True, exist_ok=True)
    (receipts / f"{batch}.receipt.json").write_bytes(b"{}" * 1000)
    handle = raw.handle(raw.request(OPEN, text(f"/receipts/{batch}.receipt.json")
                                    + u32(FXF_READ) + u32(0)))  # fmt: skip
    kind, body = raw.answer(raw.request(READ, text(handle) + u64(0) + u32(0xFFFFFFFF)))
    assert kind == DATA and struct.unpack(">I", body[:4])[0] == 2000
    for offset in (1 << 63, (1 << 64) - 1):
        rid = raw.request(READ, text(handle) + u64(offset) + u32(1024))
        assert raw.status(rid) in (EOF, FAILURE)
    part = raw.handle(raw.request(OPEN, text(f"/inbox/{batch}.age.part")
                                  + u32(FXF_WRITE | FXF_CREAT) + u32(0)))  # fmt: skip
    for offset in (1 << 63, (1 << 64) - 1):
        assert raw.status(raw.request(WRITE, text(part) + u64(offset) + text(b"x"))) == FAILURE
    assert raw.works()


# -- a client that stops reading -----------------------------------------------------------------


UNREAD_REQUESTS = 20_000
CLIENT_WINDOW = 64 * 1024


@pytest.mark.slow
def test_unread_answers_do_not_hold_a_session_past_the_idle_timeout(tmp_path: Path) -> None:
    """Requests sent without reading the answers: the session is cut at the idle timeout."""
    site = Site(tmp_path, "gw")
    site.set("server", "idle_timeout_seconds", 2)
    who = _account(site, "dave", "shinjuku")
    site.start()
    try:
        sock = socket.create_connection(("127.0.0.1", site.port), timeout=10)
        client = paramiko.Transport(sock, default_window_size=CLIENT_WINDOW)
        client.start_client(timeout=10)
        client.auth_password(who.name, PASSWORD, fallback=False)
        client.auth_publickey(who.name, who.key)
        where = _where(client)
        raw = Raw(client)
        started = time.monotonic()
        for _ in range(UNREAD_REQUESTS):  # answers fill the 64 KiB window after ~2,000
            raw.request(STAT, text("/inbox"))
        while client.is_active() and time.monotonic() - started < 30:
            time.sleep(0.1)
        held = time.monotonic() - started
        assert not client.is_active(), f"session still open after {held:.1f} s"
        closed = site.wait_event("connection_closed", source=where)
        assert closed["reason"] == "idle_timeout"
        assert held < 10
        answered = len(site.events("sftp_stat", user="dave"))
        print(
            f"\nunread answers: {UNREAD_REQUESTS} requests, {answered} served before the "
            f"window filled, session cut after {held:.1f} s (idle timeout 2 s)"
        )
    finally:
        assert site.stop()[0] == 0
        site.close()


# -- a random campaign while another ward uploads ------------------------------------------------

CAMPAIGN_PACKETS = 10_000
_PATHS = [b"/", b"/inbox", b"/receipts", b"/outbox", b"../..", b"/inbox/x.age.part", b"\xff"]


def _random_packet(rng: random.Random) -> bytes:
    """One well-framed packet: a random type and body, or a request with hostile fields."""
    shape = rng.randrange(4)
    if shape == 0:  # any type, junk body
        kind, body = rng.choice([*range(0, 22), 99, 101, 200, 255]), rng.randbytes(64)
        body = body[: rng.randrange(65)]
    elif shape == 1:  # attributes with random flags and counts
        kind = rng.choice([OPEN, SETSTAT, MKDIR])
        body = text(rng.choice(_PATHS)) + (u32(rng.randrange(1 << 32)) if kind == OPEN else b"")
        body += u32(rng.randrange(1 << 32)) + rng.randbytes(rng.randrange(48))
    elif shape == 2:  # handle requests with guessed handles
        kind = rng.choice([READ, WRITE, FSTAT, FSETSTAT, READDIR, CLOSE])
        handle = rng.choice([b"hx1", b"hx2", b"", rng.randbytes(8)])
        body = text(handle) + u64(rng.randrange(1 << 64)) + u32(rng.randrange(1 << 32))
    else:  # path requests with random paths
        kind = rng.choice([STAT, LSTAT, OPENDIR, REALPATH, REMOVE, RMDIR, RENAME, EXTENDED])
        body = text(rng.choice(_PATHS) + rng.randbytes(rng.randrange(4)))
        body += text(rng.choice(_PATHS)) if rng.random() < 0.5 else b""
    body = u32(rng.randrange(1 << 32)) + body
    return u32(len(body) + 1) + bytes([kind]) + body


def test_random_campaign_while_another_ward_uploads(served: Served) -> None:
    """10,000 random packets (new channels as needed); Carol's concurrent upload is intact."""
    site = served.site
    data = os.urandom(3 * 1024 * 1024)
    batch = new_batch()
    result: list[BaseException | None] = []

    def upload() -> None:
        try:
            client = _login(site, served.carol)
            try:
                sftp = paramiko.SFTPClient.from_transport(client)
                with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
                    handle.set_pipelined(True)
                    for at in range(0, len(data), 32768):
                        handle.write(data[at : at + 32768])
                        time.sleep(0.002)
                sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
            finally:
                client.close()
            result.append(None)
        except BaseException as exc:  # reported below
            result.append(exc)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    rng = random.Random(2026)  # noqa: S311 - reproducible junk, not a secret
    sent = answered = 0
    started = time.monotonic()
    client = _login(site, served.bob)
    raw, channels, last = Raw(client), 1, b""
    try:
        while sent < CAMPAIGN_PACKETS:
            try:
                last = _random_packet(rng)
                raw.chan.sendall(last)
                sent += 1
                raw.chan.settimeout(5)
                raw.read()
                answered += 1
            except TimeoutError:
                raise AssertionError(f"no answer to {last!r}") from None
            except (EOFError, OSError):  # the server closed this channel: open another
                raw.chan.close()
                try:
                    raw = Raw(client)
                except paramiko.SSHException:  # channels per connection used up: reconnect
                    client.close()
                    client = _login(site, served.bob)
                    raw = Raw(client)
                channels += 1
    finally:
        client.close()
    uploader.join(timeout=40)
    assert result == [None]
    stored = site.tenant_dir("minato") / "inbox" / f"{batch}.age"
    assert hashlib.sha256(stored.read_bytes()).digest() == hashlib.sha256(data).digest()
    site.wait_event("receipt_signed", batch=batch)
    assert site.proc is not None and site.proc.poll() is None
    refused = site.events("sftp_refused", user="bob")
    print(
        f"\ncampaign: {sent} random packets on {channels} channels in "
        f"{time.monotonic() - started:.1f} s, {answered} answered, "
        f"{len(refused)} refusals audited; concurrent 3 MiB upload intact"
    )
