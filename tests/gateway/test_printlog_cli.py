"""``lgwan-gateway print-log add|report`` as subprocesses: every rule, refusal and report column."""

from __future__ import annotations

import csv
import io
import socket
import stat
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from pypdf import PdfReader

from gateway.state import PrintRecord, StateStore
from tests.conftest import Result
from tests.gateway.custody_kit import BATCH, HANDLER, MANAGER, TENANT, CustodySite, make_site

_SHADE = b"1 .9 .72 rg"
"""The reprint rows' fill colour as reportlab writes it."""


@pytest.fixture
def site(tmp_path: Path) -> CustodySite:
    """A print site whose spool holds BATCH."""
    made = make_site(tmp_path)
    made.spool_batch()
    return made


@pytest.fixture
def opened(site: CustodySite) -> CustodySite:
    """The site with BATCH opened by the handler."""
    done = site.open()
    assert done.code == 0, done.err
    return site


def _prints(site: CustodySite) -> list[PrintRecord]:
    with StateStore.open(site.root / "state.db", create=False) as store:
        return store.prints(BATCH)


def _refused(site: CustodySite, done: Result, reason: str, words: str) -> None:
    assert done.code == 1, done
    assert words in done.err and "Traceback" not in done.err, done.err
    [event] = site.audit("custody_refused")
    assert event["reason"] == reason and event["action"] == "print" and event["batch"] == BATCH


# -- add --------------------------------------------------------------------------------------


def test_first_print_is_recorded_with_this_host_as_the_source(opened: CustodySite) -> None:
    """A print is recorded (computer defaults to the host name) and audited print_logged."""
    done = opened.print_log(sheets=70_000)
    assert done.code == 0, done.err
    assert done.out == "" and "recorded print of print.csv" in done.err
    [record] = _prints(opened)
    assert record.file_name == "print.csv" and record.printer == "RICOH-1"
    assert record.sheets == 70_000 and record.handler == HANDLER and record.occurrence == 1
    assert record.computer == socket.gethostname() and record.reason is None
    assert record.printed_at.utcoffset() is not None
    assert abs(record.printed_at - datetime.now().astimezone()) < timedelta(minutes=5)
    [event] = opened.audit("print_logged")
    assert event["batch"] == BATCH and event["tenant"] == TENANT and event["actor"] == HANDLER
    assert event["file"] == "print.csv" and event["printer"] == "RICOH-1"
    assert event["sheets"] == 70_000 and event["occurrence"] == 1 and event["os_user"]
    assert event["computer"] == socket.gethostname() and event["reason"] is None


def test_source_computer_from_the_option_or_the_config(opened: CustodySite) -> None:
    """--computer wins; else [custody] computer; both are recorded as given."""
    text = opened.config.read_text()
    assert 'computer = ""' in text
    opened.config.write_text(text.replace('computer = ""', 'computer = "PS-PC-07"'))
    assert opened.print_log().code == 0
    assert opened.print_log("--computer", "PS-PC-99", "--reason", "second tray").code == 0
    assert [p.computer for p in _prints(opened)] == ["PS-PC-07", "PS-PC-99"]


def test_reprint_needs_a_reason(opened: CustodySite) -> None:
    """A second print of the same file is refused without --reason (audited), recorded with one."""
    assert opened.print_log().code == 0
    refused = opened.print_log(sheets=12)
    _refused(opened, refused, "reprint_without_reason", "a reprint needs a reason")
    assert "--reason" in refused.err
    assert len(_prints(opened)) == 1
    done = opened.print_log("--reason", "紙詰まり (paper jam)", sheets=12)
    assert done.code == 0, done.err
    assert "reprint (print 2)" in done.err
    first, second = _prints(opened)
    assert (first.occurrence, second.occurrence) == (1, 2)
    assert second.reason == "紙詰まり (paper jam)" and second.sheets == 12
    events = opened.audit("print_logged")
    assert [e["occurrence"] for e in events] == [1, 2]
    assert events[1]["reason"] == "紙詰まり (paper jam)"


