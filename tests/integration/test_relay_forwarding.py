"""The ``sftp://`` destination against a real print site: a second ``lgwan-gateway serve``.

The print site is a gateway made by ``init`` with a ``forwarder`` account
(``user add --role forwarder``, key only, allowed from 127.0.0.1/32) for tenant
shinjuku, whose own route is ``forward = "file:///…/spool"``. The tests drive
:class:`gateway.relay.SftpDestination` directly (no first gateway is needed):
delivery verified by the print site's signed receipt, idempotent re-delivery,
conflict, print site down, changed host key, resumed upload; and the
forwarder role's login and view rules at the print site.
"""

import dataclasses
import hashlib
import io
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import paramiko
import pytest

from custody import KIND_RECEIPT, keys, loads_record, verify_record
from gateway.config import ForwarderSection, GatewayConfig
from gateway.destinations import DeliveryError
from gateway.errors import ConfigError
from gateway.relay import SftpDestination
from gateway.routes import TenantSection, parse_route
from gateway.state import BatchRecord, BatchState
from tests.integration.sites import (
    Site,
    envelope,
    free_port,
    key_pair,
    new_batch,
    paramiko_key,
    transport,
)

TENANT = "shinjuku"
FORWARDER = "relay"


@dataclasses.dataclass
class PrintSite:
    """The serving print site, the forwarding key registered there, and a central config."""

    site: Site
    key: paramiko.Ed25519Key
    key_path: Path
    base: Path
    opened: list[SftpDestination] = dataclasses.field(default_factory=list)

    def destination(self, port: int | None = None, **tenant: str) -> SftpDestination:
        """An SftpDestination for tenant shinjuku (``tenant`` overrides its table)."""
        section = TenantSection(
            forward=f"sftp://{FORWARDER}@127.0.0.1:{port or self.site.port}/inbox",
            forward_key=str(self.key_path),
            host_key=self.site.host_key,
            receipt_key=self.site.receipt_key,
        )
        section = dataclasses.replace(section, **tenant)
        config = GatewayConfig(
            forwarder=ForwarderSection(connect_timeout_seconds=30),
            tenants={TENANT: section},
            base_dir=self.base,
        )
        destination = SftpDestination(parse_route(section.forward), section, config)
        self.opened.append(destination)
        return destination

    def receipt(self, batch_id: str) -> dict[str, object]:
        """The print site's receipt for ``batch_id``, verified with its signing key."""
        data = (self.site.tenant_dir(TENANT) / "receipts" / f"{batch_id}.receipt.json").read_bytes()
        signer = keys.load_public_key(self.site.receipt_key)
        return verify_record(loads_record(data), signer, kind=KIND_RECEIPT)


@pytest.fixture(scope="module")
def printsite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrintSite]:
    """A print site serving, with a forwarder account for tenant shinjuku."""
    base = tmp_path_factory.mktemp("relay")
    site = Site(base, "printsite")
    spool = base / "spool"
    spool.mkdir()
    site.set("printsite", "spool", str(spool))
    site.add_tenant(TENANT, forward=f"file://{spool}")
    private, path = key_pair(base / "central" / "keys", "forward_ed25519")
    pub = path.with_name(path.name + ".pub")
    added = site.cli(
        "user", "add", FORWARDER, "--role", "forwarder", "--tenant", TENANT, "--pubkey", pub,
        "--allow", "127.0.0.1/32",
    )  # fmt: skip
    assert added.code == 0, added.err
    site.start()
    yield PrintSite(site, paramiko_key(private), path, base)
    assert site.stop() == (0, b"", b"")  # nothing but the listening line, even after refusals
    site.close()


@pytest.fixture(autouse=True)
def _close_destinations(printsite: PrintSite) -> Iterator[None]:
    """Close the connections each test's destinations kept open."""
    yield
    while printsite.opened:
        printsite.opened.pop().close()


def record(batch_id: str, data: bytes) -> BatchRecord:
    """The central gateway's record of a batch holding ``data``."""
    now = datetime.now().astimezone()
    return BatchRecord(
        batch_id=batch_id, tenant=TENANT, uploader="ward1", file_name=f"{batch_id}.age",
        size=len(data), sha256=hashlib.sha256(data).hexdigest(), state=BatchState.VERIFIED,
        received_at=now, updated_at=now,
    )  # fmt: skip


def source(data: bytes) -> Callable[[], BinaryIO]:
    return lambda: io.BytesIO(data)


# -- delivery ------------------------------------------------------------------------------------


def test_delivers_and_the_print_sites_receipt_verifies(printsite: PrintSite) -> None:
    """A batch lands in the print site's inbox as the forwarder; its signed receipt matches."""
    data = envelope(2 << 20)
    batch = new_batch()
    delivery = printsite.destination().deliver(record(batch, data), source(data))
    assert delivery.already is False
    assert delivery.sha256 == hashlib.sha256(data).hexdigest()
    assert delivery.location.endswith(f"/inbox/{batch}.age")
    body = printsite.receipt(batch)
    assert (body["sha256"], body["size"], body["uploader"]) == (delivery.sha256, len(data), "relay")
    completed = printsite.site.wait_event("upload_completed", batch=batch)
    assert (completed["user"], completed["tenant"]) == (FORWARDER, TENANT)
    login = printsite.site.wait_event("login_succeeded", user=FORWARDER)
    assert login["role"] == "forwarder"


