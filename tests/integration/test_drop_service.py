"""`lgwan-gateway serve` as a real process on 127.0.0.1, driven by a paramiko client.

One test per refusal rule of the drop service: two-step login, allow lists,
locks, channel types, algorithms, hostile paths, tenant isolation, caps and
timeouts, limits; plus resume after a killed connection and a clean SIGTERM
stop. Gateways are made with the real ``init``; accounts are added through the
``gateway.accounts`` API on the same state database (faster than one CLI
process per account). The audit log is read as JSON lines.
"""

import base64
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pytest

from custody import KIND_RECEIPT, keys, loads_record, verify_record
from gateway.accounts import Accounts
from gateway.config import AuthSection
from gateway.state import StateStore
from tests.conftest import BIN, run_cli

PASSWORD = "correct-horse-battery-staple"
_LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)\n$")
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch() -> str:
    """A fresh batch id."""
    return "20260715-KAIGO-" + "".join(secrets.choice(_SUFFIX) for _ in range(6))


@dataclass
class Ward:
    """An account and its key pair."""

    name: str
    tenant: str
    key: paramiko.Ed25519Key


class Gateway:
    """A gateway root made by ``init``, its accounts and a running ``serve``."""

    def __init__(self, base: Path, settings: dict[str, dict[str, int]]) -> None:
        self.base = base
        self.root = base / "gw"
        done = run_cli("lgwan-gateway", "init", "--root", self.root, cwd=base)
        assert done.code == 0, done.err
        text = (self.root / "gateway.toml").read_text()
        settings = {**settings, "auth": {"failure_delay_ms": 0, **settings.get("auth", {})}}
        for section, values in settings.items():
            for key, value in values.items():
                pattern = rf"(?ms)(^\[{section}\]$.*?^{key} = )\S+$"
                text, count = re.subn(pattern, rf"\g<1>{value}", text, count=1)
                assert count == 1, (section, key)
        (self.root / "gateway.toml").write_text(text)
        self.store = StateStore.open(self.root / "state.db", create=False)
        self.accounts = Accounts(self.store, AuthSection(failure_delay_ms=0))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def add(self, name: str, tenant: str, role: str = "ward", allow: tuple[str, ...] = ()) -> Ward:
        """Create an account with a fresh Ed25519 key."""
        private = keys.generate_private_key()
        line = keys.public_key_to_openssh(private.public_key())
        self.accounts.add(name, role, tenant, line, list(allow), PASSWORD)
        pem = keys.private_key_to_openssh(private).decode()
        return Ward(name, tenant, paramiko.Ed25519Key(file_obj=_StringIO(pem)))

    def start(self) -> None:
        """Run ``serve --listen 127.0.0.1:0`` and read the port from its one line."""
        self.proc = subprocess.Popen(
            [str(BIN / "lgwan-gateway"), "--config", str(self.root / "gateway.toml"), "serve",
             "--listen", "127.0.0.1:0"],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        match = _LISTENING.match(line)
        assert match, f"serve did not start: {line!r}"
        self.port = int(match.group(1))

    def stop(self) -> tuple[int, bytes, bytes]:
        """SIGTERM the server; return its exit status, the rest of stdout and stderr."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        self.store.close()
        return self.proc.returncode, out, err

    def events(self, event: str | None = None, **match: object) -> list[dict[str, Any]]:
        """Audit records (optionally of one event, with matching fields)."""
        found = []
        for line in (self.root / "audit" / "audit.jsonl").read_bytes().splitlines():
            with suppress(ValueError):
                record = json.loads(line)
                if (event is None or record["event"] == event) and all(
                    record.get(k) == v for k, v in match.items()
                ):
                    found.append(record)
        return found

    def wait_event(self, event: str, timeout: float = 10, **match: object) -> dict[str, Any]:
        """The first matching audit record, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.events(event, **match)
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no {event} {match} in the audit log"
            time.sleep(0.05)

    def tenant_dir(self, tenant: str) -> Path:
        return self.root / "storage" / "tenants" / tenant


class _StringIO:
    """Minimal file object for paramiko's key loader."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readlines(self) -> list[str]:
        return self._lines

    def read(self) -> str:
        return "".join(self._lines)


def connect(gw: Gateway, source: str = "127.0.0.1", **security: tuple[str, ...]) -> Any:
    """An SSH client transport after the key exchange (not logged in)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    options = transport.get_security_options()
    for name, value in security.items():
        setattr(options, name, value)
    transport.start_client(timeout=10)
    return transport


def source_of(transport: Any) -> str:
    """The ``source`` field the server audits for this client."""
    host, port = transport.sock.getsockname()[:2]
    return f"{host}:{port}"


@contextmanager
def session(
    gw: Gateway, ward: Ward, key: paramiko.PKey | None = None, source: str = "127.0.0.1"
) -> Iterator[paramiko.SFTPClient]:
    """Log in with password then key, yield an SFTP client; wait for the server to let go."""
    transport = connect(gw, source)
    where = source_of(transport)
    try:
        assert transport.auth_password(ward.name, PASSWORD, fallback=False) == ["publickey"]
        transport.auth_publickey(ward.name, key or ward.key)
        yield paramiko.SFTPClient.from_transport(transport)
    finally:
        transport.close()
        gw.wait_event("connection_closed", source=where)


def upload(sftp: paramiko.SFTPClient, batch: str, data: bytes) -> None:
    """Upload as the client does: write .part, rename to .age."""
    with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
        handle.set_pipelined(True)
        handle.write(data)
    sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The main gateway with default limits, already serving."""
    gw = Gateway(tmp_path_factory.mktemp("drop"), {})
    gw.start()
    yield gw
    assert gw.stop() == (0, b"", b"")  # nothing but the listening line, even after errors


@pytest.fixture(scope="module")
def alice(drop: Gateway) -> Ward:
    """A ward account of tenant shinjuku."""
    return drop.add("alice", "shinjuku")


@pytest.fixture(scope="module")
def bob(drop: Gateway) -> Ward:
    """A ward account of another tenant, minato."""
    return drop.add("bob", "minato")


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with small caps, timeouts and limits, already serving."""
    gw = Gateway(
        tmp_path_factory.mktemp("tight"),
        {
            "server": {
                "login_grace_seconds": 2,
                "idle_timeout_seconds": 2,
                "max_unauthenticated": 4,
                "max_sessions_per_account": 1,
                "max_connections_per_source": 3,
            },
            "storage": {"max_upload_bytes": 300_000, "tenant_quota_bytes": 500_000},
        },
    )
    gw.start()
    yield gw
    assert gw.stop() == (0, b"", b"")


# -- login ---------------------------------------------------------------------------------------


def test_password_then_key_logs_in_and_is_audited(drop: Gateway, alice: Ward) -> None:
    """The right password and key log in; the connection, algorithms and login are audited."""
    with session(drop, alice) as sftp:
        assert sorted(sftp.listdir("/")) == ["inbox", "receipts"]
        transport = sftp.get_channel().get_transport()
        pinned = (drop.root / "keys" / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert transport.get_remote_server_key().get_base64() == pinned
        where = source_of(transport)
    opened = drop.wait_event("connection_opened", source=where)
    assert opened["kex"] == "mlkem768x25519-sha256"
    assert opened["strict_kex"] is True
    assert opened["host_key_type"] == "ssh-ed25519"
    assert opened["client_version"].startswith("SSH-2.0-paramiko")
    assert opened["cipher"] in ("aes128-ctr", "aes256-gcm@openssh.com")
    login = drop.wait_event("login_succeeded", source=where)
    assert (login["user"], login["tenant"], login["method"]) == (
        "alice",
        "shinjuku",
        "password+publickey",
    )
    names = [r["event"] for r in drop.events() if r.get("source") == where]
    assert names[:4] == [
        "connection_opened",
        "password_accepted",
        "login_succeeded",
        "session_opened",
    ]
    assert names[-2:] == ["session_closed", "connection_closed"]


def test_only_the_public_key_is_refused(drop: Gateway, alice: Ward) -> None:
    """Holding only the key: the key step without the password step is refused."""
    transport = connect(drop)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey("alice", alice.key)
        assert not transport.is_authenticated()
    finally:
        transport.close()
    drop.wait_event(
        "login_failed", user="alice", method="publickey", reason="password_step_missing"
    )


def test_only_the_password_opens_no_channel(drop: Gateway, alice: Ward) -> None:
    """Holding only the password: partial success, and no channel can be opened."""
    transport = connect(drop)
    try:
        assert transport.auth_password("alice", PASSWORD, fallback=False) == ["publickey"]
        assert not transport.is_authenticated()
        with pytest.raises(paramiko.SSHException):
            transport.open_session(timeout=5)
        where = source_of(transport)
    finally:
        transport.close()
    drop.wait_event("connection_closed", source=where)
    assert drop.events("password_accepted", source=where, user="alice")
    assert not drop.events("login_succeeded", source=where)
    assert not drop.events("session_opened", source=where)


def test_password_of_one_account_with_key_of_another_is_refused(
    drop: Gateway, alice: Ward, bob: Ward
) -> None:
    """Alice's password with Bob's key is refused (and so is switching user)."""
    transport = connect(drop)
    try:
        transport.auth_password("alice", PASSWORD, fallback=False)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey("alice", bob.key)
        assert not transport.is_authenticated()
    finally:
        transport.close()
    refused = drop.wait_event("login_failed", user="alice", reason="wrong_key")
    assert refused["key_fingerprint"] == "SHA256:" + _b64_sha256(bob.key.asbytes())


def test_unknown_user_is_refused_and_audited(drop: Gateway) -> None:
    """An unknown account name is refused and the attempt is audited."""
    transport = connect(drop)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("mallory", PASSWORD, fallback=False)
    finally:
        transport.close()
    drop.wait_event("login_failed", user="mallory", method="password", reason="unknown_user")


def test_locked_account_is_refused(drop: Gateway) -> None:
    """An administratively locked account cannot log in even with both factors."""
    erin = drop.add("erin", "shinjuku")
    drop.accounts.lock("erin")
    transport = connect(drop)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("erin", PASSWORD, fallback=False)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey("erin", erin.key)
    finally:
        transport.close()
    drop.wait_event("login_failed", user="erin", reason="admin_locked")


def test_repeated_bad_passwords_lock_the_account(drop: Gateway) -> None:
    """Five bad passwords lock the account; then even the right one is refused."""
    drop.add("frank", "shinjuku")
    transport = connect(drop)
    try:
        for _ in range(5):
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_password("frank", "not-the-password", fallback=False)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("frank", PASSWORD, fallback=False)
    finally:
        transport.close()
    drop.wait_event("account_locked_out", user="frank")
    drop.wait_event("login_failed", user="frank", reason="locked")


def test_source_outside_the_allow_list_is_refused(drop: Gateway) -> None:
    """An account allowed only from 10.0.0.0/8 is refused from 127.0.0.1."""
    dave = drop.add("dave", "shinjuku", allow=("10.0.0.0/8",))
    transport = connect(drop)
    try:
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_password("dave", PASSWORD, fallback=False)
        with pytest.raises(paramiko.AuthenticationException):
            transport.auth_publickey("dave", dave.key)
    finally:
        transport.close()
    drop.wait_event("login_failed", user="dave", reason="source_refused")


# -- channels and algorithms ---------------------------------------------------------------------


@pytest.mark.parametrize("request_kind", ["shell", "exec", "pty", "x11", "subsystem"])
def test_non_sftp_session_requests_are_refused(
    drop: Gateway, alice: Ward, request_kind: str
) -> None:
    """Shell, exec, pty, X11 and other subsystems are refused and audited."""
    with session(drop, alice) as sftp:
        transport = sftp.get_channel().get_transport()
        channel = transport.open_session(timeout=5)
        attempt = {
            "shell": channel.invoke_shell,
            "exec": lambda: channel.exec_command("cat /etc/passwd"),
            "pty": channel.get_pty,
            "x11": channel.request_x11,
            "subsystem": lambda: channel.invoke_subsystem("netconf"),
        }[request_kind]
        with pytest.raises(paramiko.SSHException):
            attempt()
        where = source_of(transport)
    expected = {"subsystem": "subsystem"}.get(request_kind, request_kind)
    drop.wait_event("channel_refused", source=where, request=expected)


@pytest.mark.parametrize("forward", ["direct-tcpip", "tcpip-forward", "agent"])
def test_forwarding_is_refused(drop: Gateway, alice: Ward, forward: str) -> None:
    """Port forwarding both ways and agent forwarding are refused and audited."""
    with session(drop, alice) as sftp:
        transport = sftp.get_channel().get_transport()
        where = source_of(transport)
        if forward == "direct-tcpip":
            with pytest.raises(paramiko.SSHException):
                transport.open_channel("direct-tcpip", ("127.0.0.1", 22), ("127.0.0.1", 1), 5)
        elif forward == "tcpip-forward":
            with pytest.raises(paramiko.SSHException):
                transport.request_port_forward("127.0.0.1", 0)
        else:
            channel = transport.open_session(timeout=5)
            paramiko.agent.AgentRequestHandler(channel)
        drop.wait_event("channel_refused", source=where, request=forward)


@pytest.mark.parametrize(
    ("option", "offer"),
    [
        ("ciphers", ("aes128-cbc",)),
        ("ciphers", ("3des-cbc",)),
        ("digests", ("hmac-sha1",)),
        ("digests", ("hmac-md5",)),
        ("kex", ("diffie-hellman-group14-sha256",)),
        ("kex", ("ecdh-sha2-nistp256",)),
    ],
)
def test_weak_algorithms_fail_to_negotiate(
    drop: Gateway, option: str, offer: tuple[str, ...]
) -> None:
    """A client offering only CBC, 3DES, SHA-1, MD5 or classic DH/ECDH kex cannot connect."""
    sock = socket.create_connection(("127.0.0.1", drop.port), timeout=10)
    where = "{}:{}".format(*sock.getsockname()[:2])
    transport = paramiko.Transport(sock)
    setattr(transport.get_security_options(), option, offer)
    with pytest.raises(paramiko.SSHException):
        transport.start_client(timeout=10)
    transport.close()
    closed = drop.wait_event("connection_closed", source=where)
    assert "error" in closed  # the key exchange never completed
    assert not drop.events("connection_opened", source=where)


# -- the virtual filesystem ----------------------------------------------------------------------

HOSTILE = [
    ("../../etc/passwd", "dot_dot"),
    ("/etc/passwd", "unknown_area"),
    ("/inbox/../receipts", "dot_dot"),
    ("/inbox//x.age", "empty_component"),
    ("/inbox\\..\\x", "backslash"),
    ("/inbox/20260715-KAIGO-7F3KQ2.age\x00.txt", "nul_byte"),
    ("/inbox/" + "A" * 4000, "overlong"),
    ("/inbox/evil.sh", "bad_name"),
    ("/inbox/20260715-KAIGO-7F3KQ2.age.part.exe", "bad_name"),
    ("/outbox", "unknown_area"),
]


@pytest.mark.parametrize(("path", "reason"), HOSTILE)
def test_hostile_paths_are_refused_and_audited(
    drop: Gateway, alice: Ward, path: str, reason: str
) -> None:
    """Every hostile path is a permission error for stat, open and listing, and audited."""
    with session(drop, alice) as sftp:
        for attempt in (
            lambda: sftp.stat(path),
            lambda: sftp.open(path, "w"),
            lambda: sftp.listdir(path),
        ):
            with pytest.raises(PermissionError):
                attempt()
        where = source_of(sftp.get_channel().get_transport())
    refusals = drop.events("sftp_refused", source=where, reason=reason)
    assert len(refusals) == 3
    assert not list(drop.tenant_dir("shinjuku").rglob("*evil*"))


def test_non_utf8_path_is_refused(drop: Gateway, alice: Ward) -> None:
    """A path that is not UTF-8 is refused, not crashed on."""
    with session(drop, alice) as sftp:
        with pytest.raises(PermissionError):
            sftp.stat(b"/inbox/\xff\xfe")  # type: ignore[arg-type]
        assert sftp.listdir("/inbox") is not None
        where = source_of(sftp.get_channel().get_transport())
    drop.wait_event("sftp_refused", source=where, reason="not_utf8")


def test_ward_cannot_read_remove_or_overwrite_completed_files(drop: Gateway, alice: Ward) -> None:
    """A completed upload can be listed and stat'ed, never read, removed or reopened."""
    batch = new_batch()
    with session(drop, alice) as sftp:
        upload(sftp, batch, b"sealed bytes")
        assert f"{batch}.age" in sftp.listdir("/inbox")
        assert sftp.stat(f"/inbox/{batch}.age").st_size == 12
        for attempt in (
            lambda: sftp.open(f"/inbox/{batch}.age", "r"),
            lambda: sftp.open(f"/inbox/{batch}.age", "w"),
            lambda: sftp.remove(f"/inbox/{batch}.age"),
            lambda: sftp.rename(f"/inbox/{batch}.age", f"/inbox/{batch}.age.part"),
            lambda: sftp.open(f"/inbox/{batch}.age.part", "w"),
            lambda: sftp.open(f"/receipts/{batch}.receipt.json", "w"),
        ):
            with pytest.raises(PermissionError):
                attempt()
    assert (drop.tenant_dir("shinjuku") / "inbox" / f"{batch}.age").read_bytes() == b"sealed bytes"


def test_ward_cannot_make_directories_links_or_truncate(drop: Gateway, alice: Ward) -> None:
    """mkdir, symlink, readlink, rmdir and size changes are refused; chmod is a harmless no-op."""
    batch = new_batch()
    part = f"/inbox/{batch}.age.part"
    with session(drop, alice) as sftp:
        with sftp.open(part, "w") as handle:
            handle.write(b"12345")
        for attempt in (
            lambda: sftp.mkdir("/inbox/sub"),
            lambda: sftp.rmdir("/inbox"),
            lambda: sftp.symlink("/etc/passwd", part),
            lambda: sftp.readlink(part),
            lambda: sftp.truncate(part, 1),
            lambda: sftp.open(part, "r+"),
        ):
            with pytest.raises(PermissionError):
                attempt()
        sftp.chmod(part, 0o777)
        assert sftp.stat(part).st_size == 5
        sftp.remove(part)
        assert f"{batch}.age.part" not in sftp.listdir("/inbox")


def test_contractor_sees_only_its_outbox_read_only(drop: Gateway) -> None:
    """A contractor account sees /outbox (its tenant's), may read but not write there."""
    carol = drop.add("carol", "shinjuku", role="contractor")
    batch = new_batch()
    outbox = drop.tenant_dir("shinjuku") / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    (outbox / f"{batch}.age").write_bytes(b"forwarded")
    with session(drop, carol) as sftp:
        assert sftp.listdir("/") == ["outbox"]
        assert sftp.listdir("/outbox") == [f"{batch}.age"]
        assert sftp.open(f"/outbox/{batch}.age").read() == b"forwarded"
        for attempt in (
            lambda: sftp.listdir("/inbox"),
            lambda: sftp.open(f"/outbox/{batch}.age.part", "w"),
            lambda: sftp.open(f"/outbox/{new_batch()}.age", "w"),
            lambda: sftp.remove(f"/outbox/{batch}.age"),
        ):
            with pytest.raises(PermissionError):
                attempt()


def test_tenants_are_isolated(drop: Gateway, alice: Ward, bob: Ward) -> None:
    """A ward never sees another tenant's files, nor can it reuse their batch id."""
    batch = new_batch()
    with session(drop, alice) as sftp:
        upload(sftp, batch, b"shinjuku data")
    with session(drop, bob) as sftp:
        assert f"{batch}.age" not in sftp.listdir("/inbox")
        assert f"{batch}.receipt.json" not in sftp.listdir("/receipts")
        with pytest.raises(FileNotFoundError):
            sftp.stat(f"/inbox/{batch}.age")
        with pytest.raises(FileNotFoundError):
            sftp.open(f"/receipts/{batch}.receipt.json")
        with pytest.raises(PermissionError):
            sftp.open(f"/inbox/{batch}.age.part", "w")
    assert not (drop.tenant_dir("minato") / "inbox" / f"{batch}.age.part").exists()


def test_second_upload_of_a_batch_id_is_refused(drop: Gateway, alice: Ward) -> None:
    """Once a batch id is received, its .part can no longer be created (audited)."""
    batch = new_batch()
    with session(drop, alice) as sftp:
        upload(sftp, batch, b"first")
        with pytest.raises(PermissionError, match="already been received"):
            sftp.open(f"/inbox/{batch}.age.part", "w")
        where = source_of(sftp.get_channel().get_transport())
    drop.wait_event("sftp_refused", source=where, reason="batch_exists")
    assert len(drop.store.list_batches("shinjuku")) >= 1
    assert drop.store.get_batch(batch) is not None


def test_planted_symlink_in_storage_is_refused(drop: Gateway, alice: Ward, tmp_path: Path) -> None:
    """A symlink planted in the tenant's inbox is neither followed, listed nor overwritten."""
    target = tmp_path / "outside.txt"
    target.write_bytes(b"outside")
    batch = new_batch()
    inbox = drop.tenant_dir("shinjuku") / "inbox"
    (inbox / f"{batch}.age.part").symlink_to(target)
    with session(drop, alice) as sftp:
        assert f"{batch}.age.part" not in sftp.listdir("/inbox")
        for attempt in (
            lambda: sftp.open(f"/inbox/{batch}.age.part", "a"),
            lambda: sftp.open(f"/inbox/{batch}.age.part", "w"),
            lambda: sftp.stat(f"/inbox/{batch}.age.part"),
            lambda: sftp.remove(f"/inbox/{batch}.age.part"),
        ):
            with pytest.raises(PermissionError):
                attempt()
        where = source_of(sftp.get_channel().get_transport())
    assert target.read_bytes() == b"outside"
    assert drop.events("sftp_refused", source=where, reason="symlink")


# -- completion, resume, receipts ----------------------------------------------------------------


def test_resume_after_a_killed_connection_then_receipt_verifies(drop: Gateway, alice: Ward) -> None:
    """Upload half, drop the socket, reconnect, append from the server's size, complete."""
    batch = new_batch()
    data = os.urandom(3 * 1024 * 1024)
    part = f"/inbox/{batch}.age.part"
    transport = connect(drop)
    where = source_of(transport)
    transport.auth_password("alice", PASSWORD, fallback=False)
    transport.auth_publickey("alice", alice.key)
    sftp = paramiko.SFTPClient.from_transport(transport)
    handle = sftp.open(part, "w")
    handle.write(data[: len(data) // 2])
    transport.sock.shutdown(socket.SHUT_RDWR)  # the line drops: no close, no rename
    transport.close()
    drop.wait_event("connection_closed", source=where)
    with session(drop, alice) as sftp:
        stored = sftp.stat(part).st_size
        assert 0 < stored <= len(data) // 2
        with sftp.open(part, "a") as handle:
            assert handle.tell() == stored
            handle.set_pipelined(True)
            handle.write(data[stored:])
        sftp.rename(part, f"/inbox/{batch}.age")
        receipt = sftp.open(f"/receipts/{batch}.receipt.json").read()
    signer = keys.load_public_key((drop.root / "keys" / "gateway_signing_ed25519.pub").read_text())
    body = verify_record(loads_record(receipt), signer, kind=KIND_RECEIPT)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert (body["batch_id"], body["tenant"], body["uploader"]) == (batch, "shinjuku", "alice")
    assert body["file"] == f"{batch}.age"
    assert body["gateway_key"] == keys.fingerprint(signer)
    record = drop.store.get_batch(batch)
    assert record is not None and record.state.value == "received"
    drop.wait_event("upload_completed", batch=batch, size_bytes=len(data))
    drop.wait_event("receipt_signed", batch=batch)
    closed = drop.events("sftp_closed", batch=batch, mode="write")
    assert sum(r["size_bytes"] for r in closed) >= len(data)


# -- caps, timeouts, limits ----------------------------------------------------------------------


def _raw(gw: Gateway, source: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(source, 0))
    return sock


def _refused(sock: socket.socket) -> bool:
    """True when the server closed without sending its SSH banner."""
    try:
        return sock.recv(64) == b""
    except ConnectionResetError:
        return True


def _close_all(gw: Gateway, socks: list[socket.socket]) -> None:
    where = [f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in socks]
    for sock in socks:
        sock.close()
    for source in where:
        gw.wait_event("connection_closed", source=source)


def test_max_connections_per_source(tight: Gateway) -> None:
    """The fourth concurrent connection from one address is refused and audited."""
    socks = [_raw(tight, "127.0.0.5") for _ in range(3)]
    try:
        assert all(s.recv(64).startswith(b"SSH-2.0-lgwan-gateway") for s in socks)
        extra = _raw(tight, "127.0.0.5")
        assert _refused(extra)
        extra.close()
    finally:
        _close_all(tight, socks)
    tight.wait_event("connection_refused", reason="max_connections_per_source")


def test_max_unauthenticated(tight: Gateway) -> None:
    """Beyond max_unauthenticated pending logins (all sources) connections are refused."""
    socks = [_raw(tight, "127.0.0.6") for _ in range(2)] + [
        _raw(tight, "127.0.0.7") for _ in range(2)
    ]
    try:
        assert all(s.recv(64).startswith(b"SSH-2.0-") for s in socks)
        extra = _raw(tight, "127.0.0.8")
        assert _refused(extra)
        extra.close()
    finally:
        _close_all(tight, socks)
    tight.wait_event("connection_refused", reason="max_unauthenticated")


def test_login_grace_timeout(tight: Gateway) -> None:
    """A connection that does not log in within login_grace_seconds is cut."""
    sock = _raw(tight, "127.0.0.9")
    started = time.monotonic()
    assert sock.recv(64).startswith(b"SSH-2.0-")
    sock.sendall(b"SSH-2.0-slowpoke\r\n")
    while sock.recv(4096):
        pass
    assert time.monotonic() - started >= 1.5
    where = f"127.0.0.9:{sock.getsockname()[1]}"
    sock.close()
    closed = tight.wait_event("connection_closed", source=where)
    assert closed["reason"] == "login_grace_timeout"


def test_idle_timeout(tight: Gateway) -> None:
    """A logged-in session without SFTP activity for idle_timeout_seconds is closed."""
    gina = tight.add("gina", "tight")
    with session(tight, gina) as sftp:
        sftp.listdir("/inbox")
        where = source_of(sftp.get_channel().get_transport())
        time.sleep(2.8)
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.listdir("/inbox")
    assert tight.wait_event("connection_closed", source=where)["reason"] == "idle_timeout"


def test_max_sessions_per_account(tight: Gateway) -> None:
    """A second concurrent login of the same account is refused."""
    hank = tight.add("hank", "tight")
    with session(tight, hank) as sftp:
        sftp.listdir("/")
        second = connect(tight)
        try:
            second.auth_password("hank", PASSWORD, fallback=False)
            with pytest.raises(paramiko.AuthenticationException):
                second.auth_publickey("hank", hank.key)
        finally:
            second.close()
    tight.wait_event("connection_refused", user="hank", reason="max_sessions_per_account")
    with session(tight, hank) as sftp:
        assert sftp.listdir("/") == ["inbox", "receipts"]


def test_upload_size_limit_keeps_the_part_resumable(tight: Gateway) -> None:
    """Writing past max_upload_bytes fails; the .part keeps its prefix, nothing completes."""
    ivy = tight.add("ivy", "limits")
    batch = new_batch()
    data = os.urandom(400_000)
    with session(tight, ivy) as sftp:
        with sftp.open(f"/inbox/{batch}.age.part", "w") as handle, pytest.raises(OSError):
            handle.write(data)
        stored = sftp.stat(f"/inbox/{batch}.age.part").st_size
        assert 0 < stored <= 300_000
        assert f"{batch}.age" not in sftp.listdir("/inbox")
    on_disk = (tight.tenant_dir("limits") / "inbox" / f"{batch}.age.part").read_bytes()
    assert on_disk == data[: len(on_disk)]
    assert tight.events("sftp_refused", user="ivy", reason="upload_too_large")


def test_tenant_quota_fails_the_write_and_frees_on_remove(tight: Gateway) -> None:
    """Past the tenant quota writes fail; removing the .part frees the space again."""
    jack = tight.add("jack", "quota")
    first, second = new_batch(), new_batch()
    with session(tight, jack) as sftp:
        upload(sftp, first, os.urandom(280_000))
        with sftp.open(f"/inbox/{second}.age.part", "w") as handle, pytest.raises(OSError):
            handle.write(os.urandom(280_000))
        assert f"{second}.age" not in sftp.listdir("/inbox")
        sftp.remove(f"/inbox/{second}.age.part")
        upload(sftp, second, os.urandom(200_000))
    assert tight.events("sftp_refused", user="jack", reason="quota_exceeded")
    assert tight.store.get_batch(second) is not None


# -- stopping ------------------------------------------------------------------------------------


def test_sigterm_stops_cleanly_and_open_uploads_stay_part(tmp_path: Path) -> None:
    """SIGTERM: exit 0, only the listening line printed, .part kept, stop audited and signed."""
    gw = Gateway(tmp_path, {})
    kate = gw.add("kate", "shinjuku")
    gw.start()
    batch = new_batch()
    transport = connect(gw)
    transport.auth_password("kate", PASSWORD, fallback=False)
    transport.auth_publickey("kate", kate.key)
    sftp = paramiko.SFTPClient.from_transport(transport)
    handle = sftp.open(f"/inbox/{batch}.age.part", "w")
    handle.write(b"x" * 100_000)
    code, out, err = gw.stop()
    transport.close()
    assert (code, out, err) == (0, b"", b"")
    part = gw.tenant_dir("shinjuku") / "inbox" / f"{batch}.age.part"
    assert part.stat().st_size == 100_000
    assert not part.with_name(f"{batch}.age").exists()
    names = [r["event"] for r in gw.events()]
    assert names[-1] == "server_stopped"
    assert gw.events("connection_closed", reason="server_stopping")
    assert gw.events("sftp_closed", batch=batch, size_bytes=100_000)
    verified = run_cli(
        "lgwan-gateway", "--config", gw.root / "gateway.toml", "audit", "verify", cwd=tmp_path
    )
    assert verified.code == 0, verified.err


def _b64_sha256(blob: bytes) -> str:
    return base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
