"""Tests for client.config: TOML loading, strict keys and types, paths, key-file mode."""

from pathlib import Path

import pytest

from client import config
from client.config import ClientConfig, IdentitySection, PrintSiteSection, SealSection, WardSection
from client.errors import ClientError, ConfigError


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
    path = _write(tmp_path / "client.toml", text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    return info.value


def test_default_path_absent_gives_defaults() -> None:
    """With no --config, no variable and no config/client.toml, defaults apply."""
    loaded = config.load(None)
    assert loaded.ward == WardSection()
    assert loaded.seal == SealSection()
    assert loaded.identity == IdentitySection()
    assert loaded.source is None
    assert loaded.base_dir == Path.cwd()


def test_default_path_present_is_loaded(tmp_path: Path) -> None:
    """config/client.toml under the current directory is read when nothing is named."""
    _write(tmp_path / "config" / "client.toml", '[ward]\nname = "豊島区"\n')
    loaded = config.load(None)
    assert loaded.ward.name == "豊島区"
    assert loaded.source == config.DEFAULT_PATH
    assert loaded.base_dir == tmp_path  # config/ sits beside keys/: its parent is the root


def test_values_are_loaded(tmp_path: Path) -> None:
    """Every key in the file reaches its section; others keep their defaults."""
    path = _write(
        tmp_path / "c.toml",
        '[ward]\nname = "豊島区"\nhandler = "山田"\n[seal]\nwork_factor = 20\n'
        'csv_encoding = "utf-8"\n[identity]\nprivate_key = "/k/id"\n',
    )
    loaded = config.load(str(path))
    assert loaded.ward == WardSection(name="豊島区", handler="山田")
    assert loaded.seal == SealSection(work_factor=20, csv_encoding="utf-8")
    assert loaded.identity == IdentitySection(private_key="/k/id")
    assert loaded.source == path


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    """An empty file is a valid configuration at every default."""
    loaded = config.load(str(_write(tmp_path / "c.toml", "")))
    assert (loaded.ward, loaded.seal, loaded.identity) == (
        WardSection(),
        SealSection(),
        IdentitySection(),
    )


def test_explicit_missing_file_is_refused(tmp_path: Path) -> None:
    """A --config file that does not exist is a configuration error (exit 78)."""
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        config.load(str(missing))
    assert info.value.exit_code == 78
    assert info.value.file == str(missing)
    assert isinstance(info.value, ClientError)


def test_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$LGWAN_CLIENT_CONFIG is used when --config is not given."""
    path = _write(tmp_path / "env.toml", '[ward]\nname = "中野区"\n')
    monkeypatch.setenv(config.ENV_VAR, str(path))
    assert config.load(None).ward.name == "中野区"


def test_env_var_missing_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named by the variable must exist."""
    monkeypatch.setenv(config.ENV_VAR, str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        config.load(None)


def test_explicit_wins_over_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config takes precedence over the variable."""
    monkeypatch.setenv(config.ENV_VAR, str(_write(tmp_path / "env.toml", '[ward]\nname = "A"\n')))
    path = _write(tmp_path / "cli.toml", '[ward]\nname = "B"\n')
    assert config.load(str(path)).ward.name == "B"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ward\n", "cannot read TOML"),
        ('name = "x"\n', "unknown section"),
        ("[wards]\n", "unknown section"),
        ("ward = 1\n", "must be a table"),
        ("[ward]\nnmae = 'x'\n", "unknown key"),
        ("[seal]\nwork_factor = 18\nwork_factor = 19\n", "cannot read TOML"),
        ("[ward.sub]\nx = 1\n", "unknown key"),
        ("[[ward]]\nname = 'x'\n", "must be a table"),
    ],
)
def test_malformed_files_are_refused(text: str, message: str, tmp_path: Path) -> None:
    """Bad TOML, unknown sections/keys and non-table sections are refused."""
    error = _refused(text, tmp_path)
    assert message in str(error)
    assert error.exit_code == 78


def test_unknown_key_is_named(tmp_path: Path) -> None:
    """The error names the offending section.key."""
    error = _refused("[seal]\nworkfactor = 18\n", tmp_path)
    assert error.key == "seal.workfactor"
    assert str(error).startswith(f"{tmp_path / 'client.toml'}: seal.workfactor: ")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is a ConfigError, not a traceback."""
    path = tmp_path / "c.toml"
    path.write_bytes('[ward]\nname = "新宿区"\n'.encode("cp932"))
    with pytest.raises(ConfigError, match="cannot read TOML"):
        config.load(str(path))


def test_directory_as_config_is_refused(tmp_path: Path) -> None:
    """Naming a directory as the config file is a ConfigError."""
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError):
        config.load(str(tmp_path / "d"))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[seal]\nwork_factor = "18"\n', "seal.work_factor"),
        ("[seal]\nwork_factor = true\n", "seal.work_factor"),
        ("[seal]\nwork_factor = 18.0\n", "seal.work_factor"),
        ("[seal]\nwork_factor = [18]\n", "seal.work_factor"),
        ("[seal]\nout_dir = 1\n", "seal.out_dir"),
        ("[seal]\ncsv_encoding = false\n", "seal.csv_encoding"),
        ("[ward]\nname = 1979-05-27\n", "ward.name"),
        ("[ward]\nhandler = {}\n", "ward.handler"),
        ('[identity]\nprivate_key = ["k"]\n', "identity.private_key"),
    ],
)
def test_wrong_types_are_refused(text: str, key: str, tmp_path: Path) -> None:
    """A value of the wrong TOML type (bool for int included) is refused, naming the key."""
    error = _refused(text, tmp_path)
    assert error.key == key
    assert "must be" in str(error)


