"""Run the ward → gateway → print-site scenario end to end in a fresh directory.

Every step runs the real console scripts as separate processes on loopback:
two ``lgwan-gateway init`` roots (the LGWAN-ASP gateway and the print site),
both serving SFTP; the ward seals 70,000 synthetic records, sends them, and the
gateway forwards them to the print site over SFTP, where they are opened with
the passphrase read from the paper notice. A second batch takes the DVD path
with the hand-over ledger. The demo exits 0 only if every step succeeded,
stops every process it started, and prints a summary with timings and the
paths of every generated document. ``--keep`` leaves the directory.
"""

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from demo import custody
from demo.scenario import TENANT, Scenario, free_port, notice_line


def main() -> int:
    """Run the scenario; return 0 only when every step succeeded."""
    parser = argparse.ArgumentParser(prog="make demo")
    parser.add_argument("--keep", action="store_true", help="keep the scenario directory")
    parser.add_argument("--records", type=int, default=70_000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lgwan-demo-"))
    scenario = Scenario(root)
    ok = False
    try:
        _set_up_sites(scenario)
        batch = _ward_sends(scenario, args.records)
        custody.set_up_staff(scenario)
        custody.print_site_handles(scenario, batch)
        custody.ward_verifies(scenario, batch)
        custody.dvd_path(scenario)
        custody.audit(scenario)
        ok = True
    finally:
        scenario.stop_all()
        scenario.summary(ok)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            print("(scenario directory removed; run 'make demo ARGS=--keep' to inspect it)")
    return 0


def _set_up_sites(s: Scenario) -> None:
    """Both gateway roots, the ward's and the relay's keys, routes, accounts; start serving."""
    gw_port, ps_port = free_port(), free_port()
    s.run("gateway: init the LGWAN-ASP gateway", ["lgwan-gateway", "init", "--root", "gateway"])
    s.run("print site: init the print site", ["lgwan-gateway", "init", "--root", "print-site"])
    s.set_toml("gateway/gateway.toml", "server", "listen", f"127.0.0.1:{gw_port}")
    s.set_toml("print-site/gateway.toml", "server", "listen", f"127.0.0.1:{ps_port}")
    # The demo polls the print site for erasure certificates every 2 s instead of every minute.
    s.set_toml("gateway/gateway.toml", "forwarder", "rescan_seconds", 2)
    s.run(
        "ward: generate the ward's key pair",
        ["lgwan-client", "keygen", "--out", "ward/keys/ward_ed25519"],
    )
    s.run(
        "gateway: generate its relay key for forwarding",
        ["lgwan-client", "keygen", "--out", "gateway/keys/forward_ed25519"],
    )
    spool = (s.root / "print-site" / "spool").absolute()
    s.append_toml("print-site/gateway.toml", f'\n[tenants.{TENANT}]\nforward = "file://{spool}"\n')
    host_key = (s.root / "print-site/keys/ssh_host_ed25519_key.pub").read_text().strip()
    receipt_key = (s.root / "print-site/keys/gateway_signing_ed25519.pub").read_text().strip()
    s.append_toml(
        "gateway/gateway.toml",
        f"\n[tenants.{TENANT}]\n"
        f'forward = "sftp://relay@127.0.0.1:{ps_port}/inbox"\n'
        f'forward_key = "keys/forward_ed25519"\n'
        f'host_key = "{host_key}"\nreceipt_key = "{receipt_key}"\n',
    )
    notice = s.root / "gateway" / "shinjuku-ward.credentials.pdf"
    s.run(
        "gateway: add the ward account (password only on the credential notice)",
        ["lgwan-gateway", "--config", "gateway/gateway.toml", "user", "add", "shinjuku-ward",
         "--role", "ward", "--tenant", TENANT, "--pubkey", "ward/keys/ward_ed25519.pub",
         "--allow", "127.0.0.1/32", "--notice-out", str(notice),
         "--client-config-out", "ward/client.toml"],
    )  # fmt: skip
    s.documents.append(notice)
    s.password = notice_line(notice, "Password")
    s.append_toml(
        "ward/client.toml",
        "\n[ledger]\n# The demo shortens the gap between disc and notice hand-overs.\n"
        "min_gap_minutes = 2\n",
    )
    s.run(
        "print site: generate the contractor's key pair (for pull mode)",
        ["lgwan-client", "keygen", "--out", "print-site/keys/contractor_ed25519"],
    )
    contractor = s.root / "gateway" / "shinjuku-printer.credentials.pdf"
    s.run(
        "gateway: add the contractor account (pulls the batches when there is no push route)",
        ["lgwan-gateway", "--config", "gateway/gateway.toml", "user", "add", "shinjuku-printer",
         "--role", "contractor", "--tenant", TENANT,
         "--pubkey", "print-site/keys/contractor_ed25519.pub", "--allow", "127.0.0.1/32",
         "--notice-out", str(contractor)],
    )  # fmt: skip
    s.documents.append(contractor)
    s.run(
        "print site: add the relay account (key only, loopback only)",
        ["lgwan-gateway", "--config", "print-site/gateway.toml", "user", "add", "relay",
         "--role", "forwarder", "--tenant", TENANT,
         "--pubkey", "gateway/keys/forward_ed25519.pub", "--allow", "127.0.0.1/32"],
    )  # fmt: skip
    s.serve("print site: serve (SFTP, forwards into its spool)", "print-site/gateway.toml")
    s.serve("gateway: serve (SFTP drop service + forwarder)", "gateway/gateway.toml")


def _ward_sends(s: Scenario, records: int) -> str:
    """Sample data, seal with a notice, send with the password from the credential notice."""
    s.run(
        f"ward: {records:,} synthetic care-insurance notices (CP932 CSV)",
        ["lgwan-client", "sample", "--records", str(records), "--seed", "1",
         "--out", "ward/kaigo_2026.csv"],
    )  # fmt: skip
    batch = s.run(
        "ward: seal (age v1, scrypt work factor 18) and print the password notice",
        ["lgwan-client", "--config", "ward/client.toml", "seal", "ward/kaigo_2026.csv",
         "--notice-type", "KAIGO"],
    ).strip()  # fmt: skip
    s.documents.append(s.root / "ward" / "notices" / f"{batch}.notice.pdf")
    s.run(
        "ward: send over SFTP (password + key), verify the signed receipt",
        ["lgwan-client", "--config", "ward/client.toml", "send", batch, "--password-fd", "{fd}"],
        secret=s.password,
    )
    s.wait_for(
        "gateway → print site: automatic forwarding over SFTP",
        s.root / "print-site" / "spool" / f"{batch}.age",
    )
    status = s.run(
        "ward: status (signed by the gateway)",
        ["lgwan-client", "--config", "ward/client.toml", "status", batch, "--password-fd", "{fd}"],
        secret=s.password,
        expect_in="forwarded",
    )
    print(f"    {status.strip()}")
    return batch


if __name__ == "__main__":
    sys.exit(main())
