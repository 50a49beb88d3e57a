"""Benchmark: SFTP upload and download through ``lgwan-gateway serve`` against OpenSSH.

Both servers run in the same run, on loopback, in one work directory (default
``/dev/shm``, so disks stay out of the figures), with the same AES-256-GCM:

- ours: ``lgwan-gateway serve`` on a root made by ``lgwan-gateway init``, one
  tenant routed ``pull``, a ``ward`` account (password, then key) that uploads
  and a ``contractor`` account (password, then key) that downloads;
- OpenSSH: ``/usr/sbin/sshd -D`` with its own temporary config, host key and
  authorized key, ``Subsystem sftp internal-sftp`` (Debian ``openssh-server``).

The file is a valid age envelope (scrypt work factor 10, which the gateway is
set to accept). The same paramiko client code (the ward client's algorithms,
window and packet size from :mod:`client.transfer`) drives both servers:
upload as ``/inbox/<batch>.age.part`` in 256 KiB pipelined writes (the last
one unpipelined, so every write's answer is read, as ``client.transfer``
does), then rename to ``<batch>.age``. The gateway hashes the file and signs
its receipt before it answers the rename, so uploads are timed twice: to the
close of the ``.part`` and to the rename's reply. The ward cannot read a
completed upload: the tenant's ``pull`` route moves it (after the forwarder's
envelope check) into ``/outbox``, which the contractor downloads with
paramiko's ``get`` (prefetch). OpenSSH's ``sftp`` client is timed against both
servers too (its login, measured by an empty session, is subtracted; the
gateway's password goes through ``SSH_ASKPASS``). Downloads are checked by
SHA-256, uploads by size.

Concurrency: 20 uploads of 50 MiB at once (one process each, one account whose
``max_sessions_per_account`` is raised), timed from a barrier after login to
the last rename reply, against one upload of 50 MiB alone; the same against
OpenSSH. Targets (issue 3): upload and download ≥ 0.5 × OpenSSH; 20 concurrent
uploads all succeed with aggregate throughput ≥ 0.8 × a single stream.

Run: ``make bench`` (1 GiB) or ``python bench/sftp.py --size-mib 256``.
"""

import argparse
import multiprocessing
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kit  # bench/kit.py: batch ids, envelopes, hashes
import paramiko
import peers  # bench/peers.py: the OpenSSH peer

from client import transfer
from custody import keys
from gateway.accounts import Accounts
from gateway.config import AuthSection
from gateway.state import StateStore

BIN = Path(sys.executable).parent
MIB = kit.MIB
BLOCK = 256 * 1024
"""Bytes handed to each pipelined write (paramiko sends them as 32 KiB requests)."""
PREFETCH_REQUESTS = 512
"""Outstanding 32 KiB reads of a download (as the gateway's own relay client)."""
CIPHER = "aes256-gcm@openssh.com"
"""What both clients negotiate with both servers (the first of the ward client's list)."""
TENANT = "bench"
WARD = "ward1"
CONTRACTOR = "contractor1"
PASSWORD = secrets.token_urlsafe(24)
"""Both gateway accounts' password, for this run only."""
WORK_FACTOR = kit.WORK_FACTOR
TIMEOUT = 120.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


@dataclass(frozen=True)
class Login:
    """How to log in to one server (picklable: it crosses into worker processes)."""

    port: int
    user: str
    key_path: Path
    host_key: str
    """The pinned ``ssh-ed25519 AAAA…`` line (comment dropped)."""
    password: str | None
    """The gateway's first step; None for OpenSSH (key only)."""


@dataclass(frozen=True)
class Figure:
    """One timed transfer."""

    transfer: str
    client: str
    server: str
    size_bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """MiB/s."""
        return self.size_bytes / MIB / self.seconds


# -- the one paramiko client, for both servers ---------------------------------------------------


