"""The named peers the benchmarks measure against: a private OpenSSH ``sshd`` on loopback,
and OpenSSH's ``sftp`` client.

Shared by ``bench/sftp.py`` and ``bench/forward.py`` (run as scripts, so this
module is imported from the script's own directory).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Sshd:
    """A running private sshd: its port, the key to log in with, its host key."""

    root: Path
    port: int
    user_key: Path
    host_key_pub: Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM a process, then SIGKILL it if it does not stop within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def accepting(port: int, proc: "subprocess.Popen[bytes]") -> bool:
    """Wait up to 10 s for ``proc`` to accept TCP connections on ``port``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


@contextmanager
def sshd(root: Path, *, max_startups: int = 10) -> Iterator[Sshd | None]:
    """Start ``sshd -D`` with its own config and keys; yield None when that is not possible."""
    binary = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
    if binary is None or shutil.which("ssh-keygen") is None:
        print("bench: sshd not found (apt-get install openssh-server): no OpenSSH figures")
        yield None
        return
    root.mkdir()
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)],
                       check=True)  # fmt: skip
    (root / "authorized_keys").write_text((root / "user_key.pub").read_text())
    (root / "authorized_keys").chmod(0o600)
    port = free_port()
    (root / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n"
        f"StrictModes no\nPidFile {root / 'sshd.pid'}\nMaxStartups {max_startups}\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen(
        [binary, "-D", "-f", str(root / "sshd_config"), "-E", str(root / "sshd.log")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        if not accepting(port, proc):
            print(f"bench: sshd did not start, no OpenSSH figures: "
                  f"{(root / 'sshd.log').read_text()[-500:]}")  # fmt: skip
            yield None
            return
        yield Sshd(root, port, root / "user_key", root / "host_key.pub")
    finally:
        stop(proc)


def sftp_client_seconds(
    root: Path, login: Any, commands: list[str], *, cipher: str, timeout: float
) -> float:
    """Seconds for one OpenSSH ``sftp -b`` session running ``commands``, its login subtracted.

    ``login`` has ``port``, ``user``, ``key_path``, ``host_key`` and ``password``
    (None for key-only servers).

    The login is timed by a session running ``pwd`` only. A password (the
    gateway's first step) is given through ``SSH_ASKPASS``; ``BatchMode=no``
    comes before ``-b`` so that ssh, which keeps an option's first value, still
    asks for it.
    """
    known = root / "known_hosts"
    known.write_text(f"[127.0.0.1]:{login.port} {login.host_key}\n")
    env = dict(os.environ)
    if login.password is not None:
        askpass = root / "askpass.sh"
        askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{login.password}'\n")
        askpass.chmod(0o700)
        env |= {"SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    head = ["sftp", "-o", "BatchMode=no"]
    argv = [
        "-q", "-i", str(login.key_path), "-P", str(login.port),
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={known}",
        "-o", "StrictHostKeyChecking=yes", "-o", f"Ciphers={cipher}",
        "-o", "HostKeyAlgorithms=ssh-ed25519", f"{login.user}@127.0.0.1",
    ]  # fmt: skip

    def run(lines: list[str]) -> float:
        script = root / "batch"
        script.write_text("".join(f"{line}\n" for line in lines))
        started = time.monotonic()
        done = subprocess.run(
            [*head, "-b", str(script), *argv],
            env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace").strip()[-500:])
        return seconds

    login_seconds = min(run(["pwd"]) for _ in range(3))
    return run(commands) - login_seconds
