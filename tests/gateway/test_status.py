"""Tests for gateway.status: signed status records in /receipts, never going backwards."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from custody import KIND_RECEIPT, KIND_STATUS, generate_private_key, loads_record, verify_record
from custody.errors import SignatureError
from gateway.app import Gateway
from gateway.pipeline import BatchState
from gateway.policy import Area, PolicyError
from gateway.status import STATUS_FIELDS, StatusWriter, sign_status, status_file_name
from tests.gateway.pipeline_kit import T0, build, envelope, make_config, receive

BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "minato"


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway (tenant without a route) holding one RECEIVED batch."""
    made = build(make_config(tmp_path / "gw", {}))
    receive(made, TENANT, BATCH, envelope())
    yield made
    made.close()


def _read(gw: Gateway) -> dict[str, object]:
    reader = gw.storage.open_read(TENANT, Area.RECEIPTS, status_file_name(BATCH))
    try:
        return loads_record(reader.read(0, 1 << 16))
    finally:
        reader.close()


def test_status_record_has_exactly_the_contract_fields_and_verifies(gw: Gateway) -> None:
    """kind status, body exactly STATUS_FIELDS, signed by the gateway key, at with offset."""
    assert gw.status.publish(BATCH)
    body = verify_record(_read(gw), gw.signing_key.public_key(), kind=KIND_STATUS)
    assert sorted(body) == sorted(STATUS_FIELDS)
    assert (body["state"], body["seq"], body["reason"], body["tenant"]) == (
        "received",
        1,
        None,
        TENANT,
    )
    assert datetime.fromisoformat(str(body["at"])).utcoffset() is not None


def test_status_record_is_not_a_receipt_and_not_anyone_elses(gw: Gateway) -> None:
    """A status record fails verification as a receipt, and under another key."""
    batch = gw.store.get_batch(BATCH)
    assert batch is not None
    record = loads_record(sign_status(batch, gw.signing_key))
    with pytest.raises(SignatureError):
        verify_record(record, gw.signing_key.public_key(), kind=KIND_RECEIPT)
    with pytest.raises(SignatureError):
        verify_record(record, generate_private_key().public_key(), kind=KIND_STATUS)


def test_records_state_the_stored_state_and_never_go_backwards(gw: Gateway) -> None:
    """A stale record in hand still writes the stored (newest) state; once written, nothing."""
    stale = gw.store.get_batch(BATCH)
    assert stale is not None
    gw.store.transition(BATCH, BatchState.RECEIVED, BatchState.VERIFIED, None, T0)
    assert gw.status.catch_up(stale)
    body = verify_record(_read(gw), gw.signing_key.public_key(), kind=KIND_STATUS)
    assert (body["state"], body["seq"], body["at"]) == (
        "verified",
        2,
        T0.isoformat(timespec="milliseconds"),
    )
    assert not gw.status.publish(BATCH)
    assert not gw.status.catch_up(stale)  # its record says seq 1 lags, the store says written
    current = gw.store.get_batch(BATCH)
    assert current is not None and current.status_seq == 2


def test_catch_up_writes_only_a_missing_latest_record(gw: Gateway) -> None:
    """catch_up writes the latest event's record when missing, and nothing when current."""
    writer = StatusWriter(gw.storage, gw.store, gw.signing_key)
    gw.store.transition(BATCH, BatchState.RECEIVED, BatchState.QUARANTINED, "not_age", T0)
    batch = gw.store.get_batch(BATCH)
    assert batch is not None
    assert writer.catch_up(batch)
    body = verify_record(_read(gw), gw.signing_key.public_key(), kind=KIND_STATUS)
    assert (body["state"], body["reason"], body["seq"]) == ("quarantined", "not_age", 2)
    current = gw.store.get_batch(BATCH)
    assert current is not None and not writer.catch_up(current)


@pytest.mark.parametrize("bad", ["../x", "", "a/b", "20260715-KAIGO-7F3KQ2/.."])
def test_status_file_name_refuses_non_batch_ids(bad: str) -> None:
    """Only a batch id makes a status file name (no path tricks)."""
    with pytest.raises(PolicyError):
        status_file_name(bad)
    assert status_file_name(BATCH) == f"{BATCH}.status.json"
