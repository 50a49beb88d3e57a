"""Benchmark: upload-complete → delivered latency and forward throughput, against cp and sftp.

Small batches (default 200 × 1 MiB) and large ones (default 5 × 500 MiB), all
valid age envelopes, are uploaded back to back over one SFTP session (the
ward client's :mod:`client.transfer`) through a real ``lgwan-gateway serve``
whose tenant forwards them:

- ``file://``: straight into a print-site spool directory;
- ``sftp://``: to a second ``lgwan-gateway serve`` acting as the print site
  (forwarder account, pinned host and receipt keys), which spools them itself.

Latency is from the gateway's ``upload_completed`` audit time to the moment a
poller (2 ms) sees ``<batch>.age`` in the destination spool: p50, p95 and max
per size class. Forward throughput is the large batches' bytes over the sum of
their latencies, compared in the same run with a plain ``cp`` of the same
files (file://; ``cp`` does not fsync, the spool does) and with OpenSSH
``sftp put`` to a throw-away ``sshd`` on a loopback port with its own config
(sftp://; AES-256-GCM, the gateway's first cipher). A peer that cannot run is
skipped with a message. Targets (issue 4): p95 ≤ 0.5 s for 1 MiB to file://;
sftp forwarding ≥ 0.5 × OpenSSH sftp.

Run: ``make bench`` (defaults) or ``python bench/forward.py --small 20
--large 2 --large-mib 64`` for a quick check.
"""

import argparse
import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import kit  # bench/kit.py: batch ids, envelopes, hashes
import peers  # bench/peers.py: the OpenSSH peer

from client import transfer
from custody import load_private_key, load_public_key

BIN = Path(sys.executable).parent
MIB = kit.MIB
TENANT = "shinjuku"
WARD = "ward1"
FORWARDER = "fwd1"
PASSWORD = secrets.token_urlsafe(24)
"""The ward account's password for this run only."""
WORK_FACTOR = kit.WORK_FACTOR
POLL_SECONDS = 0.002
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass(frozen=True)
class Batch:
    """One envelope on disk, its batch id and size class."""

    batch_id: str
    path: Path
    size: int
    large: bool


@dataclass(frozen=True)
class Outcome:
    """What one destination run measured, per batch (seconds)."""

    destination: str
    latency: dict[str, float]
    """upload_completed (audit) → ``<batch>.age`` seen in the destination spool."""
    forwarded: dict[str, float]
    """upload_completed → the gateway's FORWARDED state (audit)."""
    send: dict[str, float]
    """FORWARDING → FORWARDED (audit): the delivery itself, verification at the far end included."""
    upload_seconds: float


# -- deployments: gateway (and print site) roots, serve processes, uploads ----------------------


