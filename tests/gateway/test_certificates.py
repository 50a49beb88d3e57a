"""Tests for gateway.certificates: the check of an erasure certificate and its publication."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from custody import KIND_STATUS, canonical_json, generate_private_key, loads_record, verify_record
from gateway.app import Gateway
from gateway.certificates import (
    INCIDENT_KIND,
    MAX_CERTIFICATE_BYTES,
    CertificateError,
    check_certificate,
    publish_certificate,
    reject_certificate,
)
from gateway.pipeline import BatchState
from gateway.policy import Area
from gateway.state import BatchRecord
from gateway.status import sign_status
from tests.gateway.certificate_kit import certificate, certificate_body, sign
from tests.gateway.pipeline_kit import T0, build, envelope, make_config, receive

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260715-KAIGO-AAAAAA"
TENANT = "shinjuku"
PRINTSITE = generate_private_key()
DATA = b"age-encryption.org/v1 ... not really, the check never reads the envelope"
RECORD = BatchRecord(
    batch_id=BATCH, tenant=TENANT, uploader="ward1", file_name=f"{BATCH}.age", size=len(DATA),
    sha256=hashlib.sha256(DATA).hexdigest(), state=BatchState.FORWARDED, received_at=T0,
    updated_at=T0,
)  # fmt: skip


class Site:
    """A gateway holding one batch, moved to FORWARDED by hand."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "gw"
        self.gw: Gateway = build(make_config(self.root, {}))
        receive(self.gw, TENANT, BATCH, envelope())
        for before, after in (
            (BatchState.RECEIVED, BatchState.VERIFIED),
            (BatchState.VERIFIED, BatchState.FORWARDING),
            (BatchState.FORWARDING, BatchState.FORWARDED),
        ):
            self.gw.store.transition(BATCH, before, after, None, T0)

    def batch(self) -> BatchRecord:
        found = self.gw.store.get_batch(BATCH)
        assert found is not None
        return found

    def certificate(self, **overrides: object) -> bytes:
        batch = self.batch()
        return certificate(PRINTSITE, BATCH, TENANT, batch.size, batch.sha256, **overrides)

    def publish(self, data: bytes) -> bool:
        gw = self.gw
        return publish_certificate(
            gw.store, gw.storage, gw.status, gw.audit, BATCH, data, PRINTSITE.public_key()
        )

    def published(self) -> bytes | None:
        if not self.gw.storage.exists(TENANT, Area.RECEIPTS, f"{BATCH}.erasure.json"):
            return None
        reader = self.gw.storage.open_read(TENANT, Area.RECEIPTS, f"{BATCH}.erasure.json")
        try:
            return reader.read(0, 1 << 20)
        finally:
            reader.close()

    def audit(self, event: str) -> list[dict[str, object]]:
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    made = Site(tmp_path)
    yield made
    made.gw.close()


def _good(**overrides: object) -> bytes:
    """A certificate for RECORD, with body fields overridden."""
    return certificate(PRINTSITE, BATCH, TENANT, RECORD.size, RECORD.sha256, **overrides)


def _reason(data: bytes, key: Ed25519PublicKey | None = None) -> str:
    with pytest.raises(CertificateError) as refused:
        check_certificate(data, key or PRINTSITE.public_key(), RECORD)
    return refused.value.reason


# -- check_certificate ---------------------------------------------------------------------------


def test_a_good_certificate_checks_out_and_returns_its_body() -> None:
    """Signed by the pinned key, this batch and tenant, the receipted envelope: accepted."""
    body = check_certificate(_good(), PRINTSITE.public_key(), RECORD)
    assert (body["batch_id"], body["tenant"], body["opened"]) == (BATCH, TENANT, True)


@pytest.mark.parametrize("position", [10, 60, -40, -3])
def test_a_tampered_byte_is_refused(position: int) -> None:
    """Any changed byte (kind, body, signer, signature) fails: never published."""
    data = bytearray(_good())
    data[position] = ord("0") if data[position] != ord("0") else ord("1")
    assert _reason(bytes(data)) in {"malformed", "wrong_kind", "wrong_key", "bad_signature"}


