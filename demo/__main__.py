"""Run the scenario end to end in a fresh temporary directory.

Every step runs the real console scripts as separate processes; the demo exits
0 only if every step succeeded, and prints a summary with timings and the paths
of every generated document so a person can open them. ``--keep`` leaves the
directory for inspection.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
PASSPHRASE_RE = re.compile(r"^Passphrase: (\S+)$", re.MULTILINE)


@dataclass
class Scenario:
    """Where the scenario lives and what it has produced so far."""

    root: Path
    timings: list[tuple[str, float]] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)

    def run(self, title: str, args: list[str], *, secret: str | None = None) -> str:
        """Run one step; ``secret`` goes through a pipe whose fd replaces ``{fd}`` in args."""
        print(f"==> {title}", flush=True)
        started = time.monotonic()
        pass_fds: tuple[int, ...] = ()
        if secret is not None:
            read_end, write_end = os.pipe()
            os.write(write_end, secret.encode("utf-8") + b"\n")
            os.close(write_end)
            pass_fds = (read_end,)
            args = [a.replace("{fd}", str(read_end)) for a in args]
        try:
            done = subprocess.run(  # noqa: S603 - our own console scripts
                [str(BIN / args[0]), *args[1:]],
                cwd=self.root,
                capture_output=True,
                pass_fds=pass_fds,
                check=False,
            )
        finally:
            for fd in pass_fds:
                os.close(fd)
        self.timings.append((title, time.monotonic() - started))
        if done.returncode != 0:
            sys.stderr.write(done.stderr.decode("utf-8", "replace"))
            raise SystemExit(f"demo: step failed ({title}): exit {done.returncode}")
        return done.stdout.decode("utf-8")


def _passphrase_from_notice(pdf: Path) -> str:
    """Read the passphrase from the notice's text layer, as a person would read the paper."""
    from pypdf import PdfReader

    text = "\n".join(page.extract_text() or "" for page in PdfReader(pdf).pages)
    found = PASSPHRASE_RE.search(text)
    if not found:
        raise SystemExit(f"demo: no 'Passphrase:' line in {pdf}")
    return found.group(1)


def main() -> int:
    """Run the scenario; return 0 only when every step succeeded."""
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--keep", action="store_true", help="keep the scenario directory")
    parser.add_argument("--records", type=int, default=70_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lgwan-demo-"))
    scenario = Scenario(root)
    try:
        _ward_to_print_site(scenario, args.records)
    finally:
        _summary(scenario)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            print("(scenario directory removed; run 'make demo ARGS=--keep' to inspect it)")
    return 0


def _ward_to_print_site(s: Scenario, records: int) -> None:
    """Ward: sample data, seal, notice; print site: open with the passphrase from the notice."""
    (s.root / "ward").mkdir()
    s.run(
        "ward: generate the ward's key pair",
        ["lgwan-client", "keygen", "--out", "ward/keys/ward_ed25519"],
    )
    csv = "ward/kaigo_2026.csv"
    s.run(
        f"ward: {records:,} synthetic care-insurance notices",
        ["lgwan-client", "sample", "--records", str(records), "--seed", "1", "--out", csv],
    )
    batch = s.run(
        "ward: seal the print data (age v1, scrypt) and print the password notice",
        [
            "lgwan-client",
            "seal",
            csv,
            "--notice-type",
            "KAIGO",
            "--out-dir",
            "ward/outbox",
            "--notice-dir",
            "ward/notices",
        ],
    ).strip()
    notice = s.root / "ward/notices" / f"{batch}.notice.pdf"
    s.documents.append(notice)
    secret = _passphrase_from_notice(notice)
    # The envelope travels on the data channel; the passphrase on paper.
    spool = s.root / "print-site/spool"
    spool.mkdir(parents=True)
    shutil.copy2(s.root / "ward/outbox" / f"{batch}.age", spool)
    opened = s.run(
        "print site: open the batch with the passphrase typed from the notice",
        [
            "lgwan-gateway",
            "open",
            f"print-site/spool/{batch}.age",
            "--out",
            "print-site/work",
            "--passphrase-fd",
            "{fd}",
        ],
        secret=secret,
    ).strip()
    original = (s.root / csv).read_bytes()
    released = (Path(opened) / "kaigo_2026.csv").read_bytes()
    if original != released:
        raise SystemExit("demo: the opened file differs from the sealed one")
    print(f"    batch {batch}: {len(original):,} bytes round-tripped byte-identical")


def _summary(s: Scenario) -> None:
    print("\nSummary")
    for title, seconds in s.timings:
        print(f"  {seconds:7.2f} s  {title}")
    print(f"  {sum(t for _, t in s.timings):7.2f} s  total")
    for doc in s.documents:
        print(f"  document: {doc}")
    print(f"  scenario directory: {s.root}")


if __name__ == "__main__":
    sys.exit(main())