def test_a_batch_not_opened_here_cannot_be_printed(site: CustodySite) -> None:
    """A batch in the spool but never opened: refused ``not_opened``, nothing recorded."""
    _refused(site, site.print_log(), "not_opened", "was not opened at this site")
    assert _prints(site) == []


def test_a_file_not_in_the_manifest_is_refused(opened: CustodySite) -> None:
    """--file must name one of the opened batch's files; the hint lists them."""
    done = opened.gateway(
        "print-log", "add", "--batch", BATCH, "--file", "other.csv", "--printer", "P",
        "--sheets", "1", "--as", HANDLER, "--password-fd", "{handler}",
    )  # fmt: skip
    _refused(opened, done, "unknown_file", "has no file 'other.csv'")
    assert "print.csv" in done.err
    assert _prints(opened) == []


def test_an_erased_batch_cannot_be_printed(opened: CustodySite) -> None:
    """After erasure no print is recorded (``erased``)."""
    opened.mark_erased()
    _refused(opened, opened.print_log(), "erased", "has been erased")
    assert _prints(opened) == []


@pytest.mark.parametrize(
    ("password", "reason"), [("wrong-password-123", "bad_password"), (None, "disabled")]
)
def test_staff_must_authenticate(opened: CustodySite, password: str | None, reason: str) -> None:
    """A wrong password or a disabled handler is refused (audited); nothing is recorded."""
    if password is None:
        assert opened.gateway("staff", "disable", HANDLER).code == 0
        done = opened.print_log()
    else:
        done = opened.print_log(handler=password)
    _refused(opened, done, reason, "refused")
    assert _prints(opened) == []


def test_a_manager_may_log_prints(opened: CustodySite) -> None:
    """Managers (取扱責任者) may record prints too."""
    done = opened.gateway(
        "print-log", "add", "--batch", BATCH, "--file", "print.csv", "--printer", "P",
        "--sheets", "1", "--as", MANAGER, "--password-fd", "{manager}",
    )  # fmt: skip
    assert done.code == 0, done.err
    assert [p.handler for p in _prints(opened)] == [MANAGER]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sheets", "0"], "--sheets must be from 1"),
        (["--sheets", "1000001"], "--sheets must be from 1"),
        (["--sheets", "ten"], "invalid int value"),
        (["--printer", " "], "--printer must not be empty"),
        (["--computer", "a\x07b"], "--computer must be printable"),
        (["--reason", ""], "--reason must not be empty"),
        (["--batch", "../etc"], "not a batch id"),
    ],
)
def test_bad_arguments_are_usage_errors(opened: CustodySite, args: list[str], words: str) -> None:
    """Sheets outside 1..1,000,000, blank or unprintable text, a bad batch id: exit 2."""
    base = {"--batch": BATCH, "--file": "print.csv", "--printer": "P", "--sheets": "5"}
    extra: list[str] = []
    for option, value in zip(args[::2], args[1::2], strict=True):
        if option in base:
            base[option] = value
        else:
            extra += [option, value]
    flat = [item for pair in base.items() for item in pair]
    done = opened.gateway(
        "print-log", "add", *flat, *extra, "--as", HANDLER, "--password-fd", "{handler}"
    )
    assert done.code == 2, done.err
    assert words in done.err
    assert _prints(opened) == [] and opened.audit("custody_refused") == []


def test_the_largest_sheet_count_is_accepted(opened: CustodySite) -> None:
    """1,000,000 sheets is within bounds."""
    assert opened.print_log(sheets=1_000_000).code == 0


# -- report -----------------------------------------------------------------------------------


def _two_prints(site: CustodySite) -> None:
    assert site.print_log(sheets=70_000).code == 0
    assert site.print_log("--reason", "=紙詰まり 4,101-4,112", sheets=12).code == 0


