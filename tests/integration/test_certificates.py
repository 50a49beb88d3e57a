"""Erasure certificates travel back to the ward: real ``serve`` processes on 127.0.0.1.

Two chains, each a ward → ASP gateway → print site:

- ``sftp://``: the ASP gateway forwards to the print site's ``serve`` as its
  forwarder account and polls the print site's ``/receipts/<batch>.erasure.json``
  (``rescan_seconds = 1``). The test plays ``erase`` at the print site: it signs
  the contract's certificate with the print site's signing key, writes it into the
  spool and publishes it there with :func:`gateway.certificates.publish_certificate`.
- ``pull``: the print site's ``lgwan-gateway pull`` fetches the batch and, after
  the (played) erasure, uploads ``<spool>/<batch>.erasure.json`` to ``/outbox``.

Either way the ward then reads ``/receipts/<batch>.erasure.json`` at the ASP
gateway and a status record stating ``erased``; a certificate that fails the
check is an incident and never reaches the ward.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import KIND_STATUS, generate_private_key, keys, loads_record, verify_record
from gateway import app
from gateway import config as config_mod
from gateway.certificates import publish_certificate
from gateway.state import BatchRecord, BatchState
from tests.gateway.certificate_kit import certificate
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
FORWARDER = "relay"
CONTRACTOR = "printer"


@dataclasses.dataclass
class Chain:
    """The ASP gateway the ward sends to, the print site behind it, and the ward's key."""

    asp: Site
    printsite: Site
    ward_key: paramiko.Ed25519Key
    spool: Path

    def upload(self) -> str:
        """The ward uploads a fresh envelope to the ASP gateway; its batch id."""
        batch, data = new_batch(), envelope(100_000)
        with self.ward() as sftp:
            with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
                handle.write(data)
            sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
        return batch

    def ward(self) -> _WardSession:
        return _WardSession(self.asp, self.ward_key)

    def signing_key(self) -> Ed25519PrivateKey:
        """The print site's own signing key (its receipts, status records and certificates)."""
        path = self.printsite.root / "keys" / "gateway_signing_ed25519"
        return keys.load_private_key(path.read_bytes())

    def certificate(self, batch: str, key: Ed25519PrivateKey | None = None) -> bytes:
        """The certificate ``erase`` issues for ``batch`` (as the ASP gateway received it)."""
        record = self.record(self.asp, batch)
        key = key or self.signing_key()
        return certificate(key, batch, TENANT, record.size, record.sha256)

    @staticmethod
    def record(site: Site, batch: str) -> BatchRecord:
        found = site.store.get_batch(batch)
        assert found is not None
        return found

    def ward_view(self, batch: str) -> tuple[bytes | None, str]:
        """What the ward reads at the ASP gateway: the certificate (or None) and the state."""
        with self.ward() as sftp:
            names = sftp.listdir("/receipts")
            data = None
            if f"{batch}.erasure.json" in names:
                with sftp.open(f"/receipts/{batch}.erasure.json", "r") as handle:
                    data = handle.read()
            with sftp.open(f"/receipts/{batch}.status.json", "r") as handle:
                status = loads_record(handle.read())
        signer = keys.load_public_key(self.asp.receipt_key)
        return data, str(verify_record(status, signer, kind=KIND_STATUS)["state"])


class _WardSession:
    """``with chain.ward() as sftp``: the ward logged in (password, then key)."""

    def __init__(self, site: Site, key: paramiko.Ed25519Key) -> None:
        self._client = transport(site)
        self._key = key

    def __enter__(self) -> paramiko.SFTPClient:
        self._client.auth_password("ward1", PASSWORD, fallback=False)
        self._client.auth_publickey("ward1", self._key)
        sftp = paramiko.SFTPClient.from_transport(self._client)
        assert sftp is not None
        return sftp

    def __exit__(self, *_exc: object) -> None:
        self._client.close()


def _ward(site: Site, base: Path) -> paramiko.Ed25519Key:
    ward, _ = key_pair(base / "ward", "ward_ed25519")
    pub = keys.public_key_to_openssh(ward.public_key())
    site.accounts.add("ward1", "ward", TENANT, pub, [], PASSWORD)
    return paramiko_key(ward)


