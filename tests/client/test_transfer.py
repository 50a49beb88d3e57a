"""client.transfer against a small paramiko SSH/SFTP server on 127.0.0.1 (real sockets).

The server here is a test double of the gateway's login rules (password, then
key) over a plain directory; the real ``lgwan-gateway serve`` is exercised by
tests/integration/test_send.py.
"""

import os
import socket
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paramiko.sftp import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_PERMISSION_DENIED

from client import transfer
from client.errors import ClientError, TemporaryError
from custody import fingerprint, private_key_to_openssh, public_key_to_openssh
from custody.keys import ssh_public_key_blob

WARD = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
STRANGER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
HOST = Ed25519PrivateKey.from_private_bytes(bytes(range(64, 96)))
OTHER_HOST = Ed25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
PASSWORD = "correct horse battery"
LIMIT = 65536


def _paramiko_key(key: Ed25519PrivateKey) -> paramiko.Ed25519Key:
    import io

    return paramiko.Ed25519Key(file_obj=io.StringIO(private_key_to_openssh(key).decode()))


@dataclass
class _Log:
    passwords: list[str] = field(default_factory=list)
    keys_offered: int = 0


class _Login(paramiko.ServerInterface):
    """Two-step login: the password, then the ward's key."""

    def __init__(self, log: _Log) -> None:
        self.log = log
        self.password_ok = False

    def get_allowed_auths(self, username: str) -> str:
        return "publickey" if self.password_ok else "password"

    def check_auth_password(self, username: str, password: str) -> int:
        self.log.passwords.append(password)
        if username == "ward1" and password == PASSWORD:
            self.password_ok = True
            return paramiko.AUTH_PARTIALLY_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: Any) -> int:
        self.log.keys_offered += 1
        if self.password_ok and key.asbytes() == ssh_public_key_blob(WARD.public_key()):
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return (
            paramiko.OPEN_SUCCEEDED
            if kind == "session"
            else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        )


class _Handle(paramiko.SFTPHandle):
    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def write(self, offset: int, data: bytes) -> Any:
        if self.filename.endswith("limited.age.part") and offset + len(data) > LIMIT:
            return SFTP_FAILURE
        return super().write(offset, data)


class _Files(paramiko.SFTPServerInterface):
    """SFTP over a directory; anything under /receipts is read-only, /locked refused."""

    root: Path

    def _disk(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def stat(self, path: str) -> Any:
        if path.startswith("/locked"):
            return SFTP_PERMISSION_DENIED
        try:
            return paramiko.SFTPAttributes.from_stat(self._disk(path).stat())
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE

    lstat = stat

    def open(self, path: str, flags: int, attr: Any) -> Any:
        if path.startswith("/locked"):
            return SFTP_PERMISSION_DENIED
        disk = self._disk(path)
        try:
            fd = os.open(disk, flags, 0o600)
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE
        mode = (
            "rb"
            if flags & (os.O_WRONLY | os.O_RDWR) == 0
            else "ab"
            if flags & os.O_APPEND
            else "r+b"
        )
        handle = _Handle(flags)
        handle.filename = str(disk)
        stream = os.fdopen(fd, mode)
        handle.readfile = stream
        handle.writefile = stream
        return handle

    def rename(self, oldpath: str, newpath: str) -> int:
        self._disk(oldpath).rename(self._disk(newpath))
        return SFTP_OK

    def remove(self, path: str) -> int:
        self._disk(path).unlink()
        return SFTP_OK


@dataclass
class _Gateway:
    port: int
    root: Path
    log: _Log


def _serve(
    root: Path, host_key: Ed25519PrivateKey, *, ciphers: tuple[str, ...] | None = None
) -> Generator[_Gateway, None, None]:
    listener = socket.create_server(("127.0.0.1", 0))
    log = _Log()
    stop = threading.Event()
    transports: list[paramiko.Transport] = []

    def loop() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            t = paramiko.Transport(conn)
            t.add_server_key(_paramiko_key(host_key))
            if ciphers:
                t.get_security_options().ciphers = ciphers
            _Files.root = root
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, _Files)
            transports.append(t)
            try:
                t.start_server(server=_Login(log))
            except (paramiko.SSHException, EOFError, OSError):
                continue

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield _Gateway(listener.getsockname()[1], root, log)
    finally:
        stop.set()
        thread.join(timeout=5)
        for t in transports:
            t.close()
        listener.close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[_Gateway]:
    """A test SSH/SFTP server with the pinned host key, /inbox and /receipts."""
    (tmp_path / "inbox").mkdir()
    (tmp_path / "receipts").mkdir()
    yield from _serve(tmp_path, HOST)


