"""`lgwan-client status` against a real `lgwan-gateway serve` process on 127.0.0.1.

The gateway (fixture `drop` from test_send: init, one ward account, serve on a
free port; `routed` adds a file:// destination) runs its forwarding pipeline
on the batches the ward sent: a sealed batch is forwarded, random bytes behind
an age header are quarantined, and the gateway writes the signed status
records. The tests then tamper with those records in storage to check the
client never shows a state it cannot verify.
"""

import json
import os
import pty
import re
import select
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import (
    KIND_STATUS,
    CustodyError,
    dumps_record,
    fingerprint,
    load_private_key,
    loads_record,
    sign_record,
    verify_record,
)
from tests.conftest import BIN, Result, run_cli
from tests.integration.test_send import PASSWORD, TENANT, Drop, drop

__all__ = ["drop"]  # the fixture, shared with test_send
JST = ZoneInfo("Asia/Tokyo")


FINAL_STATES = ("forwarded", "quarantined", "pulled")


@pytest.fixture
def routed(drop: Drop) -> Drop:
    """The gateway restarted with tenant shinjuku forwarding to a file:// spool (wf ≥ 10)."""
    drop.stop()
    spool = drop.base / "printsite" / "spool"
    spool.mkdir(parents=True)
    config = drop.gw / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^min_work_factor = \d+$", "min_work_factor = 10", text)
    text = re.sub(r"(?m)^rescan_seconds = \d+$", "rescan_seconds = 1", text)
    config.write_text(text + f'\n[tenants.{TENANT}]\nforward = "file://{spool}"\n')
    drop.start()
    return drop


def _status(d: Drop, *args: str | os.PathLike[str]) -> Result:
    return run_cli(
        "lgwan-client", "--config", d.config, "status", *args, "--password-fd", "{fd}",
        cwd=d.ward, secret=PASSWORD,
    )  # fmt: skip


def _lines(result: Result) -> dict[str, dict[str, object]]:
    rows = [json.loads(line) for line in result.out.splitlines()]
    return {str(row["batch_id"]): row for row in rows}


def _record_path(d: Drop, batch: str) -> Path:
    return d.storage / "receipts" / f"{batch}.status.json"


def _settled(d: Drop, batch: str, timeout: float = 30.0) -> dict[str, object]:
    """Wait for the gateway's own status record of ``batch`` to reach a final state."""
    deadline = time.monotonic() + timeout
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        try:
            doc = loads_record(_record_path(d, batch).read_bytes())
        except (FileNotFoundError, CustodyError):
            doc = None
        if doc is not None:
            body = verify_record(doc, d.receipt_key(), kind=KIND_STATUS)
            if body["state"] in FINAL_STATES:
                return body
        time.sleep(0.05)
    raise AssertionError(f"{batch} did not settle within {timeout} s (last: {body})")


def _sealed(d: Drop) -> str:
    """Seal synthetic print data (work factor 10) and send it: a batch the gateway forwards."""
    made = run_cli("lgwan-client", "sample", "--records", "5", "--seed", "1", "--out", "d.csv",
                   cwd=d.ward)  # fmt: skip
    assert made.code == 0, made.err
    sealed = run_cli("lgwan-client", "--config", d.config, "seal", "d.csv", "--notice-type",
                     "KAIGO", cwd=d.ward)  # fmt: skip
    assert sealed.code == 0, sealed.err
    batch = sealed.out.strip()
    sent = d.send(batch)
    assert sent.code == 0, sent.err
    return batch


def _sent(d: Drop, count: int) -> list[str]:
    """Send ``count`` batches of random bytes behind an age header (quarantined by the gateway)."""
    batches = []
    for _ in range(count):
        batch, _path = d.batch(50_000)
        result = d.send(batch)
        assert result.code == 0, result.err
        batches.append(batch)
    return sorted(batches)