def test_a_body_edit_with_valid_json_is_a_bad_signature() -> None:
    """Rewriting a field (canonical JSON kept) leaves the signature broken."""
    doc = loads_record(_good())
    body = doc["body"]
    assert isinstance(body, dict)
    body["approver"] = "mallory"
    assert _reason(canonical_json(doc) + b"\n") == "bad_signature"


def test_another_key_is_refused() -> None:
    """Signed by a key that is not the pinned one (or checked against another): wrong_key."""
    stranger = generate_private_key()
    batch = RECORD
    forged = certificate(stranger, BATCH, TENANT, batch.size, batch.sha256)
    assert _reason(forged) == "wrong_key"
    assert _reason(_good(), generate_private_key().public_key()) == "wrong_key"


def test_a_certificate_of_another_batch_or_tenant_is_refused() -> None:
    """A valid certificate of batch B is not one of batch A; nor of another tenant's batch."""
    assert _reason(_good(batch_id=OTHER)) == "other_batch"
    assert _reason(_good(tenant="chuo")) == "other_tenant"


def test_an_envelope_other_than_the_received_one_is_refused() -> None:
    """The erased envelope's SHA-256 (or size) must be the batch's as receipted."""
    batch = RECORD
    wrong_sha = [{"kind": "envelope", "path": "/s/x.age", "size": batch.size, "sha256": "0" * 64}]
    assert _reason(_good(items=wrong_sha, opened=False)) == "envelope_mismatch"
    wrong_size = [{"kind": "envelope", "path": "/s/x.age", "size": 1, "sha256": batch.sha256}]
    assert _reason(_good(items=wrong_size, opened=False)) == "envelope_mismatch"
    no_envelope = [
        {"kind": "plaintext", "path": f"/w/{BATCH}/a.csv", "size": 1, "sha256": "a" * 64}
    ]
    assert _reason(_good(items=no_envelope)) == "no_envelope"


def _plus(*extra: dict[str, object]) -> bytes:
    """A good certificate with ``extra`` items after the kit's envelope and plaintext."""
    body = certificate_body(PRINTSITE, BATCH, TENANT, RECORD.size, RECORD.sha256)
    items = body["items"]
    assert isinstance(items, list)
    return sign(PRINTSITE, {**body, "items": [*items, *extra]})


@pytest.mark.parametrize("kind", ["retained", "quarantine"])
def test_every_whole_copy_must_be_the_received_envelope(kind: str) -> None:
    """L7: retained and quarantine copies are whole envelopes, checked like the ward does."""
    good = {"kind": kind, "path": "/x", "size": RECORD.size, "sha256": RECORD.sha256}
    assert check_certificate(_plus(good), PRINTSITE.public_key(), RECORD)
    assert _reason(_plus({**good, "sha256": "0" * 64})) == "envelope_mismatch"
    assert _reason(_plus({**good, "size": RECORD.size + 1})) == "envelope_mismatch"


def test_a_partial_copy_larger_than_the_envelope_is_refused() -> None:
    """L7: a staging item may be partial, never larger than the batch received."""
    part = {"kind": "staging", "path": "/s/.pull/x.part", "size": RECORD.size, "sha256": "0" * 64}
    assert check_certificate(_plus(part), PRINTSITE.public_key(), RECORD)
    assert _reason(_plus({**part, "size": RECORD.size + 1})) == "envelope_mismatch"


def test_opened_must_agree_with_the_plaintext_listed() -> None:
    """L7: the gateway applies the ward's consistency rule (shared with it)."""
    assert _reason(_good(opened=False)) == "bad_body"  # plaintext listed, "not opened"
    envelope_only = [{"kind": "envelope", "path": "/s/x.age", "size": RECORD.size,
                      "sha256": RECORD.sha256}]  # fmt: skip
    assert _reason(_good(items=envelope_only)) == "bad_body"  # "opened", no plaintext


