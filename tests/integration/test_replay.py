"""Replays (issue 8 §2): a genuine record of one batch or tenant presented for another.

One real gateway (``init``, ``user add --client-config-out``, ``serve`` on
127.0.0.1, as test_send's ``drop``) receives two batches the ward of tenant
shinjuku really sealed and sent (A, B) and one a ward of tenant minato uploaded
(C). Every record below is genuine — receipts the gateway wrote, status records
signed by the gateway's own code and key, erasure certificates signed by the
pinned print-site key — only presented for the wrong batch or tenant:

- receipts and status records: refused by the client's verification, both
  through the real CLI (``send`` exits 1, ``status`` shows ``signature
  INVALID``) and over the whole matrix of records × targets
  (:func:`client.send._compare`, :func:`client.status.check`);
- erasure certificates: refused by :func:`gateway.certificates.check_certificate`
  (``other_batch``, ``other_tenant``) and by ``lgwan-client verify-certificate``
  / ``status``, which never record one batch's erasure for another.
"""

import dataclasses
import itertools
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import ledger, send, status
from client.errors import ClientError
from custody import (
    KIND_RECEIPT,
    fingerprint,
    load_private_key,
    loads_record,
    public_key_to_openssh,
    verify_record,
)
from gateway import certificates
from gateway import status as gateway_status
from gateway.accounts import Accounts
from gateway.certificates import CertificateError
from gateway.config import AuthSection
from gateway.state import BatchRecord, StateStore
from tests.client import certificate_kit as kit
from tests.conftest import Result, run_cli
from tests.integration.sites import envelope, key_pair, new_batch, paramiko_key
from tests.integration.test_send import PASSWORD, TENANT, Drop

OTHER_TENANT = "minato"
PRINTSITE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))


@dataclasses.dataclass
class World:
    """The gateway, the shinjuku ward's batches A and B, and minato's batch C."""

    drop: Drop
    sealed: dict[str, dict[str, Any]]
    """The shinjuku ward's ``sealed`` ledger entries of A and B."""
    batches: dict[str, BatchRecord]
    """A, B and C as the gateway recorded them."""
    receipts: dict[str, bytes]
    """The receipt files the gateway wrote."""
    statuses: dict[str, bytes]
    """The status records the gateway wrote (``received``, seq 1)."""

    def receipts_dir(self, tenant: str = TENANT) -> Path:
        return self.drop.gw / "storage" / "tenants" / tenant / "receipts"

    def cli(self, *args: str | Path) -> Result:
        return run_cli("lgwan-client", "--config", self.drop.config, *args, cwd=self.drop.ward)


def _seal_and_send(d: Drop, seed: int) -> dict[str, Any]:
    made = run_cli("lgwan-client", "sample", "--records", "4", "--seed", str(seed), "--out",
                   f"d{seed}.csv", cwd=d.ward)  # fmt: skip
    assert made.code == 0, made.err
    sealed = run_cli("lgwan-client", "--config", d.config, "seal", f"d{seed}.csv",
                     "--notice-type", "KAIGO", cwd=d.ward)  # fmt: skip
    assert sealed.code == 0, sealed.err
    batch = sealed.out.strip()
    sent = d.send(batch)
    assert sent.code == 0, sent.err
    book = d.ward / "ledger" / "ledger.jsonl"
    (entry,) = [e for e in ledger.entries(book, batch) if e["event"] == "sealed"]
    return dict(entry)


