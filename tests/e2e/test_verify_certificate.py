"""`lgwan-client verify-certificate FILE` through the real CLI (subprocesses).

The ward is real: `keygen`, `sample` and `seal` run once (module fixture); each
test copies it and signs a certificate for its batch with a generated print-site
key (tests/client/certificate_kit.py builds the body from the `sealed` entry).
"""

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import MAX_CERTIFICATE_BYTES, fingerprint, public_key_to_openssh
from tests.client import certificate_kit as kit
from tests.conftest import CliRunner, Result, run_cli

LEDGER = Path("ledger/ledger.jsonl")
PRINTSITE_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
UNKNOWN_BATCH = "20260715-KAIGO-ZZZZZZ"


def _config(root: Path, *, signing_key: str | None = None, tenant: str = kit.TENANT) -> None:
    """A fast client config pinning ``signing_key`` (default: PRINTSITE_KEY's line)."""
    line = public_key_to_openssh(PRINTSITE_KEY.public_key()) if signing_key is None else signing_key
    text = (
        '[ward]\nhandler = "tanaka"\n[seal]\nwork_factor = 10\n'
        f'[gateway]\ntenant = "{tenant}"\n[printsite]\nsigning_key = "{line}"\n'
    )
    (root / "client.toml").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ward directory with a key and a batch sealed from two files, made through the CLI."""
    root = tmp_path_factory.mktemp("ward")
    _config(root)
    for args in (
        ("--config", "client.toml", "keygen"),
        ("sample", "--records", "20", "--seed", "3", "--out", "kaigo.csv"),
        ("sample", "--records", "7", "--seed", "4", "--out", "kaigo2.csv"),
    ):
        done = run_cli("lgwan-client", *args, cwd=root)
        assert done.code == 0, done.err
    done = run_cli(
        "lgwan-client", "--config", "client.toml", "seal", "kaigo.csv", "kaigo2.csv",
        "--notice-type", "KAIGO", cwd=root,
    )  # fmt: skip
    assert done.code == 0, done.err
    return root


@pytest.fixture
def sealed(template: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A copy of the template in tmp_path (the `client` fixture's cwd); yields its sealed entry."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    (entry,) = _entries(tmp_path)
    assert entry["event"] == "sealed"
    yield entry


def _entries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (root / LEDGER).read_bytes().splitlines()]


def _write(root: Path, data: bytes, name: str = "cert.erasure.json") -> Path:
    path = root / name
    path.write_bytes(data)
    return path


def _verify(client: CliRunner, path: Path | str) -> Result:
    return client("--config", "client.toml", "verify-certificate", path)


def _refused(done: Result, root: Path, before: bytes, *reasons: str) -> None:
    """Exit 1, the error line names every reason plus a hint, nothing recorded."""
    assert done.code == 1, done.err
    assert done.out == ""
    first, *rest = done.err.splitlines()
    assert first.startswith("lgwan-client: error: ") and "does not verify" in first
    for reason in reasons:
        assert reason in first, done.err
    assert len(rest) == 1 and rest[0].startswith("hint: ")
    assert (root / LEDGER).read_bytes() == before


def test_good_certificate_verifies_and_is_recorded(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A certificate of the sealed envelope and files: exit 0, one summary line, one entry."""
    path = _write(tmp_path, kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY))
    done = _verify(client, path)
    assert done.code == 0, done.err
    assert done.err == ""
    batch = sealed["batch"]
    assert done.out.count("\n") == 1
    assert done.out.startswith(f"ok: {batch}: erasure certificate verified: 4 items erased ")
    assert "(1 envelope, 2 plaintext, 1 staging)" in done.out
    assert "by 印刷 太郎, approved by 管理 花子, finished 2026-07-20 10:00:05 JST" in done.out
    assert fingerprint(PRINTSITE_KEY.public_key()) in done.out
    assert done.out.rstrip().endswith("recorded as ledger seq 2")
    entry = _entries(tmp_path)[-1]
    assert entry["event"] == "erasure-verified"
    assert entry["batch"] == batch and entry["items"] == 4
    assert entry["certificate_signer"] == fingerprint(PRINTSITE_KEY.public_key())
    assert entry["certificate_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert entry["erased_at"] == "2026-07-20T10:00:05+09:00"
    assert entry["handler"] == "tanaka"


def test_reverifying_adds_no_second_entry_and_the_ledger_verifies(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """Verifying the same certificate again: exit 0, 'already recorded', no new ledger entry."""
    path = _write(tmp_path, kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY))
    assert _verify(client, path).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    again = _verify(client, path)
    assert again.code == 0, again.err
    assert again.out.rstrip().endswith("already recorded as ledger seq 2")
    assert (tmp_path / LEDGER).read_bytes() == before
    assert [e["event"] for e in _entries(tmp_path)] == ["sealed", "erasure-verified"]
    checked = client("--config", "client.toml", "ledger", "verify")
    assert checked.code == 0, checked.err
    assert checked.out.startswith("ok: ") and "2 records" in checked.out


def test_a_file_named_for_another_batch_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """B.erasure.json holding A's genuine certificate: exit 1 (the name claims B was erased);
    the same bytes under A's name, or a name that names no batch, verify as A."""
    data = kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY)
    before = (tmp_path / LEDGER).read_bytes()
    misnamed = _write(tmp_path, data, f"{UNKNOWN_BATCH}.erasure.json")
    done = _verify(client, misnamed)
    _refused(done, tmp_path, before, f"batch {sealed['batch']}", f"stored under {UNKNOWN_BATCH}")
    for name in (f"{sealed['batch']}.erasure.json", "copy-from-the-gateway.json"):
        assert _verify(client, _write(tmp_path, data, name)).code == 0


