"""The gateway's configuration: TOML, every key optional, unknown keys refused.

``config/gateway.example.toml`` lists every key at its default; a test keeps the
two in step. Relative paths resolve against the deployment root: the directory holding
the configuration file, or its parent when that directory is named ``config``
(this repository's layout: ``config/``, ``keys/``, ``outbox/`` side by side).
With no configuration file, the current directory.
"""

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import keys
from custody.errors import KeyFormatError
from gateway.errors import ConfigError
from gateway.i18n import _
from gateway.routes import TENANT_RE, TenantSection, parse_route

ENV_VAR = "LGWAN_GATEWAY_CONFIG"
CONFIG_DIR_NAME = "config"
DEFAULT_PATH = Path("config/gateway.toml")
WORK_FACTOR_LIMITS = (10, 30)


@dataclass(frozen=True)
class ServerSection:
    """The SFTP drop service: where it listens and how long it waits."""

    listen: str = "127.0.0.1:2222"
    public_address: str = ""
    host_key: str = "keys/ssh_host_ed25519_key"
    login_grace_seconds: int = 30
    idle_timeout_seconds: int = 600
    max_unauthenticated: int = 64
    max_sessions_per_account: int = 4
    max_connections_per_source: int = 32


@dataclass(frozen=True)
class AuthSection:
    """Lockout and throttling of logins."""

    max_failures: int = 5
    lockout_minutes: int = 15
    source_failures_per_minute: int = 20
    failure_delay_ms: int = 300


@dataclass(frozen=True)
class StorageSection:
    """The confined storage tree and its limits."""

    root: str = "storage"
    max_upload_bytes: int = 8 * 1024**3
    tenant_quota_bytes: int = 64 * 1024**3
    reserve_free_bytes: int = 256 * 1024**2


@dataclass(frozen=True)
class StateSection:
    """The state database (embedded SQLite by default)."""

    database: str = "state.db"


@dataclass(frozen=True)
class KeysSection:
    """The gateway's Ed25519 signing key: receipts, status records, audit checkpoints."""

    signing_key: str = "keys/gateway_signing_ed25519"


@dataclass(frozen=True)
class AuditSection:
    """The tamper-evident audit log and its signed checkpoints."""

    log: str = "audit/audit.jsonl"
    checkpoints: str = "audit/checkpoints.jsonl"
    checkpoint_every_records: int = 1000
    checkpoint_every_seconds: int = 300


@dataclass(frozen=True)
class EnvelopeSection:
    """Which age envelopes are acceptable: the scrypt work factor bounds."""

    min_work_factor: int = 18
    max_work_factor: int = 20


@dataclass(frozen=True)
class PrintSiteSection:
    """The print site: where batches arrive and how opened batches are checked."""

    spool: str = "spool"
    work_dir: str = "work"
    csv_encoding: str = "cp932"


@dataclass(frozen=True)
class ForwarderSection:
    """The forwarding pipeline: rescans, retries and retention."""

    rescan_seconds: int = 60
    backoff_initial_ms: int = 1000
    backoff_max_seconds: int = 300
    retention_seconds: int = 0
    connect_timeout_seconds: int = 30


@dataclass(frozen=True)
class PullSection:
    """Pull mode at the print site: the gateway account batches are pulled from."""

    host: str = ""
    port: int = 2222
    user: str = ""
    tenant: str = ""
    host_key: str = ""
    receipt_key: str = ""
    private_key: str = "keys/contractor_ed25519"


@dataclass(frozen=True)
class CustodySection:
    """Print-site custody: erasure approval, overdue reporting, certificates, print log."""

    allow_self_approval: bool = False
    overdue_days: int = 14
    certificate_dir: str = "certificates"
    computer: str = ""
    overwrite_passes: int = 1