def _upload_other_tenant(d: Drop, store: StateStore) -> str:
    """A ward of tenant minato uploads batch C; returns its id."""
    private, _path = key_pair(d.base / "minato-keys", "ward2")
    line = (d.base / "minato-keys" / "ward2.pub").read_text()
    Accounts(store, AuthSection(failure_delay_ms=0)).add(
        "ward2", "ward", OTHER_TENANT, line, [], PASSWORD
    )
    batch = new_batch()
    client = paramiko.Transport(socket.create_connection(("127.0.0.1", d.port), timeout=10))
    client.start_client(timeout=10)
    try:
        client.auth_password("ward2", PASSWORD, fallback=False)
        client.auth_publickey("ward2", paramiko_key(private))
        sftp = paramiko.SFTPClient.from_transport(client)
        with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
            handle.write(envelope(20_000))
        sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
    finally:
        client.close()
    return batch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("replay")
    d = Drop(base=base, gw=base / "gw", ward=base / "ward")
    d.ward.mkdir()
    assert run_cli("lgwan-gateway", "init", "--root", d.gw, cwd=base).code == 0
    assert run_cli("lgwan-client", "keygen", "--out", d.ward_key, cwd=d.ward).code == 0
    added = d.gateway(
        "user", "add", "ward1", "--role", "ward", "--tenant", TENANT,
        "--pubkey", f"{d.ward_key}.pub", "--password-fd", "{fd}",
        "--client-config-out", d.config, secret=PASSWORD,
    )  # fmt: skip
    assert added.code == 0, added.err
    pinned = public_key_to_openssh(PRINTSITE_KEY.public_key())
    with d.config.open("a", encoding="utf-8") as handle:
        handle.write(f'\n[seal]\nwork_factor = 10\n\n[ward]\nhandler = "山田"\n\n'
                     f'[printsite]\nsigning_key = "{pinned}"\n')  # fmt: skip
    d.start()
    store = StateStore.open(d.gw / "state.db", create=False)
    try:
        sealed = {}
        for seed in (1, 2):
            entry = _seal_and_send(d, seed)
            sealed[str(entry["batch"])] = entry
        a, b = sorted(sealed)
        c = _upload_other_tenant(d, store)
        batches = {}
        for batch in (a, b, c):
            record = store.get_batch(batch)
            assert record is not None
            batches[batch] = record

        def stored(batch: str, suffix: str) -> bytes:
            """A record the gateway wrote (the forwarder writes status records on its next look)."""
            tenant = batches[batch].tenant
            path = d.gw / "storage" / "tenants" / tenant / "receipts" / f"{batch}{suffix}"
            deadline = time.monotonic() + 15
            while not path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            return path.read_bytes()

        yield World(
            d,
            sealed,
            batches,
            {batch: stored(batch, ".receipt.json") for batch in batches},
            {batch: stored(batch, ".status.json") for batch in batches},
        )
    finally:
        store.close()
        d.stop()


def _ids(world: World) -> tuple[str, str, str]:
    a, b = sorted(world.sealed)
    (c,) = [x for x in world.batches if x not in world.sealed]
    return a, b, c


# -- receipts and status records -----------------------------------------------------------------


def test_send_refuses_the_receipt_of_another_batch(world: World) -> None:
    """B's receipt slot holding A's genuine receipt: ``send B`` exits 1, nothing recorded."""
    a, b, _c = _ids(world)
    slot = world.receipts_dir() / f"{b}.receipt.json"
    book = world.drop.ward / "ledger" / "ledger.jsonl"
    before = len(list(ledger.entries(book, b)))
    slot.write_bytes(world.receipts[a])
    try:
        result = world.drop.send(b)
    finally:
        slot.write_bytes(world.receipts[b])
    assert result.code == 1, result.err
    assert f"receipt names batch_id '{a}', expected '{b}'" in result.err
    assert len(list(ledger.entries(book, b))) == before


