"""``lgwan-gateway incidents`` and ``overdue`` as real subprocesses on a root made by ``init``.

The audit log is written through gateway.audit.AuditLog (real file, real chain,
signed checkpoints) with a clock set to days in the past, so ``--since Nd``
has something to leave out; spool arrivals are delivered with an injected clock.
"""

import csv
import hashlib
import io
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from custody import load_private_key
from gateway.audit import AuditLog
from gateway.spool import Spool
from tests.conftest import Result, run_cli

NOW = datetime.now().astimezone().replace(microsecond=0)
BATCH = "20260715-KAIGO-7F3KQ2"
OTHER = "20260716-KAIGO-9XRT4M"

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed"
)


class Root:
    """A gateway root made by ``init`` in ``tmp_path / "r"``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "r"
        done = run_cli("lgwan-gateway", "init", "--root", self.root, cwd=base)
        assert done.code == 0, done.err
        self.log = self.root / "audit" / "audit.jsonl"

    def cli(self, *args: str) -> Result:
        """Run ``lgwan-gateway --config <root>/gateway.toml ARGS``."""
        return run_cli(
            "lgwan-gateway", "--config", self.root / "gateway.toml", *args, cwd=self.base
        )

    def write(self, events: list[tuple[timedelta, str, dict[str, object]]]) -> None:
        """Append events, each at NOW minus its age, through the real AuditLog."""
        key = load_private_key((self.root / "keys" / "gateway_signing_ed25519").read_bytes())
        clock = [NOW]
        with AuditLog.open(
            self.log,
            self.root / "audit" / "checkpoints.jsonl",
            key,
            clock=lambda: clock[0],
            timer=False,
        ) as log:
            for age, event, fields in events:
                clock[0] = NOW - age
                log.emit(event, **fields)


def _failures(
    age: timedelta, count: int, source: str
) -> list[tuple[timedelta, str, dict[str, object]]]:
    return [
        (
            age - timedelta(seconds=2 * i),
            "login_failed",
            {
                "user": f"guess{i % 3}",
                "source": f"{source}:{41000 + i}",
                "reason": "unknown_user",
                "method": "password",
            },
        )
        for i in range(count)
    ]


DAY = timedelta(days=1)
EVENTS: list[tuple[timedelta, str, dict[str, object]]] = [
    (10 * DAY, "account_locked_out", {"user": "frank", "source": "192.0.2.7:50001",
                                       "until": (NOW - 10 * DAY + timedelta(minutes=15))}),
    *_failures(9 * DAY, 25, "198.51.100.9"),   # one burst of 25 (threshold 20)
    *_failures(9 * DAY, 19, "198.51.100.10"),  # 19: not a burst
    (5 * DAY, "sftp_refused", {"user": "=alice", "tenant": "shinjuku", "source": "192.0.2.8:50002",
                                "op": "stat", "path": "../../etc/passwd", "reason": "dot_dot"}),
    (5 * DAY, "sftp_refused", {"user": "alice", "tenant": "shinjuku", "source": "192.0.2.8:50002",
                                "op": "open", "path": "/inbox/\x1b[2J.sh", "reason": "bad_name"}),
    (4 * DAY, "upload_rejected", {"user": "alice", "tenant": "shinjuku", "batch": OTHER,
                                   "reason": "duplicate_batch", "quarantined_as": "q1--x.age"}),
    (3 * DAY, "incident_raised", {"kind": "quarantine", "batch": BATCH, "tenant": "shinjuku",
                                   "detail": "not an age file", "reason": "not_age"}),
    (2 * DAY, "custody_refused", {"action": "open", "actor": "hanako", "reason": "bad_password",
                                   "batch": BATCH, "os_user": "printop"}),
    (timedelta(hours=30), "print_logged", {"batch": BATCH, "actor": "hanako", "file": "a.csv",
                                            "printer": "P1", "sheets": 40, "computer": "pc1",
                                            "occurrence": 1, "reason": None}),
    (DAY, "print_logged", {"batch": BATCH, "actor": "hanako", "file": "a.csv", "printer": "P1",
                            "sheets": 40, "computer": "pc1", "occurrence": 2,
                            "reason": "紙詰まり (paper jam)"}),
    (timedelta(hours=1), "erasure_certificate_rejected", {"batch": BATCH, "tenant": "shinjuku",
                                                           "reason": "bad_signature"}),
]  # fmt: skip
KINDS = [
    "account_locked_out",
    "brute_force",
    "path_refused",
    "upload_rejected",
    "quarantine",
    "custody_refused",
    "reprint",
    "erasure_certificate_rejected",
]


@pytest.fixture
def root(tmp_path: Path) -> Root:
    """An ``init`` root whose audit log holds one event of every incident kind, and noise."""
    made = Root(tmp_path)
    made.write(EVENTS)
    return made


def _kinds(out: str) -> list[str]:
    return [line.split("  ")[1].strip() for line in out.splitlines()[1:]]


def test_every_kind_listed_in_time_order(root: Root) -> None:
    """Exit 0; one row per incident, oldest first, JST times, escaped text; noise left out."""
    result = root.cli("incidents")
    assert result.code == 0, result.err
    assert result.err == ""
    lines = result.out.splitlines()
    assert lines[0].split() == ["TIME", "(JST)", "KIND", "USER/ACTOR", "TENANT", "BATCH", "SOURCE",
                                "DETAIL"]  # fmt: skip
    assert _kinds(result.out) == KINDS
    burst = lines[2]
    assert "198.51.100.9 " in burst and "25 failed logins in 48 s" in burst
    assert "198.51.100.10" not in result.out
    assert "bad_name" not in result.out and "\x1b" not in result.out
    assert 'stat "../../etc/passwd": dot_dot' in result.out
    assert "print #2: a.csv on P1, 40 sheets from pc1; reason: 紙詰まり (paper jam)" in result.out
    assert all(line.split()[2] == "JST" for line in lines[1:])


def test_since_days_and_iso(root: Root) -> None:
    """--since 6d and --since ISO-with-offset leave older rows out; a naive time is exit 2."""
    recent = root.cli("incidents", "--since", "6d")
    assert recent.code == 0, recent.err
    assert _kinds(recent.out) == KINDS[2:]
    since = (NOW - timedelta(hours=36)).isoformat()
    iso = root.cli("incidents", "--since", since)
    assert _kinds(iso.out) == KINDS[-2:]
    nothing = root.cli("incidents", "--since", "0d")
    assert (nothing.code, nothing.out.startswith("no incidents since ")) == (0, True)
    naive = root.cli("incidents", "--since", "2026-07-01T00:00:00")
    assert naive.code == 2
    assert "has no UTC offset" in naive.err and "hint: " in naive.err


def test_tampered_log_is_an_incident_and_exit_1(root: Root) -> None:
    """One changed byte: the rows still listed, plus audit_tampered naming the record; exit 1."""
    lines = root.log.read_bytes().splitlines(keepends=True)
    victim = next(i for i, line in enumerate(lines) if b'"upload_rejected"' in line)
    lines[victim] = lines[victim].replace(b"duplicate_batch", b"duplicate_batcx")
    root.log.write_bytes(b"".join(lines))
    out = root.base / "report.csv"
    result = root.cli("incidents", "--out", str(out))
    assert result.code == 1
    assert "not intact" in result.err and f"first bad record seq {victim + 1}" in result.err
    assert _kinds(result.out)[-1] == "audit_tampered"
    assert f"seq {victim + 1} at line {victim + 1}" in result.out.splitlines()[-1]
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows[-1][2] == "audit_tampered"


def test_unreadable_line_is_reported_too(root: Root) -> None:
    """A line that is not JSON: the records before it are listed, audit_tampered, exit 1."""
    with root.log.open("ab") as handle:
        handle.write(b"this is not a record\n")
    result = root.cli("incidents")
    assert result.code == 1
    assert _kinds(result.out) == [*KINDS, "audit_tampered", "audit_tampered"]
    assert "reading stopped after" in result.out


def test_csv_report(root: Root) -> None:
    """CSV: UTF-8 BOM, bilingual header, ISO times with +09:00, formula cells defanged, 0600."""
    out = root.base / "incidents.csv"
    result = root.cli("incidents", "--out", str(out))
    assert result.code == 0, result.err
    assert result.err == f"8 incidents written to {out}\n"
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0][:3] == ["日時 (Time, JST)", "種別 (Kind)", "種別コード (Kind code)"]
    assert [r[2] for r in rows[1:]] == KINDS
    assert all(r[0].endswith("+09:00") for r in rows[1:])
    path_row = rows[3]
    assert (path_row[1], path_row[3], path_row[4]) == ("不正パス拒否", "'=alice", "shinjuku")
    assert rows[5][5] == BATCH and rows[5][7] == "not an age file (not_age)"
    assert out.stat().st_mode & 0o777 == 0o600


@needs_pdftotext
def test_pdf_report(root: Root) -> None:
    """The PDF is the 事故報告書 with English headings, every row, and the verification verdict."""
    out = root.base / "incidents.pdf"
    result = root.cli("incidents", "--since", "30d", "--out", str(out))
    assert result.code == 0, result.err
    text = subprocess.run(
        ["pdftotext", "-layout", "-enc", "UTF-8", str(out), "-"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for expected in ("事故報告書", "Incident report", "Time, JST", "Detail", "正常 (intact)",
                     "総当たり攻撃", "brute-force burst", "再印刷", "消去証明書拒否", "SHA256:",
                     "198.51.100.9"):  # fmt: skip
        assert expected in text, expected
    assert text.count(BATCH) >= 3


def test_bad_out_suffix(root: Root) -> None:
    """--out must be .pdf or .csv: exit 2 and nothing written."""
    result = root.cli("incidents", "--out", str(root.base / "x.txt"))
    assert result.code == 2
    assert not (root.base / "x.txt").exists()


def test_fresh_root_has_no_incidents(tmp_path: Path) -> None:
    """Right after init: exit 0, 'no incidents'."""
    result = Root(tmp_path).cli("incidents")
    assert (result.code, result.out) == (0, "no incidents\n")


# -- overdue -------------------------------------------------------------------------------------


def _arrive(root: Root, batch: str, age: timedelta, channel: str = "lgwan") -> None:
    data = b"sealed " + batch.encode()
    Spool(root.root / "spool", clock=lambda: NOW - age).deliver(
        batch,
        io.BytesIO(data),
        tenant="shinjuku",
        channel=channel,
        expected_size=len(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        source_detail={"serials": ["D1"]} if channel == "dvd" else {},
    )


def test_overdue_lists_old_arrivals_and_exits_1(tmp_path: Path) -> None:
    """An arrival 20 days old (default 14): one line, exit 1; a newer one is not listed."""
    root = Root(tmp_path)
    _arrive(root, BATCH, timedelta(days=20))
    _arrive(root, OTHER, timedelta(days=3), channel="dvd")
    result = root.cli("overdue")
    assert result.code == 1, result.err
    (line,) = result.out.splitlines()
    assert line.split()[:4] == [BATCH, "shinjuku", "spool/lgwan", "arrived"]
    assert line.endswith("(20 days)")
    everything = root.cli("overdue", "--days", "2")
    assert [line.split()[0] for line in everything.out.splitlines()] == [BATCH, OTHER]
    assert "spool/dvd" in everything.out


def test_overdue_none_exits_0(tmp_path: Path) -> None:
    """Nothing overdue (or everything erased): exit 0 and nothing on stdout (cron stays quiet)."""
    root = Root(tmp_path)
    assert root.cli("overdue") == Result(0, "", "")
    _arrive(root, BATCH, timedelta(days=20))
    assert root.cli("overdue", "--days", "30") == Result(0, "", "")
    (root.root / "spool" / f"{BATCH}.erasure.json").write_text("{}")
    assert root.cli("overdue").code == 0
    assert root.cli("overdue", "--days", "-1").code == 2
