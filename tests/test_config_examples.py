"""The example configurations list every key, each at its default."""

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from client import config as client_config
from gateway import config as gateway_config

ROOT = Path(__file__).resolve().parent.parent
CLIENT_EXAMPLE = ROOT / "config" / "client.example.toml"
GATEWAY_EXAMPLE = ROOT / "config" / "gateway.example.toml"


def _sections(loaded: Any, table: dict[str, type[Any]]) -> dict[str, Any]:
    return {name: getattr(loaded, name) for name in table}


def _declared_keys(table: dict[str, type[Any]]) -> set[str]:
    return {f"{name}.{f.name}" for name, cls in table.items() for f in dataclasses.fields(cls)}


def _example_keys(path: Path) -> set[str]:
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    return {f"{section}.{key}" for section, values in raw.items() for key in values}


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config variables must not redirect the loaders."""
    monkeypatch.delenv(client_config.ENV_VAR, raising=False)
    monkeypatch.delenv(gateway_config.ENV_VAR, raising=False)


def test_client_example_loads_to_defaults() -> None:
    """config/client.example.toml loads and equals the defaults, section by section."""
    loaded = client_config.load(str(CLIENT_EXAMPLE))
    defaults = client_config.ClientConfig()
    assert _sections(loaded, client_config._SECTIONS) == _sections(
        defaults, client_config._SECTIONS
    )
    assert loaded.source == CLIENT_EXAMPLE


def test_gateway_example_loads_to_defaults() -> None:
    """config/gateway.example.toml loads and equals the defaults, section by section."""
    loaded = gateway_config.load(str(GATEWAY_EXAMPLE))
    defaults = gateway_config.GatewayConfig()
    assert _sections(loaded, gateway_config._SECTIONS) == _sections(
        defaults, gateway_config._SECTIONS
    )
    assert loaded.source == GATEWAY_EXAMPLE


@pytest.mark.parametrize(
    ("example", "table"),
    [
        pytest.param(CLIENT_EXAMPLE, client_config._SECTIONS, id="client"),
        pytest.param(GATEWAY_EXAMPLE, gateway_config._SECTIONS, id="gateway"),
    ],
)
def test_example_lists_every_key(example: Path, table: dict[str, type[Any]]) -> None:
    """Every field of every section dataclass appears in the example, and nothing else."""
    assert _example_keys(example) == _declared_keys(table)


@pytest.mark.parametrize(
    ("cls", "table"),
    [
        pytest.param(client_config.ClientConfig, client_config._SECTIONS, id="client"),
        pytest.param(gateway_config.GatewayConfig, gateway_config._SECTIONS, id="gateway"),
    ],
)
def test_every_config_field_is_a_known_section(cls: type[Any], table: dict[str, Any]) -> None:
    """Each section field of the top-level config is loadable from TOML (in _SECTIONS).

    ``tenants`` is the one table of tables (``[tenants.<name>]``), checked separately.
    """
    section_fields = {
        f.name for f in dataclasses.fields(cls) if f.name not in ("base_dir", "source", "tenants")
    }
    assert section_fields == set(table)
    for name, section in table.items():
        default = cls()
        assert type(getattr(default, name)) is section


@pytest.mark.parametrize("example", [CLIENT_EXAMPLE, GATEWAY_EXAMPLE], ids=["client", "gateway"])
def test_example_holds_no_secret_keys(example: Path) -> None:
    """No example key names a password or passphrase (secrets are never configured)."""
    keys = _example_keys(example)
    assert keys
    assert not [k for k in keys if "password" in k or "passphrase" in k or "secret" in k]


def test_example_tenant_table_loads_as_documented(tmp_path: Path) -> None:
    """The commented [tenants.<name>] example in the gateway example is a valid tenant table."""
    from gateway import config as gateway_config
    from gateway.routes import RouteKind, TenantSection, parse_route

    text = GATEWAY_EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# [tenants.shinjuku]")
    lines = [line[2:] for line in text[start:].splitlines() if line.startswith("# ")]
    toml = "\n".join(line for line in lines if not line.startswith("#"))
    path = tmp_path / "gateway.toml"
    path.write_text(toml.replace("AAAA…", "AAAA"), encoding="utf-8")
    loaded = gateway_config.load(str(path))
    section = loaded.tenants["shinjuku"]
    assert parse_route(section.forward).kind is RouteKind.SFTP
    assert {f.name for f in dataclasses.fields(TenantSection)} <= set(
        line.split(" = ")[0] for line in lines if " = " in line
    )
