"""A print site for custody tests: ``init``, staff, sealed batches in the spool, several secrets.

Every command runs the real ``lgwan-gateway`` as a subprocess. Secrets travel on
their own pipes: an argument ``{name}`` is replaced by the read end of a pipe
holding ``secrets[name]`` (the handler's password, the passphrase, …).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.spool import Spool
from tests.conftest import BIN, Result
from tests.gateway.test_envelope_check import CSV, SECRET, sealed_envelope

BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-JUMIN-AB12CD"
TENANT = "shinjuku"
HANDLER, MANAGER = "tanaka", "suzuki"
HANDLER_PASSWORD = "handler-pass-4821-x"
MANAGER_PASSWORD = "manager-pass-7730-y"
PASSPHRASE = SECRET
PLAINTEXT = CSV
"""``print.csv`` as every test batch holds it."""


def run(program: str, *args: object, cwd: Path, secrets: Mapping[str, str]) -> Result:
    """Run ``program``; each ``{name}`` in ``args`` becomes a pipe fd holding ``secrets[name]``."""
    argv = [str(a) for a in args]
    fds: dict[str, int] = {}
    try:
        for name, value in secrets.items():
            if not any(f"{{{name}}}" in a for a in argv):
                continue
            read_end, write_end = os.pipe()
            os.write(write_end, value.encode("utf-8") + b"\n")
            os.close(write_end)
            fds[name] = read_end
        for name, fd in fds.items():
            argv = [a.replace(f"{{{name}}}", str(fd)) for a in argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LGWAN_")}
        done = subprocess.run(
            [str(BIN / program), *argv],
            cwd=cwd,
            capture_output=True,
            pass_fds=tuple(fds.values()),
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
    finally:
        for fd in fds.values():
            os.close(fd)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@dataclass(frozen=True)
class CustodySite:
    """A print site made by ``lgwan-gateway init --root`` with a handler and a manager."""

    root: Path
    cwd: Path

    @property
    def config(self) -> Path:
        return self.root / "gateway.toml"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def work(self) -> Path:
        return self.root / "work"

    def gateway(self, *args: object, **secrets: str) -> Result:
        """``lgwan-gateway --config <site> ARGS``; ``{handler}``/``{manager}``/``{fd}`` fds."""
        values = {"handler": HANDLER_PASSWORD, "manager": MANAGER_PASSWORD, "fd": PASSPHRASE}
        values.update(secrets)
        return run("lgwan-gateway", "--config", self.config, *args, cwd=self.cwd, secrets=values)

    def audit(self, event: str) -> list[dict[str, object]]:
        lines = (self.root / "audit" / "audit.jsonl").read_text().splitlines()
        return [doc for doc in map(json.loads, lines) if doc["event"] == event]

    def add_staff(self, name: str, role: str, password: str, full_name: str = "") -> None:
        extra = ["--full-name", full_name] if full_name else []
        done = self.gateway(
            "staff", "add", name, "--role", role, *extra, "--password-fd", "{pw}", pw=password
        )
        assert done.code == 0, done.err

    def spool_batch(self, batch: str = BATCH, *, tenant: str = TENANT) -> bytes:
        """Deliver a freshly sealed batch into the spool (as forwarding would); its envelope."""
        envelope = sealed_envelope(batch)
        Spool(self.spool).deliver(
            batch,
            io.BytesIO(envelope),
            tenant=tenant,
            channel="lgwan",
            expected_size=len(envelope),
            expected_sha256=hashlib.sha256(envelope).hexdigest(),
            source_detail={"test": True},
        )
        return envelope

    def open(self, batch: str = BATCH, *extra: object, **secrets: str) -> Result:
        """``open BATCH --as tanaka --via hand`` with the handler's password and the passphrase."""
        return self.gateway(
            "open", batch, "--as", HANDLER, "--password-fd", "{handler}",
            "--passphrase-fd", "{fd}", "--via", "hand", *extra, **secrets,
        )  # fmt: skip

    def print_log(self, *extra: object, sheets: int = 10, **secrets: str) -> Result:
        """``print-log add --batch BATCH --file print.csv --printer RICOH-1`` as the handler."""
        return self.gateway(
            "print-log", "add", "--batch", BATCH, "--file", "print.csv", "--printer", "RICOH-1",
            "--sheets", sheets, "--as", HANDLER, "--password-fd", "{handler}", *extra, **secrets,
        )  # fmt: skip

    def mark_erased(self, batch: str = BATCH) -> None:
        """What ``erase`` leaves behind in the spool: the certificate copy, no envelope."""
        (self.spool / f"{batch}.erasure.json").write_text("{}")
        (self.spool / f"{batch}.age").unlink(missing_ok=True)


_TEMPLATE: list[Path] = []


def make_site(tmp_path: Path) -> CustodySite:
    """An initialised print site (work factor minimum 10) with handler tanaka and manager suzuki.

    The first call builds it with the real commands (``init``, ``staff add``) in a
    temporary directory; later calls copy that site, which saves three
    subprocesses (and two argon2 hashes) per test.
    """
    if not _TEMPLATE:
        base = Path(tempfile.mkdtemp(prefix="custody-site-"))
        _TEMPLATE.append(_build(base / "site", base))
    root = tmp_path / "site"
    shutil.copytree(_TEMPLATE[0], root, symlinks=True)
    return CustodySite(root, tmp_path)


def _build(root: Path, cwd: Path) -> Path:
    done = run("lgwan-gateway", "init", "--root", root, cwd=cwd, secrets={})
    assert done.code == 0, done.err
    config = root / "gateway.toml"
    text = config.read_text()
    assert "min_work_factor = 18" in text
    config.write_text(text.replace("min_work_factor = 18", "min_work_factor = 10"))
    site = CustodySite(root, cwd)
    site.add_staff(HANDLER, "handler", HANDLER_PASSWORD, "田中 花子")
    site.add_staff(MANAGER, "manager", MANAGER_PASSWORD, "鈴木 一郎")
    return root
