"""Tests for gateway.forwarder in-process: real SQLite, real files, real Spool, a test clock."""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from custody import KIND_STATUS, loads_record, verify_record
from gateway.app import Gateway
from gateway.pipeline import BatchState
from gateway.policy import Area, PolicyError
from gateway.receipts import sign_receipt
from gateway.routes import TenantSection
from gateway.spool import Spool
from gateway.state import BatchRecord
from tests.gateway.pipeline_kit import (
    BAD_UPLOADS,
    Clock,
    build,
    envelope,
    inbox,
    make_config,
    receive,
    states,
)

BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"
HAPPY = [("received", None), ("verified", None), ("forwarding", None), ("forwarded", None)]


class Site:
    """A gateway (not serving) whose tenants route to a spool, to pull, or nowhere."""

    def __init__(self, tmp: Path, retention: int = 0, max_attempts: int = 12) -> None:
        self.spool = tmp / "spool"
        self.spool.mkdir()
        self.clock = Clock()
        route = TenantSection(forward=f"file://{self.spool}", max_attempts=max_attempts)
        cfg = make_config(
            tmp / "gw",
            {TENANT: route, "chuo": "pull", "minato": ""},
            backoff_initial_ms=1000,
            backoff_max_seconds=8,
            retention_seconds=retention,
        )
        self.gw: Gateway = build(cfg, self.clock)
        self.root = tmp / "gw"

    def audit(self, event: str) -> list[dict[str, object]]:
        """Audit records of one event."""
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def batch(self, batch_id: str = BATCH) -> BatchRecord:
        """The batch as stored."""
        found = self.gw.store.get_batch(batch_id)
        assert found is not None
        return found


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A fresh site."""
    made = Site(tmp_path)
    yield made
    made.gw.close()


def test_batch_is_delivered_once_and_the_copy_deleted(site: Site) -> None:
    """RECEIVED → VERIFIED → FORWARDING → FORWARDED; in the spool once; inbox copy gone."""
    data = envelope(100_000)
    receive(site.gw, TENANT, BATCH, data)
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == HAPPY
    arrival = Spool(site.spool).get(BATCH)
    assert arrival is not None and arrival.sha256 == hashlib.sha256(data).hexdigest()
    assert arrival.source["uploader"] == "ward-a"  # the receipt body travels along
    assert inbox(site.gw, TENANT) == []
    assert site.batch().cleared_at is not None
    forwarded = site.audit("batch_forwarded")
    assert [(r["batch"], r["size_bytes"], r["already"]) for r in forwarded] == [
        (BATCH, len(data), False)
    ]
    assert [r["batch"] for r in site.audit("batch_deleted")] == [BATCH]
    changes = [(r["from"], r["to"]) for r in site.audit("batch_state_changed")]
    assert changes == [
        ("received", "verified"),
        ("verified", "forwarding"),
        ("forwarding", "forwarded"),
    ]
    site.gw.forwarder.run_once()  # nothing left to do: nothing happens twice
    assert len(site.audit("batch_forwarded")) == 1


def test_status_record_states_the_latest_change_signed(site: Site) -> None:
    """/receipts/<batch>.status.json is a signed status record of the last event (seq 4)."""
    receive(site.gw, TENANT, BATCH, envelope())
    site.gw.forwarder.run_once()
    reader = site.gw.storage.open_read(TENANT, Area.RECEIPTS, f"{BATCH}.status.json")
    record = loads_record(reader.read(0, 1 << 16))
    reader.close()
    body = verify_record(record, site.gw.signing_key.public_key(), kind=KIND_STATUS)
    assert (body["state"], body["seq"], body["reason"]) == ("forwarded", 4, None)
    assert site.batch().status_seq == 4
    assert site.gw.storage.exists(TENANT, Area.RECEIPTS, f"{BATCH}.receipt.json")


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_upload_is_quarantined_never_forwarded(site: Site, kind: str) -> None:
    """Plaintext, ZIP, PDF, X25519, truncated, weak scrypt: QUARANTINED + incident, not sent."""
    make, reason = BAD_UPLOADS[kind]
    receive(site.gw, TENANT, BATCH, make())
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == [("received", None), ("quarantined", reason)]
    assert list(site.spool.iterdir()) == []
    assert inbox(site.gw, TENANT) == []
    quarantined = list((site.root / "storage" / "quarantine").iterdir())
    assert [p.name.split("--")[1] for p in quarantined] == [reason]
    incidents = site.audit("incident_raised")
    assert [(r["kind"], r["batch"], r["reason"]) for r in incidents] == [
        ("quarantine", BATCH, reason)
    ]


def test_tenant_without_route_stays_received_with_one_incident(site: Site) -> None:
    """No forward: RECEIVED stays, incident no_route once however often it is looked at."""
    receive(site.gw, "minato", BATCH, envelope())
    for _ in range(3):
        site.gw.forwarder.run_once()
        site.clock.advance(120)
    assert states(site.gw, BATCH) == [("received", None)]
    assert inbox(site.gw, "minato") == [f"{BATCH}.age"]
    assert [r["kind"] for r in site.audit("incident_raised")] == ["no_route"]


def test_missing_destination_is_retried_with_backoff_then_delivered(tmp_path: Path) -> None:
    """Spool absent → FAILED_RETRYING, not retried before the back-off; fixed → FORWARDED."""
    site = Site(tmp_path)
    site.spool.rmdir()
    receive(site.gw, TENANT, BATCH, envelope())
    site.gw.forwarder.run_once()
    batch = site.batch()
    assert (batch.state, batch.reason, batch.attempts) == (
        BatchState.FAILED_RETRYING,
        "destination_missing",
        1,
    )
    assert batch.next_attempt_at is not None
    delay = (batch.next_attempt_at - site.clock.now).total_seconds()
    assert 0.5 <= delay <= 1.0  # 1 s initial back-off times a 0.5-1.0 jitter
    site.spool.mkdir()
    site.gw.forwarder.run_once()  # not due yet
    assert site.batch().state is BatchState.FAILED_RETRYING
    site.clock.advance(1.0)
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == [
        *HAPPY[:3],
        ("failed_retrying", "destination_missing"),
        ("forwarding", None),
        ("forwarded", None),
    ]
    assert Spool(site.spool).get(BATCH) is not None
    site.gw.close()


def test_backoff_doubles_to_the_maximum_and_raises_forward_failed_once(tmp_path: Path) -> None:
    """Delays grow 1, 2, 4, 8, 8 s (times jitter); after max_attempts one forward_failed."""
    site = Site(tmp_path, max_attempts=3)
    site.spool.rmdir()
    receive(site.gw, TENANT, BATCH, envelope())
    delays = []
    for _ in range(5):
        site.gw.forwarder.run_once()
        batch = site.batch()
        assert batch.next_attempt_at is not None
        delays.append((batch.next_attempt_at - site.clock.now).total_seconds())
        site.clock.advance(delays[-1])
    assert all(m / 2 <= d <= m for d, m in zip(delays, [1, 2, 4, 8, 8], strict=True)), delays
    assert site.batch().attempts == 5
    assert [r["kind"] for r in site.audit("incident_raised")] == ["forward_failed"]
    assert len(site.audit("delivery_failed")) == 5
    site.gw.close()


def test_conflict_at_destination_is_an_incident_never_an_overwrite(site: Site) -> None:
    """A different batch under the same id in the spool: FAILED_RETRYING conflict, untouched."""
    other = envelope(5000)
    Spool(site.spool).deliver(
        BATCH,
        io.BytesIO(other),
        tenant=TENANT,
        channel="lgwan",
        expected_size=len(other),
        expected_sha256=hashlib.sha256(other).hexdigest(),
        source_detail={},
    )
    receive(site.gw, TENANT, BATCH, envelope(6000))
    site.gw.forwarder.run_once()
    assert site.batch().state is BatchState.FAILED_RETRYING
    assert site.batch().reason == "conflict"
    assert (site.spool / f"{BATCH}.age").read_bytes() == other
    assert [r["kind"] for r in site.audit("incident_raised")] == ["conflict"]
    assert inbox(site.gw, TENANT) == [f"{BATCH}.age"]  # the gateway keeps its copy


def test_batch_already_at_destination_counts_as_delivered(site: Site) -> None:
    """The same bytes already in the spool (a crash after delivery): FORWARDED, already=True."""
    data = envelope()
    Spool(site.spool).deliver(
        BATCH,
        io.BytesIO(data),
        tenant=TENANT,
        channel="lgwan",
        expected_size=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        source_detail={},
    )
    receive(site.gw, TENANT, BATCH, data)
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == HAPPY
    assert [r["already"] for r in site.audit("batch_forwarded")] == [True]


def test_batch_without_its_receipt_waits_in_received(site: Site) -> None:
    """No receipt yet (crash between record and receipt): stays RECEIVED until it is signed."""
    receive(site.gw, TENANT, BATCH, envelope())
    site.gw.storage.remove(TENANT, Area.RECEIPTS, f"{BATCH}.receipt.json")
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == [("received", None)]
    assert site.gw.completer.recover() == 1  # what the restart does: signs the missing receipt
    site.clock.advance(1)
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == HAPPY


def test_interrupted_forwarding_is_recorded_and_retried(site: Site) -> None:
    """A batch left FORWARDING (killed mid-delivery) → failed_retrying(interrupted) → forwarded."""
    batch = receive(site.gw, TENANT, BATCH, envelope())
    store = site.gw.store
    store.transition(BATCH, BatchState.RECEIVED, BatchState.VERIFIED, None, site.clock.now)
    store.transition(
        BATCH, BatchState.VERIFIED, BatchState.FORWARDING, None, site.clock.now, attempts=1
    )
    store.update_batch(batch.batch_id, next_attempt_at=site.clock.now.replace(year=2030))
    site.gw.forwarder.recover()
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == [
        *HAPPY[:3],
        ("failed_retrying", "interrupted"),
        ("forwarding", None),
        ("forwarded", None),
    ]
    assert site.batch().attempts == 2
    assert site.batch().status_seq == 6


def test_copy_changed_after_verification_is_quarantined(site: Site) -> None:
    """The inbox copy no longer matching its receipt while sent: QUARANTINED source_changed."""
    data = envelope(3000)
    receive(site.gw, TENANT, BATCH, data)
    site.gw.store.transition(BATCH, BatchState.RECEIVED, BatchState.VERIFIED, None, site.clock.now)
    path = site.root / "storage" / "tenants" / TENANT / "inbox" / f"{BATCH}.age"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH)[-2:] == [("forwarding", None), ("quarantined", "source_changed")]
    assert list(site.spool.iterdir()) == []
    assert [r["kind"] for r in site.audit("incident_raised")] == ["quarantine"]


def test_retention_keeps_the_copy_until_it_expires(tmp_path: Path) -> None:
    """retention_seconds=60: the copy stays after delivery and is deleted on a later pass."""
    site = Site(tmp_path, retention=60)
    receive(site.gw, TENANT, BATCH, envelope())
    wait = site.gw.forwarder.run_once()
    assert site.batch().state is BatchState.FORWARDED
    assert inbox(site.gw, TENANT) == [f"{BATCH}.age"]
    assert wait == pytest.approx(60)
    site.clock.advance(59)
    site.gw.forwarder.run_once()
    assert inbox(site.gw, TENANT) == [f"{BATCH}.age"]
    site.clock.advance(1)
    site.gw.forwarder.run_once()
    assert inbox(site.gw, TENANT) == []
    assert [r["retention_seconds"] for r in site.audit("batch_deleted")] == [60]
    site.gw.close()


def test_pull_route_publishes_to_outbox_and_confirmation_marks_pulled(site: Site) -> None:
    """pull: FORWARDED (waiting_for_pull) with envelope + receipt in /outbox; confirm → PULLED."""
    data = envelope()
    receive(site.gw, "chuo", BATCH, data)
    site.gw.forwarder.run_once()
    assert states(site.gw, BATCH) == [
        ("received", None),
        ("verified", None),
        ("forwarded", "waiting_for_pull"),
    ]
    outbox = [f.name for f in site.gw.storage.list_files("chuo", Area.OUTBOX)]
    assert outbox == [f"{BATCH}.age", f"{BATCH}.receipt.json"]
    assert site.gw.storage.digest("chuo", Area.OUTBOX, f"{BATCH}.age")[1] == (
        hashlib.sha256(data).hexdigest()
    )
    assert inbox(site.gw, "chuo") == []
    with pytest.raises(PolicyError):
        site.gw.forwarder.confirm_pulled(BATCH, TENANT, "someone")  # wrong tenant
    site.gw.forwarder.confirm_pulled(BATCH, "chuo", "contractor-a")
    site.gw.forwarder.confirm_pulled(BATCH, "chuo", "contractor-a")  # repeated: accepted
    assert states(site.gw, BATCH)[-1] == ("pulled", None)
    assert [r["user"] for r in site.audit("batch_pulled")] == ["contractor-a"]


def test_pull_publish_conflict_stays_verified_and_is_retried(site: Site) -> None:
    """Another file under the name in /outbox: VERIFIED kept, conflict incident, retry later."""
    receive(site.gw, "chuo", BATCH, envelope())
    site.gw.storage.write_file("chuo", Area.OUTBOX, f"{BATCH}.age", b"not this batch")
    site.gw.forwarder.run_once()
    batch = site.batch()
    assert (batch.state, batch.attempts) == (BatchState.VERIFIED, 1)
    assert batch.next_attempt_at is not None and batch.next_attempt_at > site.clock.now
    assert [r["kind"] for r in site.audit("incident_raised")] == ["conflict"]
    assert inbox(site.gw, "chuo") == [f"{BATCH}.age"]
    site.gw.storage.remove("chuo", Area.OUTBOX, f"{BATCH}.age")
    site.clock.advance(8)
    site.gw.forwarder.run_once()
    assert site.batch().state is BatchState.FORWARDED


def test_confirmation_of_a_batch_not_waiting_for_pull_is_refused(site: Site) -> None:
    """Only a FORWARDED batch of a pull tenant can be confirmed as pulled."""
    receive(site.gw, TENANT, BATCH, envelope())
    with pytest.raises(PolicyError, match="not waiting"):
        site.gw.forwarder.confirm_pulled(BATCH, TENANT, "contractor-a")
    with pytest.raises(PolicyError, match="no such batch"):
        site.gw.forwarder.confirm_pulled("20260715-KAIGO-AAAAAA", TENANT, "contractor-a")


def test_missing_status_record_is_written_on_the_next_pass(site: Site) -> None:
    """A state change whose status record was lost (crash) is stated on the next pass."""
    receive(site.gw, "minato", BATCH, envelope())
    site.gw.forwarder.run_once()
    assert site.batch().status_seq == 1
    site.gw.store.transition(BATCH, BatchState.RECEIVED, BatchState.VERIFIED, None, site.clock.now)
    site.gw.forwarder.process(site.batch())
    assert site.batch().status_seq == 2


def test_worker_thread_wakes_on_completion_and_stops(tmp_path: Path) -> None:
    """Started, the worker forwards a completed upload at once (no polling) and stops on request."""
    made = Site(tmp_path)
    made.gw.close()
    cfg = make_config(tmp_path / "gw2", {TENANT: f"file://{made.spool}"}, rescan_seconds=3600)
    gw = build(cfg)
    gw.forwarder.start()
    try:
        started = time.monotonic()
        receive(gw, TENANT, BATCH, envelope(1 << 20))
        while Spool(made.spool).get(BATCH) is None:
            assert time.monotonic() - started < 5, "not forwarded"
            time.sleep(0.005)
        elapsed = time.monotonic() - started
    finally:
        gw.forwarder.stop()
        gw.close()
    assert elapsed < 2.0  # woken by the completion, not by the hourly rescan


def test_periodic_rescan_finds_a_batch_nobody_announced(tmp_path: Path) -> None:
    """A RECEIVED batch recorded while the worker idles, with no notify, goes at the next rescan."""
    spool = tmp_path / "spool"
    spool.mkdir()
    gw = build(make_config(tmp_path / "gw", {TENANT: f"file://{spool}"}, rescan_seconds=1))
    gw.forwarder.start()
    try:
        time.sleep(0.2)  # the worker has done its start-up pass and waits
        data = envelope()
        gw.storage.ensure_tenant(TENANT)
        gw.storage.write_file(TENANT, Area.INBOX, f"{BATCH}.age", data)
        now = datetime.now().astimezone()
        record = BatchRecord(
            BATCH, TENANT, "ward-a", f"{BATCH}.age", len(data),
            hashlib.sha256(data).hexdigest(), BatchState.RECEIVED, now, now,
        )  # fmt: skip
        gw.store.insert_batch(record)  # what a crash between insert and notify leaves
        gw.storage.write_file(
            TENANT, Area.RECEIPTS, f"{BATCH}.receipt.json", sign_receipt(record, gw.signing_key)
        )
        started = time.monotonic()
        while Spool(spool).get(BATCH) is None:
            assert time.monotonic() - started < 5, "the rescan did not pick it up"
            time.sleep(0.02)
        assert states(gw, BATCH)[:2] == [("received", None), ("verified", None)]
    finally:
        gw.forwarder.stop()
        gw.close()
