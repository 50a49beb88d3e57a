"""A destination that accepts TCP connections but never answers (issue 8 §3).

A tiny socket server on 127.0.0.1 accepts every connection and then sleeps —
silent, or after sending its SSH banner only. A real ``serve`` forwards to it
over ``sftp://``: the connect and banner timeouts fire, the retries continue
with a growing back-off, the drop service keeps serving meanwhile, and SIGTERM
stops ``serve`` at once (exit 0, audit log verifies) even when a connect is
waiting out a 30-second timeout — the forwarder's stop cuts the connection
(:meth:`gateway.relay_destination.SftpDestination.interrupt`). A real print site
that stops answering mid-session (SIGSTOP) is survived the same way, and the
batch arrives exactly once when it answers again. ``pull`` and the ward's
``send`` against a silent peer exit 75 within their timeout.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import paramiko
import pytest

from custody import keys
from gateway.config import ForwarderSection, GatewayConfig
from gateway.destinations import DeliveryError
from gateway.relay import SftpDestination
from gateway.routes import TenantSection, parse_route
from gateway.state import BatchRecord, BatchState
from tests.conftest import run_cli
from tests.integration.sites import (
    PASSWORD,
    Site,
    envelope,
    key_pair,
    new_batch,
    paramiko_key,
    transport,
)

TENANT = "shinjuku"
STOP_BOUND_SECONDS = 5.0
"""serve must exit within this after SIGTERM, whatever the destination does."""


class Silent:
    """Accepts every TCP connection on 127.0.0.1, never answers (``banner``: its SSH banner)."""

    def __init__(self, banner: bool = False) -> None:
        self.banner = banner
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self.listener.getsockname()[1])
        self.listener.settimeout(0.1)
        self.accepted: list[socket.socket] = []
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)
            if self.banner:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    def still_open(self) -> int:
        """Accepted connections the other side has not closed."""
        count = 0
        for conn in self.accepted:
            try:
                while conn.recv(65536, socket.MSG_DONTWAIT):  # what the client sent, unread
                    pass
            except BlockingIOError:
                count += 1  # nothing more to read, and not closed
            except OSError:
                pass  # reset: closed
        return count

    def wait_accepted(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count:
            assert time.monotonic() < deadline, f"only {len(self.accepted)} connections"
            time.sleep(0.02)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.listener.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.close()


def _gateway(base: Path, port: int, timeout: int, **tenant: str) -> tuple[Site, paramiko.PKey]:
    """A gateway routing shinjuku to sftp://relay@127.0.0.1:PORT, with ward ``ward1``."""
    gw = Site(base, "gw")
    for key, value in (
        ("connect_timeout_seconds", timeout),
        ("backoff_initial_ms", 200),
        ("backoff_max_seconds", 2),
        ("rescan_seconds", 1),
    ):
        gw.set("forwarder", key, value)
    _, forward_key = key_pair(gw.root / "keys", "forward_ed25519")
    pinned = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    route = {"host_key": pinned, "receipt_key": pinned, **tenant}
    gw.add_tenant(
        TENANT, forward=f"sftp://relay@127.0.0.1:{port}/inbox", forward_key=str(forward_key),
        **route,
    )  # fmt: skip
    ward, _ = key_pair(base / "ward", "ward_ed25519")
    gw.accounts.add(
        "ward1", "ward", TENANT, keys.public_key_to_openssh(ward.public_key()), [], PASSWORD
    )
    return gw, paramiko_key(ward)


def _upload(gw: Site, key: paramiko.PKey, data: bytes) -> str:
    batch = new_batch()
    client = transport(gw)
    try:
        client.auth_password("ward1", PASSWORD, fallback=False)
        client.auth_publickey("ward1", key)
        sftp = paramiko.SFTPClient.from_transport(client)
        assert sftp is not None
        with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
            handle.write(data)
        sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
    finally:
        client.close()
    return batch


def _stop_quickly(gw: Site) -> float:
    """SIGTERM serve: exit 0, nothing printed, within the bound; the seconds it took."""
    started = time.monotonic()
    assert gw.stop() == (0, b"", b"")
    took = time.monotonic() - started
    assert took < STOP_BOUND_SECONDS, f"serve took {took:.1f} s to stop"
    assert gw.events()[-1]["event"] == "server_stopped"
    assert gw.cli("audit", "verify").code == 0
    return took