def _cli(program: str, *args: str | Path, cwd: Path, secret: str | None = None) -> str:
    """Run a console script; its stdout, or exit with its stderr."""
    argv = [str(BIN / program), *map(str, args)]
    pass_fds: tuple[int, ...] = ()
    if secret is not None:
        read_end, write_end = os.pipe()
        os.write(write_end, secret.encode() + b"\n")
        os.close(write_end)
        pass_fds = (read_end,)
        argv = [a.replace("{fd}", str(read_end)) for a in argv]
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, pass_fds=pass_fds, check=False)
    finally:
        for fd in pass_fds:
            os.close(fd)
    if done.returncode != 0:
        raise SystemExit(f"bench: {program} {args[:3]} failed: {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def _configure(config: Path, forward: str, extra: str = "") -> None:
    """Lower the envelope minimum to the bench's work factor; route the tenant."""
    text = config.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^min_work_factor = \d+$", f"min_work_factor = {WORK_FACTOR}", text)
    text = re.sub(r"(?m)^max_upload_bytes = \d+$", f"max_upload_bytes = {64 << 30}", text)
    text = re.sub(r"(?m)^tenant_quota_bytes = \d+$", f"tenant_quota_bytes = {256 << 30}", text)
    text += f'\n[tenants.{TENANT}]\nforward = "{forward}"\n{extra}'
    config.write_text(text, encoding="utf-8")


def _serve(config: Path, cwd: Path, port: int = 0) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``serve`` on 127.0.0.1; return the process and its port."""
    proc = subprocess.Popen(
        [str(BIN / "lgwan-gateway"), "--config", str(config), "serve",
         "--listen", f"127.0.0.1:{port}"],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    match = _LISTENING.search(line)
    if not match:
        proc.kill()
        raise SystemExit(f"bench: serve did not start: {line!r}")
    stream = proc.stderr
    threading.Thread(target=lambda: stream.read(), daemon=True).start()
    return proc, int(match.group(2))


@dataclass(frozen=True)
class Deployment:
    """A running gateway with one ward account whose tenant forwards to ``spool``."""

    spool: Path
    audit_log: Path
    endpoint: transfer.Endpoint
    key_path: Path


def _pub(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


@contextmanager
def deployment(kind: str, root: Path) -> Iterator[Deployment]:
    """A gateway forwarding to a file:// spool, or via sftp:// to a print-site serve."""
    root.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if kind == "sftp":
            site = root / "printsite"
            spool = site / "spool"
            _cli("lgwan-gateway", "init", "--root", site, cwd=root)
            _configure(site / "gateway.toml", f"file://{spool}")
            fwd_key = root / "forward_ed25519"
            _cli("lgwan-client", "keygen", "--out", fwd_key, cwd=root)
            _cli("lgwan-gateway", "--config", site / "gateway.toml", "user", "add", FORWARDER,
                 "--role", "forwarder", "--tenant", TENANT, "--pubkey", f"{fwd_key}.pub",
                 "--allow", "127.0.0.1/32", cwd=root)  # fmt: skip
            proc, port = _serve(site / "gateway.toml", root)
            procs.append(proc)
            forward = f"sftp://{FORWARDER}@127.0.0.1:{port}/inbox"
            extra = (
                f'forward_key = "{fwd_key}"\n'
                f'host_key = "{_pub(site / "keys" / "ssh_host_ed25519_key.pub")}"\n'
                f'receipt_key = "{_pub(site / "keys" / "gateway_signing_ed25519.pub")}"\n'
            )
        else:
            spool, extra = root / "spool", ""
            forward = f"file://{spool}"
        spool.mkdir(parents=True, exist_ok=True)
        gw = root / "gateway"
        _cli("lgwan-gateway", "init", "--root", gw, cwd=root)
        _configure(gw / "gateway.toml", forward, extra)
        ward_key = root / "ward_ed25519"
        _cli("lgwan-client", "keygen", "--out", ward_key, cwd=root)
        _cli("lgwan-gateway", "--config", gw / "gateway.toml", "user", "add", WARD, "--role",
             "ward", "--tenant", TENANT, "--pubkey", f"{ward_key}.pub", "--password-fd", "{fd}",
             cwd=root, secret=PASSWORD)  # fmt: skip
        proc, port = _serve(gw / "gateway.toml", root)
        procs.append(proc)
        host_key = load_public_key(_pub(gw / "keys" / "ssh_host_ed25519_key.pub"))
        endpoint = transfer.Endpoint("127.0.0.1", port, WARD, host_key, 30.0)
        yield Deployment(spool, gw / "audit" / "audit.jsonl", endpoint, ward_key)
    finally:
        for proc in reversed(procs):
            peers.stop(proc)


def upload_all(dep: Deployment, items: list[tuple[str, Path]]) -> None:
    """Upload every envelope back to back over one session: ``.part``, then rename."""
    key = load_private_key(dep.key_path.read_bytes())
    with transfer.connect(dep.endpoint, PASSWORD, key) as session:
        for batch, path in items:
            part = f"/inbox/{batch}.age.part"
            with path.open("rb") as handle:
                session.upload(part, iter(functools.partial(handle.read, MIB), b""), offset=0)
            size = path.stat().st_size
            session.rename(part, f"/inbox/{batch}.age", timeout=60 + size / (32 * MIB))


class SpoolWatcher:
    """Polls a spool directory and notes (wall clock) when each expected name appears."""

    def __init__(self, spool: Path, names: dict[str, str]) -> None:
        """Watch for ``names`` (file name → batch id) in ``spool``."""
        self._spool, self._names = spool, names
        self.times: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.times) < len(self._names):
            now = time.time()
            with os.scandir(self._spool) as entries:
                for entry in entries:
                    batch = self._names.get(entry.name)
                    if batch is not None and batch not in self.times:
                        self.times[batch] = now
            time.sleep(POLL_SECONDS)

    def wait(self, timeout: float) -> None:
        """Until every name has appeared, or ``timeout`` seconds."""
        self._thread.join(timeout)

    def __enter__(self) -> "SpoolWatcher":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def audit_times(log: Path, event: str, **match: str) -> dict[str, float]:
    """Batch id → wall-clock time (epoch seconds) of its first matching ``event`` in the log."""
    found: dict[str, float] = {}
    for line in log.read_bytes().splitlines():
        record = json.loads(line)
        batch = record.get("batch")
        if (
            record.get("event") == event
            and all(record.get(k) == v for k, v in match.items())
            and isinstance(batch, str)
            and batch not in found
        ):
            found[batch] = datetime.fromisoformat(record["time"]).timestamp()
    return found


