"""The 確認書 report (client.ledger_report): PDF text layer, rendering, CSV, pagination."""

import csv
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pypdf import PdfReader

from client import ledger_report
from client.ledger import Ledger
from custody import ChainHead, fingerprint

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
BATCH = "20260715-KAIGO-7F3KQ2"
SEALED = "2026-07-15T09:00:00+09:00"
HEAD = ChainHead(6, "ab" * 32)
PRINTED = datetime.fromisoformat("2026-07-20T10:00:00+09:00")


def _entries(tmp_path: Path, extra_discs: int = 0) -> list[dict[str, object]]:
    """A batch's entries as the real ledger writes them: sealed, hand-overs, returns, delivery."""
    with Ledger.open(tmp_path / "ledger.jsonl", KEY) as book:
        book.record(
            "sealed",
            batch=BATCH,
            notice_type="KAIGO",
            handler="tanaka",
            file_count=2,
            record_total=70000,
            envelope_sha256="cd" * 32,
            envelope_size=1234,
            files=[],
        )
        book.record(
            "dvd-created",
            batch=BATCH,
            kind="age",
            parts=1,
            serials=["DVD-20260715-001"],
            discs=[{"serial": "DVD-20260715-001", "part": 1, "sha256": "ef" * 32}],
            handler="tanaka",
        )
        book.record(
            "media-out",
            batch=BATCH,
            at="2026-07-15T01:30:00+00:00",  # 10:30 JST
            handler="窓口 花子",
            serials=["DVD-20260715-001"],
            to_org="株式会社印刷センター",
            to_person="山田 太郎",
            content="KAIGO 暗号化印刷データ",
            discs=1,
            files=2,
            records=70000,
            cabinet="A棚",
            carrier="Sato Express",
        )
        book.record(
            "notice-out",
            batch=BATCH,
            at="2026-07-16T14:00:00+09:00",
            handler="窓口 花子",
            serial=f"{BATCH}-N",
            method="registered-mail",
            tracking="RM123456789JP",
            to_org="株式会社印刷センター",
            to_person="山田 太郎",
            cabinet="B棚",
        )
        for n in range(extra_discs):
            book.record(
                "media-out",
                batch=BATCH,
                at="2026-07-17T09:00:00+09:00",
                handler="窓口 花子",
                serials=[f"DVD-20260717-{n:03d}"],
                to_org="株式会社印刷センター東京第二工場",
                to_person="山田 太郎",
                content="KAIGO 暗号化印刷データ（介護保険料納入通知書）",
                discs=1,
                files=2,
                records=70000,
                cabinet="A棚",
                carrier="Sato Express",
            )
        book.record(
            "media-return",
            batch=BATCH,
            at="2026-07-18T09:00:00+09:00",
            handler="窓口 花子",
            serials=["DVD-20260715-001"],
            returned_by="山田 太郎",
            condition="封印異常なし",
            cabinet="=C棚",
        )
        book.record(
            "delivery",
            batch=BATCH,
            at="2026-07-19T09:00:00+09:00",
            handler="窓口 花子",
            quantity=69998,
            shortfall=2,
        )
        return list(book.entries(BATCH))


def _render(tmp_path: Path, entries: list[dict[str, object]]) -> Path:
    out = tmp_path / "report.pdf"
    ledger_report.render_pdf(
        out,
        entries,
        batch=BATCH,
        ward_name="新宿区",
        head=HEAD,
        signer=fingerprint(KEY.public_key()),
        printed_at=PRINTED,
    )
    return out


def _squeezed(text: str) -> str:
    """Text without white space: table cells may wrap anywhere."""
    return "".join(text.split())


def test_pdf_text_layer_holds_every_event(tmp_path: Path) -> None:
    """pypdf finds the title, headings, each event's serial, party, method and JST time."""
    out = _render(tmp_path, _entries(tmp_path))
    text = _squeezed("\n".join(p.extract_text() for p in PdfReader(out).pages))
    for expected in (
        "確認書(Hand-overrecord)",
        "日時",
        "Date/time,JST",
        "取扱者",
        "Handler",
        "保管庫",
        "Cabinet",
        BATCH,
        "DVD-20260715-001",
        f"{BATCH}-N",
        "RM123456789JP",
        "株式会社印刷センター",
        "窓口花子",
        "簡易書留",
        "10:30JST",  # 01:30 UTC shown in JST
        "DVD作成",
        "SHA-256efefefefefef",
        "69,998",
        "委託先",
        "Contractor",
        HEAD.hash,
    ):
        assert expected in text, expected