@pytest.mark.parametrize("value", [9, 23, 0, -18, 64])
def test_work_factor_out_of_range_is_refused(value: int, tmp_path: Path) -> None:
    """seal.work_factor outside 10..22 is refused."""
    error = _refused(f"[seal]\nwork_factor = {value}\n", tmp_path)
    assert error.key == "seal.work_factor"
    assert "between 10 and 22" in str(error)


@pytest.mark.parametrize("value", [10, 18, 22])
def test_work_factor_in_range_is_accepted(value: int, tmp_path: Path) -> None:
    """seal.work_factor at and between the bounds is accepted."""
    path = _write(tmp_path / "c.toml", f"[seal]\nwork_factor = {value}\n")
    assert config.load(str(path)).seal.work_factor == value


@pytest.mark.parametrize(
    ("encoding", "message"),
    [
        ("no-such-codec", "unknown encoding"),
        ("rot13", "unknown encoding"),
        ("ascii", "cannot encode Japanese"),
        ("latin-1", "cannot encode Japanese"),
    ],
)
def test_bad_csv_encoding_is_refused(encoding: str, message: str, tmp_path: Path) -> None:
    """seal.csv_encoding must be a known text encoding that can hold Japanese."""
    error = _refused(f'[seal]\ncsv_encoding = "{encoding}"\n', tmp_path)
    assert error.key == "seal.csv_encoding"
    assert message in str(error)


@pytest.mark.parametrize("encoding", ["cp932", "shift_jis", "utf-8", "euc_jp"])
def test_japanese_encodings_are_accepted(encoding: str, tmp_path: Path) -> None:
    """Encodings that hold Japanese are accepted."""
    path = _write(tmp_path / "c.toml", f'[seal]\ncsv_encoding = "{encoding}"\n')
    assert config.load(str(path)).seal.csv_encoding == encoding


def test_relative_paths_resolve_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative paths resolve against the config file's directory, not the cwd."""
    conf_dir = tmp_path / "etc" / "lgwan"
    _write(conf_dir / "client.toml", '[seal]\nout_dir = "out"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = config.load("../etc/lgwan/client.toml")
    assert loaded.base_dir.resolve() == conf_dir
    assert loaded.path(loaded.seal.out_dir).resolve() == conf_dir / "out"
    assert loaded.path(loaded.seal.notice_dir).resolve() == conf_dir / "notices"
    assert loaded.path("x").is_absolute()
    assert loaded.path("/abs/x") == Path("/abs/x")
    assert loaded.path("~/x") == Path.home() / "x"


def test_defaults_resolve_against_cwd(tmp_path: Path) -> None:
    """Without a file, relative paths resolve against the current directory."""
    loaded = config.load(None)
    assert loaded.path("outbox") == tmp_path / "outbox"


def test_handler_name_prefers_configured(tmp_path: Path) -> None:
    """handler_name() returns the configured handler, else a non-empty OS user."""
    assert ClientConfig(ward=WardSection(handler="山田")).handler_name() == "山田"
    assert ClientConfig().handler_name()


# --- private key mode ------------------------------------------------------------


def _with_key(tmp_path: Path, mode: int) -> Path:
    key = tmp_path / "conf" / "keys" / "ward_ed25519"
    key.parent.mkdir(parents=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(mode)
    return _write(tmp_path / "conf" / "client.toml", "")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666, 0o610, 0o601, 0o700 | 0o020])
def test_private_key_readable_by_others_is_refused(mode: int, tmp_path: Path) -> None:
    """A private key with any group/other permission is refused (exit 78), with a chmod hint."""
    path = _with_key(tmp_path, mode)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert info.value.key == "identity.private_key"
    assert info.value.exit_code == 78
    assert f"mode {mode:04o}" in str(info.value)
    assert "chmod 600" in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_private_key_owner_only_is_accepted(mode: int, tmp_path: Path) -> None:
    """A private key readable only by its owner is accepted."""
    path = _with_key(tmp_path, mode)
    loaded = config.load(str(path))
    assert loaded.path(loaded.identity.private_key) == tmp_path / "conf" / "keys" / "ward_ed25519"