def test_the_dead_receipt_copy_kind_is_refused() -> None:
    """``receipt-copy`` was never produced: not an item kind any more."""
    assert _reason(
        _plus({"kind": "receipt-copy", "path": "/c", "size": 1, "sha256": "c" * 64})
    ) == ("bad_body")


def test_a_certificate_up_to_the_shared_limit_is_accepted() -> None:
    """M1: the gateway takes what erase may write (1 MiB, the same limit everywhere)."""
    many = [
        {"kind": "staging", "path": f"/srv/spool/.pull/{'p' * 200}{n}", "size": 1,
         "sha256": "0" * 64}
        for n in range(1200)
    ]  # fmt: skip
    data = _plus(*many)
    assert 256 * 1024 < len(data) <= MAX_CERTIFICATE_BYTES == 1 << 20
    assert check_certificate(data, PRINTSITE.public_key(), RECORD)["batch_id"] == BATCH


def test_a_status_record_is_not_a_certificate() -> None:
    """A status record keeps its own kind, even signed by the print site's key."""
    status = sign_status(RECORD, PRINTSITE)
    assert _reason(status) == "wrong_kind"
    body = verify_record(loads_record(status), PRINTSITE.public_key(), kind=KIND_STATUS)
    resigned = sign(PRINTSITE, body)  # a status body signed as a certificate: not a certificate
    assert _reason(resigned) == "bad_body"


@pytest.mark.parametrize(
    "overrides",
    [
        {"channel": "mail"},
        {"opened": "yes"},
        {"handler": ""},
        {"started_at": "2026-07-20T10:00:00"},
        {"finished_at": "2026-07-19T10:00:00+09:00"},
        {"items": []},
        {"items": [{"kind": "envelope", "path": "p", "size": True, "sha256": "a" * 64}]},
        {"items": [{"kind": "shredded", "path": "p", "size": 1, "sha256": "a" * 64}]},
        {"items": [{"kind": "envelope", "path": "p", "size": 1, "sha256": "A" * 64}]},
        {"printsite_key": "SHA256:someone-else"},
        {"extra": 1},
        {"batch_id": "20261399-KAIGO-7F3KQ2"},
    ],
)
def test_a_body_that_is_not_exactly_a_certificate_is_refused(
    overrides: dict[str, object],
) -> None:
    """Field set, types, times with offset and the signer's fingerprint are all checked."""
    assert _reason(_good(**overrides)) == "bad_body"


def test_missing_fields_and_oversized_files_are_refused() -> None:
    """A body without a field is refused; so is a file above the size limit, unparsed."""
    batch = RECORD
    body = certificate_body(PRINTSITE, BATCH, TENANT, batch.size, batch.sha256)
    del body["approver"]
    assert _reason(sign(PRINTSITE, body)) == "bad_body"
    assert _reason(b"{" * (MAX_CERTIFICATE_BYTES + 1)) == "too_large"


# -- publish_certificate -------------------------------------------------------------------------


def test_publishing_stores_it_once_and_the_batch_is_erased(site: Site) -> None:
    """receipts/<batch>.erasure.json, ERASED, status record 'erased', audited; then idempotent."""
    data = site.certificate()
    assert site.publish(data) is True
    assert site.published() == data
    assert site.batch().state is BatchState.ERASED
    reader = site.gw.storage.open_read(TENANT, Area.RECEIPTS, f"{BATCH}.status.json")
    try:
        status = loads_record(reader.read(0, 1 << 16))
    finally:
        reader.close()
    body = verify_record(status, site.gw.signing_key.public_key(), kind=KIND_STATUS)
    assert body["state"] == "erased"
    received = site.audit("erasure_certificate_received")
    assert len(received) == 1
    assert (received[0]["batch"], received[0]["tenant"], received[0]["items"]) == (BATCH, TENANT, 2)
    moved = site.audit("batch_state_changed")[-1]
    assert (moved["from"], moved["to"]) == ("forwarded", "erased")
    assert site.publish(data) is False
    assert len(site.audit("erasure_certificate_received")) == 1
    names = [f.name for f in site.gw.storage.list_files(TENANT, Area.RECEIPTS)]
    assert not [n for n in names if n.startswith(".")]  # no temporary left behind


