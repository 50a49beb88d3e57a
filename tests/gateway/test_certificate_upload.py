"""A contractor uploading an erasure certificate to /outbox, in-process with a real paramiko client.

The close of the file is the moment of judgement: the server answers the CLOSE
request with the outcome (paramiko's own server would always say OK, and its
client ignores a failed close, so the tests send CLOSE themselves to see it).
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from paramiko.sftp import CMD_CLOSE

from custody import generate_private_key, keys
from gateway import admin, app
from gateway import config as config_mod
from gateway.certificates import MAX_CERTIFICATE_BYTES
from gateway.config import AuthSection
from gateway.pipeline import BatchState
from gateway.routes import TenantSection
from gateway.server import DropServer
from gateway.state import BatchRecord
from tests.gateway.certificate_kit import certificate
from tests.gateway.pipeline_kit import envelope, receive

PASSWORD = "correct-horse-battery-staple"
BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "chuo"
PRINTSITE = generate_private_key()


@dataclasses.dataclass
class Served:
    """A gateway whose tenant chuo is pulled (the print site's key pinned), serving in a thread."""

    gw: app.Gateway
    root: Path
    port: int
    key: paramiko.Ed25519Key

    def sftp(self) -> paramiko.SFTPClient:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        transport = paramiko.Transport(sock)
        transport.start_client(timeout=10)
        transport.auth_password("printer", PASSWORD, fallback=False)
        transport.auth_publickey("printer", self.key)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        return sftp

    def batch(self) -> BatchRecord:
        found = self.gw.store.get_batch(BATCH)
        assert found is not None
        return found

    def certificate(self, **overrides: object) -> bytes:
        batch = self.batch()
        return certificate(PRINTSITE, BATCH, TENANT, batch.size, batch.sha256, **overrides)

    def outbox(self) -> list[str]:
        return sorted(
            p.name for p in (self.root / "storage" / "tenants" / TENANT / "outbox").iterdir()
        )

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = (self.root / "audit" / "audit.jsonl").read_bytes().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """The gateway with one batch of chuo published to /outbox (FORWARDED) and a contractor."""
    root = tmp_path / "gw"
    admin.init_root(root, actor="test")
    cfg = config_mod.load(str(root / "gateway.toml"))
    pinned = keys.public_key_to_openssh(PRINTSITE.public_key())
    cfg = dataclasses.replace(
        cfg,
        auth=AuthSection(failure_delay_ms=0),
        tenants={TENANT: TenantSection(forward="pull", receipt_key=pinned)},
    )
    gw = app.build(cfg)
    private = keys.generate_private_key()
    line = keys.public_key_to_openssh(private.public_key())
    gw.accounts.add("printer", "contractor", TENANT, line, [], PASSWORD)
    receive(gw, TENANT, BATCH, envelope(20_000))
    gw.forwarder.run_once()
    server = DropServer(gw, "127.0.0.1", 0)
    _host, port = server.bind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pem = keys.private_key_to_openssh(private).decode()
    made = Served(gw, root, port, paramiko.Ed25519Key(file_obj=io.StringIO(pem)))
    assert made.batch().state is BatchState.FORWARDED
    yield made
    server.stop()
    thread.join(timeout=30)
    gw.close()


def _close(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """Send CLOSE and raise on a failure status (paramiko's close() would swallow it)."""
    handle.flush()
    handle._closed = True  # we send the CLOSE ourselves
    sftp._request(CMD_CLOSE, handle.handle)


def test_a_good_upload_is_answered_ok_published_and_kept(served: Served) -> None:
    """Close → OK; the batch is ERASED and the certificate is in /outbox and /receipts."""
    data = served.certificate()
    sftp = served.sftp()
    handle = sftp.open(f"/outbox/{BATCH}.erasure.json", "w")
    handle.write(data)
    _close(sftp, handle)
    assert served.batch().state is BatchState.ERASED
    with sftp.open(f"/outbox/{BATCH}.erasure.json", "r") as back:
        assert back.read() == data
    assert f"{BATCH}.erasure.json" in sftp.listdir("/outbox")
    with pytest.raises(OSError, match="uploaded already"):
        sftp.open(f"/outbox/{BATCH}.erasure.json", "w")  # create-once
    with pytest.raises(PermissionError):
        sftp.remove(f"/outbox/{BATCH}.erasure.json")


def test_an_invalid_upload_fails_at_close_and_is_not_stored(served: Served) -> None:
    """A tampered certificate: CLOSE fails with the reason; nothing stored; incident once."""
    data = served.certificate().replace(b'"yamada"', b'"yamadb"')  # the handler, rewritten
    sftp = served.sftp()
    handle = sftp.open(f"/outbox/{BATCH}.erasure.json", "w")
    handle.write(data)
    with pytest.raises(OSError, match="erasure certificate refused"):
        _close(sftp, handle)
    assert f"{BATCH}.erasure.json" not in served.outbox()
    assert served.batch().state is BatchState.FORWARDED
    assert [r["reason"] for r in served.events("erasure_certificate_rejected")] == ["bad_signature"]
    refused = [r for r in served.events("sftp_refused") if r["op"] == "close"]
    assert [r["path"] for r in refused] == [f"/outbox/{BATCH}.erasure.json"]
    handle = sftp.open(f"/outbox/{BATCH}.erasure.json", "w")  # may be uploaded again, fixed
    handle.write(served.certificate())
    _close(sftp, handle)
    assert served.batch().state is BatchState.ERASED


def test_oversized_and_unfinished_uploads_store_nothing(served: Served) -> None:
    """Past the size limit the write and the close fail; a dropped session stores nothing."""
    sftp = served.sftp()
    handle = sftp.open(f"/outbox/{BATCH}.erasure.json", "w")
    with pytest.raises(OSError):
        handle.write(b" " * (MAX_CERTIFICATE_BYTES + 1))
        handle.flush()
    with pytest.raises(OSError, match="not stored"):
        _close(sftp, handle)
    handle = sftp.open(f"/outbox/{BATCH}.erasure.json", "w")
    handle.write(served.certificate())
    handle.flush()
    transport = sftp.get_channel().get_transport()
    transport.close()  # no CLOSE: the session ends with the file open
    sftp = served.sftp()
    assert f"{BATCH}.erasure.json" not in sftp.listdir("/outbox")
    assert served.batch().state is BatchState.FORWARDED
    assert served.events("erasure_certificate_rejected") == []


def test_certificates_of_unknown_batches_are_refused_at_open(served: Served) -> None:
    """No such batch in the tenant: permission denied before a byte is sent."""
    sftp = served.sftp()
    with pytest.raises(PermissionError):
        sftp.open("/outbox/20260715-KAIGO-AAAAAA.erasure.json", "w")
    with pytest.raises(PermissionError):
        sftp.open(f"/outbox/{BATCH}.status.json", "w")