def _write_status(
    d: Drop, batch: str, state: str, *, key: Ed25519PrivateKey, about: str | None = None,
    seq: int = 99,
) -> None:  # fmt: skip
    """Replace `<batch>.status.json` with a record signed by ``key``."""
    body = {
        "batch_id": about or batch,
        "tenant": TENANT,
        "state": state,
        "at": "2026-07-15T01:05:00+00:00",
        "reason": None,
        "seq": seq,
        "gateway_key": fingerprint(key.public_key()),
    }
    _record_path(d, batch).write_bytes(dumps_record(sign_record(KIND_STATUS, body, key)))


def test_status_shows_the_pipeline_states_signed_by_the_gateway(routed: Drop) -> None:
    """A forwarded and a quarantined batch are listed with state, JST time, reason and seq."""
    good = _sealed(routed)
    (bad,) = _sent(routed, 1)
    forwarded, quarantined = _settled(routed, good), _settled(routed, bad)
    assert (forwarded["state"], quarantined["state"]) == ("forwarded", "quarantined")
    result = _status(routed)
    assert result.code == 0, result.err
    rows = _lines(result)
    assert sorted(rows) == sorted([good, bad])
    assert (rows[good]["state"], rows[good]["signature"]) == ("forwarded", "valid")
    assert rows[good]["seq"] == forwarded["seq"]
    at = datetime.fromisoformat(str(rows[good]["at"]))
    assert at.utcoffset() == timedelta(hours=9)
    assert at == datetime.fromisoformat(str(forwarded["at"]))
    assert rows[bad]["state"] == "quarantined"
    assert rows[bad]["reason"] == quarantined["reason"] and rows[bad]["reason"]
    assert result.err == ""


def test_batch_without_a_route_is_received(drop: Drop) -> None:
    """A batch of a tenant without a destination stays `received`."""
    (a,) = _sent(drop, 1)
    result = _status(drop)
    assert result.code == 0, result.err
    assert _lines(result)[a]["state"] == "received"


def test_status_of_one_batch_shows_only_that_batch(routed: Drop) -> None:
    """`status BATCH` prints just that batch."""
    a, b = _sent(routed, 2)
    _settled(routed, b)
    result = _status(routed, b)
    assert result.code == 0, result.err
    assert list(_lines(result)) == [b]
    assert _lines(result)[b]["state"] == "quarantined"
    assert a not in result.out


def test_tampered_status_file_is_invalid_and_exits_1(routed: Drop) -> None:
    """A status file changed in storage is `signature INVALID`, its state never shown: exit 1."""
    a, b = _sent(routed, 2)
    _settled(routed, a)
    _settled(routed, b)
    path = _record_path(routed, a)
    path.write_bytes(path.read_bytes().replace(b'"quarantined"', b'"forwarded__"'))
    result = _status(routed)
    assert result.code == 1, result.err
    rows = _lines(result)
    assert rows[a]["state"] is None and rows[a]["signature"] == "invalid"
    assert "signature INVALID" in str(rows[a]["error"]) and "bad signature" in str(rows[a]["error"])
    assert "forwarded__" not in result.out
    assert rows[b]["state"] == "quarantined"
    assert f"do not verify: {a}" in result.err


def test_status_signed_by_another_key_is_invalid(routed: Drop) -> None:
    """A status record signed by a key other than the pinned receipt key is invalid: exit 1."""
    (a,) = _sent(routed, 1)
    _settled(routed, a)
    _write_status(routed, a, "forwarded", key=Ed25519PrivateKey.generate())
    result = _status(routed, a)
    assert result.code == 1, result.err
    row = _lines(result)[a]
    assert row["state"] is None
    assert "signed by" in str(row["error"])


def test_status_record_replayed_under_another_batch_is_rejected(routed: Drop) -> None:
    """Batch A's genuine status record copied to B's name is refused (batch_id mismatch)."""
    good = _sealed(routed)
    (bad,) = _sent(routed, 1)
    _settled(routed, good)
    _settled(routed, bad)
    _record_path(routed, bad).write_bytes(_record_path(routed, good).read_bytes())
    result = _status(routed)
    assert result.code == 1, result.err
    rows = _lines(result)
    assert rows[good]["state"] == "forwarded"
    assert rows[bad]["state"] is None
    assert "batch_id" in str(rows[bad]["error"]) and "another batch" in str(rows[bad]["error"])


