"""client.certificate: the erasure certificate's signature, shape and match with the ledger."""

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import certificate
from client.certificate import CertificateError
from custody import KIND_STATUS, dumps_record, fingerprint, sign_record
from tests.client import certificate_kit as kit

KEY = Ed25519PrivateKey.generate()
BATCH = "20260715-KAIGO-7F3KQ2"
SEALED: dict[str, Any] = {
    "event": "sealed",
    "batch": BATCH,
    "envelope_sha256": "e" * 64,
    "envelope_size": 4096,
    "files": [
        {"name": "kaigo.csv", "size": 1000, "sha256": "a" * 64, "records": 5},
        {"name": "kaigo2.csv", "size": 2000, "sha256": "b" * 64, "records": 9},
    ],
}


def _parse(made: dict[str, object], key: Ed25519PrivateKey = KEY) -> certificate.Certificate:
    return certificate.parse(kit.signed(made, key), KEY.public_key())


def _check(made: dict[str, object], tenant: str = kit.TENANT) -> certificate.Certificate:
    cert = _parse(made)
    certificate.check_against(cert, SEALED, tenant)
    return cert


def _refused(made: dict[str, object], reason: str, tenant: str = kit.TENANT) -> CertificateError:
    with pytest.raises(CertificateError) as info:
        _check(made, tenant)
    assert info.value.reason == reason, info.value
    assert info.value.hint
    return info.value


def test_good_certificate_parses_and_matches() -> None:
    """A certificate of the sealed envelope and files verifies; its fields are kept."""
    cert = _check(kit.body(SEALED, KEY))
    assert cert.batch_id == BATCH and cert.tenant == kit.TENANT and cert.opened
    assert cert.signer == fingerprint(KEY.public_key())
    assert cert.finished_at == datetime(2026, 7, 20, 1, 0, 5, tzinfo=UTC)
    assert cert.counts() == {"envelope": 1, "plaintext": 2, "staging": 1}
    assert [item.name for item in cert.items if item.kind == "plaintext"] == [
        "kaigo.csv",
        "kaigo2.csv",
    ]


def test_sha256_is_of_the_canonical_bytes() -> None:
    """The certificate's SHA-256 is of its one byte form, with or without the last newline."""
    data = kit.signed(kit.body(SEALED, KEY), KEY)
    with_newline = certificate.parse(data, KEY.public_key())
    without = certificate.parse(data.rstrip(b"\n"), KEY.public_key())
    assert with_newline.sha256 == without.sha256
    assert with_newline.sha256 == hashlib.sha256(data).hexdigest()


def test_unopened_batch_needs_no_plaintext() -> None:
    """A batch erased unopened lists no plaintext and verifies."""
    assert _check(kit.body(SEALED, KEY, opened=False)).counts() == {"envelope": 1, "staging": 1}


def test_retained_and_quarantine_copies_of_the_envelope_match() -> None:
    """Retained and quarantined whole copies verify when they are the sealed envelope."""
    made = kit.plus_items(
        kit.body(SEALED, KEY),
        {"kind": "retained", "path": "/r", "size": 4096, "sha256": "e" * 64},
        {"kind": "quarantine", "path": "/q", "size": 4096, "sha256": "e" * 64},
    )
    assert _check(made).counts()["retained"] == 1


def test_the_dead_receipt_copy_kind_is_unknown() -> None:
    """``receipt-copy`` was never produced by erase: the shared rules do not know it."""
    made = kit.plus_items(
        kit.body(SEALED, KEY),
        {"kind": "receipt-copy", "path": "/c", "size": 10, "sha256": "c" * 64},
    )
    with pytest.raises(CertificateError) as info:
        _parse(made)
    assert info.value.reason == certificate.REASON_MALFORMED
    assert "unknown kind 'receipt-copy'" in str(info.value)


def test_changed_byte_fails_the_signature() -> None:
    """One changed byte: signature failure, reason ``signature``."""
    data = kit.signed(kit.body(SEALED, KEY), KEY).replace(b'"lgwan"', b'"lgwam"')
    with pytest.raises(CertificateError) as info:
        certificate.parse(data, KEY.public_key())
    assert info.value.reason == certificate.REASON_SIGNATURE
    assert "bad signature" in str(info.value)


def test_another_key_fails_the_signature() -> None:
    """Signed by another key: reason ``signature``, naming the expected fingerprint."""
    other = Ed25519PrivateKey.generate()
    with pytest.raises(CertificateError) as info:
        _parse(kit.body(SEALED, other), other)
    assert info.value.reason == certificate.REASON_SIGNATURE
    assert fingerprint(KEY.public_key()) in str(info.value)


def test_another_kind_fails_the_signature() -> None:
    """A status record signed by the same key is not a certificate."""
    data = dumps_record(sign_record(KIND_STATUS, kit.body(SEALED, KEY), KEY))
    with pytest.raises(CertificateError) as info:
        certificate.parse(data, KEY.public_key())
    assert info.value.reason == certificate.REASON_SIGNATURE
    assert "expected 'erasure-certificate'" in str(info.value)


