"""``user add --client-config-out`` pins the print site's signing key for the ward (subprocess)."""

from __future__ import annotations

from pathlib import Path

from client import config as client_config
from custody import keys
from gateway.admin import init_root
from tests.conftest import run_cli

PASSWORD = "a-chosen-password-42"


def _add(root: Path, tmp_path: Path, name: str, tenant: str) -> Path:
    pub = tmp_path / f"{name}.pub"
    pub.write_text(keys.public_key_to_openssh(keys.generate_private_key().public_key()) + "\n")
    out = tmp_path / f"{name}.toml"
    done = run_cli(
        "lgwan-gateway", "--config", root / "gateway.toml", "user", "add", name, "--role", "ward",
        "--tenant", tenant, "--pubkey", pub, "--password-fd", "{fd}", "--client-config-out", out,
        cwd=tmp_path, secret=PASSWORD,
    )  # fmt: skip
    assert done.code == 0, done.err
    return out


def test_client_config_carries_the_routes_receipt_key_as_printsite_signing_key(
    tmp_path: Path,
) -> None:
    """A tenant whose route pins receipt_key: [printsite] signing_key; another tenant: none."""
    root = tmp_path / "gw"
    init_root(root, actor="test")
    printsite = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    with (root / "gateway.toml").open("a") as config:
        config.write(f'\n[tenants.shinjuku]\nforward = "pull"\nreceipt_key = "{printsite}"\n')
    pinned = client_config.load(str(_add(root, tmp_path, "ward-a", "shinjuku")))
    assert pinned.printsite.signing_key == printsite
    assert pinned.printsite.certificate_dir == "certificates"
    other = _add(root, tmp_path, "ward-b", "chuo")
    assert "[printsite]" not in other.read_text()
    assert client_config.load(str(other)).printsite.signing_key == ""