def test_redelivery_is_idempotent(printsite: PrintSite) -> None:
    """Delivering the same batch again changes nothing and reports already=True."""
    data = envelope(300_000)
    batch = new_batch()
    destination = printsite.destination()
    first = destination.deliver(record(batch, data), source(data))
    again = destination.deliver(record(batch, data), source(data))
    assert (first.already, again.already) == (False, True)
    assert again.sha256 == first.sha256
    assert len(printsite.site.events("upload_completed", batch=batch)) == 1
    assert len(printsite.site.events("sftp_opened", batch=batch, mode="write")) == 1


def test_a_different_file_under_the_same_batch_id_is_a_conflict(printsite: PrintSite) -> None:
    """Another file under a delivered batch id is a conflict: not retryable, nothing overwritten."""
    batch = new_batch()
    first, other = envelope(200_000), envelope(200_000)
    destination = printsite.destination()
    destination.deliver(record(batch, first), source(first))
    with pytest.raises(DeliveryError) as refused:
        destination.deliver(record(batch, other), source(other))
    assert (refused.value.retryable, refused.value.reason) == (False, "conflict")
    assert printsite.receipt(batch)["sha256"] == hashlib.sha256(first).hexdigest()
    assert len(printsite.site.events("sftp_opened", batch=batch, mode="write")) == 1


def test_one_connection_serves_many_deliveries_and_survives_a_restart(
    printsite: PrintSite,
) -> None:
    """Deliveries reuse one login; after the print site restarts the next one reconnects."""
    site = printsite.site
    destination = printsite.destination()
    logins = len(site.events("login_succeeded", user=FORWARDER))
    batches = [new_batch() for _ in range(3)]
    for batch in batches:
        data = envelope(50_000)
        assert destination.deliver(record(batch, data), source(data)).already is False
    assert len(site.events("login_succeeded", user=FORWARDER)) == logins + 1
    port = site.port
    assert site.stop()[0] == 0
    site.start(port)
    data = envelope(50_000)
    batch = new_batch()
    assert destination.deliver(record(batch, data), source(data)).already is False
    assert printsite.receipt(batch)["sha256"] == hashlib.sha256(data).hexdigest()
    destination.close()


def test_print_site_down_is_retryable(printsite: PrintSite) -> None:
    """Nobody listening at the print site's address: a retryable failure."""
    data = envelope(1000)
    with pytest.raises(DeliveryError) as failed:
        printsite.destination(port=free_port()).deliver(record(new_batch(), data), source(data))
    assert (failed.value.retryable, failed.value.reason) == (True, "unreachable")


def test_changed_host_key_is_refused_with_the_fingerprint_seen(printsite: PrintSite) -> None:
    """Another host key than the pinned one: not retryable, the error names the key seen."""
    other = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    data = envelope(1000)
    before = len(printsite.site.events("login_failed"))
    with pytest.raises(DeliveryError) as refused:
        printsite.destination(host_key=other).deliver(record(new_batch(), data), source(data))
    assert (refused.value.retryable, refused.value.reason) == (False, "host_key_changed")
    seen = keys.fingerprint(keys.load_public_key(printsite.site.host_key))
    assert seen in refused.value.detail
    assert len(printsite.site.events("login_failed")) == before  # nothing was sent to log in


class _Breaking(io.BytesIO):
    """A source whose reads fail once ``limit`` bytes have been read."""

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__(data)
        self.limit = limit

    def read(self, size: int | None = -1, /) -> bytes:
        if self.tell() >= self.limit:
            raise OSError(5, "Input/output error")
        return super().read(size)


def test_interrupted_upload_resumes_from_the_remote_size(printsite: PrintSite) -> None:
    """An upload cut off half-way continues from the .part's size and then verifies."""
    data = envelope(4 << 20)
    batch = new_batch()
    destination = printsite.destination()
    with pytest.raises(DeliveryError) as failed:
        destination.deliver(record(batch, data), lambda: _Breaking(data, 2 << 20))
    assert failed.value.retryable
    part = printsite.site.tenant_dir(TENANT) / "inbox" / f"{batch}.age.part"
    kept = part.stat().st_size
    assert 0 < kept < len(data)
    assert part.read_bytes() == data[:kept]
    delivery = destination.deliver(record(batch, data), source(data))
    assert delivery.already is False
    assert printsite.receipt(batch)["sha256"] == hashlib.sha256(data).hexdigest()
    opened = printsite.site.events("sftp_opened", batch=batch, mode="write")
    assert [o["offset_bytes"] for o in opened] == [0, kept]


