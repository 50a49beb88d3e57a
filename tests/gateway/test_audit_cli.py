"""Tests for ``lgwan-gateway audit verify|search|export|tail``, run as real subprocesses."""

import argparse
import csv
import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from custody import (
    ChainHead,
    dumps_record,
    fingerprint,
    generate_private_key,
    make_checkpoint,
    private_key_to_openssh,
    public_key_to_openssh,
)
from gateway import audit_cli
from gateway.audit import AuditLog
from tests.conftest import CliRunner

JST = timezone(timedelta(hours=9))
START = datetime(2025, 7, 1, 9, 0, 0, tzinfo=JST)
CONFIG = """\
[keys]
signing_key = "keys/gateway_signing_ed25519"

[audit]
log = "audit/audit.jsonl"
checkpoints = "audit/checkpoints.jsonl"
checkpoint_every_records = 4
"""
RECORDS = 10
"""Records in the fixture log; checkpoints at seq 4, 8 and (on close) 10."""


@pytest.fixture
def site(tmp_path: Path) -> Ed25519PrivateKey:
    """A gateway root in tmp_path: config, signing key (0600) and a closed audit log."""
    (tmp_path / "gateway.toml").write_text(CONFIG, encoding="utf-8")
    key = generate_private_key()
    key_path = tmp_path / "keys" / "gateway_signing_ed25519"
    key_path.parent.mkdir()
    key_path.write_bytes(private_key_to_openssh(key))
    key_path.chmod(0o600)
    now = [START]
    audit = tmp_path / "audit"
    with AuditLog.open(
        audit / "audit.jsonl",
        audit / "checkpoints.jsonl",
        key,
        every_records=4,
        clock=lambda: now[0],
        timer=False,
    ) as log:
        for i in range(RECORDS):
            now[0] = START + timedelta(minutes=i)
            user = "ward1" if i % 2 else "区役所"
            log.emit("login_failed", user=user, tenant="setagaya", reason="bad_password", n=i)
    return key


def _lines(tmp_path: Path) -> list[bytes]:
    return (tmp_path / "audit" / "audit.jsonl").read_bytes().splitlines(keepends=True)


def _save(tmp_path: Path, lines: list[bytes]) -> None:
    (tmp_path / "audit" / "audit.jsonl").write_bytes(b"".join(lines))


def test_verify_intact_log(gateway: CliRunner, site: Ed25519PrivateKey) -> None:
    """An intact log: exit 0 and the one-line summary with the signer's fingerprint."""
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 0, result.err
    assert result.out.startswith(f"ok: {RECORDS} records, head seq {RECORDS}, last checkpoint 10")
    assert fingerprint(site.public_key()) in result.out
    assert result.out.count("\n") == 1


def test_verify_changed_byte(gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path) -> None:
    """One changed byte: exit 1 naming seq and line of the changed record."""
    lines = _lines(tmp_path)
    lines[2] = lines[2].replace(b'"n":2', b'"n":3')
    _save(tmp_path, lines)
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "first bad record seq 3 at line 3" in result.err
    assert result.out == ""


def test_verify_removed_record(gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path) -> None:
    """A removed record: exit 1 at the line where it is missing."""
    lines = _lines(tmp_path)
    del lines[5]
    _save(tmp_path, lines)
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "seq 6 at line 6" in result.err


