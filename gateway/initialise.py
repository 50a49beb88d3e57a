"""``lgwan-gateway init``: create a gateway root — config, keys, state database, audit log.

:func:`init_root` does the work (the ``init`` command in :mod:`gateway.admin`
calls it with the operator's name); :func:`render_config_toml` writes
``gateway.toml`` with every key at its default.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from custody import keys
from gateway import config as config_mod
from gateway.audit import AuditLog
from gateway.credentials import toml_value
from gateway.errors import GatewayError
from gateway.i18n import _
from gateway.state import StateStore

CONFIG_NAME = "gateway.toml"


@dataclass(frozen=True)
class Initialised:
    """What ``init`` created."""

    config_path: Path
    host_key_fingerprint: str
    signing_key_fingerprint: str


def init_root(root: Path, *, actor: str) -> Initialised:
    """Create a gateway under ``root``: config, host and signing keys, state database, directories.

    ``root/gateway.toml`` lists every key at its default, so every path in it is
    relative to ``root``. Private keys are written 0600 (their directory 0700),
    public keys beside them as ``.pub``. A ``gateway_initialised`` event opens the
    new audit log. If anything that ``init`` would create already exists, nothing
    is changed; if a step fails, everything created so far is removed again.

    Raises:
        GatewayError: ``root`` is already (partly) initialised, or a file cannot be written.
    """
    root = root.absolute()
    cfg = config_mod.GatewayConfig(base_dir=root)
    config_path = root / CONFIG_NAME
    host_key_path = cfg.path(cfg.server.host_key)
    signing_key_path = cfg.path(cfg.keys.signing_key)
    database = cfg.path(cfg.state.database)
    log, checkpoints = cfg.path(cfg.audit.log), cfg.path(cfg.audit.checkpoints)
    targets = (
        config_path,
        host_key_path,
        _pub(host_key_path),
        signing_key_path,
        _pub(signing_key_path),
        database,
        log,
        checkpoints,
    )
    for target in targets:
        if target.exists() or target.is_symlink():
            raise GatewayError(
                _("{path} already exists: {root} is already initialised").format(
                    path=target, root=root
                ),
                hint=_("init never overwrites anything; choose another --root"),
            )
    created: list[Path] = []
    try:
        for directory, mode in (
            (root, 0o755),
            (host_key_path.parent, 0o700),
            (signing_key_path.parent, 0o700),
            (cfg.path(cfg.storage.root), 0o700),
            (cfg.path(cfg.printsite.spool), 0o700),
            (cfg.path(cfg.printsite.work_dir), 0o700),
            (log.parent, 0o700),
            (checkpoints.parent, 0o700),
            (database.parent, 0o755),
        ):
            _make_dirs(directory, mode, created)
        host_key, signing_key = keys.generate_private_key(), keys.generate_private_key()
        for path, key in ((host_key_path, host_key), (signing_key_path, signing_key)):
            _write_new(path, keys.private_key_to_openssh(key), 0o600, created)
            line = keys.public_key_to_openssh(key.public_key(), f"lgwan-gateway {path.name}")
            _write_new(_pub(path), (line + "\n").encode("ascii"), 0o644, created)
        fingerprints = [keys.fingerprint(k.public_key()) for k in (host_key, signing_key)]
        _write_new(config_path, render_config_toml().encode("utf-8"), 0o644, created)
        created.extend((database, Path(f"{database}-wal"), Path(f"{database}-shm")))
        StateStore.open(database).close()
        created.extend((log, checkpoints))
        audit = AuditLog.open(
            log,
            checkpoints,
            signing_key,
            every_records=cfg.audit.checkpoint_every_records,
            every_seconds=cfg.audit.checkpoint_every_seconds,
            timer=False,  # a short-lived command: close() writes the checkpoint
        )
        try:
            audit.emit(
                "gateway_initialised",
                actor=actor,
                root=str(root),
                host_key_fingerprint=fingerprints[0],
                signing_key_fingerprint=fingerprints[1],
            )
        finally:
            audit.close()
    except BaseException:
        _remove(created)
        raise
    return Initialised(config_path, fingerprints[0], fingerprints[1])


def render_config_toml() -> str:
    """``gateway.toml`` with every section and key of :class:`GatewayConfig` at its default."""
    lines = [
        "# lgwan-gateway configuration, written by `lgwan-gateway init`: every key at its default.",
        "# config/gateway.example.toml explains each key. Relative paths resolve against the",
        "# directory holding this file. This file never holds a secret.",
    ]
    defaults = config_mod.GatewayConfig()
    for section_field in dataclasses.fields(defaults):
        section = getattr(defaults, section_field.name)
        if not dataclasses.is_dataclass(section):
            continue  # base_dir, source: not configuration keys
        doc = (type(section).__doc__ or "").strip().splitlines()
        lines += ["", f"[{section_field.name}]"]
        if doc:
            lines.append(f"# {doc[0]}")
        for key in dataclasses.fields(section):
            lines.append(f"{key.name} = {toml_value(getattr(section, key.name))}")
    return "\n".join(lines) + "\n"


def _pub(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


def _make_dirs(directory: Path, mode: int, created: list[Path]) -> None:
    missing: list[Path] = []
    probe = directory
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        path.mkdir(mode=mode)
        created.append(path)


def _write_new(path: Path, data: bytes, mode: int, created: list[Path]) -> None:
    """Write a file that must not exist yet, with ``mode``, durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    created.append(path)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove(created: list[Path]) -> None:
    """Undo a failed init: files first, then the directories it made (newest first)."""
    for path in reversed(created):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        except OSError:
            continue