@pytest.mark.parametrize("banner", [False, True], ids=["silent", "banner-only"])
def test_timeouts_fire_retries_back_off_and_serve_stops(tmp_path: Path, banner: bool) -> None:
    """Each attempt fails within the connect timeout; attempts continue, delays grow; SIGTERM."""
    server = Silent(banner=banner)
    gw, ward = _gateway(tmp_path, server.port, timeout=1)
    try:
        gw.start()
        batch = _upload(gw, ward, envelope(50_000))
        deadline = time.monotonic() + 30
        while len(gw.events("delivery_failed", batch=batch)) < 5:
            assert time.monotonic() < deadline, "the retries stopped"
            time.sleep(0.1)
        with_ward = transport(gw)  # the drop service is not held up by the forwarder
        started = time.monotonic()
        with_ward.auth_password("ward1", PASSWORD, fallback=False)
        with_ward.auth_publickey("ward1", ward)
        sftp = paramiko.SFTPClient.from_transport(with_ward)
        assert sftp is not None and f"{batch}.age" in sftp.listdir("/inbox")
        assert time.monotonic() - started < 2.0
        with_ward.close()
        failed = gw.events("delivery_failed", batch=batch)
        attempts = [int(f["attempt"]) for f in failed]
        assert attempts == list(range(1, len(attempts) + 1))
        assert {f["reason"] for f in failed} <= {"handshake", "connection_lost"}
        assert all(f["retryable"] for f in failed)
        for attempt, record in zip(attempts, failed, strict=True):  # 0.2 s doubling, max 2 s
            ceiling = min(2000, 200 * 2 ** (attempt - 1))
            assert ceiling // 2 <= int(record["retry_in_ms"]) <= ceiling
        starts = [
            e for e in gw.events("batch_state_changed", batch=batch) if e["to"] == "forwarding"
        ]
        for began, ended in zip(starts, failed, strict=False):  # each attempt bounded by ~1 s
            assert _seconds(began["time"], ended["time"]) < 3.0
        assert len(server.accepted) >= len(failed)
        stored = gw.store.get_batch(batch)
        assert stored is not None
        assert stored.state in (BatchState.FAILED_RETRYING, BatchState.FORWARDING)
        took = _stop_quickly(gw)
        assert server.still_open() == 0  # every connection the forwarder opened was closed
        delays = [int(f["retry_in_ms"]) for f in failed]
        print(f"{len(failed)} attempts, retry delays {delays} ms, SIGTERM stop {took:.2f} s")
    finally:
        gw.close()
        server.close()


def test_sigterm_cuts_a_connect_waiting_out_a_long_timeout(tmp_path: Path, silent: Silent) -> None:
    """connect_timeout_seconds = 30 and a peer that never answers: SIGTERM still stops at once."""
    gw, ward = _gateway(tmp_path, silent.port, timeout=30)
    try:
        gw.start()
        batch = _upload(gw, ward, envelope(50_000))
        silent.wait_accepted(1)
        time.sleep(0.5)  # the forwarder is now waiting for the SSH banner
        print(f"SIGTERM during a 30 s connect timeout: stopped in {_stop_quickly(gw):.2f} s")
        failed = gw.events("delivery_failed", batch=batch)
        assert [(f["reason"], f["retryable"]) for f in failed] == [("interrupted", True)]
        record = gw.store.get_batch(batch)
        assert record is not None and record.state is BatchState.FAILED_RETRYING
        assert silent.still_open() == 0
    finally:
        gw.close()


def test_interrupt_cuts_the_connection_and_holds_until_resumed(
    tmp_path: Path, silent: Silent
) -> None:
    """In process: interrupt() ends a waiting deliver at once; refuses new work until resume()."""
    _, key_path = key_pair(tmp_path / "keys", "forward_ed25519")
    pinned = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    section = TenantSection(
        forward=f"sftp://relay@127.0.0.1:{silent.port}/inbox",
        forward_key=str(key_path), host_key=pinned, receipt_key=pinned,
    )  # fmt: skip
    config = GatewayConfig(
        forwarder=ForwarderSection(connect_timeout_seconds=30),
        tenants={TENANT: section},
        base_dir=tmp_path,
    )
    destination = SftpDestination(parse_route(section.forward), section, config)
    data = envelope(10_000)
    now = datetime.now().astimezone()
    batch = BatchRecord(
        batch_id=new_batch(), tenant=TENANT, uploader="ward1", file_name="x.age", size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), state=BatchState.VERIFIED, received_at=now,
        updated_at=now,
    )  # fmt: skip
    outcome: list[BaseException] = []

    def deliver() -> None:
        try:
            destination.deliver(batch, lambda: io.BytesIO(data))
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=deliver)
    worker.start()
    silent.wait_accepted(1)
    started = time.monotonic()
    destination.interrupt()
    worker.join(5)
    assert not worker.is_alive()
    assert time.monotonic() - started < 2.0
    assert len(outcome) == 1 and isinstance(outcome[0], DeliveryError)
    assert (outcome[0].reason, outcome[0].retryable) == ("interrupted", True)
    with pytest.raises(DeliveryError, match="interrupted"):
        destination.fetch_certificates([batch.batch_id])
    assert len(silent.accepted) == 1  # refused without connecting
    destination.resume()
    worker = threading.Thread(target=deliver)
    worker.start()
    silent.wait_accepted(2)  # connects again after resume()
    destination.interrupt()
    worker.join(5)
    assert not worker.is_alive()
    destination.close()