def test_an_older_genuine_status_record_served_again_is_stale(routed: Drop) -> None:
    """The gateway's own signature, the right batch, but an earlier seq than one already seen:
    `record STALE`, its state never shown, exit 1; the newest seen stays recorded."""
    (a,) = _sent(routed, 1)
    _settled(routed, a)
    first = _status(routed, a)
    assert first.code == 0, first.err
    seen_seq = _lines(first)[a]["seq"]
    assert isinstance(seen_seq, int) and seen_seq >= 1
    gateway_key = load_private_key((routed.gw / "keys" / "gateway_signing_ed25519").read_bytes())
    _write_status(routed, a, "forwarded", key=gateway_key, seq=seen_seq - 1)
    result = _status(routed, a)
    assert result.code == 1, result.err
    row = _lines(result)[a]
    assert row["state"] is None and row["signature"] == "stale"
    assert str(row["error"]).startswith(f"record STALE (status record seq {seen_seq - 1} ")
    assert f"older than ones seen before: {a}" in result.err
    seen = json.loads((routed.ward / "ledger" / "status-seen.json").read_text())
    assert seen[a] == seen_seq


def test_unknown_batch_exits_1(drop: Drop) -> None:
    """`status BATCH` for a batch the gateway never received exits 1 and says so."""
    _sent(drop, 1)
    result = _status(drop, "20260715-KAIGO-ZZZZZZ")
    assert result.code == 1, result.err
    assert "no record of batch 20260715-KAIGO-ZZZZZZ" in result.err
    assert result.out == ""


def test_not_a_batch_id_exits_2(drop: Drop) -> None:
    """A BATCH argument that is not a batch id is a usage error (exit 2), before connecting."""
    result = _status(drop, "../etc/passwd")
    assert result.code == 2, result.err
    assert "not a batch id" in result.err


def test_gateway_down_exits_75(drop: Drop) -> None:
    """With the server stopped, status exits 75 (temporary: safe to retry)."""
    drop.stop()
    result = _status(drop)
    assert result.code == 75, result.err
    assert "cannot reach the gateway" in result.err


def test_no_batches_prints_nothing_and_exits_0(drop: Drop) -> None:
    """A ward with no batches at the gateway gets no lines and exit 0."""
    result = _status(drop)
    assert (result.code, result.out) == (0, ""), result.err


def test_status_on_a_terminal_prints_a_table(routed: Drop) -> None:
    """On a TTY the batches are shown as a table with JST times and the INVALID marker."""
    drop = routed
    a, b = _sent(drop, 2)
    shown = datetime.fromisoformat(str(_settled(drop, a)["at"])).astimezone(JST)
    _settled(drop, b)
    _write_status(drop, b, "forwarded", key=Ed25519PrivateKey.generate())
    master, slave = pty.openpty()
    read_end, write_end = os.pipe()
    os.write(write_end, PASSWORD.encode() + b"\n")
    os.close(write_end)
    env = {**os.environ, "COLUMNS": "160", "TERM": "dumb"}
    proc = subprocess.Popen(
        [str(BIN / "lgwan-client"), "--config", str(drop.config), "status",
         "--password-fd", str(read_end)],
        cwd=drop.ward, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
        pass_fds=(read_end,), env=env,
    )  # fmt: skip
    os.close(slave)
    os.close(read_end)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, "no output from status within 60 s"
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=60) == 1
    screen = b"".join(chunks).decode()
    assert "at (JST)" in screen and f"{shown:%Y-%m-%d %H:%M:%S} JST" in screen
    assert "quarantined" in screen
    assert a in screen and b in screen and "signature INVALID" in screen
    assert not screen.lstrip().startswith("{")
