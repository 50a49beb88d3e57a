"""client.status: verifying the gateway's receipt and status records, pure parts."""

import json
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import status
from custody import KIND_RECEIPT, KIND_STATUS, dumps_record, fingerprint, sign_record

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260715-KAIGO-9ZZZZ9"
TENANT = "shinjuku"
KEY = Ed25519PrivateKey.generate()
SIGNER = fingerprint(KEY.public_key())


def _receipt(batch: str = BATCH, key: Ed25519PrivateKey = KEY, **changes: object) -> bytes:
    body: dict[str, object] = {
        "batch_id": batch,
        "tenant": TENANT,
        "uploader": "ward1",
        "file": f"{batch}.age",
        "size": 1234,
        "sha256": "ab" * 32,
        "received_at": "2026-07-15T01:02:03+00:00",
        "gateway_key": fingerprint(key.public_key()),
    }
    body.update(changes)
    return dumps_record(sign_record(KIND_RECEIPT, body, key))


def _status(
    batch: str = BATCH,
    key: Ed25519PrivateKey = KEY,
    kind: str = KIND_STATUS,
    extra: Mapping[str, object] | None = None,
    **changes: object,
) -> bytes:
    body: dict[str, object] = {
        "batch_id": batch,
        "tenant": TENANT,
        "state": "forwarded",
        "at": "2026-07-15T01:05:00+00:00",
        "reason": None,
        "seq": 3,
        "gateway_key": fingerprint(key.public_key()),
    }
    body.update(changes)
    body.update(extra or {})
    return dumps_record(sign_record(kind, body, key))


def _check(receipt: bytes | None, record: bytes | None, batch: str = BATCH) -> status.BatchStatus:
    return status.check(batch, receipt, record, KEY.public_key(), TENANT)


def test_valid_status_record_gives_its_state_time_and_seq() -> None:
    """A verified status record is the batch's latest state, with its time and seq."""
    item = _check(_receipt(), _status())
    assert item.valid
    assert (item.state, item.reason, item.seq) == ("forwarded", None, 3)
    assert item.at == datetime(2026, 7, 15, 1, 5, tzinfo=UTC)


def test_receipt_only_is_received_at_the_receipt_time() -> None:
    """A batch with a valid receipt and no status record yet is ``received``."""
    item = _check(_receipt(), None)
    assert (item.state, item.valid) == ("received", True)
    assert item.at == datetime(2026, 7, 15, 1, 2, 3, tzinfo=UTC)


def test_quarantine_reason_is_shown() -> None:
    """A quarantined batch carries the gateway's reason."""
    item = _check(_receipt(), _status(state="quarantined", reason="work_factor_too_low"))
    assert (item.state, item.reason) == ("quarantined", "work_factor_too_low")


def test_status_without_receipt_still_counts() -> None:
    """A valid status record alone (receipt not readable) still states the batch."""
    assert _check(None, _status(state="pulled")).state == "pulled"


def test_tampered_status_record_is_invalid_and_has_no_state() -> None:
    """A status record changed after signing is ``signature INVALID`` and shows no state."""
    data = _status(state="quarantined").replace(b'"quarantined"', b'"forwarded"')
    item = _check(_receipt(), data)
    assert not item.valid
    assert item.state is None and item.at is None and item.reason is None
    assert item.error is not None and item.error.startswith("signature INVALID (status record")


def test_status_signed_by_another_key_is_invalid() -> None:
    """A status record signed by any key but the pinned one is invalid."""
    item = _check(_receipt(), _status(key=Ed25519PrivateKey.generate()))
    assert item.state is None
    assert item.error is not None and "signed by" in item.error


def test_receipt_signed_by_another_key_is_invalid() -> None:
    """A forged receipt makes the batch invalid even without a status record."""
    item = _check(_receipt(key=Ed25519PrivateKey.generate()), None)
    assert item.state is None
    assert item.error is not None and "receipt" in item.error


def test_status_replayed_from_another_batch_is_rejected() -> None:
    """Another batch's genuine status record stored under this batch's name is refused."""
    item = _check(_receipt(), _status(batch=OTHER, state="forwarded"))
    assert item.state is None
    assert item.error is not None and "batch_id" in item.error and "another batch" in item.error


def test_receipt_kind_under_status_name_is_rejected() -> None:
    """A receipt record cannot be passed off as a status record (kind is signed)."""
    item = _check(_receipt(), _receipt())
    assert item.error is not None and "kind" in item.error


def test_status_of_another_tenant_is_rejected() -> None:
    """A record for another tenant is refused."""
    item = _check(_receipt(), _status(tenant="minato"))
    assert item.error is not None and "tenant" in item.error


@pytest.mark.parametrize(
    "changes",
    [
        {"state": "Forwarded; rm -rf"},
        {"state": 7},
        {"seq": -1},
        {"seq": True},
        {"reason": 5},
        {"at": "2026-07-15T01:05:00"},
        {"at": "yesterday"},
        {"extra": 1},
    ],
)
def test_malformed_status_body_is_invalid(changes: Mapping[str, object]) -> None:
    """A signed status body with a bad field (or an extra one) is not shown as a state."""
    item = _check(_receipt(), _status(extra=changes))
    assert item.state is None and not item.valid


def test_non_canonical_bytes_are_invalid() -> None:
    """A record re-serialised (not its one byte form) is invalid."""
    doc = json.loads(_status())
    item = _check(_receipt(), json.dumps(doc, indent=1).encode())
    assert not item.valid


def test_listing_ignores_other_names() -> None:
    """Only receipt and status names of valid batch ids count, each with what it has."""
    names = [
        f"{OTHER}.status.json",
        f"{BATCH}.receipt.json",
        f"{BATCH}.status.json",
        "notes.txt",
        "../x.receipt.json",
        f"{BATCH}.age",
        "20260715-kaigo-7f3kq2.receipt.json",
    ]
    assert status.listing(names) == {
        BATCH: {".receipt.json", ".status.json"},
        OTHER: {".status.json"},
    }


def test_json_line_shows_jst_and_signature_verdict() -> None:
    """JSON lines carry the time in JST and say whether the signature was valid."""
    good = json.loads(status.json_line(_check(_receipt(), _status())))
    assert good["at"] == "2026-07-15T10:05:00+09:00"
    assert (good["state"], good["signature"], good["error"]) == ("forwarded", "valid", None)
    forged = _status(key=Ed25519PrivateKey.generate())
    bad = json.loads(status.json_line(_check(_receipt(), forged)))
    assert (bad["state"], bad["signature"]) == (None, "invalid")


def test_format_time_is_jst() -> None:
    """Times for people are shown in JST."""
    moment = datetime(2026, 7, 15, 1, 5, tzinfo=UTC)
    assert status.format_time(moment) == "2026-07-15 10:05:00 JST"


def test_table_shows_invalid_without_state(capsys: pytest.CaptureFixture[str]) -> None:
    """The table lists valid states and an INVALID marker, never the forged state."""
    forged = _status(batch=OTHER, state="quarantined").replace(b"quarantined", b"forwarded__")
    items = [_check(_receipt(), _status()), _check(None, forged, batch=OTHER)]
    status.render_table(items)
    out = capsys.readouterr().out
    assert BATCH in out and "forwarded" in out and "10:05:00 JST" in out
    assert "signature INVALID" in out and "forwarded__" not in out