def test_non_canonical_bytes_are_malformed() -> None:
    """Re-indented JSON is not the certificate's byte form."""
    data = kit.signed(kit.body(SEALED, KEY), KEY)
    pretty = json.dumps(json.loads(data), indent=1).encode()
    with pytest.raises(CertificateError) as info:
        certificate.parse(pretty, KEY.public_key())
    assert info.value.reason == certificate.REASON_MALFORMED


def test_a_certificate_up_to_the_shared_limit_is_accepted() -> None:
    """M1: the limit is the one every side uses (1 MiB), not 256 KiB: a 300 KiB one verifies."""
    made = kit.plus_items(
        kit.body(SEALED, KEY),
        *[
            {"kind": "staging", "path": f"/srv/spool/.pull/{'p' * 200}{n}", "size": 1,
             "sha256": "0" * 64}
            for n in range(1200)
        ],
    )  # fmt: skip
    data = kit.signed(made, KEY)
    assert 256 * 1024 < len(data) <= certificate.MAX_CERTIFICATE_BYTES == 1 << 20
    assert certificate.parse(data, KEY.public_key()).batch_id == BATCH


def test_oversized_input_is_malformed() -> None:
    """More than the shared 1 MiB is refused before parsing."""
    with pytest.raises(CertificateError) as info:
        certificate.parse(b" " * (certificate.MAX_CERTIFICATE_BYTES + 1), KEY.public_key())
    assert info.value.reason == certificate.REASON_MALFORMED


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"extra": 1}, "fields"),
        ({"channel": "fax"}, "channel"),
        ({"batch_id": "../etc/passwd"}, "not a batch id"),
        ({"opened": "yes"}, "opened"),
        ({"started_at": "2026-07-20 10:00"}, "started_at"),
        ({"finished_at": "2026-07-20T09:00:00+09:00"}, "before started_at"),
        ({"handler": ""}, "handler"),
        ({"approver": 7}, "approver"),
        ({"items": []}, "items"),
        ({"items": [{"kind": "envelope"}]}, "item 1 has fields"),
        ({"printsite_key": "SHA256:someone-else"}, "printsite_key"),
    ],
)
def test_malformed_body_is_refused(changes: dict[str, object], why: str) -> None:
    """A body that is not exactly the certificate's fields and types: reason ``malformed``."""
    made = kit.body(SEALED, KEY, **changes)
    if "extra" in changes:
        made["extra"] = 1
    with pytest.raises(CertificateError) as info:
        _parse(made)
    assert info.value.reason == certificate.REASON_MALFORMED
    assert why in str(info.value)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"kind": "backup"}, "unknown kind 'backup'"),
        ({"sha256": "E" * 64}, "sha256 is not 64 hex digits"),
        ({"size": True}, "size is not a byte count"),
        ({"size": -1}, "size is not a byte count"),
        ({"path": ""}, "path is not text"),
    ],
)
def test_malformed_item_is_refused(changes: dict[str, object], why: str) -> None:
    """Items with an unknown kind, bad hash, size or path: reason ``malformed``."""
    with pytest.raises(CertificateError) as info:
        _parse(kit.with_item(kit.body(SEALED, KEY), "envelope", **changes))
    assert why in str(info.value)


def test_unknown_batch_is_refused() -> None:
    """No sealed entry for the batch: reason ``unknown_batch``."""
    cert = _parse(kit.body(SEALED, KEY))
    with pytest.raises(CertificateError) as info:
        certificate.check_against(cert, None, kit.TENANT)
    assert info.value.reason == certificate.REASON_UNKNOWN_BATCH
    assert f"unknown batch {BATCH}" in str(info.value)


def test_other_tenant_is_refused_only_when_one_is_configured() -> None:
    """A certificate of another tenant fails against [gateway] tenant; no tenant: not checked."""
    made = kit.body(SEALED, KEY, tenant="toshima")
    assert "tenant 'toshima'" in str(_refused(made, certificate.REASON_MISMATCH))
    assert _check(made, tenant="").tenant == "toshima"


@pytest.mark.parametrize("kind", ["envelope", "retained", "quarantine"])
@pytest.mark.parametrize("field", ["size", "sha256"])
def test_whole_envelope_copy_must_be_the_sealed_envelope(kind: str, field: str) -> None:
    """An envelope, retained or quarantine item with another size or hash is a mismatch."""
    made = kit.body(SEALED, KEY)
    if kind != "envelope":
        made = kit.plus_items(made, {"kind": kind, "path": "/x", "size": 4096, "sha256": "e" * 64})
    value: object = 4097 if field == "size" else "f" * 64
    _refused(kit.with_item(made, kind, **{field: value}), certificate.REASON_MISMATCH)