# -- the OpenSSH peer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSsh:
    """A private sshd on a loopback port and the key to log in to it."""

    root: Path
    port: int
    user_key: Path

    def put(self, files: list[Path]) -> float:
        """Seconds for one ``sftp -b`` session putting ``files`` (verified by size)."""
        target = self.root / "target"
        target.mkdir()
        script = self.root / "batch"
        script.write_text("".join(f'put "{f}" "{target / f.name}"\n' for f in files))
        seconds = _timed(
            ["sftp", "-q", "-b", str(script), "-i", str(self.user_key), "-P", str(self.port),
             "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
             "-o", "Ciphers=aes256-gcm@openssh.com", "-o", "BatchMode=yes",
             f"{_login_name()}@127.0.0.1"],
            cwd=self.root,
        )  # fmt: skip
        for f in files:
            if (target / f.name).stat().st_size != f.stat().st_size:
                raise SystemExit(f"bench: sftp put of {f.name} is incomplete")
        shutil.rmtree(target)
        return seconds


def _login_name() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


@contextmanager
def openssh(root: Path) -> Iterator[OpenSsh | None]:
    """The OpenSSH peer (bench/peers.py); None without sshd or the sftp client."""
    if shutil.which("sftp") is None:
        yield None
        return
    with peers.sshd(root) as server:
        yield None if server is None else OpenSsh(root, server.port, server.user_key)


# -- the benchmark ------------------------------------------------------------------------------


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _batches(root: Path, small: int, small_mib: float, large: int, large_mib: float) -> list[Batch]:
    """Write the envelopes (valid age files) once; both destinations upload the same files."""
    out = root / "envelopes"
    out.mkdir()
    made = []
    for count, mib, is_large in ((small, small_mib, False), (large, large_mib, True)):
        for _ in range(count):
            batch = kit.new_batch_id()
            path = out / f"{batch}.age"
            kit.write_envelope(path, int(mib * MIB))
            made.append(Batch(batch, path, path.stat().st_size, is_large))
    return made


def _run_destination(kind: str, root: Path, batches: list[Batch]) -> Outcome:
    """Start the gateway (and print site), upload everything, wait for every delivery."""
    with deployment(kind, root / kind) as dep:
        names = {f"{b.batch_id}.age": b.batch_id for b in batches}
        with SpoolWatcher(dep.spool, names) as seen:
            started = time.monotonic()
            upload_all(dep, [(b.batch_id, b.path) for b in batches])
            upload_seconds = time.monotonic() - started
            total = sum(b.size for b in batches)
            seen.wait(timeout=120 + total / (20 * MIB))
        changed = "batch_state_changed"
        deadline = time.monotonic() + 60
        while True:  # the spool copy appears just before the gateway records FORWARDED
            forwarded = audit_times(dep.audit_log, changed, to="forwarded")
            if set(names.values()) <= set(forwarded) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        completed = audit_times(dep.audit_log, "upload_completed")
        forwarding = audit_times(dep.audit_log, changed, to="forwarding")
        missing = sorted(set(names.values()) - set(seen.times) - set(forwarded))
        if missing:
            raise SystemExit(f"bench: {kind}: {len(missing)} batches never arrived: {missing[:3]}")
    ids = names.values()
    return Outcome(
        f"{kind}://",
        latency={b: seen.times[b] - completed[b] for b in ids},
        forwarded={b: forwarded[b] - completed[b] for b in ids},
        send={b: forwarded[b] - forwarding[b] for b in ids},
        upload_seconds=upload_seconds,
    )


def _timed(argv: list[str], *, cwd: Path) -> float:
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def _cp_seconds(root: Path, files: list[Path], *, durable: bool) -> float:
    """Seconds for ``cp`` of ``files`` (``durable``: then ``sync`` of the copies, as the spool)."""
    target = root / "cp-target"
    target.mkdir()
    started = time.monotonic()
    subprocess.run(["cp", *map(str, files), str(target)], check=True)
    if durable:
        subprocess.run(["sync", *(str(target / f.name) for f in files)], check=True)
    seconds = time.monotonic() - started
    shutil.rmtree(target)
    return seconds


def _sftp_seconds(root: Path, files: list[Path]) -> float | None:
    """Time OpenSSH ``sftp put`` of ``files`` to a private loopback sshd, or None (skipped)."""
    with openssh(root / "openssh") as server:
        if server is None:
            return None
        return server.put(files)


def _latency_rows(title: str, outcomes: list[Outcome], pick: str, batches: list[Batch]) -> None:
    by_id = {b.batch_id: b for b in batches}
    print(f"\n{title} (seconds)")
    print(f"{'destination':12} {'class':6} {'n':>4} {'p50':>8} {'p95':>8} {'max':>8}")
    for outcome in outcomes:
        measured: dict[str, float] = getattr(outcome, pick)
        for is_large in (False, True):
            values = [v for b, v in measured.items() if by_id[b].large is is_large]
            if values:
                print(
                    f"{outcome.destination:12} {'large' if is_large else 'small':6} "
                    f"{len(values):4d} {_percentile(values, 0.5):8.3f} "
                    f"{_percentile(values, 0.95):8.3f} {max(values):8.3f}"
                )


