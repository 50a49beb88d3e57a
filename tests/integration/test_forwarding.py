"""The forwarding pipeline inside a real `lgwan-gateway serve` process on 127.0.0.1.

Wards upload with paramiko as `lgwan-client send` does; the gateway verifies,
forwards to a file:// spool or publishes for pull, quarantines what is not a
sealed batch, retries an unavailable destination, and states every change in
a signed status record. Gateways are made with the real ``init`` (helpers from
drop_kit); tenant routes are appended to their gateway.toml.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from custody import KIND_STATUS, load_public_key, loads_record, verify_record
from envelope import age
from gateway.state import BatchRecord, BatchState, StateStore
from tests.conftest import run_cli
from tests.gateway.pipeline_kit import BAD_UPLOADS, envelope
from tests.integration.drop_kit import Gateway, Ward, new_batch, session, upload

FAST = {"forwarder": {"backoff_initial_ms": 100, "backoff_max_seconds": 1}}
HAPPY = ["received", "verified", "forwarding", "forwarded"]


class Site:
    """A serving gateway with tenants of every kind of route."""

    def __init__(self, base: Path) -> None:
        self.gw = Gateway(base, FAST)
        self.spool = base / "printsite" / "spool"
        self.spool.mkdir(parents=True)
        self.absent = base / "share" / "spool"
        self.blocked = base / "blocked"
        self.blocked.write_bytes(b"a file where the spool directory should be")
        routes = {
            "shinjuku": f"file://{self.spool}",
            "chuo": "pull",
            "retry-a": f"file://{self.absent}",
            "retry-b": f"file://{self.blocked}",
        }
        tables = "".join(f'\n[tenants.{t}]\nforward = "{r}"\n' for t, r in routes.items())
        config = self.gw.root / "gateway.toml"
        config.write_text(config.read_text() + tables)
        self.alice = self.gw.add("alice", "shinjuku")
        self.bob = self.gw.add("bob", "minato")
        self.carol = self.gw.add("carol", "chuo")
        self.contractor = self.gw.add("cecil", "chuo", role="contractor")
        self.ann = self.gw.add("ann", "retry-a")
        self.ben = self.gw.add("ben", "retry-b")
        self.gw.start()

    def send(self, ward: Ward, data: bytes) -> str:
        """Upload ``data`` as a new batch of ``ward``; its batch id."""
        batch = new_batch()
        with session(self.gw, ward) as sftp:
            upload(sftp, batch, data)
        return batch

    def batch(self, batch_id: str) -> BatchRecord:
        """The batch as the gateway recorded it."""
        found = self.gw.store.get_batch(batch_id)
        assert found is not None
        return found

    def history(self, batch_id: str) -> list[str]:
        """States the batch went through, from the state database."""
        return [e.state.value for e in self.gw.store.events(batch_id)]

    def status(self, tenant: str, batch_id: str, settled: str | None = None) -> dict[str, object]:
        """The batch's status record, verified with the gateway's signing key.

        With ``settled``, waits up to 10 s for the record to say that state: the
        forwarder writes it at the end of its pass, just after the audit event.
        """
        path = self.gw.tenant_dir(tenant) / "receipts" / f"{batch_id}.status.json"
        public = (self.gw.root / "keys" / "gateway_signing_ed25519.pub").read_bytes()
        deadline = time.monotonic() + 10
        while True:
            body = verify_record(
                loads_record(path.read_bytes()), load_public_key(public), kind=KIND_STATUS
            )
            if settled is None or body["state"] == settled or time.monotonic() > deadline:
                return body
            time.sleep(0.05)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One gateway for the module, serving; SIGTERM at the end must exit 0 silently."""
    made = Site(tmp_path_factory.mktemp("fwd"))
    yield made
    assert made.gw.stop() == (0, b"", b"")
    verified = run_cli(
        "lgwan-gateway", "--config", made.gw.root / "gateway.toml", "audit", "verify",
        cwd=made.gw.base,
    )  # fmt: skip
    assert verified.code == 0, verified.err


