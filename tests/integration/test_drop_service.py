"""`lgwan-gateway serve` as a real process on 127.0.0.1, driven by a paramiko client.

One test per refusal rule of the drop service: two-step login, allow lists,
locks, channel types, algorithms, hostile paths, tenant isolation; plus resume
after a killed connection (caps, timeouts, limits and stopping are in
``test_drop_limits.py``; the harness in ``drop_kit.py``).
"""

import base64
import hashlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from custody import KIND_RECEIPT, keys, loads_record, verify_record
from tests.integration.drop_kit import (
    PASSWORD,
    Gateway,
    Ward,
    connect,
    new_batch,
    session,
    source_of,
    upload,
)

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


@pytest.mark.parametrize("withdraw", ["lock", "remove"])
def test_locking_or_removing_an_account_cuts_its_open_session(drop: Gateway, withdraw: str) -> None:
    """``user lock`` / ``user remove`` while the account is logged in: its session is closed
    within a few seconds (an upload in flight stays .part) and the close is audited."""
    name = f"gina-{withdraw}"
    ward = drop.add(name, "shinjuku")
    batch = new_batch()
    with session(drop, ward) as sftp:
        with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
            handle.write(b"x" * 1000)
        getattr(drop.accounts, withdraw)(name)
        closed = drop.wait_event("connection_closed", user=name)
        assert closed["reason"] == f"account_{withdraw}{'ed' if withdraw == 'lock' else 'd'}"
        with pytest.raises((OSError, EOFError, paramiko.SSHException)):
            sftp.listdir("/inbox")
    assert (drop.tenant_dir("shinjuku") / "inbox" / f"{batch}.age.part").stat().st_size == 1000


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


def _b64_sha256(blob: bytes) -> str:
    return base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