def connect(login: Login) -> tuple[paramiko.Transport, paramiko.SFTPClient]:
    """Connect with the ward client's algorithms, check the pinned host key, log in, open SFTP."""
    sock = socket.create_connection(("127.0.0.1", login.port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = paramiko.Transport(
        sock,
        default_window_size=transfer.WINDOW_BYTES,
        default_max_packet_size=transfer.MAX_PACKET_BYTES,
    )
    options = client.get_security_options()
    options.kex = tuple(k for k in transfer.KEX_ALGORITHMS if k in options.kex)
    options.ciphers = transfer.CIPHERS
    options.digests = transfer.MACS
    options.key_types = transfer.HOST_KEY_TYPES
    client.auth_timeout = TIMEOUT
    client.start_client(timeout=TIMEOUT)
    seen = client.get_remote_server_key()
    if f"{seen.get_name()} {seen.get_base64()}" != login.host_key:
        client.close()
        raise SystemExit(f"bench: port {login.port} presented another host key")
    if login.password is not None:
        client.auth_password(login.user, login.password, fallback=False)
    client.auth_publickey(login.user, paramiko.Ed25519Key(filename=str(login.key_path)))
    sftp = paramiko.SFTPClient.from_transport(client)
    if sftp is None:
        client.close()
        raise SystemExit(f"bench: port {login.port} refused the SFTP subsystem")
    sftp.get_channel().settimeout(TIMEOUT * 10)
    return client, sftp


def upload(sftp: paramiko.SFTPClient, local: Path, remote: str) -> None:
    """Write ``local`` to ``remote`` pipelined; the last request reads every write's answer."""
    with local.open("rb") as source, sftp.open(remote, "w") as handle:
        handle.set_pipelined(True)
        pending = source.read(BLOCK)
        while pending:
            following = source.read(BLOCK)
            if not following:
                split = max(0, len(pending) - transfer.MAX_PACKET_BYTES)
                handle.write(pending[:split])
                handle.set_pipelined(False)
                pending = pending[split:]
            handle.write(pending)
            pending = following


def download(sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
    """paramiko's ``get`` with prefetch (it checks the size it wrote)."""
    sftp.get(remote, str(local), prefetch=True, max_concurrent_prefetch_requests=PREFETCH_REQUESTS)


def timed_upload(login: Login, local: Path, part: str, final: str) -> tuple[float, float]:
    """Seconds to the close of ``part`` and to the reply of its rename to ``final``."""
    client, sftp = connect(login)
    try:
        started = time.monotonic()
        upload(sftp, local, part)
        closed = time.monotonic()
        sftp.rename(part, final)
        return closed - started, time.monotonic() - started
    finally:
        client.close()


def timed_download(login: Login, remote: str, local: Path) -> float:
    """Seconds for one ``get`` (after login)."""
    client, sftp = connect(login)
    try:
        started = time.monotonic()
        download(sftp, remote, local)
        return time.monotonic() - started
    finally:
        client.close()


def _worker(login: Login, local: Path, part: str, final: str, barrier: Any, out: Any) -> None:
    """One concurrent upload (its own process): log in, wait for the others, upload, rename."""
    try:
        client, sftp = connect(login)
    except BaseException as exc:
        barrier.abort()
        out.put(("error", f"login: {type(exc).__name__}: {exc}"))
        return
    try:
        barrier.wait(TIMEOUT)
        started = time.monotonic()
        upload(sftp, local, part)
        closed = time.monotonic()
        sftp.rename(part, final)
        out.put(("ok", (started, closed, time.monotonic())))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        client.close()


@dataclass(frozen=True)
class Burst:
    """``n`` uploads at once: how many succeeded and the aggregate seconds."""

    n: int
    ok: int
    errors: list[str]
    to_close: float
    to_rename: float


def burst(login: Login, local: Path, names: list[tuple[str, str]]) -> Burst:
    """Upload ``local`` as each ``(part, final)`` at once, one process each."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(names)), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(login, local, part, final, barrier, out))
        for part, final in names
    ]
    try:
        for proc in procs:
            proc.start()
        results = [out.get(timeout=TIMEOUT * 10) for _ in procs]
        for proc in procs:
            proc.join(TIMEOUT)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    times = [t for kind, t in results if kind == "ok"]
    errors = [str(e) for kind, e in results if kind != "ok"]
    if not times:
        return Burst(len(names), 0, errors, float("nan"), float("nan"))
    first = min(t[0] for t in times)
    return Burst(
        len(names),
        len(times),
        errors,
        max(t[1] for t in times) - first,
        max(t[2] for t in times) - first,
    )


# -- our gateway --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gateway:
    """A running ``lgwan-gateway serve``, its two accounts and its tenant's outbox on disk."""

    ward: Login
    contractor: Login
    outbox: Path


def _set(text: str, section: str, key: str, value: int) -> str:
    """Set ``[section] key`` (as ``init`` wrote it) to an integer."""
    pattern = rf"(?ms)(^\[{section}\]$.*?^{key} = )[^\n]*$"
    text, count = re.subn(pattern, lambda m: m.group(1) + str(value), text, count=1)
    if count != 1:
        raise SystemExit(f"bench: no [{section}] {key} in gateway.toml")
    return text


def _key_pair(directory: Path, name: str) -> tuple[Path, str]:
    """A fresh Ed25519 key ``directory/name`` (0600, OpenSSH format) and its public line."""
    key = keys.generate_private_key()
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(keys.private_key_to_openssh(key))
    return path, keys.public_key_to_openssh(key.public_key())


def _public(path: Path) -> str:
    """``type base64`` of an OpenSSH ``.pub`` file (its comment dropped)."""
    return " ".join(path.read_text(encoding="utf-8").split()[:2])


@contextmanager
def gateway(root: Path, concurrent: int) -> Iterator[Gateway]:
    """``init`` a root, route its tenant ``pull``, add the accounts, ``serve`` on a free port."""
    root.mkdir()
    gw = root / "gateway"
    done = subprocess.run(
        [str(BIN / "lgwan-gateway"), "init", "--root", str(gw)], capture_output=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench: lgwan-gateway init failed: {done.stderr.decode()[-2000:]}")
    config = gw / "gateway.toml"
    text = config.read_text(encoding="utf-8")
    for section, key, value in (
        ("server", "max_sessions_per_account", concurrent + 4),
        ("server", "max_connections_per_source", concurrent + 16),
        ("auth", "failure_delay_ms", 0),
        ("storage", "max_upload_bytes", 64 << 30),
        ("storage", "tenant_quota_bytes", 256 << 30),
        ("envelope", "min_work_factor", WORK_FACTOR),
    ):
        text = _set(text, section, key, value)
    config.write_text(text + f'\n[tenants.{TENANT}]\nforward = "pull"\n', encoding="utf-8")
    store = StateStore.open(gw / "state.db", create=False)
    try:
        accounts = Accounts(store, AuthSection(failure_delay_ms=0))
        paths = {}
        for name, role in ((WARD, "ward"), (CONTRACTOR, "contractor")):
            paths[name], public = _key_pair(root, name)
            accounts.add(name, role, TENANT, public, (), PASSWORD)
    finally:
        store.close()
    proc = subprocess.Popen(
        [str(BIN / "lgwan-gateway"), "--config", str(config), "serve",
         "--listen", "127.0.0.1:0"],
        cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline().decode()
        match = _LISTENING.search(line)
        if not match:
            raise SystemExit(f"bench: serve did not start: {line!r}")
        stream = proc.stderr
        threading.Thread(target=stream.read, daemon=True).start()
        port, host_key = int(match.group(2)), _public(gw / "keys" / "ssh_host_ed25519_key.pub")
        yield Gateway(
            Login(port, WARD, paths[WARD], host_key, PASSWORD),
            Login(port, CONTRACTOR, paths[CONTRACTOR], host_key, PASSWORD),
            gw / "storage" / "tenants" / TENANT / "outbox",
        )
    finally:
        peers.stop(proc)


def wait_for(path: Path, timeout: float) -> None:
    """Until ``path`` exists (the pull route has published the batch)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {path.name} never reached the outbox")
        time.sleep(0.02)


# -- OpenSSH ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSsh:
    """A private sshd on a loopback port, its login and its upload directory."""

    login: Login
    target: Path


@contextmanager
def openssh(root: Path, concurrent: int) -> Iterator[OpenSsh | None]:
    """The OpenSSH peer (bench/peers.py), with an upload directory; None when unavailable."""
    with peers.sshd(root, max_startups=concurrent + 16) as server:
        if server is None:
            yield None
            return
        (root / "target").mkdir()
        user = pwd.getpwuid(os.getuid()).pw_name
        host_key = _public(server.host_key_pub)
        yield OpenSsh(Login(server.port, user, server.user_key, host_key, None), root / "target")


def sftp_binary(root: Path, login: Login, commands: list[str]) -> float:
    """Seconds for one OpenSSH ``sftp -b`` session running ``commands`` (bench/peers.py)."""
    return peers.sftp_client_seconds(root, login, commands, cipher=CIPHER, timeout=TIMEOUT * 10)


# -- the benchmark ------------------------------------------------------------------------------


def _check_download(local: Path, expected: str) -> None:
    if kit.sha256_file(local) != expected:
        raise SystemExit(f"bench: {local.name} differs from what was uploaded")
    local.unlink()


def _check_upload(remote: Path, size: int) -> None:
    if remote.stat().st_size != size:
        raise SystemExit(f"bench: {remote.name} is incomplete on the server")


def run_ours(root: Path, big: Path, small: Path, concurrent: int) -> tuple[list[Figure], Burst]:
    """Every transfer through ``lgwan-gateway serve``."""
    size, digest, figures = big.stat().st_size, kit.sha256_file(big), []
    with gateway(root / "ours", concurrent) as gw:
        batch = kit.new_batch_id()
        part, final = f"/inbox/{batch}.age.part", f"/inbox/{batch}.age"
        closed, renamed = timed_upload(gw.ward, big, part, final)
        figures.append(Figure("upload, to close of .part", "paramiko", "ours", size, closed))
        figures.append(Figure("upload, to rename reply", "paramiko", "ours", size, renamed))
        wait_for(gw.outbox / f"{batch}.age", TIMEOUT + size / (20 * MIB))
        _check_upload(gw.outbox / f"{batch}.age", size)
        seconds = timed_download(gw.contractor, f"/outbox/{batch}.age", root / "got.age")
        figures.append(Figure("download", "paramiko", "ours", size, seconds))
        _check_download(root / "got.age", digest)

        if shutil.which("sftp") is None:
            print("bench: OpenSSH's sftp client is not installed: no sftp-client figures")
        else:
            other = kit.new_batch_id()
            upload_commands = [
                f'put "{big}" /inbox/{other}.age.part',
                f"rename /inbox/{other}.age.part /inbox/{other}.age",
            ]
            try:
                seconds = sftp_binary(root, gw.ward, upload_commands)
                figures.append(Figure("upload, to rename reply", "sftp", "ours", size, seconds))
                get = [f'get /outbox/{batch}.age "{root / "got.age"}"']
                seconds = sftp_binary(root, gw.contractor, get)
                figures.append(Figure("download", "sftp", "ours", size, seconds))
                _check_download(root / "got.age", digest)
            except RuntimeError as exc:
                print(f"bench: OpenSSH's sftp client against ours failed, no figure: {exc}")

        figures.append(_single(gw.ward, small, "ours", _inbox))
        ids = [kit.new_batch_id() for _ in range(concurrent)]
        load = burst(gw.ward, small, [_inbox(b) for b in ids])
    return figures, load


def _inbox(batch: str) -> tuple[str, str]:
    """The ``.part`` and completed names of a batch in the gateway's ``/inbox``."""
    return f"/inbox/{batch}.age.part", f"/inbox/{batch}.age"


def _single(login: Login, small: Path, server: str, names: Any) -> Figure:
    """One upload of the small file alone, through the same worker as the burst."""
    one = burst(login, small, [names(kit.new_batch_id())])
    if one.ok != 1:
        raise SystemExit(f"bench: single-stream upload to {server} failed: {one.errors}")
    return Figure("upload 1 × small, to rename", "paramiko", server, small.stat().st_size,
                  one.to_rename)  # fmt: skip


def run_openssh(
    root: Path, big: Path, small: Path, concurrent: int
) -> tuple[list[Figure], Burst | None]:
    """The same transfers through a private OpenSSH sshd (none when it cannot run)."""
    size, digest, figures = big.stat().st_size, kit.sha256_file(big), []
    with openssh(root / "openssh", concurrent) as server:
        if server is None:
            return [], None
        target, login = server.target, server.login
        batch = kit.new_batch_id()
        part, final = target / f"{batch}.age.part", target / f"{batch}.age"
        closed, renamed = timed_upload(login, big, str(part), str(final))
        _check_upload(final, size)
        figures.append(Figure("upload, to close of .part", "paramiko", "OpenSSH", size, closed))
        figures.append(Figure("upload, to rename reply", "paramiko", "OpenSSH", size, renamed))
        seconds = timed_download(login, str(final), root / "got.age")
        figures.append(Figure("download", "paramiko", "OpenSSH", size, seconds))
        _check_download(root / "got.age", digest)
        if shutil.which("sftp") is not None:
            other = target / f"{kit.new_batch_id()}.age"
            commands = [f'put "{big}" "{other}.part"', f'rename "{other}.part" "{other}"']
            seconds = sftp_binary(root / "openssh", login, commands)
            _check_upload(other, size)
            other.unlink()
            figures.append(Figure("upload, to rename reply", "sftp", "OpenSSH", size, seconds))
            get = [f'get "{final}" "{root / "got.age"}"']
            seconds = sftp_binary(root / "openssh", login, get)
            figures.append(Figure("download", "sftp", "OpenSSH", size, seconds))
            _check_download(root / "got.age", digest)
        final.unlink()

        def names(b: str) -> tuple[str, str]:
            return str(target / f"{b}.age.part"), str(target / f"{b}.age")

        figures.append(_single(login, small, "OpenSSH", names))
        load = burst(login, small, [names(kit.new_batch_id()) for _ in range(concurrent)])
    return figures, load


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(
    figures: list[Figure], loads: dict[str, Burst | None], small_mib: int, where: Path
) -> None:
    """Print the table, the ratios and the targets."""
    print(f"\nloopback, {CIPHER}, {os.cpu_count()} CPUs, files in {where}; MiB/s after login")
    print(f"{'transfer':30} {'client':9} {'server':8} {'MiB':>6} {'seconds':>8} {'MiB/s':>8}")
    for f in figures:
        print(f"{f.transfer:30} {f.client:9} {f.server:8} {f.size_bytes / MIB:6.0f} "
              f"{f.seconds:8.2f} {f.rate:8.1f}")  # fmt: skip
    singles = {f.server: f for f in figures if f.transfer.startswith("upload 1 ×")}
    for server, load in loads.items():
        if load is None:
            continue
        total = load.n * small_mib
        print(f"{f'upload {load.n} × {small_mib} MiB at once':30} {'paramiko':9} {server:8} "
              f"{total:6d} {load.to_rename:8.2f} {total / load.to_rename:8.1f}"
              f"   ({load.ok}/{load.n} succeeded; to last close "
              f"{total / load.to_close:.1f} MiB/s)")  # fmt: skip
        for error in load.errors[:3]:
            print(f"    failed: {error}")

    by_key = {(f.transfer, f.client, f.server): f for f in figures}
    print("\nratios (throughput, ours / OpenSSH; > 1.0 means we are faster)")
    ratios: dict[tuple[str, str], float] = {}
    for (transfer_name, client, server), f in by_key.items():
        peer = by_key.get((transfer_name, client, "OpenSSH"))
        if server == "ours" and peer is not None:
            ratios[(transfer_name, client)] = f.rate / peer.rate
            print(f"  {transfer_name:30} {client:9} {f.rate / peer.rate:5.2f}x")
    for server, load in loads.items():
        if load is not None and server in singles:
            aggregate = load.n * small_mib / load.to_rename
            print(f"  {server}: {load.n} at once / single stream: "
                  f"{aggregate / singles[server].rate:5.2f}x")  # fmt: skip

    print("\ntargets (issue 3)")
    for name, key in (
        ("upload", ("upload, to rename reply", "paramiko")),
        ("download", ("download", "paramiko")),
    ):
        if key in ratios:
            print(f"  {name} ≥ 0.5 × OpenSSH (paramiko client): {ratios[key]:.3f}x "
                  f"— {_verdict(ratios[key] >= 0.5)}")  # fmt: skip
        else:
            print(f"  {name} ≥ 0.5 × OpenSSH: not measured (no OpenSSH)")
    ours = loads.get("ours")
    if ours is not None and "ours" in singles:
        factor = ours.n * small_mib / ours.to_rename / singles["ours"].rate
        ok = ours.ok == ours.n and factor >= 0.8
        print(f"  {ours.n} concurrent uploads all succeed ({ours.ok}/{ours.n}), aggregate ≥ 0.8 × "
              f"single stream: {factor:.3f}x — {_verdict(ok)}")  # fmt: skip


def main() -> int:
    """Run both servers in one run and print MiB/s, ratios and targets."""
    parser = argparse.ArgumentParser(prog="bench/sftp.py")
    parser.add_argument("--size-mib", type=int, default=1024, help="the large file (MiB)")
    parser.add_argument("--concurrent", type=int, default=20, help="uploads at once")
    parser.add_argument("--concurrent-mib", type=int, default=50, help="size of each (MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None,
        help="where to work (default: /dev/shm, so disk write-back noise stays out)",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lgwan-bench-sftp-", dir=args.dir))
    try:
        big, small = root / "big.age", root / "small.age"
        kit.write_envelope(big, args.size_mib * MIB)
        kit.write_envelope(small, args.concurrent_mib * MIB)
        figures, ours = run_ours(root, big, small, args.concurrent)
        peer_figures, peer = run_openssh(root, big, small, args.concurrent)
        order = {name: i for i, name in enumerate(f.transfer for f in figures)}
        merged = sorted(
            figures + peer_figures,
            key=lambda f: (order.get(f.transfer, 99), f.client, f.server != "ours"),
        )
        report(merged, {"ours": ours, "OpenSSH": peer}, args.concurrent_mib, root.parent)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