def _wait_state(site: Site, batch: str, state: BatchState, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (found := site.store.get_batch(batch)) is None or found.state is not state:
        assert time.monotonic() < deadline, f"{batch} is not {state.value} at {site.root.name}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Ward → ASP gateway (sftp://, polling every second) → print site serve (file:// spool)."""
    base = tmp_path_factory.mktemp("certificates-sftp")
    printsite = Site(base, "printsite")
    spool = base / "spool"
    spool.mkdir()
    printsite.set("printsite", "spool", str(spool))
    printsite.add_tenant(TENANT, forward=f"file://{spool}")
    asp = Site(base, "asp")
    asp.set("forwarder", "rescan_seconds", 1)
    _, forward_key = key_pair(asp.root / "keys", "forward_ed25519")
    added = printsite.cli(
        "user", "add", FORWARDER, "--role", "forwarder", "--tenant", TENANT, "--pubkey",
        forward_key.with_name("forward_ed25519.pub"), "--allow", "127.0.0.1/32",
    )  # fmt: skip
    assert added.code == 0, added.err
    printsite.start()
    asp.add_tenant(
        TENANT,
        forward=f"sftp://{FORWARDER}@127.0.0.1:{printsite.port}/inbox",
        forward_key=str(forward_key),
        host_key=printsite.host_key,
        receipt_key=printsite.receipt_key,
    )
    ward_key = _ward(asp, base)
    asp.start()
    yield Chain(asp, printsite, ward_key, spool)
    for site in (asp, printsite):
        assert site.stop() == (0, b"", b"")
        site.close()


def test_a_certificate_published_at_the_print_site_reaches_the_ward(relay: Chain) -> None:
    """erase at the print site → the ASP gateway polls it → the ward reads it, state erased."""
    batch = relay.upload()
    _wait_state(relay.asp, batch, BatchState.FORWARDED)
    _wait_state(relay.printsite, batch, BatchState.FORWARDED)
    data = relay.certificate(batch)
    (relay.spool / f"{batch}.erasure.json").write_bytes(data)  # the spool's copy (tombstone)
    parts = app.build(config_mod.load(str(relay.printsite.config)))
    try:
        assert publish_certificate(
            parts.store, parts.storage, parts.status, parts.audit, batch, data,
            relay.signing_key().public_key(),
        )  # fmt: skip
    finally:
        parts.close()
    assert relay.record(relay.printsite, batch).state is BatchState.ERASED
    received = relay.asp.wait_event("erasure_certificate_received", timeout=20, batch=batch)
    assert received["signer"] == keys.fingerprint(relay.signing_key().public_key())
    assert relay.record(relay.asp, batch).state is BatchState.ERASED
    shown, state = relay.ward_view(batch)
    assert (shown, state) == (data, "erased")
    printsite_status = relay.printsite.tenant_dir(TENANT) / "receipts" / f"{batch}.status.json"
    signer = keys.load_public_key(relay.printsite.receipt_key)
    body = verify_record(loads_record(printsite_status.read_bytes()), signer, kind=KIND_STATUS)
    assert body["state"] == "erased"
    read = relay.printsite.events("sftp_closed", path=f"/receipts/{batch}.erasure.json")
    assert [r["user"] for r in read] == [FORWARDER]  # read once, by the ASP's forwarder account


def test_a_forged_certificate_at_the_print_site_is_an_incident(relay: Chain) -> None:
    """A certificate not signed by the pinned key: rejected once, incident, never shown."""
    batch = relay.upload()
    _wait_state(relay.printsite, batch, BatchState.FORWARDED)
    forged = relay.certificate(batch, generate_private_key())
    receipts = relay.printsite.tenant_dir(TENANT) / "receipts"
    (receipts / f"{batch}.erasure.json").write_bytes(forged)  # planted behind the print site
    rejected = relay.asp.wait_event("erasure_certificate_rejected", timeout=20, batch=batch)
    assert (rejected["reason"], rejected["via"]) == ("wrong_key", "sftp")
    incident = relay.asp.wait_event("incident_raised", batch=batch, kind="certificate_rejected")
    assert incident["tenant"] == TENANT
    time.sleep(2.5)  # more polls: the same certificate is not audited again
    assert len(relay.asp.events("erasure_certificate_rejected", batch=batch)) == 1
    assert relay.record(relay.asp, batch).state is BatchState.FORWARDED
    shown, state = relay.ward_view(batch)
    assert (shown, state) == (None, "forwarded")


# -- pull mode -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pulled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chain]:
    """Ward → ASP gateway (pull, the print site's key pinned) ← print site's ``pull``."""
    base = tmp_path_factory.mktemp("certificates-pull")
    asp = Site(base, "asp")
    printsite = Site(base, "printsite")
    asp.add_tenant(TENANT, forward="pull", receipt_key=printsite.receipt_key)
    contractor, key_path = key_pair(printsite.root / "keys", "contractor_ed25519")
    asp.accounts.add(
        CONTRACTOR, "contractor", TENANT, keys.public_key_to_openssh(contractor.public_key()), [],
        PASSWORD,
    )  # fmt: skip
    spool = base / "spool"
    printsite.set("printsite", "spool", str(spool))
    for key, value in (
        ("host", "127.0.0.1"),
        ("user", CONTRACTOR),
        ("tenant", TENANT),
        ("host_key", asp.host_key),
        ("receipt_key", asp.receipt_key),
        ("private_key", str(key_path)),
    ):
        printsite.set("pull", key, value)
    ward_key = _ward(asp, base)
    asp.start()
    printsite.set("pull", "port", asp.port)
    yield Chain(asp, printsite, ward_key, spool)
    assert asp.stop() == (0, b"", b"")
    asp.close()
    printsite.close()


def _pull(chain: Chain) -> tuple[int, str, str]:
    done = chain.printsite.cli("pull", "--password-fd", "{fd}", secret=PASSWORD)
    return done.code, done.out, done.err


def test_pull_uploads_the_certificate_and_the_ward_reads_it(pulled: Chain) -> None:
    """pull → erase → pull uploads <spool>/<batch>.erasure.json → ERASED, shown to the ward."""
    batch = pulled.upload()
    _wait_state(pulled.asp, batch, BatchState.FORWARDED)
    code, out, err = _pull(pulled)
    assert (code, out.split()) == (0, [batch]), err
    assert pulled.record(pulled.asp, batch).state is BatchState.PULLED
    data = pulled.certificate(batch)
    (pulled.spool / f"{batch}.erasure.json").write_bytes(data)
    code, _, err = _pull(pulled)
    assert code == 0, err
    assert pulled.record(pulled.asp, batch).state is BatchState.ERASED
    uploaded = pulled.asp.wait_event("certificate_uploaded", batch=batch)
    assert (uploaded["user"], uploaded["published"]) == (CONTRACTOR, True)
    shown, state = pulled.ward_view(batch)
    assert (shown, state) == (data, "erased")
    outbox = pulled.asp.tenant_dir(TENANT) / "outbox" / f"{batch}.erasure.json"
    assert outbox.read_bytes() == data  # kept as the acknowledgment pull reads back
    code, _, err = _pull(pulled)  # acknowledged: not uploaded again
    assert code == 0, err
    writes = pulled.asp.events("sftp_opened", path=f"/outbox/{batch}.erasure.json", mode="write")
    assert len(writes) == 1


def test_pull_reports_a_refused_certificate_and_the_gateway_raises_an_incident(
    pulled: Chain,
) -> None:
    """A certificate that fails at the gateway: pull exits 1, incident, nothing published."""
    batch = pulled.upload()
    _wait_state(pulled.asp, batch, BatchState.FORWARDED)
    assert _pull(pulled)[0] == 0
    bad = pulled.certificate(batch, generate_private_key())
    (pulled.spool / f"{batch}.erasure.json").write_bytes(bad)
    code, _, err = _pull(pulled)
    assert code == 1
    assert f"{batch}: the gateway refused the erasure certificate" in err
    rejected = pulled.asp.wait_event("erasure_certificate_rejected", batch=batch)
    assert (rejected["reason"], rejected["via"]) == ("wrong_key", "upload")
    pulled.asp.wait_event("incident_raised", batch=batch, kind="certificate_rejected")
    refused = pulled.asp.events("sftp_refused", op="close", path=f"/outbox/{batch}.erasure.json")
    assert len(refused) == 1
    assert pulled.record(pulled.asp, batch).state is BatchState.PULLED
    assert not (pulled.asp.tenant_dir(TENANT) / "outbox" / f"{batch}.erasure.json").exists()
    assert pulled.ward_view(batch) == (None, "pulled")
    (pulled.spool / f"{batch}.erasure.json").write_bytes(pulled.certificate(batch))
    code, _, err = _pull(pulled)  # the print site issues a proper one: accepted
    assert code == 0, err
    assert pulled.record(pulled.asp, batch).state is BatchState.ERASED
