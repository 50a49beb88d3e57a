"""The print site's part of the demo: roster, controlled opening, print log, erasure.

Then the ward verifies the erasure certificate that came back through the
gateway, the DVD batch takes the same custody path, and every log is verified.
Staff passwords go through their own pipes (``--password-fd``), like every secret.
"""

from datetime import datetime, timedelta
from pathlib import Path

from demo.scenario import TENANT, Scenario, notice_line

PS = ["lgwan-gateway", "--config", "print-site/gateway.toml"]
WARD = ["lgwan-client", "--config", "ward/client.toml"]
HANDLER, MANAGER = "tanaka", "suzuki"
HANDLER_PASSWORD = "demo-handler-pass-4821"  # noqa: S105 -- the demo's own staff
MANAGER_PASSWORD = "demo-manager-pass-7730"  # noqa: S105 -- the demo's own staff
AS_HANDLER = ["--as", HANDLER, "--password-fd", "{handler}"]
APPROVAL = ["--approver", MANAGER, "--approver-password-fd", "{manager}"]
STAFF = {"handler": HANDLER_PASSWORD, "manager": MANAGER_PASSWORD}


def set_up_staff(s: Scenario) -> None:
    """The 取扱責任者 and a 取扱者, and the roster the ward receives."""
    s.run(
        "print site: staff add the responsible manager (取扱責任者)",
        [*PS, "staff", "add", MANAGER, "--role", "manager", "--full-name", "鈴木 一郎",
         "--password-fd", "{fd}"],
        secret=MANAGER_PASSWORD,
    )  # fmt: skip
    s.run(
        "print site: staff add a handler (取扱者)",
        [*PS, "staff", "add", HANDLER, "--role", "handler", "--full-name", "田中 花子",
         "--password-fd", "{fd}"],
        secret=HANDLER_PASSWORD,
    )  # fmt: skip
    roster = s.root / "print-site" / "roster.pdf"
    s.run(
        "print site: the roster for the ward (名簿)", [*PS, "staff", "roster", "--out", str(roster)]
    )
    s.documents.append(roster)


def print_site_handles(s: Scenario, batch: str) -> None:
    """List the spool, open, print twice (a reason for the second), erase."""
    listing = s.run("print site: batches in the spool", [*PS, "batches"])
    print(f"    {listing.strip()[:160]}")
    secret = notice_line(s.root / "ward" / "notices" / f"{batch}.notice.pdf", "Passphrase")
    opened = s.run(
        "print site: open with the passphrase from the paper notice (handler authenticated)",
        [*PS, "open", batch, *AS_HANDLER, "--passphrase-fd", "{fd}", "--via", "hand"],
        secret=secret,
        secrets=STAFF,
    ).strip()
    original = (s.root / "ward" / "kaigo_2026.csv").read_bytes()
    if (Path(opened) / "kaigo_2026.csv").read_bytes() != original:
        raise SystemExit("demo: the opened file differs from the sealed one")
    print(f"    {len(original):,} bytes arrived byte-identical in {opened}")
    _print_twice(s, batch, "kaigo_2026.csv")
    _erase(s, batch)


def _print_twice(s: Scenario, batch: str, name: str) -> None:
    """One print, a reprint refused without a reason, accepted with one; the report."""
    log = [
        *PS,
        "print-log",
        "add",
        "--batch",
        batch,
        "--file",
        name,
        "--printer",
        "RICOH-IMC6000-1",
    ]
    s.run(
        "print site: print-log the print run",
        [*log, "--sheets", "70000", *AS_HANDLER],
        secrets=STAFF,
    )
    s.run(
        "print site: a second print without a reason is refused",
        [*log, "--sheets", "12", *AS_HANDLER],
        secrets=STAFF,
        expect_code=1,
    )
    s.run(
        "print site: the reprint with its reason",
        [*log, "--sheets", "12", "--reason", "紙詰まりによる再印刷 (paper jam, sheets 4,101-4,112)",
         *AS_HANDLER],
        secrets=STAFF,
    )  # fmt: skip
    report = s.root / "print-site" / f"{batch}.print-log.pdf"
    s.run("print site: print-log report", [*PS, "print-log", "report", batch, "--out", str(report)])
    s.documents.append(report)


def _erase(s: Scenario, batch: str) -> None:
    """Erase every copy with a manager's approval; the certificate's JSON and PDF."""
    out = s.run(
        "print site: erase every copy (handler + approving manager), signed certificate",
        [*PS, "erase", batch, *AS_HANDLER, *APPROVAL],
        secrets=STAFF,
    )
    certificates = s.root / "print-site" / "certificates"
    s.documents.append(certificates / f"{batch}.erasure.pdf")
    print(f"    {out.strip().splitlines()[0]}")