def _endpoint(
    port: int, host_key: Ed25519PrivateKey = HOST, timeout: float = 5
) -> transfer.Endpoint:
    return transfer.Endpoint("127.0.0.1", port, "ward1", host_key.public_key(), timeout)


def test_login_with_password_then_key_opens_sftp(gateway: _Gateway) -> None:
    """The right password and key log in; the session reports the pinned fingerprint."""
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        assert session.size("/inbox/none.age") is None
        assert session.host_key_fingerprint == fingerprint(HOST.public_key())
    assert gateway.log.passwords == [PASSWORD]


def test_changed_host_key_is_refused_before_any_password(gateway: _Gateway) -> None:
    """Another host key than the pinned one: exit 1 naming the key seen; no password sent."""
    with pytest.raises(ClientError) as info:
        transfer.connect(_endpoint(gateway.port, host_key=OTHER_HOST), PASSWORD, WARD)
    assert info.value.exit_code == 1
    assert fingerprint(HOST.public_key()) in str(info.value)
    assert fingerprint(OTHER_HOST.public_key()) in str(info.value)
    assert info.value.hint is not None and "gateway.host_key" in info.value.hint
    assert gateway.log.passwords == []


def test_wrong_password_is_refused(gateway: _Gateway) -> None:
    """A wrong password fails the login with exit 1; the key is never offered."""
    with pytest.raises(ClientError, match="login refused") as info:
        transfer.connect(_endpoint(gateway.port), "wrong", WARD)
    assert type(info.value) is ClientError
    assert gateway.log.keys_offered == 0


def test_wrong_key_is_refused_after_the_password(gateway: _Gateway) -> None:
    """The right password with another key fails with exit 1 naming that key's fingerprint."""
    with pytest.raises(ClientError, match="does not accept the key") as info:
        transfer.connect(_endpoint(gateway.port), PASSWORD, STRANGER)
    assert fingerprint(STRANGER.public_key()) in str(info.value)
    assert type(info.value) is ClientError


def test_secrets_never_appear_in_errors(gateway: _Gateway) -> None:
    """A refused login's message and hint hold neither the password nor key material."""
    with pytest.raises(ClientError) as info:
        transfer.connect(_endpoint(gateway.port), "s3cret-typo", WARD)
    text = f"{info.value} {info.value.hint}"
    assert "s3cret-typo" not in text
    assert private_key_to_openssh(WARD).decode() not in text


def test_unreachable_gateway_is_temporary() -> None:
    """Nothing listening on the port: TemporaryError (exit 75)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TemporaryError, match="cannot reach") as info:
        transfer.connect(_endpoint(port), PASSWORD, WARD)
    assert info.value.exit_code == 75


def test_silent_gateway_times_out_as_temporary() -> None:
    """A listener that never speaks SSH times out: TemporaryError."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        with pytest.raises(TemporaryError):
            transfer.connect(_endpoint(port, timeout=1), PASSWORD, WARD)