def test_verify_reordered_records(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Two swapped records: exit 1 at the first of them."""
    lines = _lines(tmp_path)
    lines[6], lines[7] = lines[7], lines[6]
    _save(tmp_path, lines)
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "seq 7 at line 7" in result.err


def test_verify_truncated_behind_checkpoint(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """Records cut off the end that a checkpoint covers: exit 1, truncation named."""
    _save(tmp_path, _lines(tmp_path)[:7])
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "truncated" in result.err and "seq 10" in result.err


def test_verify_altered_checkpoint(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A checkpoint whose body was edited no longer verifies: exit 1 naming it."""
    checkpoints = tmp_path / "audit" / "checkpoints.jsonl"
    lines = checkpoints.read_bytes().splitlines(keepends=True)
    lines[0] = lines[0].replace(b'"seq":4', b'"seq":5')
    checkpoints.write_bytes(b"".join(lines))
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "checkpoint 1" in result.err and "bad signature" in result.err


def test_verify_checkpoint_by_another_key(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """A checkpoint signed by another key (a rewritten log re-signed) fails: exit 1."""
    checkpoints = tmp_path / "audit" / "checkpoints.jsonl"
    forged = make_checkpoint(ChainHead(1, "0" * 64), START.isoformat(), generate_private_key())
    checkpoints.write_bytes(checkpoints.read_bytes() + dumps_record(forged))
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 1
    assert "checkpoint 4" in result.err and "signed by" in result.err


def test_verify_prefers_the_pub_file_and_public_key_option(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """<signing_key>.pub is used when present; --public-key pins another key."""
    pub = tmp_path / "keys" / "gateway_signing_ed25519.pub"
    pub.write_text(public_key_to_openssh(generate_private_key().public_key()) + "\n")
    assert gateway("--config", "gateway.toml", "audit", "verify").code == 1
    right = tmp_path / "right.pub"
    right.write_text(public_key_to_openssh(site.public_key()) + "\n")
    result = gateway("--config", "gateway.toml", "audit", "verify", "--public-key", "right.pub")
    assert result.code == 0, result.err


def test_verify_without_a_signing_key_is_a_config_error(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """No signing key and no .pub: exit 78 naming [keys] signing_key."""
    (tmp_path / "keys" / "gateway_signing_ed25519").unlink()
    result = gateway("--config", "gateway.toml", "audit", "verify")
    assert result.code == 78
    assert "keys.signing_key" in result.err


def test_search_prints_json_lines_off_a_tty(gateway: CliRunner, site: Ed25519PrivateKey) -> None:
    """Off a terminal, search prints one JSON record per line, filtered."""
    result = gateway("--config", "gateway.toml", "audit", "search", "--user", "区役所")
    assert result.code == 0, result.err
    found = [json.loads(line) for line in result.out.splitlines()]
    assert [r["n"] for r in found] == [0, 2, 4, 6, 8]
    assert all(r["user"] == "区役所" for r in found)


def test_search_time_window(gateway: CliRunner, site: Ed25519PrivateKey) -> None:
    """--since and --until select a half-open window of times with offsets."""
    result = gateway(
        "--config",
        "gateway.toml",
        "audit",
        "search",
        "--since",
        "2025-07-01T09:02:00+09:00",
        "--until",
        "2025-07-01T00:05:00+00:00",
        "--event",
        "login_failed",
    )
    assert result.code == 0, result.err
    assert [json.loads(line)["n"] for line in result.out.splitlines()] == [2, 3, 4]


def test_search_bad_time_is_a_usage_error(gateway: CliRunner, site: Ed25519PrivateKey) -> None:
    """A --since that is not ISO 8601 exits 2 with a hint."""
    result = gateway("--config", "gateway.toml", "audit", "search", "--since", "yesterday")
    assert result.code == 2
    assert "ISO 8601" in result.err and "hint:" in result.err


def test_export_csv(gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path) -> None:
    """export --format csv writes a BOM-prefixed CSV that round-trips Japanese."""
    result = gateway(
        "--config", "gateway.toml", "audit", "export", "--format", "csv", "--out", "a.csv"
    )
    assert result.code == 0, result.err
    assert f"{RECORDS} records" in result.out
    data = (tmp_path / "a.csv").read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0]["user"] == "区役所" and rows[0]["detail"] == '{"n": 0}'


def test_export_jsonl_with_filter(
    gateway: CliRunner, site: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """export --format jsonl honours the filters."""
    result = gateway(
        "--config",
        "gateway.toml",
        "audit",
        "export",
        "--format",
        "jsonl",
        "--out",
        "w.jsonl",
        "--user",
        "ward1",
    )
    assert result.code == 0, result.err
    lines = (tmp_path / "w.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 3, 5, 7, 9]


def test_tail_last_records(gateway: CliRunner, site: Ed25519PrivateKey) -> None:
    """tail -n 3 prints the last three records."""
    result = gateway("--config", "gateway.toml", "audit", "tail", "-n", "3")
    assert result.code == 0, result.err
    assert [json.loads(line)["seq"] for line in result.out.splitlines()] == [8, 9, 10]


def test_search_table_on_a_tty_escapes_control_characters(
    site: Ed25519PrivateKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """On a terminal, search draws a table; hostile control characters and markup stay inert."""
    audit = tmp_path / "audit"
    with AuditLog.open(
        audit / "audit.jsonl", audit / "checkpoints.jsonl", site, timer=False
    ) as log:
        log.emit("sftp_refused", user="[bold]x\x1b[2J", reason="bad_name")
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    args = argparse.Namespace(
        config=str(tmp_path / "gateway.toml"),
        since=None,
        until=None,
        user=None,
        tenant=None,
        batch=None,
        event="sftp_refused",
    )
    assert audit_cli.cmd_search(args) == 0
    out = capsys.readouterr().out
    assert "[bold]x\\x1b[2J" in out and "\x1b[2J" not in out
    assert "sftp_refused" in out and "bad_name" in out
