"""Interoperability with the reference tools: pyrage (rage) and the ``age`` CLI.

Each direction is one test with a multi-chunk payload. pyrage picks its work
factor by timing (20 on the development machine) and ``age`` uses 18, so we
accept up to 22 when reading their files; those scrypt runs cost seconds, so
there are only a few of them. Our files use a low work factor, which both
tools accept. The ``age`` CLI reads passphrases from its terminal only: we
drive it through a pseudo-terminal (stdlib ``pty``).
"""

from __future__ import annotations

import io
import os
import pty
import select
import shutil
from pathlib import Path

import pytest

from envelope import decrypt, encrypt, read_header

pytestmark = pytest.mark.interop

PW = "INTEROP-PASS-7F3K"
THEIR_MAX_WORK_FACTOR = 22
OUR_WORK_FACTOR = 10
PAYLOAD_SIZE = 3 * 64 * 1024 + 123
AGE = shutil.which("age")
needs_age = pytest.mark.skipif(AGE is None, reason="the age CLI is not installed (apt install age)")


def _decrypt(ct: bytes) -> bytes:
    """Our decryption of a file written by another tool."""
    out = io.BytesIO()
    decrypt(io.BytesIO(ct), out, PW, max_work_factor=THEIR_MAX_WORK_FACTOR)
    return out.getvalue()


def _encrypt(data: bytes) -> bytes:
    """Our encryption, at a work factor every tool accepts quickly."""
    out = io.BytesIO()
    encrypt(io.BytesIO(data), out, PW, work_factor=OUR_WORK_FACTOR)
    return out.getvalue()


def _run_age(args: list[str], prompts: int, timeout: float = 60.0) -> tuple[int, bytes]:
    """Run ``age`` on a pseudo-terminal, answering ``prompts`` passphrase prompts.

    Returns:
        The exit code and everything age wrote to the terminal.
    """
    assert AGE is not None
    pid, fd = pty.fork()
    if pid == 0:  # child: age on its own controlling terminal
        os.execv(AGE, [AGE, *args])  # noqa: S606 - fixed binary path, argv list
    transcript = b""
    answered = 0
    try:
        while select.select([fd], [], [], timeout)[0]:
            try:
                data = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            transcript += data
            if answered < prompts and transcript.count(b"passphrase") > answered:
                os.write(fd, PW.encode() + b"\n")
                answered += 1
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), transcript


def test_pyrage_decrypts_ours() -> None:
    """pyrage decrypts a multi-chunk file we encrypted."""
    pyrage = pytest.importorskip("pyrage")
    data = os.urandom(PAYLOAD_SIZE)
    assert pyrage.passphrase.decrypt(_encrypt(data), PW) == data


def test_we_decrypt_pyrage() -> None:
    """We decrypt a multi-chunk file pyrage encrypted at its own work factor."""
    pyrage = pytest.importorskip("pyrage")
    data = os.urandom(PAYLOAD_SIZE)
    ct = pyrage.passphrase.encrypt(data, PW)
    info = read_header(io.BytesIO(ct))
    assert info.is_scrypt and info.work_factor is not None
    assert _decrypt(ct) == data


@needs_age
def test_age_cli_decrypts_ours(tmp_path: Path) -> None:
    """``age -d`` decrypts a multi-chunk file we encrypted."""
    data = os.urandom(PAYLOAD_SIZE)
    (tmp_path / "in.age").write_bytes(_encrypt(data))
    code, transcript = _run_age(
        ["-d", "-o", str(tmp_path / "out"), str(tmp_path / "in.age")], prompts=1
    )
    assert code == 0, transcript
    assert (tmp_path / "out").read_bytes() == data


@needs_age
@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_we_decrypt_age_cli(tmp_path: Path, armor: bool) -> None:
    """We decrypt what ``age -p`` (and ``age -p -a``) encrypted at its default work factor."""
    data = os.urandom(PAYLOAD_SIZE if not armor else 1000)
    (tmp_path / "in").write_bytes(data)
    args = ["-p", *(["-a"] if armor else []), "-o", str(tmp_path / "out.age"), str(tmp_path / "in")]
    code, transcript = _run_age(args, prompts=2)
    assert code == 0, transcript
    ct = (tmp_path / "out.age").read_bytes()
    info = read_header(io.BytesIO(ct))
    assert (info.armored, info.work_factor) == (armor, 18)
    assert _decrypt(ct) == data