def test_status_refuses_records_of_another_batch_or_tenant(world: World) -> None:
    """``status``: A's status record under B's name, C's (minato) in shinjuku: INVALID."""
    a, b, c = _ids(world)
    here = world.receipts_dir()
    planted = {
        here / f"{b}.status.json": world.statuses[a],
        here / f"{c}.status.json": world.statuses[c],
        here / f"{c}.receipt.json": world.receipts[c],
    }
    for path, data in planted.items():
        path.write_bytes(data)
    try:
        result = run_cli("lgwan-client", "--config", world.drop.config, "status",
                         "--password-fd", "{fd}", cwd=world.drop.ward, secret=PASSWORD)  # fmt: skip
        del planted[here / f"{c}.status.json"]  # with only C's receipt there: the receipt
        (here / f"{c}.status.json").unlink()
        (here / f"{b}.status.json").write_bytes(world.statuses[b])
        (here / f"{b}.receipt.json").write_bytes(world.receipts[a])
        (here / f"{b}.status.json").unlink()  # B read by its receipt, which is A's
        receipts_only = run_cli("lgwan-client", "--config", world.drop.config, "status",
                                "--password-fd", "{fd}", cwd=world.drop.ward,
                                secret=PASSWORD)  # fmt: skip
    finally:
        (here / f"{b}.status.json").write_bytes(world.statuses[b])
        (here / f"{b}.receipt.json").write_bytes(world.receipts[b])
        for path in (here / f"{c}.status.json", here / f"{c}.receipt.json"):
            path.unlink(missing_ok=True)
    for shown in (result, receipts_only):
        assert shown.code == 1, (shown.out, shown.err)
        rows = {row["batch_id"]: row for row in map(json.loads, shown.out.splitlines())}
        assert rows[a]["state"] == "received" and rows[a]["signature"] == "valid"
        assert rows[b]["state"] is None and "another batch" in str(rows[b]["error"]), shown.out
        assert rows[c]["state"] is None and f"tenant '{OTHER_TENANT}'" in str(rows[c]["error"])


def _signed_statuses(world: World) -> dict[str, bytes]:
    """A status record per batch, made by the gateway's own code with its own key."""
    key = load_private_key((world.drop.gw / "keys" / "gateway_signing_ed25519").read_bytes())
    return {b: gateway_status.sign_status(rec, key) for b, rec in world.batches.items()}


def test_every_record_presented_for_another_batch_or_tenant_is_rejected(world: World) -> None:
    """The matrix: each receipt and status record × each other (batch, tenant) is refused."""
    key = world.drop.receipt_key()
    signer = fingerprint(key)
    statuses = _signed_statuses(world)
    targets = [(b, rec.tenant) for b, rec in world.batches.items()]
    targets += [(b, OTHER_TENANT if t == TENANT else TENANT) for b, t in targets]
    tried = 0
    for (batch, rec), (target, tenant) in itertools.product(world.batches.items(), targets):
        genuine = (batch, rec.tenant) == (target, tenant)
        size, sha = world.batches[target].size, world.batches[target].sha256
        body = verify_record(loads_record(world.receipts[batch]), key, kind=KIND_RECEIPT)
        if genuine:
            send._compare(body, signer, target, tenant, size, sha, 0)
        else:
            with pytest.raises(ClientError):
                send._compare(body, signer, target, tenant, size, sha, 0)
        for receipt, record in ((world.receipts[batch], None), (None, statuses[batch])):
            checked = status.check(target, receipt, record, key, tenant)
            assert checked.valid is genuine, (batch, target, tenant, checked.error)
        # one kind presented as the other is never valid, even for its own batch
        assert not status.check(target, None, world.receipts[batch], key, tenant).valid
        assert not status.check(target, statuses[batch], None, key, tenant).valid
        tried += 1
    assert tried == len(world.batches) * len(targets) == 18


# -- erasure certificates ------------------------------------------------------------------------


def _certificate(world: World, batch: str, **changes: object) -> bytes:
    """The print site's genuine certificate for ``batch`` (not opened: envelope items only)."""
    rec = world.batches[batch]
    sealed = world.sealed.get(batch) or {
        "batch": batch, "envelope_size": rec.size, "envelope_sha256": rec.sha256, "files": [],
    }  # fmt: skip
    made = kit.body(sealed, PRINTSITE_KEY, **{"opened": False, "tenant": rec.tenant, **changes})
    return kit.signed(made, PRINTSITE_KEY)


