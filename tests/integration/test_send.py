"""`lgwan-client send` against a real `lgwan-gateway serve` process on 127.0.0.1.

Each test builds its own gateway (`init`, `user add --client-config-out`) and
ward (`keygen`), starts `serve --listen 127.0.0.1:0`, and runs the client as a
subprocess, asserting exit status, stdout and stderr.
"""

import hashlib
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from client import ledger, transfer
from custody import (
    KIND_RECEIPT,
    dumps_record,
    fingerprint,
    load_private_key,
    load_public_key,
    loads_record,
    verify_record,
)
from tests.conftest import BIN, Result, run_cli

PASSWORD = "ward-password-0123456789"
TENANT = "shinjuku"
USER = "ward1"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


@dataclass
class Drop:
    """A gateway root, a running server and a ward directory with its client config."""

    base: Path
    gw: Path
    ward: Path
    port: int = 0
    server: subprocess.Popen[bytes] | None = None
    server_err: list[str] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.ward / "client.toml"

    @property
    def storage(self) -> Path:
        return self.gw / "storage" / "tenants" / TENANT

    @property
    def ward_key(self) -> Path:
        return self.ward / "keys" / "ward_ed25519"

    def gateway(self, *args: str | os.PathLike[str], secret: str | None = None) -> Result:
        return run_cli(
            "lgwan-gateway",
            "--config",
            self.gw / "gateway.toml",
            *args,
            cwd=self.base,
            secret=secret,
        )

    def send(self, *args: str | os.PathLike[str], password: str = PASSWORD) -> Result:
        return run_cli(
            "lgwan-client",
            "--config",
            self.config,
            "send",
            *args,
            "--password-fd",
            "{fd}",
            cwd=self.ward,
            secret=password,
        )

    def start(self) -> None:
        """Start `serve` on a free port and point the client config at it."""
        proc = subprocess.Popen(
            [str(BIN / "lgwan-gateway"), "--config", str(self.gw / "gateway.toml"), "serve",
             "--listen", "127.0.0.1:0"],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        first = proc.stderr.readline().decode()
        match = _LISTENING.search(first)
        assert match, f"serve did not start: {first!r}"
        self.server, self.port = proc, int(match.group(2))
        stream = proc.stderr
        threading.Thread(target=lambda: self.server_err.extend(
            line.decode() for line in stream), daemon=True).start()  # fmt: skip
        text = self.config.read_text(encoding="utf-8")
        self.config.write_text(re.sub(r"(?m)^port = \d+$", f"port = {self.port}", text))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(sig)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        self.server = None

    def batch(self, size: int = 300_000) -> tuple[str, Path]:
        """A `<batch>.age` of random bytes in the ward's outbox."""
        batch = "20260715-KAIGO-" + "".join(secrets.choice(_SUFFIX) for _ in range(6))
        path = self.ward / "outbox" / f"{batch}.age"
        path.parent.mkdir(exist_ok=True)
        with path.open("wb") as handle:
            handle.write(b"age-encryption.org/v1\n")
            left = size - 22
            while left > 0:
                chunk = os.urandom(min(left, 1 << 20))
                handle.write(chunk)
                left -= len(chunk)
        return batch, path

    def endpoint(self) -> transfer.Endpoint:
        host_key = (self.gw / "keys" / "ssh_host_ed25519_key.pub").read_text()
        return transfer.Endpoint("127.0.0.1", self.port, USER, load_public_key(host_key), 10)

    def key(self) -> Ed25519PrivateKey:
        return load_private_key(self.ward_key.read_bytes())

    def receipt_key(self) -> Ed25519PublicKey:
        return load_public_key((self.gw / "keys" / "gateway_signing_ed25519.pub").read_text())


@pytest.fixture
def drop(tmp_path: Path) -> Iterator[Drop]:
    """A fresh gateway with one ward account, serving on a free loopback port."""
    d = Drop(base=tmp_path, gw=tmp_path / "gw", ward=tmp_path / "ward")
    d.ward.mkdir()
    assert run_cli("lgwan-gateway", "init", "--root", d.gw, cwd=tmp_path).code == 0
    keygen = run_cli("lgwan-client", "keygen", "--out", d.ward_key, cwd=d.ward)
    assert keygen.code == 0, keygen.err
    added = d.gateway(
        "user", "add", USER, "--role", "ward", "--tenant", TENANT,
        "--pubkey", f"{d.ward_key}.pub", "--password-fd", "{fd}",
        "--client-config-out", d.config, secret=PASSWORD,
    )  # fmt: skip
    assert added.code == 0, added.err
    with d.config.open("a", encoding="utf-8") as handle:
        handle.write('\n[seal]\nwork_factor = 10\n\n[ward]\nhandler = "山田"\n')
    d.start()
    try:
        yield d
    finally:
        d.stop()


def _inbox(d: Drop) -> list[str]:
    inbox = d.storage / "inbox"
    return sorted(p.name for p in inbox.iterdir()) if inbox.exists() else []


def _sent_entries(d: Drop, batch: str) -> list[dict[str, object]]:
    book = d.ward / "ledger" / "ledger.jsonl"
    return [e for e in ledger.entries(book, batch) if e["event"] == "sent"]


def test_seal_then_send_verifies_the_receipt_and_records_it(drop: Drop) -> None:
    """A sealed batch is uploaded, its signed receipt verified and sealed+sent recorded."""
    sample = run_cli("lgwan-client", "sample", "--records", "50", "--seed", "1", "--out",
                     "data.csv", cwd=drop.ward)  # fmt: skip
    assert sample.code == 0, sample.err
    sealed = run_cli("lgwan-client", "--config", drop.config, "seal", "data.csv",
                     "--notice-type", "KAIGO", cwd=drop.ward)  # fmt: skip
    assert sealed.code == 0, sealed.err
    batch = sealed.out.strip()
    local = drop.ward / "outbox" / f"{batch}.age"
    result = drop.send(batch)
    assert result.code == 0, result.err
    assert result.out == f"{batch}\n"
    assert "received by the gateway" in result.err
    assert (drop.storage / "inbox" / f"{batch}.age").read_bytes() == local.read_bytes()
    receipt = loads_record((drop.storage / "receipts" / f"{batch}.receipt.json").read_bytes())
    body = verify_record(receipt, drop.receipt_key(), kind=KIND_RECEIPT)
    assert body["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    book = drop.ward / "ledger" / "ledger.jsonl"
    events = [(e["event"], e["batch"]) for e in ledger.entries(book)]
    assert events == [("sealed", batch), ("sent", batch)]
    (sent,) = _sent_entries(drop, batch)
    assert sent["receipt"] == receipt
    assert sent["handler"] == "山田"
    assert sent["host_key"] == fingerprint(drop.endpoint().host_key)
    assert sent["receipt_signer"] == fingerprint(drop.receipt_key())
    assert ledger.Ledger.verify(book, drop.key().public_key()).ok


def test_send_accepts_the_path_of_an_age_file(drop: Drop) -> None:
    """`send FILE.age` uploads the named file under its batch id."""
    batch, path = drop.batch()
    moved = drop.ward / f"{batch}.age"
    path.rename(moved)
    result = drop.send(moved)
    assert result.code == 0, result.err
    assert (drop.storage / "inbox" / f"{batch}.age").read_bytes() == moved.read_bytes()


def test_wrong_password_exits_1_and_uploads_nothing(drop: Drop) -> None:
    """A wrong password is a refusal (exit 1) naming the login; nothing reaches the inbox."""
    batch, _ = drop.batch()
    result = drop.send(batch, password="not-the-password-at-all")
    assert result.code == 1, result.err
    assert "login refused" in result.err
    assert "not-the-password" not in result.err
    assert _inbox(drop) == []
    assert _sent_entries(drop, batch) == []


def test_wrong_key_exits_1(drop: Drop) -> None:
    """The right password with a key the gateway does not know is refused (exit 1)."""
    other = drop.ward / "other" / "key"
    assert run_cli("lgwan-client", "keygen", "--out", other, cwd=drop.ward).code == 0
    batch, _ = drop.batch()
    result = drop.send(batch, "--key", other)
    assert result.code == 1, result.err
    assert "does not accept the key" in result.err
    assert _inbox(drop) == []


def test_changed_host_key_exits_1_naming_the_fingerprint_seen(drop: Drop) -> None:
    """A pinned host key that differs from the server's is refused before login."""
    stranger = drop.base / "stranger"
    assert run_cli("lgwan-client", "keygen", "--out", stranger, cwd=drop.base).code == 0
    text = drop.config.read_text(encoding="utf-8")
    pinned = Path(f"{stranger}.pub").read_text().strip()
    drop.config.write_text(re.sub(r'(?m)^host_key = ".*"$', f'host_key = "{pinned}"', text))
    batch, _ = drop.batch()
    result = drop.send(batch)
    assert result.code == 1, result.err
    seen = fingerprint(drop.endpoint().host_key)
    assert seen in result.err
    assert fingerprint(load_public_key(pinned)) in result.err
    assert "hint:" in result.err
    audit = (drop.gw / "audit" / "audit.jsonl").read_text()
    assert "login_failed" not in audit and "login_succeeded" not in audit


def test_empty_host_key_exits_78(drop: Drop) -> None:
    """An empty gateway.host_key is a configuration error (never trust on first use)."""
    text = drop.config.read_text(encoding="utf-8")
    drop.config.write_text(re.sub(r'(?m)^host_key = ".*"$', 'host_key = ""', text))
    batch, _ = drop.batch()
    result = drop.send(batch)
    assert result.code == 78, result.err
    assert "gateway.host_key" in result.err


def test_key_readable_by_others_exits_78(drop: Drop) -> None:
    """A --key file readable by group or others is refused before connecting."""
    loose = drop.ward / "loose"
    loose.write_bytes(drop.ward_key.read_bytes())
    loose.chmod(0o644)
    batch, _ = drop.batch()
    result = drop.send(batch, "--key", loose)
    assert result.code == 78, result.err
    assert "chmod 600" in result.err


def test_gateway_down_exits_75(drop: Drop) -> None:
    """With the server stopped, send exits 75 (temporary: safe to retry)."""
    drop.stop()
    batch, _ = drop.batch()
    result = drop.send(batch)
    assert result.code == 75, result.err
    assert "cannot reach the gateway" in result.err


def test_interrupted_upload_is_resumed(drop: Drop) -> None:
    """A .part left by an earlier attempt is completed from its size, not re-sent."""
    batch, path = drop.batch(3 << 20)
    data = path.read_bytes()
    with transfer.connect(drop.endpoint(), PASSWORD, drop.key()) as session:
        session.upload(f"/inbox/{batch}.age.part", [data[:1_000_000]], offset=0)
    result = drop.send(batch)
    assert result.code == 0, result.err
    assert "resumed at 1000000 bytes" in result.err
    assert (drop.storage / "inbox" / f"{batch}.age").read_bytes() == data
    (sent,) = _sent_entries(drop, batch)
    assert sent["resumed_from"] == 1_000_000


def test_killed_gateway_mid_upload_exits_75_then_resumes(drop: Drop) -> None:
    """Killing the server mid-upload gives 75; after a restart send resumes and completes."""
    batch, path = drop.batch(160 << 20)
    part = drop.storage / "inbox" / f"{batch}.age.part"
    read_end, write_end = os.pipe()
    os.write(write_end, PASSWORD.encode() + b"\n")
    os.close(write_end)
    proc = subprocess.Popen(
        [str(BIN / "lgwan-client"), "--config", str(drop.config), "send", batch,
         "--password-fd", str(read_end)],
        cwd=drop.ward, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        pass_fds=(read_end,),
    )  # fmt: skip
    os.close(read_end)
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 8 << 20):
        assert time.monotonic() < deadline, "upload never started"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    drop.stop(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err.decode()
    assert "safe to run again" in err.decode()
    kept = part.stat().st_size
    assert 0 < kept < path.stat().st_size
    drop.start()
    result = drop.send(batch)
    assert result.code == 0, result.err
    assert re.search(r"resumed at \d+ bytes", result.err)
    final = drop.storage / "inbox" / f"{batch}.age"
    assert hashlib.sha256(final.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_damaged_remote_prefix_is_reported_clearly(drop: Drop) -> None:
    """A .part whose bytes differ from the local file is caught by the receipt's SHA-256."""
    batch, _ = drop.batch()
    with transfer.connect(drop.endpoint(), PASSWORD, drop.key()) as session:
        session.upload(f"/inbox/{batch}.age.part", [b"X" * 1000], offset=0)
    result = drop.send(batch)
    assert result.code == 1, result.err
    assert "received different content" in result.err
    assert "was damaged" in result.err
    assert _sent_entries(drop, batch) == []


def test_resend_of_a_received_batch_is_idempotent(drop: Drop) -> None:
    """Sending a batch the gateway already received verifies its receipt: exit 0, one entry."""
    batch, _ = drop.batch()
    assert drop.send(batch).code == 0
    again = drop.send(batch)
    assert again.code == 0, again.err
    assert "already received earlier" in again.err
    assert len(_sent_entries(drop, batch)) == 1


def test_resend_with_different_local_content_exits_1(drop: Drop) -> None:
    """A local file that differs from what the gateway received is not reported as sent."""
    batch, path = drop.batch()
    assert drop.send(batch).code == 0
    path.write_bytes(b"age-encryption.org/v1\n" + os.urandom(1000))
    result = drop.send(batch)
    assert result.code == 1, result.err
    assert "received different content" in result.err


def test_tampered_receipt_exits_1(drop: Drop) -> None:
    """A receipt changed in the gateway's storage fails signature verification: exit 1."""
    batch, _ = drop.batch()
    assert drop.send(batch).code == 0
    stored = drop.storage / "receipts" / f"{batch}.receipt.json"
    doc = loads_record(stored.read_bytes())
    body = doc["body"]
    assert isinstance(body, dict)
    body["received_at"] = "2020-01-01T00:00:00+09:00"
    stored.write_bytes(dumps_record(doc))
    result = drop.send(batch)
    assert result.code == 1, result.err
    assert "does not verify" in result.err
    assert "bad signature" in result.err
    assert len(_sent_entries(drop, batch)) == 1


def test_upload_over_the_gateway_limit_exits_1_and_stays_resumable(drop: Drop) -> None:
    """A write refused by the gateway (upload size limit) is a refusal, not a retry."""
    drop.stop()
    config = drop.gw / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(re.sub(r"(?m)^max_upload_bytes = \d+$", "max_upload_bytes = 1048576", text))
    drop.start()
    batch, _ = drop.batch(3 << 20)
    result = drop.send(batch)
    assert result.code == 1, result.err
    assert "the gateway refused" in result.err
    assert _inbox(drop) == [f"{batch}.age.part"]
    assert _sent_entries(drop, batch) == []


def test_envelope_changed_since_sealing_is_withdrawn(drop: Drop) -> None:
    """An envelope whose bytes differ from the ledger's `sealed` entry is never completed."""
    sample = run_cli("lgwan-client", "sample", "--records", "5", "--out", "d.csv", cwd=drop.ward)
    assert sample.code == 0, sample.err
    sealed = run_cli("lgwan-client", "--config", drop.config, "seal", "d.csv",
                     "--notice-type", "KAIGO", cwd=drop.ward)  # fmt: skip
    assert sealed.code == 0, sealed.err
    batch = sealed.out.strip()
    with (drop.ward / "outbox" / f"{batch}.age").open("ab") as handle:
        handle.write(b"tampered")
    result = drop.send(batch)
    assert result.code == 1, result.err
    assert "changed since it was sealed" in result.err
    assert _inbox(drop) == []
    assert not (drop.storage / "receipts" / f"{batch}.receipt.json").exists()
