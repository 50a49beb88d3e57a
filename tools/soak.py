"""``make soak``: the whole path under continuous load, then everything accounted for (issue 8 §4).

Two ``lgwan-gateway init`` roots on loopback — the LGWAN-ASP gateway and a print
site — both serving, and 2-4 concurrent ward clients, each running cycles of
the real console scripts (every secret on its own pipe, through
:class:`demo.scenario.Scenario`)::

    seal → send → forward → (pull) → open → erase → certificate back → status → verify-certificate

Odd-numbered wards belong to tenant ``soak-push``, routed ``sftp://`` to the print
site (whose own ``serve`` receives the batch and delivers it into its spool, and
whose certificate the gateway polls back); even-numbered wards to
``soak-pull``, which the print site pulls (``lgwan-gateway pull``, which also
uploads the certificate). Envelopes use scrypt work factor 10 (both sites'
``[envelope] min_work_factor`` is lowered to match) so cycles are fast.

First every client runs ``--warmup`` cycles; when the sites are idle again the
gateway's RSS (``/proc/<pid>/status`` VmRSS) and open descriptors
(``/proc/<pid>/fd``) are read. Then the clients cycle until ``--minutes`` have
passed since the start of the warm-up (each at least once more, however slow
the machine), the sites settle, and both are read again: each must be within
``--tolerance`` (10 %) of its warm-up value. Then both servers get SIGTERM
(exit 0 expected), and every batch sealed must be accounted for exactly once:
in both state databases, the audit logs' events, the spool's tombstones, the
certificates (print site, gateway ``/receipts``, ward) — and ``audit verify``
passes at both sites, ``ledger verify`` at every ward.

The accounting is :mod:`tools.soak_checks`. Exit 0 only when all of it holds,
with a ``soak: PASSED …`` line giving cycles/minute. Per-step output goes to
``soak.log`` in the scenario directory (kept on failure, or with ``--keep``).
"""

from __future__ import annotations

import argparse
import io
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from demo.scenario import Scenario, free_port, notice_line
from gateway.state import StateStore
from tools.soak_checks import GW_CONFIG, PS_CONFIG, PULL, PUSH, account, anomalies, verify_logs

GW = ["lgwan-gateway", "--config", GW_CONFIG]
PS = ["lgwan-gateway", "--config", PS_CONFIG]
HANDLER, MANAGER, CONTRACTOR, RELAY = "soak-handler", "soak-manager", "soak-printer", "relay"
STAFF = {"handler": "soak-handler-pass-5521", "manager": "soak-manager-pass-9043"}
AS_HANDLER = ["--as", HANDLER, "--password-fd", "{handler}"]
APPROVAL = ["--approver", MANAGER, "--approver-password-fd", "{manager}"]
WORK_FACTOR = 10
RECORDS = 200
WAIT_SECONDS = 90.0
"""Longest wait for something another process delivers (forwarding, a certificate)."""
SETTLE_SECONDS = 20.0
TRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Ward:
    """One concurrent client: a ward account, its directory and tenant."""

    name: str
    tenant: str
    password: str

    @property
    def config(self) -> str:
        return f"{self.name}/client.toml"

    @property
    def client(self) -> list[str]:
        return ["lgwan-client", "--config", self.config]


@dataclass(frozen=True)
class Sample:
    """A process's resident memory (KiB) and open descriptors."""

    rss_kib: int
    fds: int