def test_no_envelope_item_is_refused() -> None:
    """A certificate that does not list the spool's envelope is a mismatch."""
    made = kit.body(SEALED, KEY)
    made["items"] = [i for i in made["items"] if i["kind"] != "envelope"]  # type: ignore[attr-defined]
    assert "no envelope item" in str(_refused(made, certificate.REASON_MISMATCH))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"sha256": "c" * 64}, "the sealed file kaigo.csv"),
        ({"size": 999}, "the sealed file kaigo.csv is 1000 bytes"),
        (
            {"path": f"{kit.WORK_DIR}/{BATCH}/other.csv"},
            "'other.csv' is not a file of the sealed batch",
        ),
    ],
)
def test_plaintext_item_must_be_a_sealed_file(changes: dict[str, object], why: str) -> None:
    """A plaintext item with a wrong hash or size, or another file name, is a mismatch."""
    made = kit.with_item(kit.body(SEALED, KEY), "plaintext", **changes)
    assert why in str(_refused(made, certificate.REASON_MISMATCH))


@pytest.mark.parametrize(
    "path",
    [
        "/tmp/kaigo.csv",
        f"/home/someone/{BATCH}-copy/kaigo.csv",
        f"{kit.WORK_DIR}/{BATCH}/x/kaigo.csv",
    ],
)
def test_plaintext_must_lie_in_the_batch_work_directory(path: str) -> None:
    """L2: a plaintext item whose name and hash match, but elsewhere, does not count."""
    made = kit.with_item(kit.body(SEALED, KEY), "plaintext", path=path)
    assert "not in the work directory" in str(_refused(made, certificate.REASON_MISMATCH))


def test_plaintext_of_an_interrupted_opening_counts() -> None:
    """Plaintext erased from ``.opening-<batch>-XXXX/`` is in the batch's work directory."""
    made = kit.with_item(
        kit.body(SEALED, KEY),
        "plaintext",
        path=f"{kit.WORK_DIR}/.opening-{BATCH}-k2x_9a0q/kaigo.csv",
    )
    assert _check(made).opened


def test_an_opened_batch_must_list_every_sealed_file() -> None:
    """H2: opened, but one sealed file is not among the erased plaintext: a mismatch."""
    made = kit.body(SEALED, KEY)
    made["items"] = [i for i in made["items"] if i["path"].rsplit("/", 1)[-1] != "kaigo2.csv"]  # type: ignore[attr-defined]
    error = _refused(made, certificate.REASON_MISMATCH)
    assert "'kaigo2.csv' is not among the erased plaintext" in str(error)


def test_opened_without_plaintext_contradicts_itself() -> None:
    """``opened`` true with no plaintext item: the body contradicts itself."""
    made = kit.body(SEALED, KEY)
    made["items"] = [i for i in made["items"] if i["kind"] != "plaintext"]  # type: ignore[attr-defined]
    assert "lists no plaintext" in str(_refused(made, certificate.REASON_MISMATCH))


def test_plaintext_of_an_unopened_batch_is_refused() -> None:
    """Plaintext items in a certificate that says 'not opened' contradict it."""
    made = kit.plus_items(
        kit.body(SEALED, KEY, opened=False),
        {"kind": "plaintext", "path": "/w/kaigo.csv", "size": 1000, "sha256": "a" * 64},
    )
    assert "not opened" in str(_refused(made, certificate.REASON_MISMATCH))


def test_staging_copy_may_be_partial_but_not_larger() -> None:
    """A staging item up to the envelope's size verifies; a larger one is a mismatch."""
    _check(kit.with_item(kit.body(SEALED, KEY), "staging", size=4096))
    made = kit.with_item(kit.body(SEALED, KEY), "staging", size=4097)
    assert "larger than the sealed envelope" in str(_refused(made, certificate.REASON_MISMATCH))


def test_sealed_entry_without_files_is_a_ledger_problem() -> None:
    """A sealed entry lacking the envelope hash or files cannot be matched."""
    cert = _parse(kit.body(SEALED, KEY))
    with pytest.raises(CertificateError) as info:
        certificate.check_against(cert, {**SEALED, "files": []}, kit.TENANT)
    assert info.value.reason == certificate.REASON_LEDGER


def test_control_characters_are_escaped_in_messages() -> None:
    """A hostile item path cannot put terminal escapes into the error line."""
    made = kit.with_item(kit.body(SEALED, KEY), "envelope", path="/x\x1b[2J", size=1)
    error = _refused(made, certificate.REASON_MISMATCH)
    assert "\x1b" not in str(error) and "\\x1b" in str(error)


def test_summary_says_recorded_or_already_recorded() -> None:
    """The one-line summary names batch, items, people, time (JST), signer and ledger seq."""
    cert = _check(kit.body(SEALED, KEY))
    line = certificate.summary(certificate.Verified(cert, 7, recorded=True))
    assert line.startswith(f"ok: {BATCH}: erasure certificate verified: 4 items erased ")
    assert "finished 2026-07-20 10:00:05 JST" in line and line.endswith("as ledger seq 7")
    again = certificate.summary(certificate.Verified(cert, 7, recorded=False))
    assert again.endswith("already recorded as ledger seq 7")
