"""Tests for gateway.config: TOML loading, strict keys and types, ranges, paths."""

from pathlib import Path

import pytest

from gateway import config
from gateway.config import EnvelopeSection, PrintSiteSection
from gateway.errors import ConfigError, GatewayError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty directory with no config variable set."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(config.ENV_VAR, raising=False)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _refused(text: str, tmp_path: Path) -> ConfigError:
    """Load ``text`` as a config file and return the ConfigError it raises."""
    path = _write(tmp_path / "gateway.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    return info.value


def test_default_path_absent_gives_defaults() -> None:
    """With no --config, no variable and no config/gateway.toml, defaults apply."""
    loaded = config.load(None)
    assert loaded.envelope == EnvelopeSection()
    assert loaded.printsite == PrintSiteSection()
    assert loaded.source is None
    assert loaded.base_dir == Path.cwd()


def test_default_path_present_is_loaded(tmp_path: Path) -> None:
    """config/gateway.toml under the current directory is read when nothing is named."""
    _write(tmp_path / "config" / "gateway.toml", "[envelope]\nmax_work_factor = 22\n")
    loaded = config.load(None)
    assert loaded.envelope.max_work_factor == 22
    assert loaded.source == config.DEFAULT_PATH
    assert loaded.base_dir == tmp_path  # config/ sits beside keys/: its parent is the root


def test_values_are_loaded(tmp_path: Path) -> None:
    """Every key in the file reaches its section."""
    path = _write(
        tmp_path / "g.toml",
        "[envelope]\nmin_work_factor = 15\nmax_work_factor = 25\n"
        '[printsite]\ncsv_encoding = "utf-8"\n',
    )
    loaded = config.load(str(path))
    assert loaded.envelope == EnvelopeSection(min_work_factor=15, max_work_factor=25)
    assert loaded.printsite == PrintSiteSection(csv_encoding="utf-8")
    assert loaded.source == path


def test_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    """A --config file that does not exist is a configuration error (exit 78)."""
    with pytest.raises(ConfigError, match="not found") as info:
        config.load(str(tmp_path / "nope.toml"))
    assert info.value.exit_code == 78
    assert isinstance(info.value, GatewayError)


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$LGWAN_GATEWAY_CONFIG is used when --config is not given, and must exist."""
    path = _write(tmp_path / "env.toml", "[envelope]\nmin_work_factor = 19\n")
    monkeypatch.setenv(config.ENV_VAR, str(path))
    assert config.load(None).envelope.min_work_factor == 19
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        config.load(None)


def test_explicit_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config takes precedence over the variable."""
    env = _write(tmp_path / "env.toml", "[envelope]\nmin_work_factor = 19\n")
    monkeypatch.setenv(config.ENV_VAR, str(env))
    path = _write(tmp_path / "cli.toml", "[envelope]\nmin_work_factor = 20\n")
    assert config.load(str(path)).envelope.min_work_factor == 20


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[envelope\n", "cannot read TOML"),
        ("min_work_factor = 18\n", "unknown section"),
        ("[envelopes]\n", "unknown section"),
        ("[ward]\n", "unknown section"),
        ("envelope = 1\n", "must be a table"),
        ("[envelope]\nmin_workfactor = 18\n", "unknown key"),
        ("[printsite]\nencoding = 'cp932'\n", "unknown key"),
        ("[[printsite]]\ncsv_encoding = 'cp932'\n", "must be a table"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str, tmp_path: Path) -> None:
    """Bad TOML, unknown sections/keys and non-table sections are refused (exit 78)."""
    error = _refused(text, tmp_path)
    assert message in str(error)
    assert error.exit_code == 78


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError, not a traceback."""
    path = tmp_path / "g.toml"
    path.write_bytes("# 設定\n".encode("cp932"))
    with pytest.raises(ConfigError, match="cannot read TOML"):
        config.load(str(path))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[envelope]\nmin_work_factor = true\n", "envelope.min_work_factor"),
        ("[envelope]\nmax_work_factor = false\n", "envelope.max_work_factor"),
        ('[envelope]\nmin_work_factor = "18"\n', "envelope.min_work_factor"),
        ("[envelope]\nmax_work_factor = 20.0\n", "envelope.max_work_factor"),
        ("[printsite]\ncsv_encoding = 932\n", "printsite.csv_encoding"),
        ("[printsite]\ncsv_encoding = ['cp932']\n", "printsite.csv_encoding"),
    ],
)
def test_wrong_types_are_refused(text: str, key: str, tmp_path: Path) -> None:
    """A value of the wrong TOML type (bool for int included) is refused, naming the key."""
    error = _refused(text, tmp_path)
    assert error.key == key
    assert "must be" in str(error)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[envelope]\nmin_work_factor = 9\n", "envelope.min_work_factor"),
        ("[envelope]\nmax_work_factor = 31\n", "envelope.max_work_factor"),
        ("[envelope]\nmin_work_factor = -1\n", "envelope.min_work_factor"),
        ("[envelope]\nmin_work_factor = 10\nmax_work_factor = 64\n", "envelope.max_work_factor"),
    ],
)
def test_work_factor_out_of_limits_is_refused(text: str, key: str, tmp_path: Path) -> None:
    """Work-factor bounds outside 10..30 are refused."""
    error = _refused(text, tmp_path)
    assert error.key == key
    assert "between 10 and 30" in str(error)


def test_min_above_max_is_refused(tmp_path: Path) -> None:
    """min_work_factor above max_work_factor is refused."""
    error = _refused("[envelope]\nmin_work_factor = 21\n", tmp_path)
    assert error.key == "envelope.min_work_factor"
    assert "above" in str(error)


@pytest.mark.parametrize(("low", "high"), [(10, 10), (10, 30), (30, 30), (20, 20)])
def test_work_factor_bounds_accepted(low: int, high: int, tmp_path: Path) -> None:
    """Bounds within 10..30 with min <= max are accepted."""
    path = _write(
        tmp_path / "g.toml", f"[envelope]\nmin_work_factor = {low}\nmax_work_factor = {high}\n"
    )
    assert config.load(str(path)).envelope == EnvelopeSection(low, high)


@pytest.mark.parametrize("encoding", ["no-such-codec", "rot13", "ascii", "latin-1"])
def test_bad_csv_encoding_is_refused(encoding: str, tmp_path: Path) -> None:
    """printsite.csv_encoding must be a known encoding that holds Japanese."""
    error = _refused(f'[printsite]\ncsv_encoding = "{encoding}"\n', tmp_path)
    assert error.key == "printsite.csv_encoding"


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GatewayConfig.path resolves against the config file's directory, not the cwd."""
    conf_dir = tmp_path / "srv" / "lgwan"
    _write(conf_dir / "gateway.toml", "")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = config.load("../srv/lgwan/gateway.toml")
    assert loaded.base_dir.resolve() == conf_dir
    assert loaded.path("state/db.sqlite").resolve() == conf_dir / "state" / "db.sqlite"
    assert loaded.path("/var/x") == Path("/var/x")
    assert loaded.path("x").is_absolute()


# --- server, auth, storage, audit, keys ------------------------------------------

_POSITIVE_KEYS = [
    "server.login_grace_seconds",
    "server.idle_timeout_seconds",
    "server.max_unauthenticated",
    "server.max_sessions_per_account",
    "server.max_connections_per_source",
    "auth.max_failures",
    "auth.lockout_minutes",
    "auth.source_failures_per_minute",
    "storage.max_upload_bytes",
    "storage.tenant_quota_bytes",
    "audit.checkpoint_every_records",
    "audit.checkpoint_every_seconds",
]


@pytest.mark.parametrize("dotted", _POSITIVE_KEYS)
def test_counts_and_durations_must_be_positive(dotted: str, tmp_path: Path) -> None:
    """Counts, sizes and durations of 0 are refused, naming the key; 1 is accepted."""
    section, key = dotted.split(".")
    error = _refused(f"[{section}]\n{key} = 0\n", tmp_path)
    assert error.key == dotted
    assert "at least 1" in str(error)
    path = _write(tmp_path / "ok.toml", f"[{section}]\n{key} = 1\n")
    assert getattr(getattr(config.load(str(path)), section), key) == 1


@pytest.mark.parametrize("dotted", ["auth.failure_delay_ms", "storage.reserve_free_bytes"])
def test_delays_and_reserves_may_be_zero_not_negative(dotted: str, tmp_path: Path) -> None:
    """Delays and reserves accept 0 and refuse negative values."""
    section, key = dotted.split(".")
    path = _write(tmp_path / "ok.toml", f"[{section}]\n{key} = 0\n")
    assert getattr(getattr(config.load(str(path)), section), key) == 0
    error = _refused(f"[{section}]\n{key} = -1\n", tmp_path)
    assert error.key == dotted


@pytest.mark.parametrize(
    "listen", ["2222", "127.0.0.1", ":2222", "127.0.0.1:", "127.0.0.1:65536", "h:22x", "h:-1"]
)
def test_bad_listen_is_refused(listen: str, tmp_path: Path) -> None:
    """server.listen must be HOST:PORT with a port in 0..65535."""
    error = _refused(f'[server]\nlisten = "{listen}"\n', tmp_path)
    assert error.key == "server.listen"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:2222", ("127.0.0.1", 2222)),
        ("0.0.0.0:22", ("0.0.0.0", 22)),  # noqa: S104
        ("[::1]:2222", ("::1", 2222)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    """parse_listen splits HOST:PORT, unbracketing IPv6 hosts."""
    assert config.parse_listen(listen) == expected


@pytest.mark.parametrize("dotted", ["server.host_key", "keys.signing_key"])
def test_private_key_readable_by_others_is_refused(dotted: str, tmp_path: Path) -> None:
    """The host key and the signing key must not be readable by group or others."""
    section, key = dotted.split(".")
    key_file = tmp_path / "conf" / "k" / "key"
    key_file.parent.mkdir(parents=True)
    key_file.write_text("x")
    key_file.chmod(0o640)
    path = _write(tmp_path / "conf" / "gateway.toml", f'[{section}]\n{key} = "k/key"\n')
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert info.value.key == dotted
    assert "chmod 600" in str(info.value)
    key_file.chmod(0o600)
    assert config.load(str(path)).source == path


def test_default_key_paths_are_checked_without_a_file(tmp_path: Path) -> None:
    """With no config file, keys/ under the cwd are checked too."""
    key_file = tmp_path / "keys" / "gateway_signing_ed25519"
    key_file.parent.mkdir()
    key_file.write_text("x")
    key_file.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        config.load(None)
    assert info.value.key == "keys.signing_key"
