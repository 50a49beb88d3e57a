"""Benchmark: seal and open of a large file against Debian's ``age`` and ``pyrage``.

Every contender runs as its own process on the same file in the same run, so
the figures are ratios on this machine, not absolute claims. Peak RSS is the
child's ``ru_maxrss`` from ``wait4``. Run with ``make bench`` (1 GiB) or
``python bench/seal.py --size-mib 256``.

Contenders, all at scrypt work factor 18 (age's default; scrypt alone then
needs 128 * r * N = 256 MiB, the floor of every contender's peak RSS; the
``wf 10`` rows show the memory of streaming itself):
- ``lgwan-client seal`` / ``lgwan-gateway open``: the whole product path
  (validation hash pass, tar, manifest, notice PDF; decrypt, verify, rename);
- ``envelope`` encrypt/decrypt: our age implementation alone, file to file;
- ``age -p`` / ``age -d`` (driven on a pseudo-terminal for the passphrase);
- ``pyrage`` (in memory: it has no streaming passphrase API).
"""

import argparse
import hashlib
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
PASSPHRASE_RE = re.compile(r"^Passphrase: (\S+)$", re.MULTILINE)
MIB = 1024 * 1024


@dataclass(frozen=True)
class Run:
    """One timed process."""

    name: str
    seconds: float
    peak_rss_mib: float


def _wait(pid: int, name: str, started: float) -> Run:
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {name} failed with status {status}")
    return Run(name, seconds, usage.ru_maxrss / 1024)


STAFF_PASSWORD = "bench-handler-password"  # noqa: S105 -- the benchmark's own staff member


def _spawn(name: str, argv: list[str], *, secrets: dict[str, str] | None = None, cwd: Path) -> Run:
    """Run argv; each secret goes through its own pipe whose fd replaces ``{name}``."""
    pass_fds: tuple[int, ...] = ()
    for placeholder, secret in (secrets or {}).items():
        read_end, write_end = os.pipe()
        os.write(write_end, secret.encode() + b"\n")
        os.close(write_end)
        pass_fds = (*pass_fds, read_end)
        argv = [a.replace("{" + placeholder + "}", str(read_end)) for a in argv]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, pass_fds=pass_fds, stdout=subprocess.DEVNULL)
    for fd in pass_fds:
        os.close(fd)
    run = _wait(proc.pid, name, started)
    proc.returncode = 0  # reaped by wait4
    return run


def _age(name: str, age: str, args: list[str], secret: str, prompts: int) -> Run:
    """Run ``age`` on a pseudo-terminal, answering its passphrase prompts."""
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(age, [age, *args])  # noqa: S606
    seen = b""
    answered = 0
    try:
        while select.select([fd], [], [], 3600)[0]:
            try:
                data = os.read(fd, 1024)
            except OSError:
                break
            if not data:
                break
            seen += data
            if answered < prompts and seen.count(b"passphrase") > answered:
                os.write(fd, secret.encode() + b"\n")
                answered += 1
    finally:
        os.close(fd)
    return _wait(pid, name, started)


def _python(name: str, code: str, *args: str, cwd: Path) -> Run:
    return _spawn(name, [sys.executable, "-c", code, *args], cwd=cwd)


ENVELOPE_ENCRYPT = """
import sys
from envelope import encrypt
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    encrypt(src, dst, sys.argv[3], work_factor=int(sys.argv[4]))
"""
ENVELOPE_DECRYPT = """
import sys
from envelope import decrypt
with open(sys.argv[1], "rb") as src, open(sys.argv[2], "wb") as dst:
    decrypt(src, dst, sys.argv[3], max_work_factor=int(sys.argv[4]))
"""
PYRAGE_ENCRYPT = """
import sys, pyrage
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(pyrage.passphrase.encrypt(data, sys.argv[3]))
"""
PYRAGE_DECRYPT = """
import sys, pyrage
data = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(pyrage.passphrase.decrypt(data, sys.argv[3]))
"""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(4 * MIB):
            digest.update(block)
    return digest.hexdigest()