def test_a_changed_source_is_never_completed(printsite: PrintSite) -> None:
    """A gateway copy that no longer matches its record is not renamed at the print site."""
    data = envelope(100_000)
    batch = new_batch()
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(DeliveryError) as refused:
        printsite.destination().deliver(record(batch, data), source(tampered))
    assert (refused.value.retryable, refused.value.reason) == (False, "source_changed")
    assert not printsite.site.events("upload_completed", batch=batch)


# -- the forwarder account at the print site -----------------------------------------------------


def test_forwarder_with_a_wrong_key_is_refused(printsite: PrintSite) -> None:
    """A key other than the registered one: login refused (not retryable), audited wrong_key."""
    _, other = key_pair(printsite.base / "other-keys", "forward_ed25519")
    data = envelope(1000)
    with pytest.raises(DeliveryError) as refused:
        printsite.destination(forward_key=str(other)).deliver(
            record(new_batch(), data), source(data)
        )
    assert (refused.value.retryable, refused.value.reason) == (False, "login_refused")
    printsite.site.wait_event("login_failed", user=FORWARDER, reason="wrong_key")


def test_forward_key_readable_by_others_is_a_configuration_error(printsite: PrintSite) -> None:
    """A forwarding key with group/other permissions is refused (exit 78) before connecting."""
    _, loose = key_pair(printsite.base / "loose-keys", "forward_ed25519")
    loose.chmod(0o644)
    with pytest.raises(ConfigError) as bad:
        printsite.destination(forward_key=str(loose))
    assert bad.value.exit_code == 78
    assert "chmod 600" in str(bad.value)


def test_forwarder_from_outside_its_allow_list_is_refused(printsite: PrintSite) -> None:
    """The right key from 127.0.0.2 (outside 127.0.0.1/32) is refused and audited."""
    client = transport(printsite.site, source="127.0.0.2")
    try:
        with pytest.raises(paramiko.AuthenticationException):
            client.auth_publickey(FORWARDER, printsite.key)
        assert not client.is_authenticated()
    finally:
        client.close()
    printsite.site.wait_event("login_failed", user=FORWARDER, reason="source_refused")


def test_forwarder_is_offered_only_a_key_login(printsite: PrintSite) -> None:
    """The forwarder is offered publickey only; a password is refused as key_only."""
    client = transport(printsite.site)
    try:
        with pytest.raises(paramiko.BadAuthenticationType) as offered:
            client.auth_none(FORWARDER)
        assert offered.value.allowed_types == ["publickey"]
        with pytest.raises(paramiko.AuthenticationException):
            client.auth_password(FORWARDER, "a-guessed-password", fallback=False)
    finally:
        client.close()
    printsite.site.wait_event("login_failed", user=FORWARDER, reason="key_only")
    client = transport(printsite.site)
    try:  # a ward name is still offered the password step first
        with pytest.raises(paramiko.BadAuthenticationType) as offered:
            client.auth_none("nobody")
        assert offered.value.allowed_types == ["password"]
    finally:
        client.close()


def test_forwarder_sees_only_inbox_and_receipts(printsite: PrintSite) -> None:
    """Logged in, the forwarder lists /inbox and /receipts and cannot read completed files."""
    data = envelope(1000)
    batch = new_batch()
    printsite.destination().deliver(record(batch, data), source(data))
    client = transport(printsite.site)
    try:
        client.auth_publickey(FORWARDER, printsite.key)
        sftp = paramiko.SFTPClient.from_transport(client)
        assert sftp is not None
        assert sorted(sftp.listdir("/")) == ["inbox", "receipts"]
        with sftp.open(f"/receipts/{batch}.receipt.json") as handle:
            assert b'"kind":"receipt"' in handle.read()
        for attempt in (
            lambda: sftp.open(f"/inbox/{batch}.age", "r"),
            lambda: sftp.listdir("/outbox"),
            lambda: sftp.open("/etc/passwd", "r"),
            lambda: sftp.open(f"/receipts/{batch}.receipt.json", "w"),
        ):
            with pytest.raises(PermissionError):
                attempt()
    finally:
        client.close()


def test_forwarder_account_needs_an_allow_list_and_takes_no_password(printsite: PrintSite) -> None:
    """`user add --role forwarder` without --allow, or with a notice or password, is refused."""
    site = printsite.site
    _, path = key_pair(printsite.base / "cli-keys", "relay2_ed25519")
    pub = path.with_name(path.name + ".pub")
    base = ("user", "add", "relay2", "--role", "forwarder", "--tenant", TENANT, "--pubkey", pub)
    no_allow = site.cli(*base)
    assert no_allow.code == 2
    assert "needs an allow list" in no_allow.err
    notice = site.cli(*base, "--allow", "10.0.0.0/8", "--notice-out", printsite.base / "n.pdf")
    assert notice.code == 2
    assert "has no password" in notice.err
    assert not (printsite.base / "n.pdf").exists()
    assert site.store.get_account("relay2") is None
