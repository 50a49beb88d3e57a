"""Tests for gateway.destinations: file:// spool and pull /outbox, idempotent, never overwriting."""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.app import Gateway
from gateway.destinations import (
    DeliveryError,
    FileDestination,
    PullDestination,
    SourceChangedError,
    make_destination,
    open_source,
)
from gateway.policy import Area
from gateway.routes import Route, RouteKind, TenantSection, parse_route
from gateway.spool import Spool
from gateway.state import BatchRecord
from tests.gateway.pipeline_kit import build, envelope, make_config, receive

BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"
NEVER = threading.Event()


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Gateway]:
    """A gateway (no routes needed: destinations are built by hand)."""
    made = build(make_config(tmp_path / "gw", {}))
    yield made
    made.close()


def _received(gw: Gateway, data: bytes, tenant: str = TENANT) -> BatchRecord:
    return receive(gw, tenant, BATCH, data)


def test_file_destination_spools_atomically_with_the_receipt_body(
    gw: Gateway, tmp_path: Path
) -> None:
    """The spool gets <batch>.age (same SHA-256) and an arrival record carrying the receipt."""
    data = envelope(70_000)
    batch = _received(gw, data)
    spool = tmp_path / "spool"
    spool.mkdir()
    destination = FileDestination(parse_route(f"file://{spool}"), gw.storage)
    done = destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert (done.sha256, done.already) == (hashlib.sha256(data).hexdigest(), False)
    assert done.location == f"file://{spool}/{BATCH}.age"
    arrival = Spool(spool).get(BATCH)
    assert arrival is not None and arrival.channel == "lgwan"
    assert arrival.source["sha256"] == batch.sha256 and arrival.source["tenant"] == TENANT
    assert sorted(p.name for p in spool.iterdir()) == [f"{BATCH}.age", f"{BATCH}.arrival.json"]
    again = destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert again.already


def test_file_destination_refuses_to_overwrite_another_batch(gw: Gateway, tmp_path: Path) -> None:
    """A different file under the batch's name is a non-retryable conflict; it stays as it was."""
    batch = _received(gw, envelope(3000))
    spool = tmp_path / "spool"
    other = envelope(3000)
    Spool(spool).deliver(
        BATCH,
        io.BytesIO(other),
        tenant=TENANT,
        channel="lgwan",
        expected_size=len(other),
        expected_sha256=hashlib.sha256(other).hexdigest(),
        source_detail={},
    )
    destination = FileDestination(parse_route(f"file://{spool}"), gw.storage)
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert (caught.value.retryable, caught.value.reason) == (False, "conflict")
    assert (spool / f"{BATCH}.age").read_bytes() == other


@pytest.mark.parametrize("setup", ["absent", "a_file"])
def test_file_destination_not_a_directory_is_retryable(
    gw: Gateway, tmp_path: Path, setup: str
) -> None:
    """A missing spool (share not mounted) or a file in its place: retryable, nothing created."""
    batch = _received(gw, envelope())
    spool = tmp_path / "spool"
    if setup == "a_file":
        spool.write_bytes(b"in the way")
    destination = FileDestination(parse_route(f"file://{spool}"), gw.storage)
    with pytest.raises(DeliveryError) as caught:
        destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert (caught.value.retryable, caught.value.reason) == (True, "destination_missing")
    assert spool.exists() == (setup == "a_file")


def test_source_that_changed_raises_source_changed(gw: Gateway, tmp_path: Path) -> None:
    """A copy with other bytes than receipted never completes a delivery (SourceChangedError)."""
    data = envelope(2000)
    batch = _received(gw, data)
    inbox = tmp_path / "gw" / "storage" / "tenants" / TENANT / "inbox" / f"{BATCH}.age"
    inbox.write_bytes(data + b"x")
    with (
        pytest.raises(SourceChangedError) as caught,
        open_source(gw.storage, batch, NEVER, verify=True)() as stream,
    ):
        stream.read()
    assert caught.value.retryable is False


def test_source_missing_and_stopping(gw: Gateway, tmp_path: Path) -> None:
    """A vanished copy is source_missing; a stop request interrupts reading (retryable)."""
    batch = _received(gw, envelope(2000))
    stopping = threading.Event()
    stopping.set()
    with (
        pytest.raises(DeliveryError) as interrupted,
        open_source(gw.storage, batch, stopping, verify=True)() as stream,
    ):
        stream.read()
    assert (interrupted.value.retryable, interrupted.value.reason) == (True, "interrupted")
    gw.storage.remove(TENANT, Area.INBOX, batch.file_name)
    with pytest.raises(DeliveryError) as missing:
        open_source(gw.storage, batch, NEVER, verify=True)()
    assert (missing.value.retryable, missing.value.reason) == (True, "source_missing")


def test_pull_destination_moves_the_envelope_with_its_receipt(gw: Gateway) -> None:
    """/outbox gets <batch>.age (moved, not copied) and <batch>.receipt.json; again → already."""
    data = envelope(5000)
    batch = _received(gw, data)
    destination = PullDestination(gw.storage)
    done = destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert (done.location, done.already) == (f"/outbox/{BATCH}.age", False)
    outbox = [f.name for f in gw.storage.list_files(TENANT, Area.OUTBOX)]
    assert outbox == [f"{BATCH}.age", f"{BATCH}.receipt.json"]
    assert gw.storage.list_files(TENANT, Area.INBOX) == []
    copy = gw.storage.open_read(TENANT, Area.OUTBOX, f"{BATCH}.receipt.json")
    original = gw.storage.open_read(TENANT, Area.RECEIPTS, f"{BATCH}.receipt.json")
    assert copy.read(0, 1 << 16) == original.read(0, 1 << 16)
    copy.close()
    original.close()
    again = destination.deliver(batch, open_source(gw.storage, batch, NEVER, verify=True))
    assert again.already


def test_pull_destination_conflict_when_outbox_holds_another_file(gw: Gateway) -> None:
    """Another envelope already under the name in /outbox: conflict, nothing replaced."""
    batch = _received(gw, envelope(5000))
    gw.storage.write_file(TENANT, Area.OUTBOX, f"{BATCH}.age", b"something else")
    with pytest.raises(DeliveryError) as caught:
        PullDestination(gw.storage).deliver(
            batch, open_source(gw.storage, batch, NEVER, verify=True)
        )
    assert caught.value.reason == "conflict"
    assert gw.storage.digest(TENANT, Area.OUTBOX, f"{BATCH}.age")[0] == len(b"something else")
    assert [f.name for f in gw.storage.list_files(TENANT, Area.INBOX)] == [f"{BATCH}.age"]


def test_make_destination_by_route_kind(gw: Gateway, tmp_path: Path) -> None:
    """file → FileDestination, pull → PullDestination, no route → None."""
    section = TenantSection()
    cfg = gw.config
    spool_route = parse_route(f"file://{tmp_path}/spool")
    assert isinstance(make_destination(spool_route, section, cfg, gw.storage), FileDestination)
    assert isinstance(
        make_destination(Route(RouteKind.PULL), section, cfg, gw.storage), PullDestination
    )
    assert make_destination(Route(RouteKind.NONE), section, cfg, gw.storage) is None