def main() -> int:
    """Run every contender on one file and print MiB/s, ratios and peak RSS."""
    parser = argparse.ArgumentParser(prog="bench/seal.py")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where to work (default: /dev/shm, so disk write-back noise stays out)",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lgwan-bench-", dir=args.dir))
    try:
        return _bench(root, args.size_mib)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def _bench(root: Path, size_mib: int) -> int:
    data = root / "print.bin"
    block = os.urandom(MIB)
    with data.open("wb") as handle:
        for _ in range(size_mib):
            handle.write(block)
    original = _sha256(data)
    (root / "client.toml").write_text('[seal]\nout_dir = "outbox"\nnotice_dir = "notices"\n')
    runs: list[Run] = []

    seal = _spawn(
        "lgwan-client seal",
        [
            str(BIN / "lgwan-client"),
            "--config",
            "client.toml",
            "seal",
            "print.bin",
            "--notice-type",
            "BENCH",
        ],
        cwd=root,
    )
    runs.append(seal)
    (envelope,) = (root / "outbox").glob("*.age")
    from pypdf import PdfReader

    (notice,) = (root / "notices").glob("*.pdf")
    text = "\n".join(p.extract_text() or "" for p in PdfReader(notice).pages)
    found = PASSPHRASE_RE.search(text)
    assert found
    secret = found.group(1)
    gateway = [str(BIN / "lgwan-gateway"), "--config", "site/gateway.toml"]
    subprocess.run([str(BIN / "lgwan-gateway"), "init", "--root", "site"], cwd=root, check=True)
    staff = [*gateway, "staff", "add", "bench", "--role", "handler", "--password-fd", "{pw}"]
    _spawn("staff add", staff, secrets={"pw": STAFF_PASSWORD}, cwd=root)
    opened = _spawn(
        "lgwan-gateway open",
        [*gateway, "open", str(envelope), "--as", "bench", "--password-fd", "{pw}",
         "--passphrase-fd", "{fd}", "--via", "hand"],
        secrets={"fd": secret, "pw": STAFF_PASSWORD},
        cwd=root,
    )  # fmt: skip
    runs.append(opened)
    (released,) = (root / "site" / "work").glob("*/print.bin")
    assert _sha256(released) == original, "open did not round-trip"
    shutil.rmtree(root / "site")

    for wf, label in (("10", " (wf 10: streaming RSS)"), ("18", "")):
        enc, dec = f"envelope encrypt{label}", f"envelope decrypt{label}"
        runs.append(_python(enc, ENVELOPE_ENCRYPT, "print.bin", "ours.age", secret, wf, cwd=root))
        runs.append(_python(dec, ENVELOPE_DECRYPT, "ours.age", "ours.out", secret, wf, cwd=root))
        assert _sha256(root / "ours.out") == original
        (root / "ours.out").unlink()

    age = shutil.which("age")
    if age:
        runs.append(
            _age("age -p (encrypt)", age, ["-p", "-o", str(root / "age.age"), str(data)], secret, 2)
        )
        runs.append(
            _age(
                "age -d (decrypt)",
                age,
                ["-d", "-o", str(root / "age.out"), str(root / "age.age")],
                secret,
                1,
            )
        )
        assert _sha256(root / "age.out") == original
        (root / "age.out").unlink()
        # Cross-check: age opens ours and we open age's.
        runs.append(
            _age(
                "age -d (our envelope)",
                age,
                ["-d", "-o", str(root / "x.out"), str(root / "ours.age")],
                secret,
                1,
            )
        )
        assert _sha256(root / "x.out") == original
        (root / "x.out").unlink()
    else:
        print("bench: Debian's age is not installed (apt-get install age): no age figures")
    try:
        import pyrage  # noqa: F401

        runs.append(
            _python(
                "pyrage encrypt (in memory)",
                PYRAGE_ENCRYPT,
                "print.bin",
                "py.age",
                secret,
                cwd=root,
            )
        )
        runs.append(
            _python(
                "pyrage decrypt (in memory)", PYRAGE_DECRYPT, "py.age", "py.out", secret, cwd=root
            )
        )
        assert _sha256(root / "py.out") == original
    except ImportError:
        print("bench: pyrage is not installed: no pyrage figures")

    _report(runs, size_mib)
    return 0


def _report(runs: list[Run], size_mib: int) -> None:
    by_name = {r.name: r for r in runs}
    print(f"\n{size_mib} MiB, scrypt work factor 18, {os.cpu_count()} CPUs")
    print(f"{'contender':34} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
    for run in runs:
        rate = size_mib / run.seconds
        print(f"{run.name:34} {run.seconds:8.2f} {rate:8.1f} {run.peak_rss_mib:13.1f}")
    print("\nratios (throughput, ours / peer; > 1.0 means we are faster)")
    pairs = [
        ("lgwan-client seal", "age -p (encrypt)"),
        ("lgwan-gateway open", "age -d (decrypt)"),
        ("envelope encrypt", "age -p (encrypt)"),
        ("envelope decrypt", "age -d (decrypt)"),
        ("lgwan-client seal", "pyrage encrypt (in memory)"),
        ("lgwan-gateway open", "pyrage decrypt (in memory)"),
        ("envelope encrypt", "pyrage encrypt (in memory)"),
        ("envelope decrypt", "pyrage decrypt (in memory)"),
    ]
    for ours, peer in pairs:
        if ours in by_name and peer in by_name:
            ratio = by_name[peer].seconds / by_name[ours].seconds
            print(f"  {ours:22} vs {peer:28} {ratio:5.2f}x")


if __name__ == "__main__":
    sys.exit(main())
