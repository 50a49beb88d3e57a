"""Tests for gateway.certificate_intake in-process: file:// polling, uploads, refusals, clearing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from custody import KIND_STATUS, generate_private_key, keys, loads_record, verify_record
from gateway import app
from gateway.certificates import INCIDENT_KIND, MAX_CERTIFICATE_BYTES, CertificateError
from gateway.errors import ConfigError
from gateway.pipeline import BatchState
from gateway.policy import Area, PolicyError
from gateway.routes import TenantSection
from gateway.state import BatchRecord
from tests.gateway.certificate_kit import certificate
from tests.gateway.pipeline_kit import Clock, build, envelope, inbox, make_config, receive

BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"
PRINTSITE = generate_private_key()
PINNED = keys.public_key_to_openssh(PRINTSITE.public_key())


class Site:
    """A gateway: shinjuku → file:// spool (key pinned), chuo → pull (pinned), minato → file://."""

    def __init__(self, tmp: Path, retention: int = 0) -> None:
        self.spool = tmp / "spool"
        self.spool.mkdir()
        self.other = tmp / "other-spool"
        self.other.mkdir()
        self.clock = Clock()
        cfg = make_config(
            tmp / "gw",
            {
                TENANT: TenantSection(forward=f"file://{self.spool}", receipt_key=PINNED),
                "chuo": TenantSection(forward="pull", receipt_key=PINNED),
                "minato": TenantSection(forward=f"file://{self.other}"),
            },
            retention_seconds=retention,
        )
        self.gw: app.Gateway = build(cfg, self.clock)
        self.root = tmp / "gw"

    def forward(self, tenant: str = TENANT, batch_id: str = BATCH) -> BatchRecord:
        """Receive a batch and take it to FORWARDED."""
        receive(self.gw, tenant, batch_id, envelope(50_000))
        self.gw.forwarder.run_once()
        batch = self.batch(batch_id)
        assert batch.state is BatchState.FORWARDED
        return batch

    def batch(self, batch_id: str = BATCH) -> BatchRecord:
        found = self.gw.store.get_batch(batch_id)
        assert found is not None
        return found

    def certificate(self, batch: BatchRecord, **overrides: object) -> bytes:
        return certificate(
            PRINTSITE, batch.batch_id, batch.tenant, batch.size, batch.sha256, **overrides
        )

    def published(self, tenant: str = TENANT, batch_id: str = BATCH) -> bytes | None:
        name = f"{batch_id}.erasure.json"
        if not self.gw.storage.exists(tenant, Area.RECEIPTS, name):
            return None
        reader = self.gw.storage.open_read(tenant, Area.RECEIPTS, name)
        try:
            return reader.read(0, 1 << 20)
        finally:
            reader.close()

    def status(self, tenant: str = TENANT) -> str:
        reader = self.gw.storage.open_read(tenant, Area.RECEIPTS, f"{BATCH}.status.json")
        try:
            record = loads_record(reader.read(0, 1 << 16))
        finally:
            reader.close()
        body = verify_record(record, self.gw.signing_key.public_key(), kind=KIND_STATUS)
        return str(body["state"])

    def audit(self, event: str) -> list[dict[str, object]]:
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.gw.close()


def test_a_certificate_in_the_spool_makes_the_batch_erased(site: Site) -> None:
    """file://: <spool>/<batch>.erasure.json → /receipts, ERASED, status 'erased', audited."""
    batch = site.forward()
    assert site.gw.forwarder.poll_certificates() == 0  # nothing erased yet
    data = site.certificate(batch)
    (site.spool / f"{BATCH}.erasure.json").write_bytes(data)
    assert site.gw.forwarder.poll_certificates() == 1
    assert site.batch().state is BatchState.ERASED
    assert site.published() == data
    site.gw.forwarder.run_once()  # the worker was woken: it writes nothing more
    assert site.status() == "erased"
    received = site.audit("erasure_certificate_received")
    assert [(r["batch"], r["signer"]) for r in received] == [
        (BATCH, keys.fingerprint(PRINTSITE.public_key()))
    ]
    assert site.gw.forwarder.poll_certificates() == 0  # ERASED batches are not polled again
    assert site.gw.store.pending_batches() == []


def test_a_bad_certificate_raises_one_incident_and_is_never_published(site: Site) -> None:
    """A forged certificate: rejected and audited once per content, one incident, not published."""
    batch = site.forward()
    forged = certificate(generate_private_key(), BATCH, TENANT, batch.size, batch.sha256)
    (site.spool / f"{BATCH}.erasure.json").write_bytes(forged)
    for _ in range(3):
        assert site.gw.forwarder.poll_certificates() == 0
    assert site.batch().state is BatchState.FORWARDED
    assert site.published() is None
    assert [r["reason"] for r in site.audit("erasure_certificate_rejected")] == ["wrong_key"]
    incidents = [r for r in site.audit("incident_raised") if r["kind"] == INCIDENT_KIND]
    assert len(incidents) == 1
    tampered = site.certificate(batch, tenant="chuo")  # another bad one: audited, no new incident
    (site.spool / f"{BATCH}.erasure.json").write_bytes(tampered)
    site.gw.forwarder.poll_certificates()
    assert [r["reason"] for r in site.audit("erasure_certificate_rejected")] == [
        "wrong_key",
        "other_tenant",
    ]
    assert len([r for r in site.audit("incident_raised") if r["kind"] == INCIDENT_KIND]) == 1
    good = site.certificate(batch)  # the print site issues a proper one: accepted
    (site.spool / f"{BATCH}.erasure.json").write_bytes(good)
    assert site.gw.forwarder.poll_certificates() == 1
    assert site.published() == good


