"""Tests for gateway.credentials: the credential notice PDF and the client configuration."""

from __future__ import annotations

import stat
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pypdf import PdfReader

from client import config as client_config
from custody import keys
from gateway.config import GatewayConfig
from gateway.credentials import (
    ClientConfig,
    CredentialNotice,
    printsite_signing_key,
    render_client_config,
    render_credential_notice,
    toml_value,
    write_client_config,
)
from gateway.routes import TenantSection

PASSWORD = "7F3K-Q2AB-M9XD-4HTR-0WZC"
ISSUED = datetime(2026, 7, 15, 1, 32, tzinfo=UTC)  # 10:32 JST
HOST_FP = "SHA256:" + "h" * 43
SIGN_FP = "SHA256:" + "s" * 43


def _notice(**overrides: object) -> CredentialNotice:
    fields: dict[str, object] = {
        "user": "shinjuku-kaigo",
        "tenant": "shinjuku",
        "role": "ward",
        "password": PASSWORD,
        "gateway_address": "asp.example.lg.jp:2222",
        "host_key_fingerprint": HOST_FP,
        "signing_key_fingerprint": SIGN_FP,
        "issued_at": ISSUED,
        "issued_by": "operator",
        **overrides,
    }
    return CredentialNotice(**fields)  # type: ignore[arg-type]


def _text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_notice_text_layer_carries_user_and_password_lines(tmp_path: Path) -> None:
    """The text layer has the exact lines 'User: <name>' and 'Password: <pw>'."""
    out = tmp_path / "notice.pdf"
    render_credential_notice(out, _notice())
    lines = _text(out).splitlines()
    assert "User: shinjuku-kaigo" in lines
    assert f"Password: {PASSWORD}" in lines


def test_notice_content(tmp_path: Path) -> None:
    """Title, address, both fingerprints, tenant, JST time and hand/registered-mail delivery."""
    out = tmp_path / "notice.pdf"
    render_credential_notice(out, _notice())
    text = _text(out).replace("\n", "")
    for expected in (
        "利用者ID・パスワード通知書",
        "Account credential notice",
        "asp.example.lg.jp:2222",
        HOST_FP,
        SIGN_FP,
        "shinjuku",
        "10:32 JST",
        "手渡し",
        "簡易書留",
        "never by e-mail",
        "初期パスワード",
    ):
        assert expected in text


def test_reset_notice_says_so(tmp_path: Path) -> None:
    """A password-reset notice is marked as such (再発行), not as a new account."""
    out = tmp_path / "notice.pdf"
    render_credential_notice(out, _notice(reset=True))
    text = _text(out).replace("\n", "")
    assert "再発行" in text
    assert "新規発行" not in text


def test_notice_is_private_and_password_not_in_metadata(tmp_path: Path) -> None:
    """The PDF is mode 0600 and its metadata never holds the password."""
    out = tmp_path / "notice.pdf"
    render_credential_notice(out, _notice())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    metadata = PdfReader(out).metadata
    assert metadata is not None
    assert "利用者ID・パスワード通知書" in str(metadata.title)
    assert PASSWORD not in " ".join(str(v) for v in metadata.values())


@pytest.mark.parametrize(
    "overrides",
    [
        {"password": "パスワードです"},
        {"password": " padded-password "},
        {"password": ""},
        {"issued_at": datetime(2026, 7, 15)},
        {"user": ""},
    ],
)
def test_unusable_notice_writes_nothing(tmp_path: Path, overrides: dict[str, object]) -> None:
    """An unusable field raises ValueError without the password, and leaves no file behind."""
    with pytest.raises(ValueError) as caught:
        render_credential_notice(tmp_path / "notice.pdf", _notice(**overrides))
    assert "padded-password" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_notice_repr_hides_password() -> None:
    """The password never appears in the notice's repr."""
    assert PASSWORD not in repr(_notice())


def test_client_config_loads_in_the_client(tmp_path: Path) -> None:
    """The written client config is accepted by lgwan-client's loader with the pinned keys."""
    host_key = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    receipt_key = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    out = tmp_path / "client.toml"
    write_client_config(
        out,
        ClientConfig(
            host="asp.example.lg.jp",
            port=2022,
            user="shinjuku-kaigo",
            tenant="shinjuku",
            host_key=host_key,
            receipt_key=receipt_key,
            private_key="keys/ward_ed25519",
        ),
    )
    loaded = client_config.load(str(out))
    gateway = loaded.gateway
    assert (gateway.host, gateway.port, gateway.user, gateway.tenant) == (
        "asp.example.lg.jp",
        2022,
        "shinjuku-kaigo",
        "shinjuku",
    )
    assert (gateway.host_key, gateway.receipt_key) == (host_key, receipt_key)
    assert loaded.path(loaded.identity.private_key) == tmp_path / "keys" / "ward_ed25519"
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    parsed = tomllib.loads(out.read_text())
    names = [key for table in parsed.values() for key in table]
    assert names and not [n for n in names if "password" in n or "secret" in n]


def test_client_config_escapes_strings() -> None:
    """Quotes and backslashes in values survive a TOML round trip."""
    config = ClientConfig("h", 1, "u", "t", 'a"b\\c', "k", "keys/with space")
    parsed = tomllib.loads(render_client_config(config))
    assert parsed["gateway"]["host_key"] == 'a"b\\c'
    assert parsed["identity"]["private_key"] == "keys/with space"
    with pytest.raises(TypeError):
        toml_value(1.5)


def test_client_config_pins_the_print_sites_signing_key_when_given(tmp_path: Path) -> None:
    """With the route's receipt_key, [printsite] signing_key and certificate_dir are written."""
    printsite = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    pinned = keys.public_key_to_openssh(keys.generate_private_key().public_key())
    out = tmp_path / "client.toml"
    config = ClientConfig("gw.example", 2222, "ward1", "shinjuku", pinned, pinned, "k", printsite)
    write_client_config(out, config)
    parsed = tomllib.loads(out.read_text())
    assert parsed["printsite"] == {"signing_key": printsite, "certificate_dir": "certificates"}
    loaded = client_config.load(str(out))
    assert loaded.printsite.signing_key == printsite
    without = tomllib.loads(render_client_config(ClientConfig("h", 1, "u", "t", "a", "b", "k")))
    assert "printsite" not in without


def test_printsite_signing_key_comes_from_the_tenants_route(tmp_path: Path) -> None:
    """The tenant table's receipt_key as one OpenSSH line; "" without one (or for others)."""
    key = keys.generate_private_key().public_key()
    line = keys.public_key_to_openssh(key)
    config = GatewayConfig(
        tenants={
            "shinjuku": TenantSection(forward="pull", receipt_key=f"  {line} printsite \n"),
            "chuo": TenantSection(forward="file:///srv/spool"),
            "minato": TenantSection(forward="pull", receipt_key="ssh-ed25519 not-a-key"),
        },
        base_dir=tmp_path,
    )
    assert printsite_signing_key(config, "shinjuku") == line
    assert printsite_signing_key(config, "chuo") == ""
    assert printsite_signing_key(config, "minato") == ""
    assert printsite_signing_key(config, "nowhere") == ""