def ward_verifies(s: Scenario, batch: str) -> None:
    """The certificate reaches the ward through the gateway; the ward verifies it."""
    s.wait_for(
        "print site → gateway: the erasure certificate is published to the ward",
        s.root / "gateway" / "storage" / "tenants" / TENANT / "receipts" / f"{batch}.erasure.json",
    )
    status = s.run(
        "ward: status shows ERASED and fetches the certificate",
        [*WARD, "status", batch, "--password-fd", "{fd}"],
        secret=s.password,
        expect_in="erased",
    )
    print(f"    {status.strip().splitlines()[0]}")
    s.run(
        "ward: verify-certificate (print site's key, the hashes the ward sealed)",
        [*WARD, "verify-certificate", f"ward/certificates/{batch}.erasure.json"],
    )


def dvd_path(s: Scenario) -> None:
    """A second batch on DVD: image, hand-overs on separate occasions, import, open, erase."""
    s.run(
        "ward: 3,000 records for the DVD path",
        ["lgwan-client", "sample", "--records", "3000", "--seed", "2", "--out", "ward/dvd.csv"],
    )
    batch = s.run(
        "ward: seal the DVD batch", [*WARD, "seal", "ward/dvd.csv", "--notice-type", "KAIGO"]
    ).strip()
    notice = s.root / "ward" / "notices" / f"{batch}.notice.pdf"
    s.documents.append(notice)
    image = s.root / "ward" / "dvd" / f"{batch}.iso"
    line = s.run(
        "ward: DVD image (ISO 9660 + Joliet + UDF), read back and verified",
        [*WARD, "dvd", batch, "--out", str(image)],
    )
    _hand_over(s, batch, serial=line.split()[0])
    s.run(
        "print site: dvd-import the disc into the spool",
        [*PS, "dvd-import", str(image), "--tenant", TENANT],
    )
    s.run(
        "print site: open the DVD batch with the mailed passphrase",
        [*PS, "open", batch, *AS_HANDLER, "--passphrase-fd", "{fd}", "--via", "registered-mail",
         "--notice-serial", "1234-5678-9012"],
        secret=notice_line(notice, "Passphrase"),
        secrets=STAFF,
    )  # fmt: skip
    _erase(s, batch)
    s.run(
        "ward: verify the DVD batch's certificate (handed over as a file)",
        [*WARD, "verify-certificate", f"print-site/certificates/{batch}.erasure.json"],
    )


def _hand_over(s: Scenario, batch: str, serial: str) -> None:
    """Disc and notice on separate occasions (the same occasion is refused); the 確認書."""
    now = datetime.now().astimezone().replace(microsecond=0)
    common = [*WARD, "ledger", "record"]
    to = ["--to-org", "株式会社サンプル印刷", "--to-person", "山田 太郎"]
    s.run(
        "ward ledger: disc handed over by hand from cabinet A",
        [*common, "media-out", "--batch", batch, "--serial", serial, "--at", now.isoformat(),
         *to, "--cabinet", "A", "--carrier", "佐藤"],
    )  # fmt: skip
    s.run(
        "ward ledger: the notice on the same occasion is refused",
        [*common, "notice-out", "--batch", batch, "--method", "hand", "--carrier", "佐藤", *to,
         "--cabinet", "B"],
        expect_code=1,
    )  # fmt: skip
    later = (now + timedelta(minutes=3)).isoformat()
    s.run(
        "ward ledger: the notice by registered mail from cabinet B, on a later occasion",
        [*common, "notice-out", "--batch", batch, "--method", "registered-mail",
         "--tracking", "1234-5678-9012", "--at", later, *to, "--cabinet", "B"],
    )  # fmt: skip
    report = s.root / "ward" / f"{batch}.kakuninsho.pdf"
    s.run(
        "ward ledger: print the 確認書 (hand-over record)",
        [*WARD, "ledger", "report", batch, "--out", str(report)],
    )
    s.documents.append(report)


def audit(s: Scenario) -> None:
    """Every log verifies (both audit logs, the ward's ledger); the incident reports."""
    s.stop_all()
    for site in ("gateway", "print-site"):
        config = f"{site}/gateway.toml"
        s.run(f"{site}: audit verify", ["lgwan-gateway", "--config", config, "audit", "verify"])
        s.logs.append(s.root / site / "audit" / "audit.jsonl")
        report = s.root / site / "incidents.pdf"
        s.run(
            f"{site}: incidents (the refused reprint is one)",
            ["lgwan-gateway", "--config", config, "incidents", "--out", str(report)],
        )
        s.documents.append(report)
    s.run("ward: ledger verify", [*WARD, "ledger", "verify"])
    s.logs.append(s.root / "ward" / "ledger" / "ledger.jsonl")