def test_symlinks_and_oversized_files_are_not_certificates(site: Site, tmp_path: Path) -> None:
    """A planted symlink is never followed; a file over the limit is refused unread."""
    batch = site.forward()
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(site.certificate(batch))
    (site.spool / f"{BATCH}.erasure.json").symlink_to(outside)
    assert site.gw.forwarder.poll_certificates() == 0
    assert site.audit("erasure_certificate_rejected") == []
    (site.spool / f"{BATCH}.erasure.json").unlink()
    (site.spool / f"{BATCH}.erasure.json").write_bytes(b" " * (MAX_CERTIFICATE_BYTES + 10))
    assert site.gw.forwarder.poll_certificates() == 0
    assert [r["reason"] for r in site.audit("erasure_certificate_rejected")] == ["too_large"]
    assert site.batch().state is BatchState.FORWARDED


def test_routes_without_a_receipt_key_are_not_polled(site: Site) -> None:
    """minato has no receipt_key: a certificate in its spool is left alone."""
    batch = site.forward("minato")
    (site.other / f"{BATCH}.erasure.json").write_bytes(site.certificate(batch))
    assert site.gw.forwarder.poll_certificates() == 0
    assert site.batch().state is BatchState.FORWARDED
    with pytest.raises(PolicyError):
        site.gw.forwarder.certificates.check_upload("minato", BATCH)


def test_an_unmounted_spool_is_audited_once(site: Site) -> None:
    """The spool directory gone (share not mounted): one forwarder_failed, retried quietly."""
    site.forward()
    site.spool.rename(site.spool.with_name("unmounted"))
    for _ in range(3):
        assert site.gw.forwarder.poll_certificates() == 0
    failed = [r for r in site.audit("forwarder_failed") if r.get("reason")]
    assert [r["reason"] for r in failed] == ["destination_missing"]


def test_erased_batches_lose_a_retained_copy_at_once(tmp_path: Path) -> None:
    """With retention, an ERASED batch's inbox copy is deleted without waiting."""
    site = Site(tmp_path, retention=3600)
    try:
        batch = site.forward()
        assert inbox(site.gw, TENANT) == [f"{BATCH}.age"]  # retained
        (site.spool / f"{BATCH}.erasure.json").write_bytes(site.certificate(batch))
        assert site.gw.forwarder.poll_certificates() == 1
        site.gw.forwarder.run_once()
        assert inbox(site.gw, TENANT) == []
        assert [r["batch"] for r in site.audit("batch_deleted")] == [BATCH]
    finally:
        site.gw.close()


def test_an_uploaded_certificate_is_published_and_acknowledged(site: Site) -> None:
    """Pull mode: accept_upload publishes it and keeps a copy in /outbox; twice is fine."""
    receive(site.gw, "chuo", BATCH, envelope(50_000))
    site.gw.forwarder.run_once()
    site.gw.forwarder.confirm_pulled(BATCH, "chuo", "printer")
    batch = site.batch()
    assert batch.state is BatchState.PULLED
    data = site.certificate(batch)
    intake = site.gw.forwarder.certificates
    assert intake.accept_upload("chuo", "printer", BATCH, data) is True
    assert site.batch().state is BatchState.ERASED
    assert site.published("chuo") == data
    assert site.gw.storage.exists("chuo", Area.OUTBOX, f"{BATCH}.erasure.json")
    assert intake.accept_upload("chuo", "printer", BATCH, data) is False
    uploaded = site.audit("certificate_uploaded")
    assert [(r["batch"], r["user"], r["published"]) for r in uploaded] == [
        (BATCH, "printer", True),
        (BATCH, "printer", False),
    ]
    site.gw.forwarder.confirm_pulled(BATCH, "chuo", "printer")  # a late confirmation is fine


def test_a_bad_upload_is_refused_and_not_stored(site: Site) -> None:
    """An uploaded certificate that fails: CertificateError, incident, nothing in /outbox."""
    receive(site.gw, "chuo", BATCH, envelope(50_000))
    site.gw.forwarder.run_once()
    batch = site.batch()
    intake = site.gw.forwarder.certificates
    with pytest.raises(CertificateError):
        intake.accept_upload(
            "chuo", "printer", BATCH, site.certificate(batch, batch_id="20260715-KAIGO-AAAAAA")
        )
    assert not site.gw.storage.exists("chuo", Area.OUTBOX, f"{BATCH}.erasure.json")
    assert site.published("chuo") is None
    assert [r["via"] for r in site.audit("erasure_certificate_rejected")] == ["upload"]
    assert INCIDENT_KIND in site.gw.store.incidents(BATCH)
    with pytest.raises(PolicyError):
        intake.check_upload(TENANT, BATCH)  # another tenant's batch: no such batch


def test_a_malformed_receipt_key_stops_the_gateway_from_starting(tmp_path: Path) -> None:
    """receipt_key must be one ssh-ed25519 line: otherwise a configuration error (exit 78)."""
    cfg = make_config(
        tmp_path / "gw", {TENANT: TenantSection(forward="pull", receipt_key="ssh-rsa AAAA")}
    )
    with pytest.raises(ConfigError) as refused:
        app.build(cfg)
    assert "tenants.shinjuku.receipt_key" in str(refused.value)