def test_csv_report_lists_every_print_with_reprints_and_totals(opened: CustodySite) -> None:
    """The CSV (UTF-8 BOM) has every column, a reprint column, defanged formulas and a total."""
    _two_prints(opened)
    out = opened.cwd / "log.csv"
    done = opened.gateway("print-log", "report", BATCH, "--out", out)
    assert done.code == 0, done.err
    assert done.out == f"{out}\n"
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    header, first, second, total = rows
    assert header[:7] == [
        "連番 (No.)",
        "印刷日時 (Printed, JST)",
        "印刷元コンピュータ名 (Source computer)",
        "印刷ファイル名 (File)",
        "印刷先プリンタ名 (Printer)",
        "印刷枚数 (Sheets)",
        "取扱者 (Handler)",
    ]
    assert "reprint" in header and header[-1] == "再印刷理由 (Reprint reason)"
    reprint = header.index("reprint")
    assert first[reprint] == "no" and second[reprint] == "yes"
    assert first[1].endswith("+09:00") and first[2] == socket.gethostname()
    assert first[3] == "print.csv" and first[4] == "RICOH-1" and first[5] == "70000"
    assert first[6] == "田中 花子 (tanaka)"
    assert second[-1] == "'=紙詰まり 4,101-4,112"
    assert total[0] == "合計 (total)" and total[5] == "70012"
    assert "1 reprints (12 sheets)" in total
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_pdf_report_is_japanese_with_english_headings_and_marks_reprints(
    opened: CustodySite,
) -> None:
    """The PDF names the batch, every heading in both languages, the reprint mark and reason."""
    _two_prints(opened)
    out = opened.cwd / "log.pdf"
    done = opened.gateway("print-log", "report", BATCH, "--out", out)
    assert done.code == 0, done.err
    reader = PdfReader(out)
    text = "\n".join(page.extract_text() or "" for page in reader.pages)
    for words in (
        "印刷記録簿", "Print log", BATCH, TENANT, "印刷元コンピュータ名", "Source computer",
        "印刷日時", "印刷ファイル名", "印刷先プリンタ名", "Printer", "印刷枚数", "Sheets",
        "取扱者", "Handler", "再印刷理由", "Reprint reason", "RICOH-1", "70,000", "※",
        "紙詰まり", "70,012", "手渡し",
    ):  # fmt: skip
        assert words in text, words
    assert "2回目" in text.replace("\n", "").replace(" ", "")
    contents = reader.pages[0].get_contents()
    assert contents is not None and _SHADE in contents.get_data()  # the reprint row is shaded
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_long_print_logs_continue_on_more_pages(opened: CustodySite) -> None:
    """Sixty prints run over several pages, each numbered, the totals on the last."""
    start = datetime.now().astimezone()
    with StateStore.open(opened.root / "state.db", create=False) as store:
        for i in range(60):
            store.add_print(
                BATCH, "print.csv", f"PRINTER-{i % 3}", 100 + i, "PS-PC-01",
                start + timedelta(minutes=i), HANDLER, None if i == 0 else f"reason {i}",
            )  # fmt: skip
    out = opened.cwd / "long.pdf"
    assert opened.gateway("print-log", "report", BATCH, "--out", out).code == 0
    pages = [page.extract_text() or "" for page in PdfReader(out).pages]
    assert len(pages) >= 2
    assert f"1 / {len(pages)}" in pages[0] and "（続き）" in pages[1]
    assert "reason 59" in pages[-1] and f"{sum(100 + i for i in range(60)):,}" in pages[-1]


def test_report_of_a_batch_never_opened_is_refused(site: CustodySite) -> None:
    """A batch with no opening and no print has no print log (exit 1)."""
    done = site.gateway("print-log", "report", BATCH, "--out", site.cwd / "x.pdf")
    assert done.code == 1 and "never opened" in done.err
    assert not (site.cwd / "x.pdf").exists()


def test_report_needs_pdf_or_csv(opened: CustodySite) -> None:
    """--out must end in .pdf or .csv (exit 2)."""
    done = opened.gateway("print-log", "report", BATCH, "--out", opened.cwd / "x.txt")
    assert done.code == 2 and ".pdf or F.csv" in done.err


def test_report_of_an_opened_batch_without_prints_has_zero_totals(opened: CustodySite) -> None:
    """Opened but never printed: the report says so (no rows, total 0)."""
    out = opened.cwd / "none.csv"
    assert opened.gateway("print-log", "report", BATCH, "--out", out).code == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert len(rows) == 2 and rows[1][0] == "合計 (total)" and rows[1][5] == "0"
