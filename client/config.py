"""The ward client's configuration: TOML, every key optional, unknown keys refused.

``config/client.example.toml`` lists every key at its default; a test keeps the
two in step. Relative paths resolve against the deployment root: the directory holding
the configuration file, or its parent when that directory is named ``config``
(this repository's layout: ``config/``, ``keys/``, ``outbox/`` side by side).
With no configuration file, the current directory.
"""

import os
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from client.errors import ConfigError
from client.i18n import _

ENV_VAR = "LGWAN_CLIENT_CONFIG"
CONFIG_DIR_NAME = "config"
DEFAULT_PATH = Path("config/client.toml")
WORK_FACTOR_RANGE = (10, 22)


@dataclass(frozen=True)
class WardSection:
    """Who seals: printed on notices and recorded in manifests."""

    name: str = "新宿区"
    handler: str = ""


@dataclass(frozen=True)
class SealSection:
    """Where sealed batches and password notices go, and how data is checked."""

    out_dir: str = "outbox"
    notice_dir: str = "notices"
    csv_encoding: str = "cp932"
    work_factor: int = 18


@dataclass(frozen=True)
class IdentitySection:
    """The ward's Ed25519 key pair (SSH login, signed ledger records)."""

    private_key: str = "keys/ward_ed25519"


@dataclass(frozen=True)
class GatewaySection:
    """The LGWAN-ASP gateway this ward sends to, with its keys pinned (no secrets)."""

    host: str = "127.0.0.1"
    port: int = 2222
    user: str = ""
    tenant: str = ""
    host_key: str = ""
    receipt_key: str = ""
    connect_timeout_seconds: int = 15


@dataclass(frozen=True)
class LedgerSection:
    """The ward's local hand-over ledger (hash-chained, signed records) and its rules."""

    path: str = "ledger/ledger.jsonl"
    min_gap_minutes: int = 60
    outstanding_days: int = 7


@dataclass(frozen=True)
class DvdSection:
    """The DVD fallback: image size limit and disc serials."""

    out_dir: str = "dvd"
    split_bytes: int = 4480 * 1024 * 1024
    serial_prefix: str = "DVD"


@dataclass(frozen=True)
class PrintSiteSection:
    """The print site that erases the ward's batches: its pinned key, where certificates go."""

    signing_key: str = ""
    certificate_dir: str = "certificates"


@dataclass(frozen=True)
class ClientConfig:
    """The whole client configuration, with paths already resolved."""

    ward: WardSection = field(default_factory=WardSection)
    seal: SealSection = field(default_factory=SealSection)
    identity: IdentitySection = field(default_factory=IdentitySection)
    gateway: GatewaySection = field(default_factory=GatewaySection)
    ledger: LedgerSection = field(default_factory=LedgerSection)
    dvd: DvdSection = field(default_factory=DvdSection)
    printsite: PrintSiteSection = field(default_factory=PrintSiteSection)
    base_dir: Path = field(default_factory=Path.cwd)
    source: Path | None = None

    def path(self, value: str) -> Path:
        """Resolve a configured path against the configuration's directory."""
        return (self.base_dir / Path(value).expanduser()).absolute()

    def handler_name(self) -> str:
        """The configured handler, else the OS user running the tool."""
        return self.ward.handler or _os_user()


_SECTIONS: dict[str, type[Any]] = {
    "ward": WardSection,
    "seal": SealSection,
    "identity": IdentitySection,
    "gateway": GatewaySection,
    "ledger": LedgerSection,
    "dvd": DvdSection,
    "printsite": PrintSiteSection,
}


def load(explicit: str | None) -> ClientConfig:
    """Load the configuration named on the command line, in the environment, or by default.

    A file named explicitly (``--config`` or ``$LGWAN_CLIENT_CONFIG``) must
    exist; the default path may be absent, in which case defaults apply.

    Raises:
        ConfigError: missing explicit file, bad TOML, unknown key, wrong type,
            out-of-range value, or a private key readable by group or others.
    """
    named = explicit or os.environ.get(ENV_VAR)
    path = Path(named) if named else DEFAULT_PATH
    if not path.exists():
        if named:
            raise ConfigError(str(path), None, _("configuration file not found"))
        return _checked(ClientConfig())
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), None, _("cannot read TOML: {reason}").format(reason=exc)
        ) from None
    sections: dict[str, Any] = {}
    for name, table in raw.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(str(path), name, _("unknown section"))
        if not isinstance(table, dict):
            raise ConfigError(str(path), name, _("must be a table"))
        sections[name] = _section(cls, table, str(path), name)
    config = ClientConfig(**sections, base_dir=deployment_root(path), source=path)
    return _checked(config)


