"""``lgwan-gateway incidents`` over the audit log of a real ``serve`` that was attacked.

A gateway made by ``init`` serves on 127.0.0.1 with a small lockout and
source throttle; from 127.0.0.2 someone guesses passwords (a lockout and a
brute-force burst), a ward tries a path trick, and a plaintext CSV uploaded
as an envelope is quarantined by the forwarder. After a clean SIGTERM the
real CLI must list each of them — and nothing the ward did legitimately.
"""

import csv
import io
from pathlib import Path

import paramiko
import pytest

from tests.conftest import run_cli
from tests.gateway.pipeline_kit import BAD_UPLOADS
from tests.integration.drop_kit import Gateway, connect, new_batch, session, upload

ATTACKER = "127.0.0.2"
SETTINGS = {"auth": {"max_failures": 3, "source_failures_per_minute": 5}}


def _guess(gw: Gateway, user: str, times: int) -> None:
    """``times`` wrong passwords for ``user`` from the attacker's address, one connection."""
    transport = connect(gw, ATTACKER)
    try:
        for _ in range(times):
            with pytest.raises(paramiko.AuthenticationException):
                transport.auth_password(user, "not-the-password", fallback=False)
    finally:
        transport.close()


def test_incidents_of_an_attacked_gateway(tmp_path: Path) -> None:
    """Lockout, burst (one row, its count), path trick and quarantine listed; exit 0; CSV too."""
    gw = Gateway(tmp_path, SETTINGS)
    spool = tmp_path / "spool"
    spool.mkdir()
    config = gw.root / "gateway.toml"
    config.write_text(config.read_text() + f'\n[tenants.shinjuku]\nforward = "file://{spool}"\n')
    alice = gw.add("alice", "shinjuku")
    gw.add("frank", "shinjuku")
    gw.start()
    try:
        _guess(gw, "frank", 3)  # the third locks frank out
        _guess(gw, "mallory", 3)  # unknown name (refused as throttled once 5 fell in a minute)
        gw.wait_event("account_locked_out", user="frank")
        with session(gw, alice) as sftp:
            with pytest.raises(PermissionError):
                sftp.stat("../../etc/passwd")
            batch = new_batch()
            make, reason = BAD_UPLOADS["csv"]
            upload(sftp, batch, make())
        gw.wait_event("incident_raised", batch=batch, kind="quarantine")
    finally:
        assert gw.stop()[0] == 0
    out = tmp_path / "incidents.csv"
    result = run_cli("lgwan-gateway", "--config", config, "incidents", "--out", out, cwd=tmp_path)
    assert result.code == 0, result.err
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))[1:]
    kinds = [row[2] for row in rows]
    assert sorted(kinds) == ["account_locked_out", "brute_force", "path_refused", "quarantine"]
    by_kind = {row[2]: row for row in rows}
    assert by_kind["account_locked_out"][3] == "frank"
    assert by_kind["account_locked_out"][6].startswith(f"{ATTACKER}:")
    burst = by_kind["brute_force"]
    assert burst[6] == ATTACKER
    assert burst[7].startswith("6 failed logins in ")
    assert '"frank", "mallory"' in burst[7]
    assert by_kind["path_refused"][3:5] == ["alice", "shinjuku"]
    assert by_kind["path_refused"][7].endswith('"../../etc/passwd": dot_dot')
    quarantined = by_kind["quarantine"]
    assert (quarantined[4], quarantined[5]) == ("shinjuku", batch)
    assert reason in quarantined[7] and "quarantined as " in quarantined[7]
    assert result.out.splitlines()[0].startswith("TIME (JST)")
    assert len(result.out.splitlines()) == 5
    sources = {e["source"] for e in gw.events("login_failed") if e["source"].startswith(ATTACKER)}
    assert len(sources) == 2  # two connections, two ports: one burst from one address
