"""The SFTP adapter in-process: a DropServer thread on 127.0.0.1 and a real paramiko client.

Covers what needs the server's insides at hand: error mapping, negotiated
algorithms, full disk, completion and crash recovery, the batch queue.
"""

import dataclasses
import io
import json
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import paramiko
import pytest

from custody import KIND_RECEIPT, keys, loads_record, verify_record
from gateway import admin, app, sftp_server
from gateway import config as config_mod
from gateway.config import AuthSection
from gateway.policy import PolicyError
from gateway.receipts import RECEIPT_FIELDS, CompletionError, sign_receipt
from gateway.server import DropServer
from gateway.state import BatchRecord, BatchState
from gateway.storage import StorageError

PASSWORD = "correct-horse-battery-staple"
BATCH = "20260715-KAIGO-7F3KQ2"
TENANT = "shinjuku"


@dataclasses.dataclass
class Served:
    """An in-process gateway, its server thread and one ward account."""

    gw: app.Gateway
    server: DropServer
    port: int
    key: paramiko.Ed25519Key
    root: Path

    def events(self, event: str) -> list[dict[str, Any]]:
        lines = (self.root / "audit" / "audit.jsonl").read_bytes().splitlines()
        return [r for r in map(json.loads, lines) if r["event"] == event]

    def inbox(self) -> Path:
        return self.root / "storage" / "tenants" / TENANT / "inbox"

    def sftp(self, **security: tuple[str, ...]) -> paramiko.SFTPClient:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        transport = paramiko.Transport(sock)
        for name, value in security.items():
            setattr(transport.get_security_options(), name, value)
        transport.start_client(timeout=10)
        transport.auth_password("alice", PASSWORD, fallback=False)
        transport.auth_publickey("alice", self.key)
        return paramiko.SFTPClient.from_transport(transport)


Factory = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Factory]:
    """Start gateways: ``serve(reserve_free_bytes=…, before=callback)``."""
    running: list[tuple[Served, threading.Thread]] = []

    def start(before: Callable[[Served], None] | None = None, **storage: int) -> Served:
        root = tmp_path / f"gw{len(running)}"
        admin.init_root(root, actor="test")
        cfg = config_mod.load(str(root / "gateway.toml"))
        cfg = dataclasses.replace(
            cfg,
            auth=AuthSection(failure_delay_ms=0),
            storage=dataclasses.replace(cfg.storage, **storage),
        )
        gw = app.build(cfg)
        private = keys.generate_private_key()
        line = keys.public_key_to_openssh(private.public_key())
        gw.accounts.add("alice", "ward", TENANT, line, [], PASSWORD)
        gw.storage.ensure_tenant(TENANT)
        pem = keys.private_key_to_openssh(private).decode()
        server = DropServer(gw, "127.0.0.1", 0)
        _host, port = server.bind()
        served = Served(gw, server, port, paramiko.Ed25519Key(file_obj=io.StringIO(pem)), root)
        if before is not None:
            before(served)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((served, thread))
        return served

    yield start
    for served, thread in running:
        served.server.stop()
        thread.join(timeout=30)
        served.gw.close()


def test_errors_map_to_sftp_codes() -> None:
    """One function maps every failure to a status code with a client-safe message."""
    to_code = sftp_server._to_sftp_code
    assert to_code(PolicyError("dot_dot", "'..' is not allowed")) == paramiko.SFTP_PERMISSION_DENIED
    assert to_code(StorageError("not_found", "no such file")) == paramiko.SFTP_NO_SUCH_FILE
    assert to_code(StorageError("symlink", "x")) == paramiko.SFTP_PERMISSION_DENIED
    assert to_code(StorageError("quota_exceeded", "x")) == paramiko.SFTP_FAILURE
    refused = CompletionError("batch_exists", "x", refused=True)
    assert to_code(refused) == paramiko.SFTP_PERMISSION_DENIED
    assert to_code(CompletionError("state_error", "x", refused=False)) == paramiko.SFTP_FAILURE
    secret = to_code(RuntimeError("/srv/secret/path exploded"))
    assert (int(secret), secret.message) == (paramiko.SFTP_FAILURE, "internal error")


