"""gateway.relay in-process: its SFTP link against a DropServer thread on 127.0.0.1.

Covers the link's refusals (pinned host key, login, a refused pipelined write),
receipt and key checks, and the server side of pull confirmation (a
contractor removing ``/outbox/<batch>.age``) with and without a hook.
"""

import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import keys
from gateway import admin, app
from gateway import config as config_mod
from gateway.config import AuthSection, GatewayConfig
from gateway.errors import ConfigError
from gateway.policy import Area, PolicyError
from gateway.receipts import sign_receipt
from gateway.relay import (
    Link,
    LinkError,
    Peer,
    SftpDestination,
    check_receipt,
    connect,
    load_pinned_key,
    load_private_key_file,
)
from gateway.routes import TenantSection, parse_route
from gateway.server import DropServer
from gateway.sftp_server import PullHook
from gateway.state import BatchRecord, BatchState

PASSWORD = "correct-horse-battery-staple"
BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"


@dataclasses.dataclass
class Served:
    """An in-process gateway serving on 127.0.0.1, and a contractor's key."""

    gw: app.Gateway
    port: int
    key: Ed25519PrivateKey

    def peer(self, **changes: object) -> Peer:
        host_key = self.gw.host_key.public_key()
        peer = Peer("127.0.0.1", self.port, "carol", host_key, timeout=10.0)
        return dataclasses.replace(peer, **changes)

    def link(self) -> Link:
        return connect(self.peer(), self.key, PASSWORD)

    def outbox(self) -> list[str]:
        return [f.name for f in self.gw.storage.list_files(TENANT, Area.OUTBOX)]


Factory = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Factory]:
    """Start a gateway with a contractor account ``carol``: ``serve(on_pulled=…, quota=…)``."""
    running: list[tuple[DropServer, threading.Thread, app.Gateway]] = []

    def start(on_pulled: PullHook | None = None, quota: int | None = None) -> Served:
        root = tmp_path / f"gw{len(running)}"
        admin.init_root(root, actor="test")
        cfg = config_mod.load(str(root / "gateway.toml"))
        storage = cfg.storage if quota is None else dataclasses.replace(
            cfg.storage, tenant_quota_bytes=quota
        )  # fmt: skip
        cfg = dataclasses.replace(cfg, auth=AuthSection(failure_delay_ms=0), storage=storage)
        gw = app.build(cfg)
        key = keys.generate_private_key()
        line = keys.public_key_to_openssh(key.public_key())
        gw.accounts.add("carol", "contractor", TENANT, line, [], PASSWORD)
        gw.storage.ensure_tenant(TENANT)
        server = DropServer(gw, "127.0.0.1", 0, on_pulled=on_pulled)
        _host, port = server.bind()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread, gw))
        return Served(gw, port, key)

    yield start
    for server, thread, gw in running:
        server.stop()
        thread.join(timeout=30)
        gw.close()


def _record(data: bytes) -> BatchRecord:
    now = datetime.now().astimezone()
    return BatchRecord(
        batch_id=BATCH, tenant=TENANT, uploader="ward1", file_name=f"{BATCH}.age",
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), state=BatchState.FORWARDED,
        received_at=now, updated_at=now,
    )  # fmt: skip


def _publish(served: Served, data: bytes = b"age-envelope" * 1000) -> bytes:
    """Put an envelope and its signed receipt into the contractor's /outbox."""
    receipt = sign_receipt(_record(data), served.gw.signing_key)
    served.gw.storage.write_file(TENANT, Area.OUTBOX, f"{BATCH}.receipt.json", receipt)
    served.gw.storage.write_file(TENANT, Area.OUTBOX, f"{BATCH}.age", data)
    return receipt


# -- the link ------------------------------------------------------------------------------------


def test_link_refuses_another_host_key_before_logging_in(serve: Factory) -> None:
    """A host key other than the pinned one is refused, naming the fingerprint seen."""
    served = serve()
    other = keys.generate_private_key().public_key()
    with pytest.raises(LinkError) as refused:
        connect(served.peer(host_key=other), served.key, PASSWORD)
    assert (refused.value.reason, refused.value.retryable) == ("host_key_changed", False)
    assert keys.fingerprint(served.gw.host_key.public_key()) in str(refused.value)
    assert refused.value.exit_code == 1
    events = (served.gw.config.path(served.gw.config.audit.log)).read_text()
    assert "password_accepted" not in events


def test_link_login_refused_is_not_retryable(serve: Factory) -> None:
    """A wrong password is refused with exit 1, not 75."""
    served = serve()
    with pytest.raises(LinkError) as refused:
        connect(served.peer(), served.key, "not-the-password")
    assert (refused.value.reason, refused.value.exit_code) == ("login_refused", 1)


def test_link_reads_lists_and_downloads_from_an_offset(serve: Factory) -> None:
    """The contractor lists /outbox, reads the receipt and downloads the envelope's tail."""
    served = serve()
    data = bytes(range(256)) * 4000
    receipt = _publish(served, data)
    with served.link() as link:
        assert link.listdir("/outbox") == {
            f"{BATCH}.age": len(data),
            f"{BATCH}.receipt.json": len(receipt),
        }
        assert link.read_small(f"/outbox/{BATCH}.receipt.json") == receipt
        got: list[bytes] = []
        link.download(f"/outbox/{BATCH}.age", got.append, offset=1000, size=len(data))
        with pytest.raises(LinkError) as short:
            link.download(f"/outbox/{BATCH}.age", lambda _d: None, offset=0, size=len(data) + 1)
        assert (short.value.reason, short.value.retryable) == ("short_read", True)
    assert b"".join(got) == data[1000:]