@dataclass(frozen=True)
class GatewayConfig:
    """The whole gateway configuration."""

    server: ServerSection = field(default_factory=ServerSection)
    auth: AuthSection = field(default_factory=AuthSection)
    storage: StorageSection = field(default_factory=StorageSection)
    state: StateSection = field(default_factory=StateSection)
    keys: KeysSection = field(default_factory=KeysSection)
    audit: AuditSection = field(default_factory=AuditSection)
    envelope: EnvelopeSection = field(default_factory=EnvelopeSection)
    printsite: PrintSiteSection = field(default_factory=PrintSiteSection)
    forwarder: ForwarderSection = field(default_factory=ForwarderSection)
    pull: PullSection = field(default_factory=PullSection)
    custody: CustodySection = field(default_factory=CustodySection)
    tenants: Mapping[str, TenantSection] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    source: Path | None = None

    def path(self, value: str) -> Path:
        """Resolve a configured path against the configuration's directory."""
        return (self.base_dir / Path(value).expanduser()).absolute()


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSection,
    "auth": AuthSection,
    "storage": StorageSection,
    "state": StateSection,
    "keys": KeysSection,
    "audit": AuditSection,
    "envelope": EnvelopeSection,
    "printsite": PrintSiteSection,
    "forwarder": ForwarderSection,
    "pull": PullSection,
    "custody": CustodySection,
}


def load(explicit: str | None) -> GatewayConfig:
    """Load the configuration from ``--config``, ``$LGWAN_GATEWAY_CONFIG`` or the default path.

    Raises:
        ConfigError: a named file is missing, bad TOML, unknown section or key,
            wrong type, or an out-of-range value.
    """
    named = explicit or os.environ.get(ENV_VAR)
    path = Path(named) if named else DEFAULT_PATH
    if not path.exists():
        if named:
            raise ConfigError(str(path), None, _("configuration file not found"))
        return _checked(GatewayConfig())
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(path), None, _("cannot read TOML: {reason}").format(reason=exc)
        ) from None
    built: dict[str, Any] = {}
    for name, table in raw.items():
        if name == "tenants":
            built[name] = _tenants(table, str(path))
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(str(path), name, _("unknown section"))
        if not isinstance(table, dict):
            raise ConfigError(str(path), name, _("must be a table"))
        built[name] = _typed(cls, table, str(path), name)
    return _checked(GatewayConfig(**built, base_dir=deployment_root(path), source=path))


def _tenants(raw: object, file: str) -> dict[str, TenantSection]:
    """Build the ``[tenants.<name>]`` tables, checking names and forward routes."""
    if not isinstance(raw, dict):
        raise ConfigError(file, "tenants", _("must be a table of [tenants.<name>] tables"))
    tenants: dict[str, TenantSection] = {}
    for name, table in raw.items():
        key = f"tenants.{name}"
        if not TENANT_RE.fullmatch(name):
            raise ConfigError(file, key, _("tenant names are 2-32 of a-z, 0-9 and '-'"))
        if not isinstance(table, dict):
            raise ConfigError(file, key, _("must be a table"))
        section = _typed(TenantSection, table, file, key)
        try:
            parse_route(section.forward)
        except ValueError as exc:
            raise ConfigError(file, f"{key}.forward", str(exc)) from None
        for count in ("max_attempts", "max_age_minutes"):
            if getattr(section, count) < 1:
                raise ConfigError(file, f"{key}.{count}", _("must be at least 1"))
        tenants[name] = section
    return tenants


def deployment_root(config_file: Path) -> Path:
    """The directory relative paths in ``config_file`` resolve against."""
    directory = config_file.absolute().parent
    return directory.parent if directory.name == CONFIG_DIR_NAME else directory


def _typed(cls: type[Any], table: dict[str, Any], file: str, prefix: str) -> Any:
    """Instantiate a section, refusing unknown keys and values of the wrong type."""
    defaults = cls()
    names = {f.name for f in fields(cls)}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(file, f"{prefix}.{key}", _("unknown key"))
        want = type(getattr(defaults, key))
        if type(value) is not want:
            raise ConfigError(
                file,
                f"{prefix}.{key}",
                _("must be {wanted}, not {given}").format(
                    wanted=want.__name__, given=type(value).__name__
                ),
            )
    return cls(**table)


