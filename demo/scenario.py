"""The demo's machinery: run a step as a process, serve, wait, and summarise."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
TENANT = "shinjuku"
"""The ward's tenant name at the gateway."""
_LISTENING = re.compile(r"^listening on (\S+):(\d+)$")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def notice_line(pdf: Path, label: str) -> str:
    """Read ``<label>: VALUE`` from a notice's text layer, as a person reads the paper."""
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() or "" for page in PdfReader(pdf).pages)
    found = re.search(rf"^{label}: (\S+)$", text, re.MULTILINE)
    if not found:
        raise SystemExit(f"demo: no '{label}:' line in {pdf}")
    return found.group(1)


@dataclass
class Scenario:
    """Where the scenario lives, what it started and what it produced."""

    root: Path
    timings: list[tuple[str, float]] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    password: str = ""

    def run(
        self,
        title: str,
        args: list[str],
        *,
        secret: str | None = None,
        secrets: dict[str, str] | None = None,
        expect_code: int = 0,
        expect_in: str | None = None,
    ) -> str:
        """Run one step; each secret goes through its own pipe.

        ``secret`` replaces ``{fd}`` in args; ``secrets`` maps other placeholders
        (``{handler}``, ``{manager}`` …) to secrets. Never on argv, never in the environment.
        """
        print(f"==> {title}", flush=True)
        started = time.monotonic()
        wanted = dict(secrets or {})
        if secret is not None:
            wanted["fd"] = secret
        pass_fds: tuple[int, ...] = ()
        for name, value in wanted.items():
            read_end, write_end = os.pipe()
            os.write(write_end, value.encode("utf-8") + b"\n")
            os.close(write_end)
            pass_fds = (*pass_fds, read_end)
            args = [a.replace("{" + name + "}", str(read_end)) for a in args]
        try:
            done = subprocess.run(  # noqa: S603 - our own console scripts
                [str(BIN / args[0]), *args[1:]],
                cwd=self.root,
                capture_output=True,
                pass_fds=pass_fds,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        finally:
            for fd in pass_fds:
                os.close(fd)
        self.timings.append((title, time.monotonic() - started))
        out = done.stdout.decode("utf-8")
        err = done.stderr.decode("utf-8", "replace")
        if done.returncode != expect_code:
            sys.stderr.write(err)
            raise SystemExit(f"demo: step failed ({title}): exit {done.returncode}")
        if expect_code != 0:
            print(f"    refused as it should be: {err.strip().splitlines()[0]}")
        if expect_in is not None and expect_in not in out:
            raise SystemExit(f"demo: step ({title}) did not report {expect_in!r}: {out!r}")
        return out

    def serve(self, title: str, config: str) -> None:
        """Start ``lgwan-gateway serve`` in the background and wait for its one line."""
        print(f"==> {title}", flush=True)
        started = time.monotonic()
        proc = subprocess.Popen(  # noqa: S603 - our own console script
            [str(BIN / "lgwan-gateway"), "--config", config, "serve"],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.servers.append(proc)
        assert proc.stderr is not None
        line = proc.stderr.readline().decode().strip()
        if not _LISTENING.match(line):
            raise SystemExit(f"demo: serve did not start ({config}): {line!r}")
        self.timings.append((title, time.monotonic() - started))
        print(f"    {line}")

    def wait_for(self, title: str, path: Path, timeout: float = 20.0) -> None:
        """Wait until ``path`` exists (something another process delivers)."""
        print(f"==> {title}", flush=True)
        started = time.monotonic()
        while not path.exists():
            if time.monotonic() - started > timeout:
                raise SystemExit(f"demo: {path} did not appear within {timeout:.0f} s")
            if any(proc.poll() is not None for proc in self.servers):
                raise SystemExit("demo: a server stopped unexpectedly")
            time.sleep(0.05)
        self.timings.append((title, time.monotonic() - started))

    def stop_all(self) -> None:
        """SIGTERM every server this scenario started and wait for it."""
        while self.servers:
            proc = self.servers.pop()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def set_toml(self, file: str, section: str, key: str, value: str | int) -> None:
        """Set ``[section] key = value`` in a file ``init`` wrote (the key is present)."""
        path = self.root / file
        text = path.read_text(encoding="utf-8")
        pattern = rf"(?ms)(^\[{section}\]$.*?^{key} = )[^\n]*$"
        literal = str(value) if isinstance(value, int) else f'"{value}"'
        text, count = re.subn(pattern, lambda m: m.group(1) + literal, text, count=1)
        if count != 1:
            raise SystemExit(f"demo: no [{section}] {key} in {path}")
        path.write_text(text, encoding="utf-8")

    def append_toml(self, file: str, text: str) -> None:
        """Append TOML text to a configuration file."""
        with (self.root / file).open("a", encoding="utf-8") as handle:
            handle.write(text)

    def summary(self, ok: bool) -> None:
        """Print what happened, how long each step took and where everything is."""
        print("\nSummary: " + ("every step succeeded" if ok else "FAILED"))
        for title, seconds in self.timings:
            print(f"  {seconds:7.2f} s  {title}")
        print(f"  {sum(t for _, t in self.timings):7.2f} s  total")
        for doc in self.documents:
            print(f"  document: {doc}")
        for log in self.logs:
            print(f"  log:      {log}")
        print(f"  scenario directory: {self.root}")