def test_private_key_checked_relative_to_config_dir(tmp_path: Path) -> None:
    """The key checked is the one under the config's directory, not under the cwd."""
    loose = tmp_path / "keys" / "ward_ed25519"
    loose.parent.mkdir()
    loose.write_text("x")
    loose.chmod(0o644)
    path = _write(tmp_path / "conf" / "client.toml", "")
    assert config.load(str(path)).source == path
    with pytest.raises(ConfigError, match="readable by others"):
        config.load(None)


def test_missing_private_key_is_accepted(tmp_path: Path) -> None:
    """An absent key file is not a config error (keygen has not run yet)."""
    path = _write(tmp_path / "c.toml", '[identity]\nprivate_key = "keys/none"\n')
    assert config.load(str(path)).identity.private_key == "keys/none"


def test_private_key_directory_is_refused(tmp_path: Path) -> None:
    """A directory where the private key should be is refused."""
    (tmp_path / "keys" / "ward_ed25519").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load(None)


def test_private_key_symlink_is_refused(tmp_path: Path) -> None:
    """A symlink as private key is refused (its target is not checked)."""
    target = tmp_path / "real"
    target.write_text("x")
    target.chmod(0o600)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ward_ed25519").symlink_to(target)
    with pytest.raises(ConfigError, match="not a regular file"):
        config.load(None)


def test_check_private_key_mode_directly(tmp_path: Path) -> None:
    """check_private_key_mode names the file it was given in the error."""
    key = tmp_path / "k"
    key.write_text("x")
    key.chmod(0o604)
    with pytest.raises(ConfigError) as info:
        config.check_private_key_mode(key, "my.toml")
    assert info.value.file == "my.toml"
    key.chmod(0o600)
    config.check_private_key_mode(key, "my.toml")
    assert key.stat().st_mode & 0o777 == 0o600


# --- gateway and ledger sections -------------------------------------------------


@pytest.mark.parametrize("port", [0, -1, 65536, 100000])
def test_gateway_port_out_of_range_is_refused(port: int, tmp_path: Path) -> None:
    """gateway.port outside 1..65535 is refused."""
    error = _refused(f"[gateway]\nport = {port}\n", tmp_path)
    assert error.key == "gateway.port"


@pytest.mark.parametrize("port", [1, 22, 65535])
def test_gateway_port_in_range_is_accepted(port: int, tmp_path: Path) -> None:
    """gateway.port within 1..65535 is accepted."""
    path = _write(tmp_path / "c.toml", f"[gateway]\nport = {port}\n")
    assert config.load(str(path)).gateway.port == port


@pytest.mark.parametrize("value", [0, -5])
def test_connect_timeout_must_be_positive(value: int, tmp_path: Path) -> None:
    """gateway.connect_timeout_seconds below 1 is refused."""
    error = _refused(f"[gateway]\nconnect_timeout_seconds = {value}\n", tmp_path)
    assert error.key == "gateway.connect_timeout_seconds"


def test_gateway_port_as_string_is_refused(tmp_path: Path) -> None:
    """gateway.port given as text is a type error."""
    error = _refused('[gateway]\nport = "2222"\n', tmp_path)
    assert error.key == "gateway.port"
    assert "must be int" in str(error)


def test_ledger_path_resolves_against_config_dir(tmp_path: Path) -> None:
    """ledger.path is relative to the config file's directory."""
    path = _write(tmp_path / "conf" / "client.toml", '[ledger]\npath = "l/x.jsonl"\n')
    loaded = config.load(str(path))
    assert loaded.path(loaded.ledger.path) == tmp_path / "conf" / "l" / "x.jsonl"


def test_printsite_defaults_and_values(tmp_path: Path) -> None:
    """[printsite] is optional (no key pinned, certificates/); its keys are loaded as given."""
    assert config.load(None).printsite == PrintSiteSection("", "certificates")
    line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uta2V5LWZvci1hLXRlc3QtMDEyMzQ1Njc4OQ"
    path = _write(
        tmp_path / "conf" / "client.toml",
        f'[printsite]\nsigning_key = "{line}"\ncertificate_dir = "erasure"\n',
    )
    loaded = config.load(str(path))
    assert loaded.printsite.signing_key == line
    assert loaded.path(loaded.printsite.certificate_dir) == tmp_path / "conf" / "erasure"


def test_printsite_empty_certificate_dir_is_refused(tmp_path: Path) -> None:
    """printsite.certificate_dir may not be empty."""
    error = _refused('[printsite]\ncertificate_dir = " "\n', tmp_path)
    assert error.key == "printsite.certificate_dir"


def test_printsite_unknown_key_is_refused(tmp_path: Path) -> None:
    """A misspelt [printsite] key is named, not ignored."""
    error = _refused('[printsite]\nsigning_keys = ""\n', tmp_path)
    assert error.key == "printsite.signing_keys"
