"""Helpers for tests that run two gateways: real ``lgwan-gateway init`` roots and ``serve``.

A :class:`Site` is one gateway root made by ``init`` (its ``gateway.toml``
edited in place), optionally serving on 127.0.0.1. Accounts are added through
the ``gateway.accounts`` API on its state database (faster than one CLI process
each); the audit log is read as JSON lines. Envelopes are real age files with a
small scrypt work factor (the sites accept it: ``[envelope] min_work_factor``).
"""

import io
import json
import os
import re
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import paramiko
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import keys
from envelope import EncryptingWriter
from gateway.accounts import Accounts
from gateway.config import AuthSection
from gateway.state import StateStore
from tests.conftest import BIN, Result, run_cli
from tests.integration.audit_kit import AuditReader

PASSWORD = "contractor-password-0123"
WORK_FACTOR = 10
_LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)\n$")
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch() -> str:
    """A fresh batch id."""
    return "20260715-KAIGO-" + "".join(secrets.choice(_SUFFIX) for _ in range(6))


def envelope(size: int) -> bytes:
    """A real age envelope of about ``size`` bytes of random content."""
    out = io.BytesIO()
    with EncryptingWriter(out, "correct horse battery", work_factor=WORK_FACTOR) as writer:
        writer.write(os.urandom(size))
    return out.getvalue()


def key_pair(directory: Path, name: str) -> tuple[Ed25519PrivateKey, Path]:
    """A fresh Ed25519 key written as ``directory/name`` (0600) and ``name.pub``."""
    key = keys.generate_private_key()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(keys.private_key_to_openssh(key))
    path.with_name(name + ".pub").write_text(keys.public_key_to_openssh(key.public_key()) + "\n")
    return key, path


def free_port() -> int:
    """A port nobody listens on (just released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Site(AuditReader):
    """A gateway root made by ``init``, its accounts and (once started) a running ``serve``."""

    def __init__(self, base: Path, name: str) -> None:
        self.base = base
        self.root = base / name
        done = run_cli("lgwan-gateway", "init", "--root", self.root, cwd=base)
        assert done.code == 0, done.err
        self.config = self.root / "gateway.toml"
        self.set("auth", "failure_delay_ms", 0)
        self.set("envelope", "min_work_factor", WORK_FACTOR)
        self.store = StateStore.open(self.root / "state.db", create=False)
        self.accounts = Accounts(self.store, AuthSection(failure_delay_ms=0))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def set(self, section: str, key: str, value: object) -> None:
        """Set ``[section] key`` (present in the file ``init`` wrote) to a TOML value."""
        text = self.config.read_text()
        shown = json.dumps(value) if isinstance(value, str) else str(value)
        pattern = rf"(?ms)(^\[{section}\]$.*?^{key} = )[^\n]*$"
        text, count = re.subn(pattern, lambda m: m.group(1) + shown, text, count=1)
        assert count == 1, (section, key)
        self.config.write_text(text)

    def add_tenant(self, tenant: str, **values: str) -> None:
        """Append a ``[tenants.<tenant>]`` table."""
        lines = [f"\n[tenants.{tenant}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()]
        with self.config.open("a") as handle:
            handle.write("\n".join(lines) + "\n")

    def public(self, name: str) -> str:
        """The ``ssh-ed25519`` line of one of the site's keys (``ssh_host_ed25519_key`` …)."""
        return (self.root / "keys" / f"{name}.pub").read_text().strip()

    @property
    def host_key(self) -> str:
        return self.public("ssh_host_ed25519_key")

    @property
    def receipt_key(self) -> str:
        return self.public("gateway_signing_ed25519")

    def tenant_dir(self, tenant: str) -> Path:
        return self.root / "storage" / "tenants" / tenant

    def cli(self, *args: str | os.PathLike[str], secret: str | None = None) -> Result:
        """Run ``lgwan-gateway --config <this site> ARGS``."""
        return run_cli(
            "lgwan-gateway", "--config", self.config, *args, cwd=self.base, secret=secret
        )

    def start(self, port: int = 0) -> None:
        """Run ``serve --listen 127.0.0.1:PORT`` and read the port from its one line."""
        self.proc = subprocess.Popen(
            [str(BIN / "lgwan-gateway"), "--config", str(self.config), "serve",
             "--listen", f"127.0.0.1:{port}"],
            cwd=self.base, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()
        match = _LISTENING.match(line)
        assert match, f"serve did not start: {line!r}"
        self.port = int(match.group(1))

    def stop(self) -> tuple[int, bytes, bytes]:
        """SIGTERM the server; return its exit status, the rest of stdout and stderr."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        code = self.proc.returncode
        self.proc = None
        return code, out, err

    def close(self) -> None:
        """Stop serving (if running) and close the state database."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None
        self.store.close()


def paramiko_key(key: Ed25519PrivateKey) -> paramiko.Ed25519Key:
    """The key as a paramiko client needs it."""
    pem = keys.private_key_to_openssh(key).decode("ascii")
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem))


def transport(site: Site, source: str = "127.0.0.1") -> paramiko.Transport:
    """A raw paramiko client transport to ``site`` after the key exchange (not logged in)."""
    sock = socket.create_connection(
        ("127.0.0.1", site.port), timeout=10, source_address=(source, 0)
    )
    client = paramiko.Transport(sock)
    client.start_client(timeout=10)
    return client
