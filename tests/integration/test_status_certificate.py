"""`lgwan-client status` fetching erasure certificates from a real `lgwan-gateway serve`.

The gateway (fixture `drop` from test_send: init, one ward account, serve on
127.0.0.1) receives a batch the ward really sealed and sent. The test then
plays the print site's part: it places a certificate signed by a generated
print-site key into the tenant's receipts area in the gateway's storage
(`storage/tenants/<tenant>/receipts/<batch>.erasure.json`, where the gateway
publishes it) and an `erased` status record signed with the gateway's own key.
The ward reads both over SFTP, as in production.
"""

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import ledger
from custody import (
    KIND_STATUS,
    dumps_record,
    fingerprint,
    load_private_key,
    public_key_to_openssh,
    sign_record,
)
from gateway import policy
from tests.client import certificate_kit as kit
from tests.conftest import Result, run_cli
from tests.integration.test_send import PASSWORD, TENANT, Drop, drop

__all__ = ["drop"]  # the fixture, shared with test_send

pytestmark = pytest.mark.skipif(
    not hasattr(policy.NameKind, "ERASURE"),
    reason="the gateway's policy does not list <batch>.erasure.json in /receipts yet",
)

PRINTSITE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
assert TENANT == kit.TENANT


def _pin(d: Drop, key: Ed25519PrivateKey | None = PRINTSITE_KEY) -> None:
    """Pin ``key`` as [printsite] signing_key in the ward's client config."""
    line = "" if key is None else public_key_to_openssh(key.public_key())
    text = d.config.read_text(encoding="utf-8")
    assert "[printsite]" not in text
    d.config.write_text(text + f'\n[printsite]\nsigning_key = "{line}"\n', encoding="utf-8")


def _sealed_and_sent(d: Drop) -> dict[str, Any]:
    """Seal synthetic print data and send it; return the ledger's sealed entry."""
    made = run_cli("lgwan-client", "sample", "--records", "5", "--seed", "2", "--out", "d.csv",
                   cwd=d.ward)  # fmt: skip
    assert made.code == 0, made.err
    sealed = run_cli("lgwan-client", "--config", d.config, "seal", "d.csv", "--notice-type",
                     "KAIGO", cwd=d.ward)  # fmt: skip
    assert sealed.code == 0, sealed.err
    batch = sealed.out.strip()
    sent = d.send(batch)
    assert sent.code == 0, sent.err
    (entry,) = [e for e in ledger.entries(_book(d), batch) if e["event"] == "sealed"]
    return entry


def _book(d: Drop) -> Path:
    return d.ward / "ledger" / "ledger.jsonl"


def _erase(d: Drop, sealed: dict[str, Any], key: Ed25519PrivateKey = PRINTSITE_KEY) -> bytes:
    """Publish an erasure certificate and an `erased` status record as the gateway would."""
    batch = str(sealed["batch"])
    data = kit.signed(kit.body(sealed, key), key)
    receipts = d.storage / "receipts"
    (receipts / f"{batch}.erasure.json").write_bytes(data)
    gateway_key = load_private_key((d.gw / "keys" / "gateway_signing_ed25519").read_bytes())
    body = {
        "batch_id": batch,
        "tenant": TENANT,
        "state": "erased",
        "at": "2026-07-20T10:00:06.000+09:00",
        "reason": None,
        "seq": 9,
        "gateway_key": fingerprint(gateway_key.public_key()),
    }
    record = dumps_record(sign_record(KIND_STATUS, body, gateway_key))
    (receipts / f"{batch}.status.json").write_bytes(record)
    return data


def _status(d: Drop, *args: str) -> Result:
    return run_cli(
        "lgwan-client", "--config", d.config, "status", *args, "--password-fd", "{fd}",
        cwd=d.ward, secret=PASSWORD,
    )  # fmt: skip


def _row(result: Result, batch: str) -> dict[str, Any]:
    rows = {row["batch_id"]: row for row in map(json.loads, result.out.splitlines())}
    return dict(rows[batch])