def _report(outcomes: list[Outcome], batches: list[Batch], peers: dict[str, float | None]) -> None:
    sizes = []
    for is_large in (False, True):
        group = [b for b in batches if b.large is is_large]
        if group:
            sizes.append(f"{len(group)} × {group[0].size / MIB:.1f} MiB")
    print(f"\n{os.cpu_count()} CPUs; batches: {', '.join(sizes)}; uploads back to back")
    for outcome in outcomes:
        print(f"  upload of everything to the gateway ({outcome.destination}): "
              f"{outcome.upload_seconds:.2f} s")  # fmt: skip
    _latency_rows("upload-complete → delivered (in the destination spool)", outcomes, "latency",
                  batches)  # fmt: skip
    _latency_rows("upload-complete → FORWARDED (gateway audit)", outcomes, "forwarded", batches)
    _latency_rows("the delivery itself: FORWARDING → FORWARDED (gateway audit)", outcomes, "send",
                  batches)  # fmt: skip
    large = [b for b in batches if b.large] or batches
    total_mib = sum(b.size for b in large) / MIB
    print(f"\nforward throughput, {len(large)} batches ({total_mib:.0f} MiB), same files as peers")
    print(f"{'path':44} {'seconds':>8} {'MiB/s':>8} {'ours/peer':>10}")
    peers_of = {"file://": ("cp", "cp + sync"), "sftp://": ("OpenSSH sftp put",)}
    for outcome in outcomes:
        send = sum(outcome.send[b.batch_id] for b in large)
        whole = sum(outcome.latency[b.batch_id] for b in large)
        rows = [
            (f"lgwan {outcome.destination} delivery (FORWARDING→FORWARDED)", send),
            (f"lgwan {outcome.destination} upload-complete → in spool", whole),
        ]
        for name, seconds in rows:
            print(f"{name:44} {seconds:8.2f} {total_mib / seconds:8.1f}")
        for peer_name in peers_of[outcome.destination]:
            peer = peers.get(peer_name)
            if peer is None:
                print(f"{peer_name:44} {'skipped':>8}")
                continue
            print(f"{peer_name:44} {peer:8.2f} {total_mib / peer:8.1f} "
                  f"{peer / send:9.2f}x")  # fmt: skip
    for outcome in outcomes:
        small = [outcome.latency[b.batch_id] for b in batches if not b.large]
        if outcome.destination == "file://" and small:
            p95 = _percentile(small, 0.95)
            verdict = "met" if p95 <= 0.5 else "NOT met"
            print(f"\ntarget: p95 ≤ 0.5 s for small batches to file:// — {p95:.3f} s ({verdict})")
        sftp = peers.get("OpenSSH sftp put")
        if outcome.destination == "sftp://" and sftp is not None:
            ratio = sftp / sum(outcome.send[b.batch_id] for b in large)
            verdict = "met" if ratio >= 0.5 else "NOT met"
            print(f"target: sftp forwarding ≥ 0.5 × OpenSSH sftp — {ratio:.2f}× ({verdict})")


def main() -> int:
    """Run the benchmark and print the tables."""
    parser = argparse.ArgumentParser(prog="bench/forward.py")
    parser.add_argument("--small", type=int, default=200, help="number of small batches")
    parser.add_argument("--small-mib", type=float, default=1.0)
    parser.add_argument("--large", type=int, default=5, help="number of large batches")
    parser.add_argument("--large-mib", type=float, default=500.0)
    parser.add_argument("--dest", choices=("file", "sftp", "both"), default="both")
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: $TMPDIR)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lgwan-bench-forward-", dir=args.dir))
    try:
        batches = _batches(root, args.small, args.small_mib, args.large, args.large_mib)
        kinds = ["file", "sftp"] if args.dest == "both" else [args.dest]
        outcomes = [_run_destination(kind, root, batches) for kind in kinds]
        large_files = [b.path for b in batches if b.large] or [b.path for b in batches]
        peers: dict[str, float | None] = {}
        if "file" in kinds:
            peers["cp"] = _cp_seconds(root, large_files, durable=False)
            peers["cp + sync"] = _cp_seconds(root, large_files, durable=True)
        if "sftp" in kinds:
            peers["OpenSSH sftp put"] = _sftp_seconds(root, large_files)
            if peers["OpenSSH sftp put"] is None:
                print("bench: OpenSSH sftp/sshd not usable here: no sftp peer figures")
        _report(outcomes, batches, peers)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
