"""Crash safety of the forwarding pipeline: SIGKILL `lgwan-gateway serve` at random moments.

A real `serve` forwards tenant shinjuku's batches while a paramiko client
thread (client.transfer, as `lgwan-client send` uses it) uploads 50 small age
envelopes, resuming from the size of the gateway's `.part` after every failure
and checking the receipt when a rename's reply was lost.

1. file:// destination: the main thread SIGKILLs the gateway at least 20 times
   — while a `.part` is being written, right after a rename completed an upload,
   while a batch is being verified or delivered, or at a random moment — and
   restarts it on the same port.
2. sftp:// destination (a second `serve` as print site, forwarder account): the
   print site is SIGKILLed mid-transfer, stays away a moment and comes back.

At the end every batch is in the destination spool exactly once with its
SHA-256 and nothing else is there (no `.part`, no temporary file), no gateway
inbox holds a delivered batch, every signed status record says forwarded (the
ward's `lgwan-client status` verifies them), and `audit verify` passes.

The kill schedule comes from a fixed seed (the moments themselves depend on the
machine's timing); each test has a time budget and stops every process it started.
"""

import functools
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import transfer
from client.errors import ClientError
from custody import KIND_STATUS, load_private_key, load_public_key, loads_record, verify_record
from envelope import EncryptingWriter
from tests.conftest import BIN, Result, run_cli
from tests.integration import sites

pytestmark = pytest.mark.slow

SEED = 20260715
BATCHES = 50
MIN_KILLS = 20
MIN_OUTAGES = 8
WORK_FACTOR = 10
GATEWAY_BUDGET_SECONDS = 90.0
PRINTSITE_BUDGET_SECONDS = 80.0
"""Each test's bound: kills, uploads and the final drain (≤ 3 minutes together)."""
UPLOAD_BLOCK_BYTES = 16 << 10
TRIGGER_TIMEOUT_SECONDS = 1.0
"""A kill waiting for its moment kills anyway after this."""
PASSWORD = "ward-password-0123456789"
TENANT = "shinjuku"
USER = "ward1"
FORWARDER = "relay"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _rng(offset: int = 0) -> random.Random:
    return random.Random(SEED + offset)  # noqa: S311 -- a reproducible schedule, not a secret