def test_connection_closed_at_once_is_temporary() -> None:
    """A peer that accepts and hangs up: TemporaryError (safe to retry)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def hang_up() -> None:
            conn, _ = listener.accept()
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        with pytest.raises(TemporaryError, match="lost"):
            transfer.connect(_endpoint(port), PASSWORD, WARD)
        thread.join(timeout=5)


def test_weak_only_server_is_refused(tmp_path: Path) -> None:
    """A server offering only CBC ciphers shares no algorithm: exit 1, not 75."""
    gen = _serve(tmp_path, HOST, ciphers=("aes128-cbc", "3des-cbc"))
    server = next(gen)
    try:
        with pytest.raises(ClientError, match="no SSH algorithm in common") as info:
            transfer.connect(_endpoint(server.port), PASSWORD, WARD)
        assert type(info.value) is ClientError
    finally:
        gen.close()


def test_client_offers_only_the_contract_algorithms(gateway: _Gateway) -> None:
    """The negotiated cipher, MAC-or-AEAD and kex are from the contract's lists."""
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        t = session._transport
        assert t.local_cipher in transfer.CIPHERS
        assert t.remote_cipher in transfer.CIPHERS
        assert t.host_key_type == "ssh-ed25519"
        options = t.get_security_options()
        assert options.kex == transfer.KEX_ALGORITHMS
        assert options.ciphers == transfer.CIPHERS
        assert options.digests == transfer.MACS
        assert options.key_types == ("ssh-ed25519",)
        assert not any("cbc" in c or "sha1" in c for c in (*options.ciphers, *options.digests))
        assert t.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_upload_then_resume_appends(gateway: _Gateway) -> None:
    """upload() from 0 creates the file; from its size it appends the rest."""
    data = os.urandom(3 << 20)
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        session.upload("/inbox/x.age.part", [data[:1000]], offset=0)
        assert session.size("/inbox/x.age.part") == 1000
        session.upload("/inbox/x.age.part", [data[1000 : 2 << 20], data[2 << 20 :]], offset=1000)
        session.rename("/inbox/x.age.part", "/inbox/x.age", timeout=5)
    assert (gateway.root / "inbox" / "x.age").read_bytes() == data


@pytest.mark.parametrize("size", [LIMIT + 1, 200_000, 5 << 20])
def test_refused_pipelined_write_is_reported(gateway: _Gateway, size: int) -> None:
    """A write the server refuses anywhere in a pipelined upload fails it (exit 1)."""
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        with pytest.raises(ClientError, match="refused") as info:
            session.upload("/inbox/limited.age.part", [b"a" * size], offset=0)
        assert type(info.value) is ClientError
        assert (session.size("/inbox/limited.age.part") or 0) <= LIMIT


def test_resume_from_the_wrong_offset_is_refused(gateway: _Gateway) -> None:
    """Resuming where the remote file does not end is refused, nothing written."""
    (gateway.root / "inbox" / "y.age.part").write_bytes(b"12345")
    with (
        transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session,
        pytest.raises(ClientError, match="expected 3"),
    ):
        session.upload("/inbox/y.age.part", [b"more"], offset=3)
    assert (gateway.root / "inbox" / "y.age.part").read_bytes() == b"12345"


def test_read_returns_small_files_and_none_when_missing(gateway: _Gateway) -> None:
    """read() returns a whole small file, None when absent, and refuses oversized ones."""
    (gateway.root / "receipts" / "r.json").write_bytes(b"{}\n")
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        assert session.read("/receipts/r.json", 100) == b"{}\n"
        assert session.read("/receipts/none.json", 100) is None
        with pytest.raises(ClientError, match="larger than 2 bytes"):
            session.read("/receipts/r.json", 2)


def test_permission_denied_is_a_refusal_not_temporary(gateway: _Gateway) -> None:
    """An SFTP permission error on a live connection maps to exit 1."""
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:
        with pytest.raises(ClientError, match="permission denied") as info:
            session.size("/locked/x")
        assert type(info.value) is ClientError


def test_dropped_connection_during_upload_is_temporary(gateway: _Gateway) -> None:
    """Closing the connection under an upload raises TemporaryError."""
    with transfer.connect(_endpoint(gateway.port), PASSWORD, WARD) as session:

        def blocks() -> Iterator[bytes]:
            yield b"x" * 65536
            session._transport.sock.shutdown(socket.SHUT_RDWR)
            yield b"y" * 65536
            yield b"z" * 65536

        with pytest.raises(TemporaryError, match="lost"):
            session.upload("/inbox/z.age.part", blocks(), offset=0)


def test_public_key_line_round_trip_matches_what_is_pinned() -> None:
    """The OpenSSH line the config pins parses back to the key transfer compares."""
    line = public_key_to_openssh(HOST.public_key(), "gateway")
    assert line.startswith("ssh-ed25519 ")
    assert transfer.Endpoint("h", 1, "u", HOST.public_key(), 1).address == "h:1"
    assert transfer.Endpoint("::1", 2, "u", HOST.public_key(), 1).address == "[::1]:2"