def test_server_picks_only_contract_algorithms(serve: Factory) -> None:
    """Even a client preferring weak algorithms gets GCM/CTR, SHA-2 and a modern kex."""
    served = serve()
    weak_first = tuple(reversed(paramiko.Transport._preferred_ciphers))
    sftp = served.sftp(
        ciphers=("aes128-cbc", "3des-cbc", "aes128-ctr", *weak_first),
        digests=("hmac-sha1", "hmac-md5", "hmac-sha2-256"),
    )
    sftp.close()
    sftp.get_channel().get_transport().close()
    opened = served.events("connection_opened")[0]
    assert opened["cipher"] in sftp_server.CIPHERS
    assert opened["mac"] in (*sftp_server.MACS, None)
    assert opened["kex"] in sftp_server.KEX
    assert opened["strict_kex"] is True


def test_full_disk_fails_the_write_and_never_completes(serve: Factory) -> None:
    """With no space above the reserve, writes fail; the empty .part cannot complete."""
    served = serve(reserve_free_bytes=1 << 62)
    sftp = served.sftp()
    with sftp.open(f"/inbox/{BATCH}.age.part", "w") as handle, pytest.raises(OSError):
        handle.write(b"x" * 100_000)
    assert sftp.stat(f"/inbox/{BATCH}.age.part").st_size == 0
    with pytest.raises(PermissionError, match="empty"):
        sftp.rename(f"/inbox/{BATCH}.age.part", f"/inbox/{BATCH}.age")
    sftp.get_channel().get_transport().close()
    assert not (served.inbox() / f"{BATCH}.age").exists()
    assert served.gw.store.get_batch(BATCH) is None
    refusals = [r["reason"] for r in served.events("sftp_refused")]
    assert "disk_reserve" in refusals


def test_completion_records_receipts_and_notifies_the_queue(serve: Factory) -> None:
    """A rename completes: DB row RECEIVED, signed receipt with exactly the contract fields."""
    served = serve()
    sftp = served.sftp()
    with sftp.open(f"/inbox/{BATCH}.age.part", "w") as handle:
        handle.write(b"age-encryption.org/v1\n" + b"z" * 5000)
    sftp.rename(f"/inbox/{BATCH}.age.part", f"/inbox/{BATCH}.age")
    receipt = sftp.open(f"/receipts/{BATCH}.receipt.json").read()
    sftp.get_channel().get_transport().close()
    signer = served.gw.signing_key.public_key()
    body = verify_record(loads_record(receipt), signer, kind=KIND_RECEIPT)
    assert tuple(sorted(body)) == tuple(sorted(RECEIPT_FIELDS))
    assert body["uploader"] == "alice"
    assert datetime.fromisoformat(str(body["received_at"])).utcoffset() is not None
    queue = served.gw.queue
    assert isinstance(queue, app.EventBatchQueue)
    assert queue.wait(5) == [BATCH]
    batch = served.gw.store.get_batch(BATCH)
    assert batch is not None and batch.state is BatchState.RECEIVED


def test_duplicate_found_at_rename_is_quarantined(serve: Factory) -> None:
    """If the batch id became known meanwhile, the rename is refused and the .part quarantined."""
    served = serve()
    sftp = served.sftp()
    with sftp.open(f"/inbox/{BATCH}.age.part", "w") as handle:
        handle.write(b"second copy")
    now = datetime.now().astimezone()
    served.gw.store.insert_batch(
        BatchRecord(
            BATCH, "minato", "bob", f"{BATCH}.age", 1, "0" * 64, BatchState.RECEIVED, now, now
        )
    )
    with pytest.raises(PermissionError, match="already been received"):
        sftp.rename(f"/inbox/{BATCH}.age.part", f"/inbox/{BATCH}.age")
    sftp.get_channel().get_transport().close()
    assert not list(served.inbox().iterdir())
    quarantined = list((served.root / "storage" / "quarantine").iterdir())
    assert [p.read_bytes() for p in quarantined] == [b"second copy"]
    rejected = served.events("upload_rejected")[0]
    assert (rejected["reason"], rejected["batch"]) == ("duplicate_batch", BATCH)