@dataclass
class Serve:
    """One `lgwan-gateway serve`, restartable on the same port; stderr drained."""

    base: Path
    config: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    starts: int = 0

    def start(self) -> None:
        """Start serve and wait for its "listening on" line."""
        proc = subprocess.Popen(
            [str(BIN / "lgwan-gateway"), "--config", str(self.config), "serve",
             "--listen", f"127.0.0.1:{self.port}"],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        self.proc = proc
        first = proc.stderr.readline().decode()
        match = _LISTENING.search(first)
        assert match, f"serve did not start: {first!r} {proc.stderr.read().decode()[-2000:]}"
        self.port = int(match.group(2))
        self.starts += 1
        stream = proc.stderr
        threading.Thread(target=lambda: self.log.extend(
            line.decode(errors="replace") for line in stream), daemon=True).start()  # fmt: skip

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or cleaned up."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None

    def stop(self) -> int | None:
        """SIGTERM and wait; return the exit status (None when it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None


@dataclass
class Central:
    """The gateway the ward uploads to: one ward account, a client config, its `serve`."""

    base: Path
    gw: Path
    ward: Path
    serve: Serve

    @property
    def tenant_dir(self) -> Path:
        return self.gw / "storage" / "tenants" / TENANT

    @property
    def inbox(self) -> Path:
        return self.tenant_dir / "inbox"

    @property
    def audit_log(self) -> Path:
        return self.gw / "audit" / "audit.jsonl"

    def gateway(self, *args: str | os.PathLike[str]) -> Result:
        return run_cli("lgwan-gateway", "--config", self.gw / "gateway.toml", *args, cwd=self.base)

    def endpoint(self) -> transfer.Endpoint:
        host_key = load_public_key((self.gw / "keys" / "ssh_host_ed25519_key.pub").read_text())
        return transfer.Endpoint("127.0.0.1", self.serve.port, USER, host_key, 5.0)

    def key(self) -> Ed25519PrivateKey:
        return load_private_key((self.ward / "keys" / "ward_ed25519").read_bytes())


@pytest.fixture
def central(tmp_path: Path) -> Iterator[Central]:
    """A gateway root with ward account ward1 (tenant shinjuku); serve stopped at the end."""
    gw, ward = tmp_path / "gw", tmp_path / "ward"
    ward.mkdir()
    assert run_cli("lgwan-gateway", "init", "--root", gw, cwd=tmp_path).code == 0
    key = ward / "keys" / "ward_ed25519"
    assert run_cli("lgwan-client", "keygen", "--out", key, cwd=ward).code == 0
    added = run_cli(
        "lgwan-gateway", "--config", gw / "gateway.toml", "user", "add", USER, "--role", "ward",
        "--tenant", TENANT, "--pubkey", f"{key}.pub", "--password-fd", "{fd}",
        "--client-config-out", ward / "client.toml", cwd=tmp_path, secret=PASSWORD,
    )  # fmt: skip
    assert added.code == 0, added.err
    c = Central(tmp_path, gw, ward, Serve(tmp_path, gw / "gateway.toml"))
    try:
        yield c
    finally:
        c.serve.stop()


def _route(config: Path, forward: str, **extra: str) -> None:
    """Fast envelope checks and retries, and the tenant's destination."""
    text = config.read_text(encoding="utf-8")
    for key, value in (
        ("min_work_factor", WORK_FACTOR),
        ("rescan_seconds", 1),
        ("backoff_initial_ms", 50),
        ("backoff_max_seconds", 1),
        ("connect_timeout_seconds", 5),
    ):
        text, count = re.subn(rf"(?m)^{key} = \d+$", f"{key} = {value}", text)
        assert count == 1, key
    table = {"forward": forward, **extra}
    text += f"\n[tenants.{TENANT}]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in table.items()
    )
    config.write_text(text, encoding="utf-8")


def _envelopes(rng: random.Random, low: int = 16 << 10, high: int = 256 << 10) -> dict[str, bytes]:
    """BATCHES valid age envelopes (scrypt, WORK_FACTOR) of random bodies of low-high bytes."""
    batches: dict[str, bytes] = {}
    while len(batches) < BATCHES:
        batch = "20260715-KAIGO-" + "".join(rng.choice(_SUFFIX) for _ in range(6))
        out = io.BytesIO()
        with EncryptingWriter(out, "correct horse battery", work_factor=WORK_FACTOR) as writer:
            writer.write(rng.randbytes(rng.randint(low, high)))
        batches[batch] = out.getvalue()
    return batches


class Uploader(threading.Thread):
    """Uploads every batch to the central gateway, surviving any number of its deaths."""

    def __init__(self, central: Central, batches: dict[str, bytes], deadline: float) -> None:
        super().__init__(daemon=True)
        self.central, self.batches, self.deadline = central, batches, deadline
        self.done: list[str] = []
        self.failures: Counter[str] = Counter()
        self.resumed = 0
        self.lost_renames = 0
        self._rng = _rng(1)

    def run(self) -> None:
        pending = list(self.batches)
        session: transfer.Session | None = None
        key = self.central.key()
        while pending and time.monotonic() < self.deadline:
            try:
                if session is None:
                    session = transfer.connect(self.central.endpoint(), PASSWORD, key)
                if self._upload(session, pending[0]):
                    self.done.append(pending.pop(0))
                    time.sleep(self._rng.uniform(0, 0.04))
            except ClientError as exc:
                self.failures[f"{type(exc).__name__}: {str(exc).split(':')[0][:40]}"] += 1
                if session is not None:
                    session.close()
                session = None
                time.sleep(0.05)
        if session is not None:
            session.close()

    def _upload(self, session: transfer.Session, batch: str) -> bool:
        """One attempt; True once the gateway has receipted the batch."""
        data = self.batches[batch]
        receipt, final = f"/receipts/{batch}.receipt.json", f"/inbox/{batch}.age"
        part = f"{final}.part"
        if session.size(receipt) is not None:
            return True
        if session.size(final) is not None:  # completed, receipt not yet (or being recovered)
            time.sleep(0.05)
            return False
        offset = session.size(part) or 0
        if offset > len(data):
            session.remove(part)
            offset = 0
        if offset:
            self.resumed += 1
        if offset < len(data):
            session.upload(part, _paced(data, offset), offset=offset)
        try:
            session.rename(part, final, timeout=10)
        except ClientError:
            self.lost_renames += 1
            raise
        return True