@dataclass
class Soak:
    """The running soak: the scenario, its wards, what was sealed, what went wrong."""

    s: Scenario
    wards: list[Ward] = field(default_factory=list)
    contractor_password: str = ""
    sealed: dict[str, Ward] = field(default_factory=dict)
    cycles: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    busy: Counter[str] = field(default_factory=Counter)
    pull_lock: threading.Lock = field(default_factory=threading.Lock)
    custody_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def root(self) -> Path:
        return self.s.root

    @property
    def spool(self) -> Path:
        return self.root / "print-site" / "spool"

    def gateway_area(self, tenant: str, area: str) -> Path:
        return self.root / "gateway" / "storage" / "tenants" / tenant / area

    # -- set-up ------------------------------------------------------------------------------

    def set_up(self, clients: int) -> None:
        """Both roots, keys, routes, accounts, staff and wards; then both serve."""
        s = self.s
        gw_port, ps_port = free_port(), free_port()
        s.run("gateway: init", ["lgwan-gateway", "init", "--root", "gateway"])
        s.run("print site: init", ["lgwan-gateway", "init", "--root", "print-site"])
        for config, port in ((GW_CONFIG, gw_port), (PS_CONFIG, ps_port)):
            s.set_toml(config, "server", "listen", f"127.0.0.1:{port}")
            s.set_toml(config, "forwarder", "rescan_seconds", 1)
            s.set_toml(config, "envelope", "min_work_factor", WORK_FACTOR)
        for key in ("gateway/keys/forward_ed25519", "print-site/keys/contractor_ed25519"):
            s.run(f"keygen {key}", ["lgwan-client", "keygen", "--out", key])
        spool = self.spool.absolute()
        s.append_toml(PS_CONFIG, f'\n[tenants.{PUSH}]\nforward = "file://{spool}"\n')
        ps_keys = s.root / "print-site" / "keys"
        host_key = (ps_keys / "ssh_host_ed25519_key.pub").read_text().strip()
        signing = (ps_keys / "gateway_signing_ed25519.pub").read_text().strip()
        s.append_toml(
            GW_CONFIG,
            f'\n[tenants.{PUSH}]\nforward = "sftp://{RELAY}@127.0.0.1:{ps_port}/inbox"\n'
            f'forward_key = "keys/forward_ed25519"\nhost_key = "{host_key}"\n'
            f'receipt_key = "{signing}"\n'
            f'\n[tenants.{PULL}]\nforward = "pull"\nreceipt_key = "{signing}"\n',
        )
        s.run(
            "print site: the relay account",
            [*PS, "user", "add", RELAY, "--role", "forwarder", "--tenant", PUSH,
             "--pubkey", "gateway/keys/forward_ed25519.pub", "--allow", "127.0.0.1/32"],
        )  # fmt: skip
        self.contractor_password = self._account(
            CONTRACTOR, PULL, "contractor", "print-site/keys/contractor_ed25519.pub"
        )
        gw_keys = s.root / "gateway" / "keys"
        for key, value in (
            ("host", "127.0.0.1"),
            ("port", gw_port),
            ("user", CONTRACTOR),
            ("tenant", PULL),
            ("host_key", (gw_keys / "ssh_host_ed25519_key.pub").read_text().strip()),
            ("receipt_key", (gw_keys / "gateway_signing_ed25519.pub").read_text().strip()),
            ("private_key", "keys/contractor_ed25519"),
        ):
            s.set_toml(PS_CONFIG, "pull", key, value)
        for name, role in ((MANAGER, "manager"), (HANDLER, "handler")):
            s.run(
                f"print site: staff add {name}",
                [*PS, "staff", "add", name, "--role", role, "--password-fd", "{fd}"],
                secret=STAFF[role],
            )
        for number in range(1, clients + 1):
            self.wards.append(self._ward(f"ward{number}", PUSH if number % 2 else PULL, number))
        s.serve("print site: serve", PS_CONFIG)
        s.serve("gateway: serve", GW_CONFIG)

    def _account(self, name: str, tenant: str, role: str, pubkey: str) -> str:
        """``user add`` at the gateway; the password read from its credential notice."""
        notice = self.root / "gateway" / f"{name}.credentials.pdf"
        extra = ["--client-config-out", f"{name}/client.toml"] if role == "ward" else []
        self.s.run(
            f"gateway: user add {name}",
            [*GW, "user", "add", name, "--role", role, "--tenant", tenant, "--pubkey", pubkey,
             "--allow", "127.0.0.1/32", "--notice-out", str(notice), *extra],
        )  # fmt: skip
        return notice_line(notice, "Password")

    def _ward(self, name: str, tenant: str, seed: int) -> Ward:
        s = self.s
        s.run(f"{name}: keygen", ["lgwan-client", "keygen", "--out", f"{name}/keys/ward_ed25519"])
        password = self._account(name, tenant, "ward", f"{name}/keys/ward_ed25519.pub")
        s.append_toml(f"{name}/client.toml", f"\n[seal]\nwork_factor = {WORK_FACTOR}\n")
        s.run(
            f"{name}: sample",
            ["lgwan-client", "sample", "--records", str(RECORDS), "--seed", str(seed),
             "--out", f"{name}/print.csv"],
        )  # fmt: skip
        return Ward(name, tenant, password)

    # -- cycles ------------------------------------------------------------------------------

    def phase(self, cycles: int | None, deadline: float | None, at_least: int = 0) -> None:
        """Every ward cycles concurrently: ``cycles`` each, or until ``deadline`` (but
        ``at_least`` cycles each, so a slow machine still measures something)."""
        threads = [
            threading.Thread(
                target=self._client, args=(w, cycles, deadline, at_least), name=f"soak-{w.name}"
            )
            for w in self.wards
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _client(
        self, ward: Ward, cycles: int | None, deadline: float | None, at_least: int
    ) -> None:
        done = 0
        while not self.stop.is_set():
            if cycles is not None and done >= cycles:
                return
            if deadline is not None and time.monotonic() >= deadline and done >= at_least:
                return
            try:
                self.cycle(ward, self.cycles[ward.name] + 1)
            except BaseException as exc:  # Scenario.run exits (SystemExit): record it, stop all
                self.failures.append(f"{ward.name}: {type(exc).__name__}: {exc}")
                self.stop.set()
                return
            self.cycles[ward.name] += 1
            done += 1

    def cycle(self, ward: Ward, number: int) -> None:
        """One batch from sealing to the ward's verified erasure certificate."""
        s, tag = self.s, f"{ward.name}#{number}"
        batch = s.run(
            f"{tag} seal", [*ward.client, "seal", f"{ward.name}/print.csv", "--notice-type", "SOAK"]
        ).strip()
        self.sealed[batch] = ward
        notice = self.root / ward.name / "notices" / f"{batch}.notice.pdf"
        passphrase = notice_line(notice, "Passphrase")
        s.run(
            f"{tag} send",
            [*ward.client, "send", batch, "--password-fd", "{fd}"],
            secret=ward.password,
        )
        arrived = self.spool / f"{batch}.age"
        if ward.tenant == PULL:
            outbox = self.gateway_area(PULL, "outbox") / f"{batch}.age"
            self.wait(f"{tag} published", lambda: outbox.exists() or arrived.exists())
            self._pull(tag, lambda: arrived.exists())
        self.wait(f"{tag} in the spool", arrived.exists)
        with self.custody_lock:  # open and erase take the print site's custody lock
            opened = self.run_busy(
                f"{tag} open",
                [*PS, "open", batch, *AS_HANDLER, "--passphrase-fd", "{fd}", "--via", "hand"],
                secret=passphrase,
                secrets=STAFF,
            ).strip()
        original = (self.root / ward.name / "print.csv").read_bytes()
        if (Path(opened) / "print.csv").read_bytes() != original:
            raise SystemExit(f"soak: {batch} opened with different content")
        with self.custody_lock:
            self.run_busy(
                f"{tag} erase", [*PS, "erase", batch, *AS_HANDLER, *APPROVAL], secrets=STAFF
            )
        published = self.gateway_area(ward.tenant, "receipts") / f"{batch}.erasure.json"
        if ward.tenant == PULL:
            self._pull(tag, published.exists)
        self.wait(f"{tag} certificate at the gateway", published.exists)
        s.run(
            f"{tag} status",
            [*ward.client, "status", batch, "--password-fd", "{fd}"],
            secret=ward.password,
            expect_in="erased",
        )
        s.run(
            f"{tag} verify-certificate",
            [*ward.client, "verify-certificate", f"{ward.name}/certificates/{batch}.erasure.json"],
        )

    def _pull(self, tag: str, done: Callable[[], bool]) -> None:
        """``pull`` at the print site unless another ward's pull already did the work."""
        with self.pull_lock:
            if not done():
                self.run_busy(
                    f"{tag} pull", [*PS, "pull", "--password-fd", "{fd}"],
                    secret=self.contractor_password,
                )  # fmt: skip

    def run_busy(
        self,
        title: str,
        args: list[str],
        *,
        secret: str | None = None,
        secrets: dict[str, str] | None = None,
    ) -> str:
        """:meth:`Scenario.run`, again after exit 75 (the print site's custody lock was held).

        The sites' own deliveries into the spool hold that lock too, so an
        ``erase`` or ``pull`` may meet one; as an operator would, the soak tries again.
        """
        started = time.monotonic()
        while True:
            try:
                return self.s.run(title, args, secret=secret, secrets=secrets)
            except SystemExit as exc:
                if not str(exc).endswith("exit 75") or time.monotonic() - started > WAIT_SECONDS:
                    raise
            self.busy[title.split(" ", 1)[1]] += 1
            time.sleep(0.2)

    def wait(self, title: str, ready: Callable[[], bool], timeout: float = WAIT_SECONDS) -> None:
        """Wait until ``ready()`` (another process's work); a dead server fails at once."""
        started = time.monotonic()
        while not ready():
            if time.monotonic() - started > timeout:
                raise SystemExit(f"soak: {title}: not within {timeout:.0f} s")
            if any(proc.poll() is not None for proc in self.s.servers):
                raise SystemExit("soak: a server stopped unexpectedly")
            time.sleep(0.05)
        self.s.timings.append((title, time.monotonic() - started))

    # -- measuring ---------------------------------------------------------------------------

    def settle(self) -> dict[str, Sample]:
        """Wait until every batch is ERASED at the gateway and descriptors are steady; sample."""
        store = StateStore.open(self.root / "gateway" / "state.db", create=False)
        try:
            self.wait(
                "settled",
                lambda: all(b.state.value == "erased" for b in store.list_batches()),
                SETTLE_SECONDS,
            )
        finally:
            store.close()
        pids = {"gateway": self.s.servers[1].pid, "print site": self.s.servers[0].pid}
        started, last = time.monotonic(), {name: sample(pid) for name, pid in pids.items()}
        while time.monotonic() - started < SETTLE_SECONDS:
            time.sleep(1.0)
            now = {name: sample(pid) for name, pid in pids.items()}
            steady = all(now[n].fds == last[n].fds for n in pids)
            last = now
            if steady and time.monotonic() - started >= 2.0:
                break
        return last


def sample(pid: int) -> Sample:
    """VmRSS and the number of open descriptors of a running process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return Sample(rss, sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()))


class _Trace:
    """Samples a process's RSS every :data:`TRACE_SECONDS` while the load runs (a figure)."""

    def __init__(self, pid: int) -> None:
        self._pid, self.samples = pid, [sample(pid).rss_kib]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-trace", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(TRACE_SECONDS):
            try:
                self.samples.append(sample(self._pid).rss_kib)
            except OSError:
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def series(self) -> str:
        return " ".join(str(s) for s in self.samples)


def within(before: int, after: int, tolerance: float) -> bool:
    """``after`` is within ``tolerance`` (a fraction) of ``before``."""
    return abs(after - before) <= tolerance * before


# -- running -------------------------------------------------------------------------------------


class _ThreadLog(io.TextIOBase):
    """``sys.stdout``/``stderr`` while the soak runs: main thread to the console, others to a log.

    :meth:`Scenario.run` prints a line per step; from the client threads those
    go to ``soak.log`` (thousands of them), so the console shows the phases.
    """

    def __init__(self, console: TextIO, log: TextIO) -> None:
        super().__init__()
        self._console, self._log = console, log
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        main = threading.current_thread() is threading.main_thread()
        with self._lock:
            (self._console if main else self._log).write(text)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self._console.flush()
            self._log.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 only when every check passed."""
    parser = argparse.ArgumentParser(prog="make soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0, help="cycling time (default 8)")
    parser.add_argument("--clients", type=int, default=3, choices=range(2, 5), metavar="2-4")
    parser.add_argument("--warmup", type=int, default=2, help="cycles per client before sampling")
    parser.add_argument("--tolerance", type=float, default=0.10, help="RSS/fd drift allowed")
    parser.add_argument("--keep", action="store_true", help="keep the scenario directory")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="lgwan-soak-"))
    console = sys.stdout
    with (root / "soak.log").open("w", encoding="utf-8") as log:
        errors = sys.stderr
        sys.stdout, sys.stderr = _ThreadLog(console, log), _ThreadLog(errors, log)
        try:
            ok = _run(Soak(Scenario(root)), args)
        finally:
            sys.stdout, sys.stderr = console, errors
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"soak: scenario directory kept: {root} (per-step log: {root / 'soak.log'})")
    return 0 if ok else 1


def _run(soak: Soak, args: argparse.Namespace) -> bool:
    s = soak.s
    problems: list[str] = []
    try:
        soak.set_up(args.clients)
        started = time.monotonic()
        deadline = started + args.minutes * 60
        print(f"soak: {args.clients} clients, warm-up {args.warmup} cycles each", flush=True)
        soak.phase(args.warmup, None)
        warm = time.monotonic()
        before = soak.settle() if not soak.failures else {}
        warm_cycles = sum(soak.cycles.values())
        print(f"soak: warm-up done ({warm_cycles} cycles); cycling until the deadline", flush=True)
        trace = _Trace(soak.s.servers[1].pid)
        soak.phase(None, deadline, at_least=1)
        trace.stop()
        after = soak.settle() if not soak.failures else {}
        ended = time.monotonic()
        problems += soak.failures
        if not soak.failures and sum(soak.cycles.values()) == warm_cycles:
            problems.append("no cycle after the warm-up: give more --minutes")
        print(f"soak: gateway RSS (KiB) every {TRACE_SECONDS:.0f} s under load: {trace.series()}")
        for name in before:
            b, a = before[name], after[name]
            print(f"soak: {name}: RSS {b.rss_kib} → {a.rss_kib} KiB, fds {b.fds} → {a.fds}")
            if name == "gateway" and not (
                within(b.rss_kib, a.rss_kib, args.tolerance)
                and within(b.fds, a.fds, args.tolerance)
            ):
                problems.append(f"gateway drifted beyond {args.tolerance:.0%}: {b} → {a}")
        codes = [_terminate(p) for p in list(s.servers)]
        s.servers.clear()
        if codes != [0, 0]:
            problems.append(f"serve exit codes on SIGTERM: {codes}")
        if not soak.failures:
            problems += account(soak)
            problems += anomalies(soak)
            problems += verify_logs(soak)
    except BaseException as exc:  # report whatever stopped the soak
        problems.append(f"{type(exc).__name__}: {exc}")
        started = ended = warm = time.monotonic()
        warm_cycles = 0
    finally:
        s.stop_all()
    total = sum(soak.cycles.values())
    _report(soak, total, warm_cycles, started, warm, ended)
    for problem in problems:
        print(f"soak: PROBLEM {problem}")
    if problems:
        print(f"soak: FAILED ({len(problems)} problems, {total} cycles)")
        return False
    rate = (total - warm_cycles) / max((ended - warm) / 60, 1e-9)
    print(
        f"soak: PASSED {total} cycles ({len(soak.sealed)} batches) in "
        f"{(ended - started) / 60:.1f} min, {rate:.1f} cycles/minute after warm-up; "
        "every batch accounted for exactly once"
    )
    return True


def _terminate(proc: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM a server; its exit status (None when it had to be killed)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def _report(soak: Soak, total: int, warm: int, started: float, warmed: float, ended: float) -> None:
    """Cycles per client and the mean time of each step."""
    per_client = ", ".join(f"{w.name} ({w.tenant}) {soak.cycles[w.name]}" for w in soak.wards)
    print(f"soak: cycles: {total} ({warm} warm-up): {per_client}")
    busy = ", ".join(f"{step} {count}" for step, count in sorted(soak.busy.items())) or "none"
    print(f"soak: retried after exit 75 (custody lock held): {busy}")
    steps: dict[str, list[float]] = {}
    for title, seconds in soak.s.timings:
        if "#" in title:
            steps.setdefault(title.split(" ", 1)[1], []).append(seconds)
    for step, values in steps.items():
        print(f"soak:   {sum(values) / len(values):6.2f} s mean  {step} ({len(values)}x)")
    if ended > warmed:
        print(f"soak: measured phase {(ended - warmed) / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