def _checked(config: GatewayConfig) -> GatewayConfig:
    """Validate values that types alone do not constrain."""
    file = str(config.source) if config.source else _("(defaults)")
    low, high = WORK_FACTOR_LIMITS
    env = config.envelope
    for key, value in (
        ("min_work_factor", env.min_work_factor),
        ("max_work_factor", env.max_work_factor),
    ):
        if not low <= value <= high:
            raise ConfigError(
                file,
                f"envelope.{key}",
                _("must be between {low} and {high}").format(low=low, high=high),
            )
    if env.min_work_factor > env.max_work_factor:
        raise ConfigError(file, "envelope.min_work_factor", _("is above envelope.max_work_factor"))
    _check_positive(file, config)
    for key_name, key_path in (
        ("server.host_key", config.server.host_key),
        ("keys.signing_key", config.keys.signing_key),
    ):
        check_private_key_mode(config.path(key_path), file, key_name)
    _check_listen(file, "server.listen", config.server.listen)
    try:
        "テスト".encode(config.printsite.csv_encoding)
    except (LookupError, UnicodeEncodeError):
        raise ConfigError(
            file, "printsite.csv_encoding", _("unknown encoding or one without Japanese")
        ) from None
    return config


_POSITIVE = {
    "server": (
        "login_grace_seconds",
        "idle_timeout_seconds",
        "max_unauthenticated",
        "max_sessions_per_account",
        "max_connections_per_source",
    ),
    "auth": ("max_failures", "lockout_minutes", "source_failures_per_minute"),
    "storage": ("max_upload_bytes", "tenant_quota_bytes"),
    "audit": ("checkpoint_every_records", "checkpoint_every_seconds"),
    "forwarder": (
        "rescan_seconds",
        "backoff_initial_ms",
        "backoff_max_seconds",
        "connect_timeout_seconds",
    ),
    "custody": ("overdue_days", "overwrite_passes"),
}


def _check_positive(file: str, config: GatewayConfig) -> None:
    """Counts, sizes and durations must be at least 1 (delays and reserves at least 0)."""
    for section, names in _POSITIVE.items():
        for key in names:
            if getattr(getattr(config, section), key) < 1:
                raise ConfigError(file, f"{section}.{key}", _("must be at least 1"))
    for section, key in (
        ("auth", "failure_delay_ms"),
        ("storage", "reserve_free_bytes"),
        ("forwarder", "retention_seconds"),
    ):
        if getattr(getattr(config, section), key) < 0:
            raise ConfigError(file, f"{section}.{key}", _("must not be negative"))


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6) into host and port.

    Raises:
        ValueError: not of that form, or the port is outside 0-65535.
    """
    host, sep, port = value.rpartition(":")
    if (
        not sep
        or not host
        or not (port.isascii() and port.isdigit())
        or not 0 <= int(port) <= 65535
    ):
        raise ValueError(_("{value} is not HOST:PORT").format(value=repr(value)))
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _check_listen(file: str, key: str, value: str) -> None:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None


def check_private_key_mode(key: Path, file: str, name: str) -> None:
    """Refuse a private key file that group or others may read, as ssh does.

    A key that does not exist yet is not checked here (``init`` creates it).

    Raises:
        ConfigError: the key is not a regular file or its mode grants group/other access.
    """
    try:
        info = key.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(
            file, name, _("cannot stat {path}: {reason}").format(path=key, reason=exc.strerror)
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(file, name, _("{path} is not a regular file").format(path=key))
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        raise ConfigError(
            file,
            name,
            _("{path} is readable by others (mode {mode}); run: chmod 600 {path}").format(
                path=key, mode=f"{mode:04o}"
            ),
        )


def load_private_key(config: GatewayConfig, name: str, value: str) -> Ed25519PrivateKey:
    """Load a configured Ed25519 private key, refusing one that group or others may read.

    Args:
        config: the configuration the key path comes from (for resolving and messages).
        name: the configuration key, e.g. ``server.host_key``.
        value: its (possibly relative) path.

    Raises:
        ConfigError: missing, unreadable, readable by others, or not an unencrypted Ed25519 key.
    """
    file = str(config.source) if config.source else _("(defaults)")
    path = config.path(value)
    check_private_key_mode(path, file, name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(file, name, _("{path} does not exist").format(path=path)) from None
    except OSError as exc:
        raise ConfigError(
            file, name, _("cannot read {path}: {reason}").format(path=path, reason=exc.strerror)
        ) from None
    try:
        return keys.load_private_key(data)
    except KeyFormatError as exc:
        raise ConfigError(file, name, f"{path}: {exc}") from None
