"""Shared by the drop-service tests: a real ``lgwan-gateway serve`` process and its wards.

Gateways are made with the real ``init``; accounts are added through the
``gateway.accounts`` API on the same state database (faster than one CLI
process per account). The audit log is read as JSON lines.
"""

import re
import secrets
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from custody import keys
from gateway.accounts import Accounts
from gateway.config import AuthSection
from gateway.state import StateStore
from tests.conftest import BIN, run_cli
from tests.integration.audit_kit import AuditReader

PASSWORD = "correct-horse-battery-staple"
_LISTENING = re.compile(r"^listening on 127\.0\.0\.1:(\d+)\n$")
_SUFFIX = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_batch() -> str:
    """A fresh batch id."""
    return "20260715-KAIGO-" + "".join(secrets.choice(_SUFFIX) for _ in range(6))


@dataclass
class Ward:
    """An account and its key pair."""

    name: str
    tenant: str
    key: paramiko.Ed25519Key


class Gateway(AuditReader):
    """A gateway root made by ``init``, its accounts and a running ``serve``."""

    def __init__(self, base: Path, settings: dict[str, dict[str, int]]) -> None:
        self.base = base
        self.root = base / "gw"
        done = run_cli("lgwan-gateway", "init", "--root", self.root, cwd=base)
        assert done.code == 0, done.err
        text = (self.root / "gateway.toml").read_text()
        settings = {**settings, "auth": {"failure_delay_ms": 0, **settings.get("auth", {})}}
        for section, values in settings.items():
            for key, value in values.items():
                pattern = rf"(?ms)(^\[{section}\]$.*?^{key} = )\S+$"
                text, count = re.subn(pattern, rf"\g<1>{value}", text, count=1)
                assert count == 1, (section, key)
        (self.root / "gateway.toml").write_text(text)
        self.store = StateStore.open(self.root / "state.db", create=False)
        self.accounts = Accounts(self.store, AuthSection(failure_delay_ms=0))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def add(self, name: str, tenant: str, role: str = "ward", allow: tuple[str, ...] = ()) -> Ward:
        """Create an account with a fresh Ed25519 key."""
        private = keys.generate_private_key()
        line = keys.public_key_to_openssh(private.public_key())
        self.accounts.add(name, role, tenant, line, list(allow), PASSWORD)
        pem = keys.private_key_to_openssh(private).decode()
        return Ward(name, tenant, paramiko.Ed25519Key(file_obj=_StringIO(pem)))

    def start(self) -> None:
        """Run ``serve --listen 127.0.0.1:0`` and read the port from its one line."""
        self.proc = subprocess.Popen(
            [str(BIN / "lgwan-gateway"), "--config", str(self.root / "gateway.toml"), "serve",
             "--listen", "127.0.0.1:0"],
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
        self.store.close()
        return self.proc.returncode, out, err

    def tenant_dir(self, tenant: str) -> Path:
        return self.root / "storage" / "tenants" / tenant


class _StringIO:
    """Minimal file object for paramiko's key loader."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines(keepends=True)

    def readlines(self) -> list[str]:
        return self._lines

    def read(self) -> str:
        return "".join(self._lines)


def connect(gw: Gateway, source: str = "127.0.0.1", **security: tuple[str, ...]) -> Any:
    """An SSH client transport after the key exchange (not logged in)."""
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=(source, 0))
    transport = paramiko.Transport(sock)
    options = transport.get_security_options()
    for name, value in security.items():
        setattr(options, name, value)
    transport.start_client(timeout=10)
    return transport


def source_of(transport: Any) -> str:
    """The ``source`` field the server audits for this client."""
    host, port = transport.sock.getsockname()[:2]
    return f"{host}:{port}"


@contextmanager
def session(
    gw: Gateway, ward: Ward, key: paramiko.PKey | None = None, source: str = "127.0.0.1"
) -> Iterator[paramiko.SFTPClient]:
    """Log in with password then key, yield an SFTP client; wait for the server to let go."""
    transport = connect(gw, source)
    where = source_of(transport)
    try:
        assert transport.auth_password(ward.name, PASSWORD, fallback=False) == ["publickey"]
        transport.auth_publickey(ward.name, key or ward.key)
        yield paramiko.SFTPClient.from_transport(transport)
    finally:
        transport.close()
        gw.wait_event("connection_closed", source=where)


def upload(sftp: paramiko.SFTPClient, batch: str, data: bytes) -> None:
    """Upload as the client does: write .part, rename to .age."""
    with sftp.open(f"/inbox/{batch}.age.part", "w") as handle:
        handle.set_pipelined(True)
        handle.write(data)
    sftp.rename(f"/inbox/{batch}.age.part", f"/inbox/{batch}.age")
