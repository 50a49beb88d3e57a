"""client.certificate_store and the certificate parts of client.status (no gateway needed)."""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import certificate, certificate_store, ledger, status
from client.certificate_store import (
    CHECK_CONFLICT,
    CHECK_INVALID,
    CHECK_UNAVAILABLE,
    CHECK_UNCHECKED,
    CHECK_VALID,
    CertificateCopy,
)
from client.config import ClientConfig, GatewaySection, PrintSiteSection
from tests.client import certificate_kit as kit

PRINTSITE = Ed25519PrivateKey.generate()
WARD = Ed25519PrivateKey.generate()
BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260715-KAIGO-9ZZZZ9"


@pytest.fixture
def cfg(tmp_path: Path) -> ClientConfig:
    """A ward whose ledger holds the sealed entries of BATCH and OTHER."""
    config = ClientConfig(
        gateway=GatewaySection(tenant=kit.TENANT),
        printsite=PrintSiteSection(certificate_dir="certs"),
        base_dir=tmp_path,
    )
    with ledger.Ledger.open(config.path(config.ledger.path), WARD) as book:
        for batch in (BATCH, OTHER):
            book.record(
                ledger.EVENT_SEALED,
                batch=batch,
                envelope_sha256="e" * 64,
                envelope_size=4096,
                files=[{"name": "kaigo.csv", "size": 1000, "sha256": "a" * 64, "records": 5}],
            )
    return config


def _sealed(batch: str = BATCH) -> dict[str, Any]:
    files = [{"name": "kaigo.csv", "size": 1000, "sha256": "a" * 64}]
    return {"batch": batch, "envelope_sha256": "e" * 64, "envelope_size": 4096, "files": files}


def _data(batch: str = BATCH, key: Ed25519PrivateKey = PRINTSITE, **changes: object) -> bytes:
    return kit.signed(kit.body(_sealed(batch), key, **changes), key)


def _keep(cfg: ClientConfig, data: bytes, *, pinned: bool = True) -> CertificateCopy:
    key = PRINTSITE.public_key() if pinned else None
    return certificate_store.keep(cfg, BATCH, data, key, WARD.public_key())


def test_save_writes_once_and_accepts_the_same_bytes(tmp_path: Path) -> None:
    """The first save writes (0600, directory created), the same bytes again write nothing."""
    path = tmp_path / "certs" / f"{BATCH}.erasure.json"
    assert certificate_store.save(path, b"one\n") is True
    assert path.read_bytes() == b"one\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert certificate_store.save(path, b"one\n") is False
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp left


