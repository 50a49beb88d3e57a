"""`lgwan-gateway serve` limits: connection caps, login grace and idle timeouts, the
per-account session cap, upload size and tenant quota, and a clean SIGTERM stop."""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from tests.conftest import run_cli
from tests.integration.drop_kit import (
    PASSWORD,
    Gateway,
    connect,
    new_batch,
    session,
    source_of,
    upload,
)


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
