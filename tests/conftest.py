"""Shared fixtures: running the real console scripts as subprocesses."""

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Result:
    """What a CLI run produced."""

    code: int
    out: str
    err: str


CliRunner = Callable[..., Result]


def run_cli(
    program: str, *args: str | os.PathLike[str], cwd: Path, secret: str | None = None
) -> Result:
    """Run ``program`` with ``args``; ``secret`` is fed on a pipe named by ``{fd}`` in args."""
    argv = [str(a) for a in args]
    pass_fds: tuple[int, ...] = ()
    if secret is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, secret.encode("utf-8") + b"\n")
        os.close(write_end)
        pass_fds = (read_end,)
        argv = [a.replace("{fd}", str(read_end)) for a in argv]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LGWAN_")}
    try:
        done = subprocess.run(
            [str(BIN / program), *argv],
            cwd=cwd,
            capture_output=True,
            pass_fds=pass_fds,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )
    finally:
        for fd in pass_fds:
            os.close(fd)
    return Result(done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def client(tmp_path: Path) -> CliRunner:
    """Run ``lgwan-client`` in ``tmp_path``."""
    return lambda *args, **kw: run_cli("lgwan-client", *args, cwd=tmp_path, **kw)


@pytest.fixture
def gateway(tmp_path: Path) -> CliRunner:
    """Run ``lgwan-gateway`` in ``tmp_path``."""
    return lambda *args, **kw: run_cli("lgwan-gateway", *args, cwd=tmp_path, **kw)