def _paced(data: bytes, offset: int) -> Iterator[bytes]:
    """The bytes from ``offset`` in 16 KiB blocks, 2 ms apart: a line, not a memcpy."""
    for start in range(offset, len(data), UPLOAD_BLOCK_BYTES):
        yield data[start : start + UPLOAD_BLOCK_BYTES]
        time.sleep(0.002)


def _ls(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []


def _audit_has(log: Path, offset: int, event: str) -> bool:
    with log.open("rb") as handle:
        handle.seek(offset)
        return f'"event":"{event}"'.encode() in handle.read()


def _audit_events(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


def _wait_for(moment: Callable[[], bool], rng: random.Random, jitter: float = 0.0) -> bool:
    """Poll ``moment`` every millisecond up to the trigger timeout; True when it came."""
    deadline = time.monotonic() + TRIGGER_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if moment():
            time.sleep(rng.uniform(0, jitter))
            return True
        time.sleep(0.001)
    return False


def _drain(spool: Path, inboxes: list[Path], batches: dict[str, bytes], deadline: float) -> None:
    """Wait until every batch is in the spool and gone from every gateway inbox."""
    want = {f"{b}.age" for b in batches}
    while time.monotonic() < deadline:
        spooled = {p.name for p in _ls(spool)}
        if want <= spooled and not any(_ls(inbox) for inbox in inboxes):
            return
        time.sleep(0.1)


def _check_spool(spool: Path, batches: dict[str, bytes]) -> None:
    """Exactly the batches, each once with its SHA-256 and arrival record; nothing else."""
    names = sorted(p.name for p in _ls(spool))
    expected = sorted([f"{b}.age" for b in batches] + [f"{b}.arrival.json" for b in batches])
    assert names == expected, "the spool holds something else (a .part, a temporary file)"
    for batch, data in batches.items():
        sha256 = hashlib.sha256(data).hexdigest()
        assert hashlib.sha256((spool / f"{batch}.age").read_bytes()).hexdigest() == sha256, batch
        arrival = json.loads((spool / f"{batch}.arrival.json").read_bytes())
        assert (arrival["batch_id"], arrival["sha256"]) == (batch, sha256)


def _check_gateway(root: Path, batches: dict[str, bytes]) -> Counter[str]:
    """No copy, .part or quarantined file left; every status record signed and forwarded.

    Returns:
        How many batches lack each completion audit event (a SIGKILL between a
        database commit and its audit line loses that line; never duplicates it).
    """
    tenant = root / "storage" / "tenants" / TENANT
    assert _ls(tenant / "inbox") == [], "the gateway kept a copy (or a .part) of a batch"
    assert not [p for p in (root / "storage" / "quarantine").rglob("*") if p.is_file()]
    signer = load_public_key((root / "keys" / "gateway_signing_ed25519.pub").read_text())
    for batch in batches:
        record = loads_record((tenant / "receipts" / f"{batch}.status.json").read_bytes())
        assert verify_record(record, signer, kind=KIND_STATUS)["state"] == "forwarded", batch
    events = _audit_events(root / "audit" / "audit.jsonl")
    missing: Counter[str] = Counter()
    for name in ("upload_completed", "receipt_signed"):
        seen = Counter(str(e.get("batch")) for e in events if e["event"] == name)
        assert set(seen) <= set(batches) and max(seen.values()) == 1, name
        missing[name] = len(set(batches) - set(seen))
    verified = run_cli("lgwan-gateway", "--config", root / "gateway.toml", "audit", "verify",
                       cwd=root)  # fmt: skip
    assert verified.code == 0, verified.out + verified.err
    return missing


def _ward_sees_all_forwarded(central: Central, batches: dict[str, bytes]) -> None:
    """`lgwan-client status` verifies every batch's signed record: all forwarded, exit 0."""
    central.serve.start()
    config = central.ward / "client.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"(?m)^port = \d+$", f"port = {central.serve.port}", text))
    status = run_cli(
        "lgwan-client", "--config", config, "status", "--password-fd", "{fd}",
        cwd=central.ward, secret=PASSWORD,
    )  # fmt: skip
    assert status.code == 0, status.err
    rows = [json.loads(line) for line in status.out.splitlines()]
    assert {row["batch_id"]: row["state"] for row in rows} == dict.fromkeys(batches, "forwarded")


def test_sigkill_of_the_gateway_at_random_moments_loses_and_duplicates_nothing(
    central: Central,
) -> None:
    """50 batches survive ≥20 SIGKILLs of serve: each in the file:// spool once, audit intact."""
    started = time.monotonic()
    deadline = started + GATEWAY_BUDGET_SECONDS
    spool = central.base / "printsite" / "spool"
    spool.mkdir(parents=True)
    _route(central.gw / "gateway.toml", f"file://{spool}")
    rng = _rng()
    batches = _envelopes(rng)
    serve = central.serve
    serve.start()
    uploader = Uploader(central, batches, deadline)
    uploader.start()
    log, inbox = central.audit_log, central.inbox
    kills: Counter[str] = Counter()
    while (uploader.is_alive() or sum(kills.values()) < MIN_KILLS) and time.monotonic() < deadline:
        mode = rng.choice(
            ("upload", "rename", "verify", "forward", "random")
            if uploader.is_alive()
            else ("forward", "random")
        )
        offset = log.stat().st_size
        moments: dict[str, Callable[[], bool]] = {
            "upload": lambda: any(p.name.endswith(".part") for p in _ls(inbox)),
            "rename": functools.partial(_audit_has, log, offset, "upload_completed"),
            "verify": functools.partial(_audit_has, log, offset, "receipt_signed"),
            "forward": lambda: any(p.name.startswith(".") for p in _ls(spool)),
        }
        if mode == "random":
            time.sleep(rng.uniform(0.02, 0.6))
            seen = True
        else:
            seen = _wait_for(moments[mode], rng, 0.01 if mode == "upload" else 0.0)
        serve.kill()
        kills[mode if seen else "timeout"] += 1
        serve.start()
    uploader.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not uploader.is_alive(), f"uploads unfinished: {len(uploader.done)}/{BATCHES}"
    _drain(spool, [inbox], batches, deadline)
    assert serve.stop() == 0, "".join(serve.log[-20:])
    _check_spool(spool, batches)
    missing = _check_gateway(central.gw, batches)
    print(
        f"\ncrash harness (file://): {sum(kills.values())} SIGKILLs {dict(kills)}, "
        f"{serve.starts} starts, {len(uploader.done)} batches, {uploader.resumed} resumed "
        f"uploads, {uploader.lost_renames} lost renames, audit lines lost {dict(missing)}, "
        f"client failures {sum(uploader.failures.values())}, "
        f"{time.monotonic() - started:.1f} s"
    )
    assert sum(kills.values()) >= MIN_KILLS
    assert sorted(uploader.done) == sorted(batches)
    _ward_sees_all_forwarded(central, batches)


@pytest.fixture
def printsite(tmp_path: Path) -> Iterator[tuple[sites.Site, Serve, Path]]:
    """A print-site gateway (forwarder account `relay`, file:// spool) on a fixed port."""
    site = sites.Site(tmp_path, "printsite")
    spool = tmp_path / "printsite-spool"
    spool.mkdir()
    site.set("printsite", "spool", str(spool))
    _route(site.config, f"file://{spool}")
    _, key_path = sites.key_pair(tmp_path / "gw-keys", "forward_ed25519")
    added = site.cli(
        "user", "add", FORWARDER, "--role", "forwarder", "--tenant", TENANT,
        "--pubkey", f"{key_path}.pub", "--allow", "127.0.0.1/32",
    )  # fmt: skip
    assert added.code == 0, added.err
    serve = Serve(tmp_path, site.config, port=sites.free_port())
    try:
        yield site, serve, key_path
    finally:
        serve.stop()
        site.close()


def test_print_site_killed_mid_transfer_still_gets_everything_once(
    central: Central, printsite: tuple[sites.Site, Serve, Path]
) -> None:
    """With the sftp:// print site SIGKILLed mid-transfer and restarted, all 50 arrive once."""
    started = time.monotonic()
    deadline = started + PRINTSITE_BUDGET_SECONDS
    site, remote, key_path = printsite
    remote.start()
    forward = f"sftp://{FORWARDER}@127.0.0.1:{remote.port}/inbox"
    _route(central.gw / "gateway.toml", forward, forward_key=str(key_path),
           host_key=site.host_key, receipt_key=site.receipt_key)  # fmt: skip
    spool = Path(site.root.parent / "printsite-spool")
    rng = _rng(2)
    batches = _envelopes(rng, 256 << 10, 3 << 20)  # large enough to be caught mid-transfer
    central.serve.start()
    uploader = Uploader(central, batches, deadline)
    uploader.start()
    remote_inbox = site.tenant_dir(TENANT) / "inbox"
    log = site.root / "audit" / "audit.jsonl"
    outages: Counter[str] = Counter()
    while (uploader.is_alive() or sum(outages.values()) < MIN_OUTAGES) and (
        time.monotonic() < deadline
    ):
        mode = rng.choice(("transfer", "transfer", "transfer", "completed", "random"))
        offset = log.stat().st_size
        if mode == "random":
            time.sleep(rng.uniform(0.05, 0.8))
            seen = True
        elif mode == "transfer":
            seen = _wait_for(lambda: any(p.name.endswith(".part") for p in _ls(remote_inbox)), rng)
        else:
            seen = _wait_for(functools.partial(_audit_has, log, offset, "upload_completed"), rng)
        remote.kill()
        outages[mode if seen else "timeout"] += 1
        time.sleep(rng.uniform(0.1, 1.0))  # the destination is away
        remote.start()
    uploader.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not uploader.is_alive(), f"uploads unfinished: {len(uploader.done)}/{BATCHES}"
    _drain(spool, [central.inbox, remote_inbox], batches, deadline)
    assert central.serve.stop() == 0, "".join(central.serve.log[-20:])
    assert remote.stop() == 0, "".join(remote.log[-20:])
    _check_spool(spool, batches)
    missing = _check_gateway(central.gw, batches)
    remote_missing = _check_gateway(site.root, batches)
    print(
        f"\ncrash harness (sftp://): {sum(outages.values())} print-site SIGKILLs {dict(outages)}, "
        f"{len(uploader.done)} batches, audit lines lost central {dict(missing)} "
        f"print site {dict(remote_missing)}, {time.monotonic() - started:.1f} s"
    )
    assert sum(outages.values()) >= MIN_OUTAGES
    forwarded = Counter(
        str(e["batch"]) for e in _audit_events(central.audit_log) if e["event"] == "batch_forwarded"
    )
    assert set(forwarded) == set(batches)
    _ward_sees_all_forwarded(central, batches)