def test_print_site_that_stops_answering_mid_session(tmp_path: Path) -> None:
    """A print site SIGSTOPped with the kept connection open: timeouts, retries; CONT → once."""
    site = Site(tmp_path, "printsite")
    spool = tmp_path / "spool"
    spool.mkdir()
    site.set("printsite", "spool", str(spool))
    site.add_tenant(TENANT, forward=f"file://{spool}")
    site.start()
    gw, ward = _gateway(
        tmp_path, site.port, timeout=1, host_key=site.host_key, receipt_key=site.receipt_key
    )
    pub = gw.root / "keys" / "forward_ed25519.pub"
    added = site.cli("user", "add", "relay", "--role", "forwarder", "--tenant", TENANT,
                     "--pubkey", pub, "--allow", "127.0.0.1/32")  # fmt: skip
    assert added.code == 0, added.err
    assert site.proc is not None
    try:
        gw.start()
        first = _upload(gw, ward, envelope(50_000))
        gw.wait_event("batch_forwarded", batch=first, timeout=20)
        os.kill(site.proc.pid, signal.SIGSTOP)  # the kept connection stops answering
        try:
            data = envelope(300_000)
            second = _upload(gw, ward, data)
            failed = gw.wait_event("delivery_failed", batch=second, timeout=15)
            assert failed["retryable"] and failed["reason"] in ("connection_lost", "handshake")
            deadline = time.monotonic() + 20
            while len(gw.events("delivery_failed", batch=second)) < 3:
                assert time.monotonic() < deadline, "the retries stopped"
                time.sleep(0.1)
        finally:
            os.kill(site.proc.pid, signal.SIGCONT)
        gw.wait_event("batch_forwarded", batch=second, timeout=30)
        arrived = (spool / f"{second}.age").read_bytes()
        assert hashlib.sha256(arrived).hexdigest() == hashlib.sha256(data).hexdigest()
        assert len(site.events("upload_completed", batch=second)) == 1
        assert len(gw.events("batch_forwarded", batch=second)) == 1
        _stop_quickly(gw)
        assert site.stop()[0] == 0
    finally:
        gw.close()
        site.close()


def test_pull_from_a_gateway_that_never_answers_exits_75(tmp_path: Path, silent: Silent) -> None:
    """``lgwan-gateway pull`` gives up after connect_timeout_seconds: exit 75, a clear message."""
    site = Site(tmp_path, "printsite")
    try:
        site.set("forwarder", "connect_timeout_seconds", 1)
        _, key_path = key_pair(site.root / "keys", "contractor_ed25519")
        pinned = keys.public_key_to_openssh(keys.generate_private_key().public_key())
        for key, value in (("host", "127.0.0.1"), ("port", silent.port), ("user", "printer"),
                           ("host_key", pinned), ("receipt_key", pinned),
                           ("private_key", str(key_path))):  # fmt: skip
            site.set("pull", key, value)
        started = time.monotonic()
        done = site.cli("pull", "--password-fd", "{fd}", secret=PASSWORD)
        assert done.code == 75, done.err
        assert time.monotonic() - started < 15
        assert str(silent.port) in done.err
        assert silent.still_open() == 0
    finally:
        site.close()


def test_ward_send_to_a_gateway_that_never_answers_exits_75(tmp_path: Path, silent: Silent) -> None:
    """``lgwan-client send`` with connect_timeout_seconds = 1 against a silent peer: exit 75."""
    ward = tmp_path / "ward"
    ward.mkdir()
    assert (
        run_cli("lgwan-client", "keygen", "--out", ward / "keys/ward_ed25519", cwd=ward).code == 0
    )
    pinned = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    (ward / "client.toml").write_text(
        '[identity]\nprivate_key = "keys/ward_ed25519"\n'
        f'[gateway]\nhost = "127.0.0.1"\nport = {silent.port}\nuser = "ward1"\n'
        f'tenant = "{TENANT}"\nhost_key = "{pinned}"\nreceipt_key = "{pinned}"\n'
        "connect_timeout_seconds = 1\n",
        encoding="utf-8",
    )
    batch = new_batch()
    (ward / "outbox").mkdir()
    (ward / "outbox" / f"{batch}.age").write_bytes(envelope(10_000))
    started = time.monotonic()
    done = run_cli("lgwan-client", "--config", ward / "client.toml", "send", batch,
                   "--password-fd", "{fd}", cwd=ward, secret=PASSWORD)  # fmt: skip
    assert done.code == 75, done.err
    assert time.monotonic() - started < 15
    assert silent.still_open() == 0


def _seconds(earlier: object, later: object) -> float:
    return (
        datetime.fromisoformat(str(later)) - datetime.fromisoformat(str(earlier))
    ).total_seconds()