def test_gateway_refuses_a_certificate_for_another_batch_or_tenant(world: World) -> None:
    """check_certificate: each batch's certificate fits only that batch, tenant and envelope."""
    public = PRINTSITE_KEY.public_key()
    for (batch, _rec), (target, other) in itertools.product(
        world.batches.items(), world.batches.items()
    ):
        data = _certificate(world, batch)
        if batch == target:
            assert certificates.check_certificate(data, public, other)["batch_id"] == batch
        else:
            with pytest.raises(CertificateError) as refused:
                certificates.check_certificate(data, public, other)
            assert refused.value.reason == "other_batch"
        swapped = OTHER_TENANT if other.tenant == TENANT else TENANT
        moved = dataclasses.replace(other, tenant=swapped)
        with pytest.raises(CertificateError) as refused:
            certificates.check_certificate(data, public, moved)
        assert refused.value.reason in ("other_batch", "other_tenant")
        if batch == target:
            assert refused.value.reason == "other_tenant"
    a, b, _c = _ids(world)
    same_envelope = dataclasses.replace(world.batches[b], sha256=world.batches[a].sha256,
                                        size=world.batches[a].size)  # fmt: skip
    with pytest.raises(CertificateError) as refused:  # even for an identical envelope
        certificates.check_certificate(_certificate(world, a), public, same_envelope)
    assert refused.value.reason == "other_batch"


def _verify(world: World, name: str, data: bytes) -> Result:
    path = world.drop.ward / "incoming" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return world.cli("verify-certificate", path)


def _erasures(world: World, batch: str) -> list[dict[str, object]]:
    book = world.drop.ward / "ledger" / "ledger.jsonl"
    return [e for e in ledger.entries(book, batch) if e["event"] == "erasure-verified"]


def test_ward_never_records_one_batch_erasure_for_another(world: World) -> None:
    """verify-certificate and status: another batch's or tenant's certificate proves nothing."""
    a, b, c = _ids(world)
    # minato's certificate presented to the shinjuku ward: not a batch it sealed
    result = _verify(world, f"{c}.erasure.json", _certificate(world, c))
    assert result.code == 1 and "unknown batch" in result.err, result.err
    # A's certificate re-signed for tenant minato: the ward's tenant does not match
    result = _verify(world, f"{a}.erasure.json", _certificate(world, a, tenant=OTHER_TENANT))
    assert result.code == 1 and "tenant" in result.err, result.err
    # A's certificate under B's name: refused (the name claims B); nothing recorded
    result = _verify(world, f"{b}.erasure.json", _certificate(world, a))
    assert result.code == 1 and f"it is the certificate of batch {a}, stored under {b}" in (
        result.err
    ), result.err
    assert _erasures(world, b) == [] and _erasures(world, a) == []
    # under its own name it is A's
    result = _verify(world, f"{a}.erasure.json", _certificate(world, a))
    assert result.out.startswith(f"ok: {a}: "), (result.out, result.err)
    assert _erasures(world, b) == [] and len(_erasures(world, a)) == 1
    # the gateway serving A's certificate as B's: status saves it and calls it invalid
    slot = world.receipts_dir() / f"{b}.erasure.json"
    slot.write_bytes(_certificate(world, a))
    try:
        shown = run_cli("lgwan-client", "--config", world.drop.config, "status",
                        "--password-fd", "{fd}", cwd=world.drop.ward, secret=PASSWORD)  # fmt: skip
    finally:
        slot.unlink()
    assert shown.code == 1, shown.err
    row = {r["batch_id"]: r for r in map(json.loads, shown.out.splitlines())}[b]
    assert row["certificate_check"] == "invalid"
    assert f"it is the certificate of batch {a}, stored under {b}" in shown.err
    assert _erasures(world, b) == []