def test_one_changed_byte_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A certificate with one byte changed (the handler's name) fails its signature: exit 1."""
    data = kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY)
    changed = data.replace("印刷 太郎".encode(), "印刷 次郎".encode())
    assert len(changed) == len(data) and changed != data
    before = (tmp_path / LEDGER).read_bytes()
    _refused(_verify(client, _write(tmp_path, changed)), tmp_path, before, "bad signature")


def test_certificate_signed_by_another_key_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A well-formed certificate signed by a key other than the pinned one: exit 1."""
    data = kit.signed(kit.body(sealed, OTHER_KEY), OTHER_KEY)
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, _write(tmp_path, data))
    _refused(done, tmp_path, before, "signed by", fingerprint(PRINTSITE_KEY.public_key()))
    assert "[printsite] signing_key" in done.err


def test_certificate_of_an_unknown_batch_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A validly signed certificate for a batch this ward never sealed: exit 1, unknown batch."""
    made = kit.body({**sealed, "batch": UNKNOWN_BATCH}, PRINTSITE_KEY)
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, _write(tmp_path, kit.signed(made, PRINTSITE_KEY)))
    _refused(done, tmp_path, before, f"unknown batch {UNKNOWN_BATCH}")


def test_plaintext_item_with_a_wrong_hash_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A plaintext item whose SHA-256 is not the sealed file's: exit 1 naming the item."""
    made = kit.with_item(kit.body(sealed, PRINTSITE_KEY), "plaintext", sha256="ab" * 32)
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, _write(tmp_path, kit.signed(made, PRINTSITE_KEY)))
    _refused(done, tmp_path, before, "item 3 (plaintext", "the sealed file kaigo.csv")


def test_envelope_item_with_another_size_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """An envelope item whose size differs from the sealed envelope's: exit 1."""
    made = kit.with_item(
        kit.body(sealed, PRINTSITE_KEY), "envelope", size=sealed["envelope_size"] + 1
    )
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, _write(tmp_path, kit.signed(made, PRINTSITE_KEY)))
    _refused(done, tmp_path, before, "item 1 (envelope", f"{sealed['envelope_size']} bytes")


def test_certificate_for_another_tenant_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A certificate naming another tenant than [gateway] tenant: exit 1."""
    made = kit.body(sealed, PRINTSITE_KEY, tenant="toshima")
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, _write(tmp_path, kit.signed(made, PRINTSITE_KEY)))
    _refused(done, tmp_path, before, "tenant 'toshima'")


def test_missing_signing_key_is_a_configuration_error(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """With [printsite] signing_key empty: exit 78 with a hint, nothing recorded."""
    _config(tmp_path, signing_key="")
    path = _write(tmp_path, kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY))
    before = (tmp_path / LEDGER).read_bytes()
    done = _verify(client, path)
    assert done.code == 78, done.err
    first, hint = done.err.splitlines()
    assert first == (
        "lgwan-client: error: client.toml: printsite.signing_key: is empty: "
        "no print-site key is pinned"
    )
    assert hint.startswith('hint: set [printsite] signing_key = "ssh-ed25519 AAAA…"')
    assert (tmp_path / LEDGER).read_bytes() == before


def test_malformed_signing_key_is_a_configuration_error(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A signing_key that is not an ssh-ed25519 line: exit 78."""
    _config(tmp_path, signing_key="ssh-rsa AAAAB3NzaC1yc2E")
    done = _verify(client, _write(tmp_path, b"{}\n"))
    assert done.code == 78, done.err
    assert "printsite.signing_key" in done.err


def test_oversized_or_missing_file_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """A file over 1 MiB (the limit on every side) is not read as a certificate (exit 1);
    a missing one is usage (2)."""
    big = _write(tmp_path, b" " * (MAX_CERTIFICATE_BYTES + 1))
    done = _verify(client, big)
    assert done.code == 1 and "larger than 1048576 bytes" in done.err
    missing = _verify(client, tmp_path / "nope.erasure.json")
    assert missing.code == 2 and "no such file" in missing.err


def test_pretty_printed_certificate_is_refused(
    tmp_path: Path, client: CliRunner, sealed: dict[str, Any]
) -> None:
    """The same record re-indented (not its canonical bytes) is refused: exit 1."""
    data = kit.signed(kit.body(sealed, PRINTSITE_KEY), PRINTSITE_KEY)
    pretty = json.dumps(json.loads(data), indent=2, ensure_ascii=False).encode()
    before = (tmp_path / LEDGER).read_bytes()
    _refused(_verify(client, _write(tmp_path, pretty)), tmp_path, before, "canonical")