def test_recovery_rolls_back_orphans_and_signs_missing_receipts(serve: Factory) -> None:
    """At start, an .age without a DB row goes back to .part; a row without receipt gets one."""
    other, logged = "20260715-KAIGO-AAAAAA", "20260715-KAIGO-BBBBBB"

    def crash_leftovers(served: Served) -> None:
        (served.inbox() / f"{BATCH}.age").write_bytes(b"renamed, never recorded")
        now = datetime.now().astimezone()
        for batch in (other, logged):
            served.gw.store.insert_batch(
                BatchRecord(
                    batch,
                    TENANT,
                    "alice",
                    f"{batch}.age",
                    3,
                    "a" * 64,
                    BatchState.RECEIVED,
                    now,
                    now,
                )
            )
        # ``logged`` crashed after its audit record, ``other`` before it
        served.gw.audit.emit("upload_completed", user="alice", tenant=TENANT, batch=logged)

    served = serve(before=crash_leftovers)
    sftp = served.sftp()
    assert sorted(sftp.listdir("/inbox")) == [f"{BATCH}.age.part"]
    receipt = sftp.open(f"/receipts/{other}.receipt.json").read()
    sftp.rename(f"/inbox/{BATCH}.age.part", f"/inbox/{BATCH}.age")
    sftp.get_channel().get_transport().close()
    body = verify_record(
        loads_record(receipt), served.gw.signing_key.public_key(), kind=KIND_RECEIPT
    )
    assert body["batch_id"] == other
    assert served.events("upload_rejected")[0]["reason"] == "completion_interrupted"
    assert served.events("server_recovered")[0]["files"] == 3
    completed = {e["batch"]: e for e in served.events("upload_completed")}
    assert completed[other]["reason"] == "recovered_after_crash"
    assert completed[other]["size_bytes"] == 3 and completed[other]["user"] == "alice"
    assert [e["batch"] for e in served.events("upload_completed")].count(logged) == 1
    assert "reason" not in completed[logged]
    assert served.gw.store.get_batch(BATCH) is not None


def test_realpath_normalises_and_refuses(serve: Factory) -> None:
    """REALPATH answers virtual paths only, and refuses hostile ones with an error."""
    served = serve()
    sftp = served.sftp()
    assert sftp.normalize(".") == "/"
    assert sftp.normalize("inbox") == "/inbox"
    assert sftp.normalize("/receipts/") == "/receipts"
    with pytest.raises(PermissionError):
        sftp.normalize("/inbox/../..")
    sftp.get_channel().get_transport().close()


def test_append_mode_continues_and_w_truncates(serve: Factory) -> None:
    """'a' appends at the stored size (resume); 'w' starts the .part over."""
    served = serve()
    sftp = served.sftp()
    part = f"/inbox/{BATCH}.age.part"
    with sftp.open(part, "w") as handle:
        handle.write(b"hello ")
    with sftp.open(part, "a") as handle:
        assert handle.tell() == 6
        handle.write(b"world")
    assert (served.inbox() / f"{BATCH}.age.part").read_bytes() == b"hello world"
    with sftp.open(part, "w") as handle:
        handle.write(b"new")
    sftp.get_channel().get_transport().close()
    assert (served.inbox() / f"{BATCH}.age.part").read_bytes() == b"new"


def test_open_handles_are_capped(serve: Factory) -> None:
    """A session cannot hold more than MAX_OPEN_HANDLES files open."""
    served = serve()
    sftp = served.sftp()
    handles = [
        sftp.open(f"/inbox/{BATCH}.age.part", "a") for _ in range(sftp_server.MAX_OPEN_HANDLES)
    ]
    with pytest.raises(PermissionError):
        sftp.open(f"/inbox/{BATCH}.age.part", "a")
    for handle in handles:
        handle.close()
    sftp.open(f"/inbox/{BATCH}.age.part", "a").close()
    sftp.get_channel().get_transport().close()
    assert [r["reason"] for r in served.events("sftp_refused")] == ["too_many_handles"]


def test_sign_receipt_binds_every_field() -> None:
    """A receipt verifies with the gateway key and carries the recorded facts."""
    key = keys.generate_private_key()
    now = datetime.now().astimezone()
    batch = BatchRecord(
        BATCH, TENANT, "alice", f"{BATCH}.age", 7, "b" * 64, BatchState.RECEIVED, now, now
    )
    body = verify_record(
        loads_record(sign_receipt(batch, key)), key.public_key(), kind=KIND_RECEIPT
    )
    assert body == {
        "batch_id": BATCH,
        "tenant": TENANT,
        "uploader": "alice",
        "file": f"{BATCH}.age",
        "size": 7,
        "sha256": "b" * 64,
        "received_at": now.isoformat(timespec="seconds"),
        "gateway_key": keys.fingerprint(key.public_key()),
    }