def _sealed(size: int = 300_000) -> bytes:
    out = io.BytesIO()
    age.encrypt(io.BytesIO(os.urandom(size)), out, "test passphrase", work_factor=18)
    return out.getvalue()


def test_sealed_upload_reaches_the_spool_once_and_the_gateway_copy_goes(site: Site) -> None:
    """A sealed batch: in the spool exactly once (same SHA-256), inbox copy deleted, all audited."""
    data = _sealed()
    batch = site.send(site.alice, data)
    forwarded = site.gw.wait_event("batch_forwarded", batch=batch)
    assert (forwarded["size_bytes"], forwarded["already"]) == (len(data), False)
    assert forwarded["destination"] == f"file://{site.spool}"
    spooled = sorted(p.name for p in site.spool.iterdir() if p.name.startswith(batch))
    assert spooled == [f"{batch}.age", f"{batch}.arrival.json"]
    assert hashlib.sha256((site.spool / f"{batch}.age").read_bytes()).hexdigest() == (
        hashlib.sha256(data).hexdigest()
    )
    arrival = json.loads((site.spool / f"{batch}.arrival.json").read_bytes())
    assert (arrival["tenant"], arrival["channel"], arrival["source"]["uploader"]) == (
        "shinjuku",
        "lgwan",
        "alice",
    )
    site.gw.wait_event("batch_deleted", batch=batch)
    inbox = site.gw.tenant_dir("shinjuku") / "inbox"
    assert not (inbox / f"{batch}.age").exists()
    assert site.history(batch) == HAPPY
    moves = [(r["from"], r["to"]) for r in site.gw.events("batch_state_changed", batch=batch)]
    assert moves == list(itertools.pairwise(HAPPY))
    status = site.status("shinjuku", batch)
    assert (status["state"], status["seq"], status["batch_id"]) == ("forwarded", 4, batch)
    with session(site.gw, site.alice) as sftp:  # the ward reads both records in /receipts
        names = sorted(n for n in sftp.listdir("/receipts") if n.startswith(batch))
        with sftp.open(f"/receipts/{batch}.status.json") as handle:
            served = handle.read()
    assert names == [f"{batch}.receipt.json", f"{batch}.status.json"]
    path = site.gw.tenant_dir("shinjuku") / "receipts" / f"{batch}.status.json"
    assert served == path.read_bytes()


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_what_is_not_a_sealed_batch_is_quarantined(site: Site, kind: str) -> None:
    """CSV renamed .age, ZIP, PDF, X25519, truncated, weak scrypt: QUARANTINED, nothing sent."""
    make, reason = BAD_UPLOADS[kind]
    batch = site.send(site.alice, make())
    incident = site.gw.wait_event("incident_raised", batch=batch)
    assert (incident["kind"], incident["reason"], incident["tenant"]) == (
        "quarantine",
        reason,
        "shinjuku",
    )
    assert site.history(batch) == ["received", "quarantined"]
    assert site.batch(batch).reason == reason
    assert not any(p.name.startswith(batch) for p in site.spool.iterdir())
    assert not (site.gw.tenant_dir("shinjuku") / "inbox" / f"{batch}.age").exists()
    quarantine = site.gw.root / "storage" / "quarantine"
    assert [p.name for p in quarantine.iterdir() if p.name.endswith(f"--{batch}.age")] == [
        incident["quarantined_as"]
    ]
    status = site.status("shinjuku", batch)
    assert (status["state"], status["reason"]) == ("quarantined", reason)
    assert not site.gw.events("batch_forwarded", batch=batch)


def test_tenant_without_a_route_keeps_the_batch_received(site: Site) -> None:
    """No [tenants.minato]: the batch stays RECEIVED, in the inbox, with a no_route incident."""
    batch = site.send(site.bob, envelope())
    incident = site.gw.wait_event("incident_raised", batch=batch)
    assert incident["kind"] == "no_route"
    assert site.history(batch) == ["received"]
    assert (site.gw.tenant_dir("minato") / "inbox" / f"{batch}.age").exists()
    assert site.status("minato", batch)["state"] == "received"