def _saved(d: Drop, batch: str) -> Path:
    return d.ward / "certificates" / f"{batch}.erasure.json"


def test_status_downloads_the_certificate_and_verify_records_it(drop: Drop) -> None:
    """An erased batch: status saves and checks the certificate; verify-certificate records it."""
    _pin(drop)
    sealed = _sealed_and_sent(drop)
    batch = str(sealed["batch"])
    data = _erase(drop, sealed)
    result = _status(drop)
    assert result.code == 0, result.err
    row = _row(result, batch)
    assert (row["state"], row["signature"]) == ("erased", "valid")
    path = _saved(drop, batch)
    assert (row["certificate"], row["certificate_check"]) == (str(path), "valid")
    assert path.read_bytes() == data
    assert result.err.splitlines() == [
        f"lgwan-client: {batch}: erasure certificate saved as {path} verifies",
        f"hint: run 'lgwan-client verify-certificate {path}' to record it in the ledger",
    ]
    verified = run_cli("lgwan-client", "--config", drop.config, "verify-certificate", path,
                       cwd=drop.ward)  # fmt: skip
    assert verified.code == 0, verified.err
    assert verified.out.startswith(f"ok: {batch}: erasure certificate verified: ")
    events = [e["event"] for e in ledger.entries(_book(drop), batch)]
    assert events == ["sealed", "sent", "erasure-verified"]
    again = _status(drop, batch)
    assert again.code == 0, again.err
    again_row = _row(again, batch)
    assert (again_row["certificate_check"], again_row["certificate_ledger_seq"]) == ("valid", 3)
    assert again.err == ""  # saved, verified and recorded: nothing left to do
    checked = run_cli("lgwan-client", "--config", drop.config, "ledger", "verify", cwd=drop.ward)
    assert checked.code == 0, checked.err


def test_without_a_pinned_key_the_certificate_is_saved_unchecked(drop: Drop) -> None:
    """No [printsite] signing_key: saved, said to be unverified, exit 0."""
    sealed = _sealed_and_sent(drop)
    batch = str(sealed["batch"])
    _erase(drop, sealed)
    result = _status(drop, batch)
    assert result.code == 0, result.err
    assert _row(result, batch)["certificate_check"] == "unchecked"
    assert _saved(drop, batch).is_file()
    assert "is not verified ([printsite] signing_key is empty)" in result.err
    assert "hint: set [printsite] signing_key, then run 'lgwan-client verify-certificate" in (
        result.err
    )


def test_forged_certificate_at_the_gateway_fails_status(drop: Drop) -> None:
    """A certificate signed by another key than the pinned one: exit 1, 'does NOT verify'."""
    _pin(drop)
    sealed = _sealed_and_sent(drop)
    batch = str(sealed["batch"])
    _erase(drop, sealed, key=Ed25519PrivateKey.generate())
    result = _status(drop)
    assert result.code == 1, result.err
    assert _row(result, batch)["certificate_check"] == "invalid"
    first = result.err.splitlines()[0]
    assert first.startswith(f"lgwan-client: error: {batch}: erasure certificate saved as ")
    assert "does NOT verify: record signed by" in first


def test_a_different_saved_certificate_is_never_replaced(drop: Drop) -> None:
    """A different file already saved under the name: exit 1, it stays as it was."""
    _pin(drop)
    sealed = _sealed_and_sent(drop)
    batch = str(sealed["batch"])
    _erase(drop, sealed)
    path = _saved(drop, batch)
    path.parent.mkdir()
    path.write_bytes(b"an earlier certificate\n")
    result = _status(drop)
    assert result.code == 1, result.err
    assert _row(result, batch)["certificate_check"] == "conflict"
    assert result.err.splitlines()[0] == (
        f"lgwan-client: error: {batch}: {path} exists and differs from the certificate at the "
        "gateway; it was not replaced"
    )
    assert path.read_bytes() == b"an earlier certificate\n"