def test_pdf_is_private_and_one_page_for_a_short_ledger(tmp_path: Path) -> None:
    """A handful of events fit on one A4 landscape page, written mode 0600."""
    out = _render(tmp_path, _entries(tmp_path))
    reader = PdfReader(out)
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert float(box.width) > float(box.height)
    assert out.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_long_ledger_runs_over_pages_with_signatures_on_the_last(tmp_path: Path) -> None:
    """Forty discs need several pages; every page is numbered, the last holds the signatures."""
    out = _render(tmp_path, _entries(tmp_path, extra_discs=40))
    pages = [_squeezed(p.extract_text()) for p in PdfReader(out).pages]
    assert len(pages) > 2
    for number, text in enumerate(pages, 1):
        assert f"{number}/{len(pages)}" in text
    assert "Contractor" in pages[-1]
    assert "媒体持出" in pages[-1] or "通知書納品" in pages[-1]  # a row stands with the signatures
    assert all("Contractor" not in text for text in pages[:-1])
    assert "DVD-20260717-039" in "".join(pages)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) absent")
def test_pdftotext_reads_the_japanese(tmp_path: Path) -> None:
    """poppler maps the CID fonts back to Japanese text."""
    out = _render(tmp_path, _entries(tmp_path))
    done = subprocess.run(["pdftotext", out, "-"], capture_output=True, check=True)
    text = _squeezed(done.stdout.decode("utf-8"))
    for expected in (
        "確認書",
        "媒体持出",
        "通知書交付",
        "媒体返却",
        "山田太郎",
        "DVD-20260715-001",
    ):
        assert expected in text, expected


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) absent")
def test_pdftoppm_renders_the_report(tmp_path: Path) -> None:
    """poppler renders the page without errors to a non-trivial image."""
    out = _render(tmp_path, _entries(tmp_path))
    done = subprocess.run(
        ["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", out, tmp_path / "page"],
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    (image,) = tmp_path.glob("page*.png")
    assert image.stat().st_size > 10_000


def test_csv_has_bom_bilingual_header_and_one_row_per_event(tmp_path: Path) -> None:
    """UTF-8 with BOM, the PDF's columns, JST times, every entry a row."""
    entries = _entries(tmp_path)
    out = tmp_path / "report.csv"
    ledger_report.write_csv(out, entries)
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(data.decode("utf-8-sig").splitlines()))
    assert table[0] == list(ledger_report.CSV_HEADER)
    assert table[0][1] == "日時 (Date/time, JST)"
    assert [row[0] for row in table[1:]] == [str(e["seq"]) for e in entries]
    media_out = table[3]
    assert media_out[1] == "2026-07-15 10:30:00"
    assert media_out[2] == "媒体持出 (disc out)"
    assert "DVD-20260715-001" in media_out
    assert "株式会社印刷センター / 山田 太郎" in media_out
    assert out.stat().st_mode & 0o777 == 0o600


def test_csv_cells_cannot_start_a_formula(tmp_path: Path) -> None:
    """A cabinet typed as '=…' is written as text, not a spreadsheet formula."""
    out = tmp_path / "report.csv"
    ledger_report.write_csv(out, _entries(tmp_path))
    cells = [cell for row in csv.reader(out.read_text("utf-8-sig").splitlines()) for cell in row]
    assert not [cell for cell in cells if cell.startswith("=")]
    assert "'=C棚" in cells


def test_back_filled_event_says_when_it_was_recorded() -> None:
    """An entry recorded days after its event carries a 'recorded' note."""
    entry = {
        "seq": 3,
        "event": "media-return",
        "batch": BATCH,
        "time": "2026-07-20T09:00:00+09:00",
        "at": "2026-07-18T09:00:00+09:00",
        "serials": ["D-1"],
        "returned_by": "山田",
        "condition": "ok",
    }
    (row,) = ledger_report.rows([entry])
    assert "記録 (recorded) 2026-07-20 09:00" in row.cells[-1]
    assert row.at == datetime.fromisoformat("2026-07-18T09:00:00+09:00")


def test_column_widths_fill_the_landscape_page() -> None:
    """The columns add up to the printable width, so the table never overflows."""
    total = sum(width for _, _, width in ledger_report.COLUMNS)
    assert total == pytest.approx(ledger_report.CONTENT_WIDTH, abs=0.5)


def test_long_words_are_broken_to_fit_their_cell() -> None:
    """A serial or hash longer than its cell is broken, never drawn past the border."""
    lines = ledger_report._wrap_cell("X" * 60, 40.0)
    assert len(lines) > 1
    assert all(
        ledger_report.text_width(line, size=ledger_report.CELL_SIZE) <= 40.0 for line in lines
    )
    assert "".join(lines) == "X" * 60