def test_pull_route_waits_in_the_contractors_outbox_until_confirmed(site: Site) -> None:
    """pull: the contractor sees <batch>.age and its receipt in /outbox; removing it → PULLED."""
    data = envelope(200_000)
    batch = site.send(site.carol, data)
    site.gw.wait_event("batch_published", batch=batch)
    assert site.history(batch) == ["received", "verified", "forwarded"]
    with session(site.gw, site.contractor) as sftp:
        assert sorted(sftp.listdir("/outbox")) == [f"{batch}.age", f"{batch}.receipt.json"]
        with sftp.open(f"/outbox/{batch}.age") as handle:
            assert hashlib.sha256(handle.read()).hexdigest() == hashlib.sha256(data).hexdigest()
        sftp.remove(f"/outbox/{batch}.age")
        assert sftp.listdir("/outbox") == []
    pulled = site.gw.wait_event("batch_pulled", batch=batch)
    assert pulled["user"] == "cecil"
    assert site.history(batch) == ["received", "verified", "forwarded", "pulled"]
    assert site.status("chuo", batch, settled="pulled")["state"] == "pulled"
    assert not (site.gw.tenant_dir("chuo") / "inbox" / f"{batch}.age").exists()


@pytest.mark.parametrize("case", ["absent", "blocked"])
def test_unavailable_destination_is_retried_until_it_is_back(site: Site, case: str) -> None:
    """Spool missing (share not mounted) or a file in its place: retried, delivered once fixed."""
    ward = site.ann if case == "absent" else site.ben
    batch = site.send(ward, envelope())
    failed = site.gw.wait_event("delivery_failed", batch=batch)
    assert (failed["reason"], failed["retryable"]) == ("destination_missing", True)
    assert site.batch(batch).state in (BatchState.FAILED_RETRYING, BatchState.FORWARDING)
    target = site.absent if case == "absent" else site.blocked
    if case == "blocked":
        target.unlink()
    target.mkdir(parents=True)
    site.gw.wait_event("batch_forwarded", batch=batch, timeout=15)
    assert (target / f"{batch}.age").exists()
    history = site.history(batch)
    assert history[:4] == ["received", "verified", "forwarding", "failed_retrying"]
    assert history[-2:] == ["forwarding", "forwarded"]
    assert site.status(ward.tenant, batch, settled="forwarded")["state"] == "forwarded"


def test_batch_recorded_while_serve_was_down_is_forwarded_at_start_up(tmp_path: Path) -> None:
    """A RECEIVED batch nobody was told about (crash before the notify) goes at start-up."""
    gw = Gateway(tmp_path, FAST)
    spool = tmp_path / "spool"
    spool.mkdir()
    config = gw.root / "gateway.toml"
    config.write_text(config.read_text() + f'\n[tenants.shinjuku]\nforward = "file://{spool}"\n')
    data = envelope(50_000)
    batch = new_batch()
    for area in ("inbox", "receipts", "outbox"):
        (gw.tenant_dir("shinjuku") / area).mkdir(mode=0o700, parents=True, exist_ok=True)
    inbox = gw.tenant_dir("shinjuku") / "inbox"
    (inbox / f"{batch}.age").write_bytes(data)
    now = datetime.now().astimezone()
    gw.store.insert_batch(
        BatchRecord(
            batch, "shinjuku", "alice", f"{batch}.age", len(data),
            hashlib.sha256(data).hexdigest(), BatchState.RECEIVED, now, now,
        )
    )  # fmt: skip
    gw.start()
    try:
        gw.wait_event("batch_forwarded", batch=batch)
        assert (spool / f"{batch}.age").read_bytes() == data
        store = StateStore.open(gw.root / "state.db", create=False)
        assert [e.state.value for e in store.events(batch)] == HAPPY
        store.close()
        assert (gw.tenant_dir("shinjuku") / "receipts" / f"{batch}.receipt.json").exists()
    finally:
        assert gw.stop()[0] == 0