def test_a_different_certificate_never_replaces_the_published_one(site: Site) -> None:
    """Another valid certificate for an erased batch is a conflict; the first one stays."""
    first = site.certificate()
    site.publish(first)
    with pytest.raises(CertificateError) as refused:
        site.publish(site.certificate(handler="tanaka"))
    assert refused.value.reason == "conflict"
    assert site.published() == first


def test_an_interrupted_publication_is_finished_by_publishing_again(site: Site) -> None:
    """The file stored but the batch not moved (a crash): the same certificate finishes it."""
    data = site.certificate()
    site.gw.storage.write_file(TENANT, Area.RECEIPTS, f"{BATCH}.erasure.json", data)
    assert site.publish(data) is True
    assert site.batch().state is BatchState.ERASED


def test_pulled_batches_are_erased_and_undelivered_ones_refused(site: Site) -> None:
    """PULLED → ERASED too; a batch never delivered cannot have been erased."""
    site.gw.store.transition(BATCH, BatchState.FORWARDED, BatchState.PULLED, None, T0)
    assert site.publish(site.certificate())
    assert site.batch().state is BatchState.ERASED
    receive(site.gw, TENANT, OTHER, envelope())
    other = site.gw.store.get_batch(OTHER)
    assert other is not None
    data = certificate(PRINTSITE, OTHER, TENANT, other.size, other.sha256)
    with pytest.raises(CertificateError) as refused:
        publish_certificate(
            site.gw.store, site.gw.storage, site.gw.status, site.gw.audit, OTHER, data,
            PRINTSITE.public_key(),
        )  # fmt: skip
    assert refused.value.reason == "not_delivered"
    with pytest.raises(CertificateError) as unknown:
        publish_certificate(
            site.gw.store, site.gw.storage, site.gw.status, site.gw.audit, "20260715-KAIGO-ZZZZZZ",
            data, PRINTSITE.public_key(),
        )  # fmt: skip
    assert unknown.value.reason == "unknown_batch"


def test_an_invalid_certificate_is_never_published(site: Site) -> None:
    """publish_certificate checks first: nothing is stored, the batch stays FORWARDED."""
    with pytest.raises(CertificateError):
        site.publish(site.certificate(tenant="chuo"))
    assert site.published() is None
    assert site.batch().state is BatchState.FORWARDED


def test_a_rejection_is_audited_each_time_and_the_incident_raised_once(site: Site) -> None:
    """erasure_certificate_rejected every time; incident_raised certificate_rejected once."""
    batch = site.batch()
    error = CertificateError("bad_signature", "the erasure certificate does not verify")
    assert reject_certificate(site.gw.store, site.gw.audit, batch, error, via="file") is True
    assert reject_certificate(site.gw.store, site.gw.audit, batch, error, via="upload") is False
    rejected = site.audit("erasure_certificate_rejected")
    assert [(r["reason"], r["via"]) for r in rejected] == [
        ("bad_signature", "file"),
        ("bad_signature", "upload"),
    ]
    incidents = [r for r in site.audit("incident_raised") if r["kind"] == INCIDENT_KIND]
    assert len(incidents) == 1 and incidents[0]["batch"] == BATCH
    assert site.gw.store.incidents(BATCH) == [INCIDENT_KIND]


def test_the_batch_record_is_what_is_compared() -> None:
    """check_certificate judges against the record given (size and SHA-256 as receipted)."""
    with pytest.raises(CertificateError):
        check_certificate(_good(), PRINTSITE.public_key(), replace(RECORD, sha256="1" * 64))