def test_save_never_replaces_a_different_file(tmp_path: Path) -> None:
    """A different file under the name is a conflict; it is left as it was."""
    path = tmp_path / f"{BATCH}.erasure.json"
    path.write_bytes(b"earlier\n")
    with pytest.raises(certificate_store.ConflictError) as info:
        certificate_store.save(path, b"later\n")
    assert "differs from the certificate at the gateway" in str(info.value)
    assert path.read_bytes() == b"earlier\n"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_save_does_not_follow_a_symlink(tmp_path: Path) -> None:
    """A symlink planted under the name is a conflict, never written through."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"x")
    path = tmp_path / f"{BATCH}.erasure.json"
    path.symlink_to(outside)
    with pytest.raises(certificate_store.ConflictError):
        certificate_store.save(path, b"x")
    assert outside.read_bytes() == b"x" and path.is_symlink()


def test_keep_saves_and_verifies(cfg: ClientConfig) -> None:
    """A good certificate is saved under certificate_dir and verifies (not recorded yet)."""
    copy = _keep(cfg, _data())
    assert (copy.check, copy.saved, copy.ledger_seq) == (CHECK_VALID, True, None)
    assert copy.path == cfg.path("certs") / f"{BATCH}.erasure.json"
    assert copy.path.read_bytes() == _data() and not copy.failed


def test_keep_reports_the_ledger_entry_once_recorded(cfg: ClientConfig) -> None:
    """After verify-certificate recorded it, status names the ledger entry."""
    data = _data()
    _keep(cfg, data)
    cert = certificate.parse(data, PRINTSITE.public_key())
    with ledger.Ledger.open(cfg.path(cfg.ledger.path), WARD) as book:
        book.record(ledger.EVENT_ERASURE_VERIFIED, batch=BATCH, certificate_sha256=cert.sha256)
    copy = _keep(cfg, data)
    assert (copy.check, copy.saved, copy.ledger_seq) == (CHECK_VALID, False, 3)


def test_keep_without_a_pinned_key_is_unchecked(cfg: ClientConfig) -> None:
    """No [printsite] signing_key: saved, not verified, not a failure."""
    copy = _keep(cfg, _data(), pinned=False)
    assert copy.check == CHECK_UNCHECKED and copy.saved and not copy.failed
    assert "signing_key is empty" in str(copy.problem)


def test_keep_of_a_forged_certificate_is_invalid(cfg: ClientConfig) -> None:
    """Signed by another key: kept as evidence under ``.invalid``, invalid — a failure."""
    forged = _data(key=Ed25519PrivateKey.generate())
    copy = _keep(cfg, forged)
    assert copy.check == CHECK_INVALID and copy.failed and "signed by" in str(copy.problem)
    assert copy.path == cfg.path("certs") / f"{BATCH}.erasure.json.invalid"
    assert copy.path.read_bytes() == forged and copy.saved
    assert not (cfg.path("certs") / f"{BATCH}.erasure.json").exists()


def test_an_invalid_certificate_never_blocks_the_genuine_one(cfg: ClientConfig) -> None:
    """L3: verified before saving: a forged file first, the genuine one later still saves."""
    forged = _data(key=Ed25519PrivateKey.generate())
    assert _keep(cfg, forged).check == CHECK_INVALID
    assert _keep(cfg, _data(handler="another forgery", key=Ed25519PrivateKey.generate())).saved is (
        False
    )  # the first evidence stays
    copy = _keep(cfg, _data())
    assert (copy.check, copy.saved) == (CHECK_VALID, True)
    assert copy.path.read_bytes() == _data()
    assert (copy.path.parent / f"{BATCH}.erasure.json.invalid").read_bytes() == forged


def test_keep_of_another_batch_certificate_is_invalid(cfg: ClientConfig) -> None:
    """OTHER's genuine certificate stored under BATCH's name is refused (a replay)."""
    copy = _keep(cfg, _data(batch=OTHER))
    assert copy.check == CHECK_INVALID
    assert f"certificate of batch {OTHER}, stored under {BATCH}" in str(copy.problem)


def test_keep_of_a_different_certificate_is_a_conflict(cfg: ClientConfig) -> None:
    """A second, different certificate for a saved batch is a conflict; the first stays."""
    first = _data()
    _keep(cfg, first)
    copy = _keep(cfg, _data(handler="someone else"))
    assert copy.check == CHECK_CONFLICT and copy.failed
    assert copy.path.read_bytes() == first


def test_listing_includes_erasure_certificates() -> None:
    """`<batch>.erasure.json` names are listed with the batch's other records."""
    names = [f"{BATCH}.status.json", f"{BATCH}.erasure.json", "x.erasure.json"]
    assert status.listing(names) == {BATCH: {".status.json", ".erasure.json"}}


def _item(copy: CertificateCopy | None) -> status.BatchStatus:
    return status.BatchStatus(BATCH, "erased", None, None, 5, certificate=copy)


def test_json_line_carries_the_certificate_and_its_check(tmp_path: Path) -> None:
    """JSON lines name the saved path and the check; an unreadable one has no path."""
    path = tmp_path / f"{BATCH}.erasure.json"
    row = json.loads(status.json_line(_item(CertificateCopy(BATCH, path, CHECK_VALID))))
    assert (row["state"], row["certificate"], row["certificate_check"]) == (
        "erased",
        str(path),
        "valid",
    )
    gone = CertificateCopy(BATCH, path, CHECK_UNAVAILABLE, problem="too large")
    row = json.loads(status.json_line(_item(gone)))
    assert (row["certificate"], row["certificate_error"]) == (None, "too large")
    row = json.loads(status.json_line(_item(None)))
    assert row["certificate"] is None and row["certificate_check"] is None


def test_notes_hint_at_verify_certificate_and_list_failures_first(tmp_path: Path) -> None:
    """Notes name the path with the verify-certificate hint; failures come first."""
    path = tmp_path / f"{BATCH}.erasure.json"
    good = CertificateCopy(BATCH, path, CHECK_VALID, saved=True)
    unchecked = CertificateCopy(
        BATCH, path, CHECK_UNCHECKED, problem="[printsite] signing_key is empty"
    )
    bad = CertificateCopy(BATCH, path, CHECK_INVALID, problem="bad signature")
    recorded = replace(good, ledger_seq=4)
    settled = replace(good, saved=False, ledger_seq=4)
    items = (good, unchecked, bad, recorded, settled, None)
    notes = status.certificate_notes([_item(c) for c in items])
    assert [n.failed for n in notes] == [True, False, False, False]  # settled: no note
    assert notes[0].message == f"{BATCH}: erasure certificate {path} does NOT verify: bad signature"
    assert notes[1].message == f"{BATCH}: erasure certificate saved as {path} verifies"
    assert (
        notes[1].hint == f"run 'lgwan-client verify-certificate {path}' to record it in the ledger"
    )
    assert notes[2].hint is not None and notes[2].hint.startswith("set [printsite] signing_key")
    assert (
        notes[3].message.endswith("verifies (recorded as ledger seq 4)") and notes[3].hint is None
    )
