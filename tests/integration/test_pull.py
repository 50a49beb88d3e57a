"""Pull mode end to end: a real gateway with ``forward = "pull"`` and ``lgwan-gateway pull``.

The gateway (``init``, a ward and a contractor account, ``serve``) receives real
age envelopes from the ward over SFTP; its forwarder verifies them and moves
them with their receipts into the tenant's ``/outbox``. The print site (another
``init`` root, ``[pull]`` pointing at the gateway with its keys pinned) runs
``pull`` as a subprocess: batches land in its spool verified, the removal
confirms them, and the gateway marks them PULLED (state, signed status record,
``batch_pulled``) and deletes its copy. Resume, tampering and refusals too.
"""

import dataclasses
import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from custody import KIND_STATUS, keys, loads_record, verify_record
from gateway.spool import Spool
from gateway.state import BatchState
from tests.conftest import BIN, Result
from tests.integration.sites import (
    PASSWORD,
    Site,
    envelope,
    free_port,
    key_pair,
    new_batch,
    paramiko_key,
    transport,
)

TENANT = "shinjuku"
CONTRACTOR = "printer"


@dataclasses.dataclass
class Pair:
    """The gateway, the print site pulling from it, and the ward's key."""

    gateway: Site
    printsite: Site
    ward_key: paramiko.Ed25519Key
    spool: Path

    def upload(self, size: int = 300_000) -> tuple[str, bytes]:
        """The ward uploads a fresh envelope; wait until it waits in /outbox (FORWARDED)."""
        batch, data = new_batch(), envelope(size)
        client = transport(self.gateway)
        try:
            client.auth_password("ward1", PASSWORD, fallback=False)
            client.auth_publickey("ward1", self.ward_key)
            sftp = paramiko.SFTPClient.from_transport(client)
            assert sftp is not None
            with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
                handle.set_pipelined(True)
                handle.write(data)
            sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
        finally:
            client.close()
        self.gateway.wait_event("batch_state_changed", batch=batch, to="forwarded")
        return batch, data

    def pull(self, password: str = PASSWORD, port: int | None = None) -> Result:
        """Run ``lgwan-gateway pull --password-fd`` at the print site."""
        self.printsite.set("pull", "port", port or self.gateway.port)
        return self.printsite.cli("pull", "--password-fd", "{fd}", secret=password)

    def outbox(self) -> list[str]:
        return sorted(p.name for p in (self.gateway.tenant_dir(TENANT) / "outbox").iterdir())

    def state(self, batch: str) -> BatchState:
        record = self.gateway.store.get_batch(batch)
        assert record is not None
        return record.state


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A serving gateway whose tenant is pulled, and a print site configured to pull it."""
    base = tmp_path_factory.mktemp("pull")
    gateway = Site(base, "gateway")
    gateway.add_tenant(TENANT, forward="pull")
    ward, _ = key_pair(base / "ward", "ward_ed25519")
    gateway.accounts.add(
        "ward1", "ward", TENANT, keys.public_key_to_openssh(ward.public_key()), [], PASSWORD
    )
    printsite = Site(base, "printsite")
    contractor, key_path = key_pair(printsite.root / "keys", "contractor_ed25519")
    gateway.accounts.add(
        CONTRACTOR, "contractor", TENANT, keys.public_key_to_openssh(contractor.public_key()), [],
        PASSWORD,
    )  # fmt: skip
    spool = base / "spool"
    printsite.set("printsite", "spool", str(spool))
    for key, value in (
        ("host", "127.0.0.1"),
        ("user", CONTRACTOR),
        ("tenant", TENANT),
        ("host_key", gateway.host_key),
        ("receipt_key", gateway.receipt_key),
        ("private_key", str(key_path)),
    ):
        printsite.set("pull", key, value)
    gateway.start()
    yield Pair(gateway, printsite, paramiko_key(ward), spool)
    assert gateway.stop() == (0, b"", b"")
    gateway.close()
    printsite.close()


def test_pull_spools_verified_batches_and_the_gateway_marks_them_pulled(pair: Pair) -> None:
    """Every batch in /outbox is spooled verified, confirmed, PULLED and deleted at the gateway."""
    uploaded = dict(pair.upload() for _ in range(2))
    assert pair.outbox() == sorted(
        f"{b}{suffix}" for b in uploaded for suffix in (".age", ".receipt.json")
    )
    done = pair.pull()
    assert done.code == 0, done.err
    assert done.out.split() == sorted(uploaded)
    spool = Spool(pair.spool)
    signer = keys.load_public_key(pair.gateway.receipt_key)
    for batch, data in uploaded.items():
        arrival = spool.get(batch)
        assert arrival is not None
        assert arrival.path.read_bytes() == data
        assert (arrival.channel, arrival.tenant) == ("lgwan", TENANT)
        assert arrival.source["sha256"] == hashlib.sha256(data).hexdigest()
        assert pair.state(batch) is BatchState.PULLED
        pulled = pair.gateway.wait_event("batch_pulled", batch=batch)
        assert pulled["user"] == CONTRACTOR
        status = pair.gateway.tenant_dir(TENANT) / "receipts" / f"{batch}.status.json"
        body = verify_record(loads_record(status.read_bytes()), signer, kind=KIND_STATUS)
        assert body["state"] == "pulled"
    assert pair.outbox() == []
    assert not list((pair.spool / ".pull").iterdir())
    again = pair.pull()
    assert (again.code, again.out) == (0, "")


def test_interrupted_pull_resumes_from_the_staged_part(pair: Pair) -> None:
    """A staged prefix from an interrupted run is kept: only the rest is downloaded."""
    batch, data = pair.upload(3 << 20)
    staging = pair.spool / ".pull"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    (staging / f"{batch}.age.part").write_bytes(data[: 1 << 20])
    done = pair.pull()
    assert done.code == 0, done.err
    assert done.out.split() == [batch]
    arrival = Spool(pair.spool).get(batch)
    assert arrival is not None and arrival.path.read_bytes() == data
    reads = pair.gateway.events("sftp_closed", path=f"/outbox/{batch}.age", mode="read")
    assert [r["size_bytes"] for r in reads] == [len(data) - (1 << 20)]
    assert pair.state(batch) is BatchState.PULLED


def test_a_pull_killed_mid_download_resumes(pair: Pair) -> None:
    """SIGKILL `pull` while it downloads; the next run continues from the staged bytes."""
    batch, data = pair.upload(48 << 20)
    pair.printsite.set("pull", "port", pair.gateway.port)
    read_end, write_end = os.pipe()
    os.write(write_end, PASSWORD.encode() + b"\n")
    os.close(write_end)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LGWAN_")}
    proc = subprocess.Popen(
        [str(BIN / "lgwan-gateway"), "--config", str(pair.printsite.config), "pull",
         "--password-fd", str(read_end)],
        pass_fds=(read_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    os.close(read_end)
    staged = pair.spool / ".pull" / f"{batch}.age.part"
    deadline = time.monotonic() + 30
    while not (staged.exists() and staged.stat().st_size >= 2 << 20):
        assert time.monotonic() < deadline and proc.poll() is None, "pull did not start"
        time.sleep(0.005)
    proc.kill()
    proc.wait(timeout=10)
    kept = staged.stat().st_size
    assert 0 < kept < len(data)
    assert pair.state(batch) is BatchState.FORWARDED
    done = pair.pull()
    assert done.code == 0, done.err
    assert done.out.split() == [batch]
    arrival = Spool(pair.spool).get(batch)
    assert arrival is not None and arrival.sha256 == hashlib.sha256(data).hexdigest()
    reads = pair.gateway.events("sftp_closed", path=f"/outbox/{batch}.age", mode="read")
    assert reads[-1]["size_bytes"] == len(data) - kept
    assert pair.state(batch) is BatchState.PULLED


def test_a_bad_staged_prefix_is_discarded_and_never_confirmed(pair: Pair) -> None:
    """A staged prefix that is not the batch fails verification: not confirmed, then retried."""
    batch, _ = pair.upload(1 << 20)
    staging = pair.spool / ".pull"
    staging.mkdir(mode=0o700, parents=True, exist_ok=True)
    (staging / f"{batch}.age.part").write_bytes(b"\0" * 4096)
    refused = pair.pull()
    assert refused.code == 1
    assert f"{batch}: the download does not match the signed receipt" in refused.err
    assert pair.state(batch) is BatchState.FORWARDED
    assert f"{batch}.age" in pair.outbox()
    assert Spool(pair.spool).get(batch) is None
    done = pair.pull()
    assert done.code == 0, done.err
    assert pair.state(batch) is BatchState.PULLED


@pytest.mark.parametrize("tampered", ["envelope", "receipt"])
def test_tampered_outbox_files_are_never_confirmed(pair: Pair, tampered: str) -> None:
    """A changed envelope or receipt in /outbox: exit 1, nothing spooled, still FORWARDED."""
    batch, _ = pair.upload(200_000)
    outbox = pair.gateway.tenant_dir(TENANT) / "outbox"
    if tampered == "envelope":
        target = outbox / f"{batch}.age"
        raw = bytearray(target.read_bytes())
        raw[-100] ^= 1
        target.write_bytes(bytes(raw))
        expected = "does not match the signed receipt"
    else:
        target = outbox / f"{batch}.receipt.json"
        doc = json.loads(target.read_bytes())
        doc["body"]["uploader"] = "mallory"
        target.write_bytes(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode() + b"\n")
        expected = "receipt"
    refused = pair.pull()
    assert refused.code == 1
    assert batch in refused.err and expected in refused.err
    assert refused.out == ""
    assert pair.state(batch) is BatchState.FORWARDED
    assert f"{batch}.age" in pair.outbox()
    assert Spool(pair.spool).get(batch) is None
    assert not pair.gateway.events("batch_pulled", batch=batch)
    (outbox / f"{batch}.age").unlink()  # leave the outbox clean for the other tests
    (outbox / f"{batch}.receipt.json").unlink()


def test_unreachable_gateway_exits_75_and_wrong_password_exits_1(pair: Pair) -> None:
    """Nobody listening: exit 75 (safe to retry); a refused login: exit 1."""
    down = pair.pull(port=free_port())
    assert down.code == 75
    assert "cannot reach" in down.err
    refused = pair.pull(password="not-the-password")
    assert refused.code == 1
    assert "refused the login" in refused.err