def test_event_batch_queue_wakes_and_drains() -> None:
    """notify() wakes wait(), which returns and forgets the pending ids."""
    queue = app.EventBatchQueue()
    assert queue.wait(0.01) == []
    threading.Timer(0.05, queue.notify, args=(BATCH,)).start()
    assert queue.wait(5) == [BATCH]
    assert queue.wait(0.01) == []


def test_accepted_sockets_have_tcp_nodelay(serve: Factory) -> None:
    """TCP_NODELAY is set on every accepted socket."""
    served = serve()
    sftp = served.sftp()
    connections = list(served.server._connections)
    flags = [
        c.transport.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for c in connections
    ]
    sftp.get_channel().get_transport().close()
    assert flags and all(flags)


def _raw_request(kind: int, request_id: int, path: bytes) -> bytes:
    body = bytes([kind]) + request_id.to_bytes(4, "big") + len(path).to_bytes(4, "big") + path
    return len(body).to_bytes(4, "big") + body


def test_answers_to_requests_already_waiting_go_out_together(
    serve: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INIT and 60 STATs sent in one go: 61 answers, in order, in a few sends (not 61)."""
    from gateway import sftp_protocol

    flushes: list[int] = []
    real = sftp_protocol.SFTPProtocol._flush

    def counting(self: sftp_protocol.SFTPProtocol) -> None:
        flushes.append(self._outgoing_bytes)
        real(self)

    monkeypatch.setattr(sftp_protocol.SFTPProtocol, "_flush", counting)
    served = serve()
    channel = served.sftp().get_channel()
    transport = channel.get_transport()
    raw = transport.open_session()
    raw.invoke_subsystem("sftp")
    requests = b"\x00\x00\x00\x05\x01\x00\x00\x00\x03"  # INIT, version 3
    requests += b"".join(_raw_request(17, number, b"/inbox") for number in range(60))  # STAT
    raw.sendall(requests)
    received = b""
    answers: list[tuple[int, int]] = []
    while len(answers) < 61:
        chunk = raw.recv(65536)
        assert chunk, "the channel closed early"
        received += chunk
        while len(received) >= 4 and len(received) >= 4 + int.from_bytes(received[:4], "big"):
            size = int.from_bytes(received[:4], "big")
            packet, received = received[4 : 4 + size], received[4 + size :]
            answers.append((packet[0], int.from_bytes(packet[1:5], "big")))
    transport.close()
    assert answers[0][0] == 2  # VERSION
    assert [number for kind, number in answers[1:]] == list(range(60))
    assert {kind for kind, _ in answers[1:]} == {105}  # ATTRS
    print(f"{len(flushes)} sends for {len(answers)} answers")
    assert 1 <= len(flushes) <= 20, flushes  # the first session's few, then this one's


def test_answers_queued_before_an_oversized_packet_are_still_sent(serve: Factory) -> None:
    """A request, then a header declaring a 50 MB packet, in one go: the request is answered
    before the session ends (its answer was queued when the bad header arrived)."""
    served = serve()
    transport = served.sftp().get_channel().get_transport()
    raw = transport.open_session()
    raw.invoke_subsystem("sftp")
    raw.settimeout(10)
    raw.sendall(b"\x00\x00\x00\x05\x01\x00\x00\x00\x03")  # INIT
    raw.sendall(_raw_request(16, 7, b"/") + (50_000_000).to_bytes(4, "big"))  # REALPATH, then
    received = b""
    while True:
        chunk = raw.recv(65536)
        if not chunk:
            break
        received += chunk
    transport.close()
    answers = []
    while len(received) >= 4:
        size = int.from_bytes(received[:4], "big")
        packet, received = received[4 : 4 + size], received[4 + size :]
        answers.append((packet[0], int.from_bytes(packet[1:5], "big")))
    assert answers[0][0] == 2 and (104, 7) in answers  # VERSION, then NAME for request 7