def _section(cls: type[Any], table: dict[str, Any], file: str, prefix: str) -> Any:
    """Build one section dataclass, refusing unknown keys and wrong types."""
    known = {f.name: f for f in fields(cls)}
    for key, value in table.items():
        spec = known.get(key)
        if spec is None:
            raise ConfigError(file, f"{prefix}.{key}", _("unknown key"))
        expected = type(getattr(cls(), key))
        if type(value) is not expected:
            message = _("must be {expected}, not {actual}").format(
                expected=expected.__name__, actual=type(value).__name__
            )
            raise ConfigError(file, f"{prefix}.{key}", message)
    return cls(**table)


def _checked(config: ClientConfig) -> ClientConfig:
    """Validate values that types alone do not constrain."""
    file = str(config.source) if config.source else _("(defaults)")
    low, high = WORK_FACTOR_RANGE
    if not low <= config.seal.work_factor <= high:
        raise ConfigError(
            file,
            "seal.work_factor",
            _("must be between {low} and {high}").format(low=low, high=high),
        )
    try:
        "テスト".encode(config.seal.csv_encoding)
    except LookupError:
        raise ConfigError(file, "seal.csv_encoding", _("unknown encoding")) from None
    except UnicodeEncodeError:
        raise ConfigError(file, "seal.csv_encoding", _("cannot encode Japanese text")) from None
    if not 0 < config.gateway.port < 65536:
        raise ConfigError(
            file, "gateway.port", _("must be between {low} and {high}").format(low=1, high=65535)
        )
    if config.ledger.min_gap_minutes < 0:
        raise ConfigError(file, "ledger.min_gap_minutes", _("must not be negative"))
    if config.ledger.outstanding_days < 1:
        raise ConfigError(file, "ledger.outstanding_days", _("must be at least 1"))
    if config.dvd.split_bytes < 1024 * 1024:
        raise ConfigError(file, "dvd.split_bytes", _("must be at least 1 MiB"))
    if not (config.dvd.serial_prefix.isascii() and config.dvd.serial_prefix.isalnum()):
        raise ConfigError(file, "dvd.serial_prefix", _("must be ASCII letters and digits"))
    if config.gateway.connect_timeout_seconds < 1:
        raise ConfigError(file, "gateway.connect_timeout_seconds", _("must be at least 1"))
    if not config.printsite.certificate_dir.strip():
        raise ConfigError(file, "printsite.certificate_dir", _("must not be empty"))
    check_private_key_mode(config.path(config.identity.private_key), file)
    return config


def check_private_key_mode(key: Path, file: str) -> None:
    """Refuse a private key file that group or others may read, as ssh does.

    Raises:
        ConfigError: the key exists and its mode grants group/other access,
            or it is not a regular file.
    """
    try:
        info = key.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        message = _("cannot stat {path}: {reason}").format(path=key, reason=exc.strerror or exc)
        raise ConfigError(file, "identity.private_key", message) from None
    if not stat.S_ISREG(info.st_mode):
        message = _("{path} is not a regular file").format(path=key)
        raise ConfigError(file, "identity.private_key", message)
    if info.st_mode & 0o077:
        message = _("{path} is readable by others (mode {mode}); run: chmod 600 {path}").format(
            path=key, mode=f"{stat.S_IMODE(info.st_mode):04o}"
        )
        raise ConfigError(file, "identity.private_key", message)


def deployment_root(config_file: Path) -> Path:
    """The directory relative paths in ``config_file`` resolve against."""
    directory = config_file.absolute().parent
    return directory.parent if directory.name == CONFIG_DIR_NAME else directory


def _os_user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return os.environ.get("USER", "unknown")