# -- pull confirmation at the server -------------------------------------------------------------


def test_without_a_hook_a_removal_confirms_nothing(serve: Factory) -> None:
    """A gateway without the pull hook refuses the removal; the outbox files stay."""
    served = serve()
    _publish(served)
    with served.link() as link, pytest.raises(LinkError) as refused:
        link.remove(f"/outbox/{BATCH}.age")
    assert "permission denied" in str(refused.value)
    assert served.outbox() == [f"{BATCH}.age", f"{BATCH}.receipt.json"]


def test_a_confirmation_calls_the_hook_then_deletes_the_outbox_copy(serve: Factory) -> None:
    """Removing /outbox/<batch>.age calls on_pulled once, then deletes envelope and receipt."""
    calls: list[tuple[str, str, str]] = []
    served = serve(on_pulled=lambda *args: calls.append(args))
    _publish(served)
    with served.link() as link:
        with pytest.raises(LinkError):  # the receipt copy is not the contractor's to remove
            link.remove(f"/outbox/{BATCH}.receipt.json")
        link.remove(f"/outbox/{BATCH}.age")
        with pytest.raises(LinkError):  # gone: a second removal confirms nothing
            link.remove(f"/outbox/{BATCH}.age")
    assert calls == [(BATCH, TENANT, "carol")]
    assert served.outbox() == []


def test_a_hook_that_refuses_keeps_the_outbox_files(serve: Factory) -> None:
    """When on_pulled refuses (batch not waiting for a pull), nothing is deleted."""

    def refuse(batch_id: str, tenant: str, user: str) -> None:
        raise PolicyError("not_permitted", "the batch is not waiting for a pull")

    served = serve(on_pulled=refuse)
    _publish(served)
    with served.link() as link, pytest.raises(LinkError) as refused:
        link.remove(f"/outbox/{BATCH}.age")
    assert "not waiting for a pull" in str(refused.value)
    assert served.outbox() == [f"{BATCH}.age", f"{BATCH}.receipt.json"]


def test_a_refused_pipelined_write_is_noticed(serve: Factory) -> None:
    """A write refused mid-upload (tenant quota) raises instead of passing silently."""
    served = serve(quota=100_000)
    ward = keys.generate_private_key()
    served.gw.accounts.add(
        "wanda", "ward", TENANT, keys.public_key_to_openssh(ward.public_key()), [], PASSWORD
    )
    peer = served.peer(user="wanda")
    with connect(peer, ward, PASSWORD) as link, pytest.raises(LinkError) as refused:
        link.upload(f"/inbox/{BATCH}.age.part", iter([b"x" * 300_000]), offset=0)
    assert refused.value.retryable
    assert "refused" in str(refused.value)
    stored = served.gw.storage.stat(TENANT, Area.INBOX, f"{BATCH}.age.part")
    assert stored.size <= 100_000


# -- receipts and keys ---------------------------------------------------------------------------


def test_receipts_are_checked_for_key_batch_and_shape() -> None:
    """Only a receipt signed by the pinned key, for this batch, is accepted."""
    key = keys.generate_private_key()
    data = b"envelope"
    receipt = sign_receipt(_record(data), key)
    body = check_receipt(receipt, key.public_key(), BATCH)
    assert (body["size"], body["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    other = keys.generate_private_key().public_key()
    for args in (
        (receipt, other, BATCH),
        (receipt, key.public_key(), "20260715-KAIGO-AAAAAA"),
        (receipt.replace(b'"size":8', b'"size":9'), key.public_key(), BATCH),
        (b"not json", key.public_key(), BATCH),
    ):
        with pytest.raises(LinkError) as refused:
            check_receipt(*args)
        assert refused.value.reason == "receipt_invalid"


def test_pinned_and_private_keys_are_configuration(tmp_path: Path) -> None:
    """Missing or malformed pinned keys and a loose private key are exit-78 errors."""
    for text in ("", "ssh-rsa AAAA", "ssh-ed25519 !!!"):
        with pytest.raises(ConfigError) as bad:
            load_pinned_key(text, "gw.toml", "tenants.x.host_key")
        assert bad.value.exit_code == 78
    config = GatewayConfig(base_dir=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_private_key_file(config, "keys/missing", "pull.private_key")
    loose = tmp_path / "loose"
    loose.write_bytes(keys.private_key_to_openssh(keys.generate_private_key()))
    loose.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key_file(config, "loose", "pull.private_key")
    loose.chmod(0o600)
    assert load_private_key_file(config, "loose", "pull.private_key") is not None


def test_destination_configuration_names_the_tenant_key(tmp_path: Path) -> None:
    """An sftp:// tenant without a pinned host key, or not to /inbox, is refused naming the key."""
    section = TenantSection(forward="sftp://relay@127.0.0.1:2222/inbox")
    config = GatewayConfig(tenants={"minato": section}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"tenants\.minato\.host_key"):
        SftpDestination(parse_route(section.forward), section, config)
    spool = dataclasses.replace(section, forward="sftp://relay@127.0.0.1:2222/spool")
    config = GatewayConfig(tenants={"minato": spool}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"tenants\.minato\.forward: .* /inbox"):
        SftpDestination(parse_route(spool.forward), spool, config)
