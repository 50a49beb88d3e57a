"""``make demo`` keeps working: the whole scenario runs green with a small sample."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_step_and_cleans_up() -> None:
    """The demo exits 0, reports every step succeeded, and leaves no server running."""
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--records", "500"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Summary: every step succeeded" in done.stdout
    assert "refused as it should be" in done.stdout  # the ledger's separate-occasion rule
    assert "scenario directory removed" in done.stdout
