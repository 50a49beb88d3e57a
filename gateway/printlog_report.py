"""The 印刷記録簿 (print log) of one batch: a PDF for the ward, and the same table as CSV.

Every recorded print of the batch is one row, oldest first: the source computer
(印刷元コンピュータ名), the time in JST (印刷日時), the file (印刷ファイル名),
the printer (印刷先プリンタ名), the sheets (印刷枚数), the handler (取扱者) and,
for a reprint, its reason (再印刷理由). A reprint — the second or later print of
the same file — is highlighted: on the PDF its row is shaded and marked ``※``
with the print's number; in the CSV the ``reprint`` column says ``yes``. Totals
follow the table: prints and sheets, and how many of them were reprints.

The PDF (A4 landscape, Japanese with the English term beside every heading)
shows above the table the batch, the tenant and each opening of the batch (who,
when, how the passphrase arrived, the notice serial, the reason for a reopening).
The CSV is UTF-8 with a BOM (spreadsheet programs then read the Japanese),
times ISO 8601 with the JST offset, cells that a spreadsheet would run as a
formula prefixed with ``'``. Both are written atomically, mode 0600.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A4, landscape
from reportlab.pdfgen.canvas import Canvas

from gateway.pdf import (
    JST,
    LATIN,
    MARGIN,
    MINCHO,
    draw_bilingual,
    draw_text,
    format_jst,
    text_width,
    write_pdf,
)
from gateway.report_table import HEADING_GREY, Grid, heading_lines, wrap_cell
from gateway.report_table import write_csv as write_table_csv
from gateway.state import OpenRecord, PrintRecord

TITLE_JA = "印刷記録簿"
TITLE_EN = "Print log"
SUBTITLE = (
    "個人情報を含む印刷データの印刷及び再印刷の記録",
    "Every print and reprint of the batch's personal data, as recorded at the print site",
)
REPRINT_MARK = "※"
LEGEND = (
    f"{REPRINT_MARK} 網掛けの行は再印刷 (同一ファイルの2回目以降の印刷) です。",
    "Shaded rows marked ※ are reprints (a second or later print of the same file).",
)

COLUMNS: tuple[tuple[str, str, float], ...] = (
    # Japanese heading, English heading, width in points (sum: the landscape content width)
    ("連番", "No.", 30),
    ("印刷日時", "Printed, JST", 70),
    ("印刷元コンピュータ名", "Source computer", 92),
    ("印刷ファイル名", "File", 124),
    ("印刷先プリンタ名", "Printer", 100),
    ("印刷枚数", "Sheets", 50),
    ("取扱者", "Handler", 82),
    ("再印刷", "Reprint", 52),
    ("再印刷理由", "Reprint reason", 157.89),
)
CSV_HEADER = (
    "連番 (No.)",
    "印刷日時 (Printed, JST)",
    "印刷元コンピュータ名 (Source computer)",
    "印刷ファイル名 (File)",
    "印刷先プリンタ名 (Printer)",
    "印刷枚数 (Sheets)",
    "取扱者 (Handler)",
    "回数 (Occurrence)",
    "reprint",
    "再印刷理由 (Reprint reason)",
)
VIA_LABELS = {
    "hand": ("手渡し", "by hand"),
    "registered-mail": ("簡易書留", "registered mail"),
    "phone": ("電話", "by phone"),
}

_PAGE_SIZE: tuple[float, float] = landscape(A4)
PAGE_WIDTH, PAGE_HEIGHT = _PAGE_SIZE
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CELL_SIZE = 7.5
CELL_LEADING = 9.5
CELL_PAD = 2.5
MAX_CELL_LINES = 8
FOOTER_HEIGHT = 10.0
TOTALS_HEIGHT = 62.0
"""The totals box (two rows) and the legend under the table."""
_TOP_OTHER = 40.0
_MAX_OPENINGS_SHOWN = 4
GRID = Grid(MARGIN, [width for _, _, width in COLUMNS], pad=CELL_PAD, leading=CELL_LEADING)

_REPRINT_SHADE = Color(1.0, 0.90, 0.72)


@dataclass(frozen=True)
class PrintReport:
    """Everything the print log of one batch shows."""

    batch_id: str
    tenant: str
    opens: tuple[OpenRecord, ...]
    prints: tuple[PrintRecord, ...]
    full_names: Mapping[str, str]
    """Staff name → full name, for the handler column."""
    printed_at: datetime


@dataclass(frozen=True)
class Totals:
    """Counts over the whole print log."""

    prints: int
    sheets: int
    reprints: int
    reprint_sheets: int


def totals(prints: Sequence[PrintRecord]) -> Totals:
    """Prints and sheets in all, and how many were reprints."""
    again = [p for p in prints if p.occurrence > 1]
    return Totals(
        prints=len(prints),
        sheets=sum(p.sheets for p in prints),
        reprints=len(again),
        reprint_sheets=sum(p.sheets for p in again),
    )


def write_csv(out: Path, report: PrintReport) -> None:
    """Write the print log as CSV, then a totals row (:func:`gateway.report_table.write_csv`).

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    sums = totals(report.prints)
    rows = [
        [
            str(number),
            p.printed_at.astimezone(JST).isoformat(timespec="seconds"),
            p.computer,
            p.file_name,
            p.printer,
            str(p.sheets),
            _handler(p.handler, report.full_names, sep=" "),
            str(p.occurrence),
            "yes" if p.occurrence > 1 else "no",
            p.reason or "",
        ]
        for number, p in enumerate(report.prints, 1)
    ]
    rows.append(
        ["合計 (total)", "", "", f"{sums.prints} prints", "", str(sums.sheets), "", "",
         f"{sums.reprints} reprints ({sums.reprint_sheets} sheets)", ""]
    )  # fmt: skip
    write_table_csv(out, CSV_HEADER, rows)


def render_pdf(out: Path, report: PrintReport) -> None:
    """Write the batch's 印刷記録簿 to ``out`` (A4 landscape, atomically, mode 0600).

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """

    def draw(canvas: Canvas) -> None:
        canvas.setPageSize((PAGE_WIDTH, PAGE_HEIGHT))
        header = [heading_lines(ja, en, width - 2 * CELL_PAD) for ja, en, width in COLUMNS]
        header_h = max(len(lines) for lines in header) * CELL_LEADING + 2 * CELL_PAD
        laid = [_lay_out(number, p, report.full_names) for number, p in enumerate(report.prints, 1)]
        top_first = _top_first(report)
        pages = _paginate([h for h, _ in laid], header_h, top_first)
        for number, indexes in enumerate(pages, 1):
            if number == 1:
                _draw_title(canvas, report)
                _draw_details(canvas, PAGE_HEIGHT - MARGIN - 72, report)
                y = PAGE_HEIGHT - MARGIN - top_first
            else:
                y = _draw_continued(canvas, report.batch_id)
            if indexes or number == 1:
                y = GRID.heading_row(canvas, y, header, header_h)
            for i in indexes:
                y = _draw_row(canvas, y, laid[i], reprint=report.prints[i].occurrence > 1)
            if number == len(pages):
                _draw_totals(canvas, y - 8, totals(report.prints))
            _draw_footer(canvas, report.batch_id, number, len(pages))
            canvas.showPage()

    write_pdf(
        out,
        draw,
        title=f"{TITLE_JA} ({TITLE_EN}) {report.batch_id}",
        subject=report.batch_id,
        author="lgwan-gateway print site",
    )


# --- cells ------------------------------------------------------------------------------------


def _handler(name: str, full_names: Mapping[str, str], *, sep: str) -> str:
    full = full_names.get(name, "")
    return f"{full}{sep}({name})" if full else name


def _when(at: datetime) -> str:
    """``2026年7月15日`` and ``10:32 JST`` on two lines."""
    day, _, time = format_jst(at).partition(" ")
    return f"{day}\n{time}"


def _cells(number: int, p: PrintRecord, full_names: Mapping[str, str]) -> tuple[str, ...]:
    reprint = p.occurrence > 1
    return (
        f"{REPRINT_MARK}{number}" if reprint else str(number),
        _when(p.printed_at),
        p.computer,
        p.file_name,
        p.printer,
        f"{p.sheets:,}",
        _handler(p.handler, full_names, sep="\n"),
        f"{REPRINT_MARK} {p.occurrence}回目\n(print {p.occurrence})" if reprint else "",
        p.reason or "",
    )


def _lay_out(
    number: int, p: PrintRecord, full_names: Mapping[str, str]
) -> tuple[float, list[list[str]]]:
    """Row height and each cell's wrapped lines."""
    cells = []
    for text, (_, _, width) in zip(_cells(number, p, full_names), COLUMNS, strict=True):
        lines = wrap_cell(text, width - 2 * CELL_PAD, size=CELL_SIZE) if text else []
        if len(lines) > MAX_CELL_LINES:
            lines = [*lines[: MAX_CELL_LINES - 1], "…"]
        cells.append(lines)
    height = max(1, *(len(c) for c in cells)) * CELL_LEADING + 2 * CELL_PAD
    return height, cells


# --- layout -----------------------------------------------------------------------------------


def _detail_rows(report: PrintReport) -> list[tuple[str, str, str]]:
    """The label/value rows above the table: batch, tenant, then each opening."""
    rows = [
        ("バッチ番号", "Batch", report.batch_id),
        ("委託元", "Tenant", report.tenant or "—"),
    ]
    shown = report.opens[-_MAX_OPENINGS_SHOWN:]
    skipped = len(report.opens) - len(shown)
    for index, record in enumerate(shown, skipped + 1):
        ja, en = VIA_LABELS.get(record.via, (record.via, record.via))
        who = _handler(record.handler, report.full_names, sep=" ")
        value = f"{format_jst(record.opened_at)}  {who}  通知書 {ja} ({en}) {record.notice_serial}"
        if record.reason:
            value += f"  理由 (reason): {record.reason}"
        rows.append((f"開封 {index}", f"Opened #{index}", value))
    return rows


def _top_first(report: PrintReport) -> float:
    """Height above the table on page 1: the title (72), the details, a gap."""
    return 72 + 15 * len(_detail_rows(report)) + 10


def _paginate(heights: Sequence[float], header_h: float, top_first: float) -> list[list[int]]:
    """Rows per page; the totals box stays on the page of the last row (or follows it)."""
    bottom = MARGIN + FOOTER_HEIGHT
    pages: list[list[int]] = []
    current: list[int] = []
    y = PAGE_HEIGHT - MARGIN - top_first - header_h
    for i, height in enumerate(heights):
        if current and y - height < bottom:
            pages.append(current)
            current = []
            y = PAGE_HEIGHT - MARGIN - _TOP_OTHER - header_h
        current.append(i)
        y -= height
    if y - 8 - TOTALS_HEIGHT >= bottom or not current:
        pages.append(current)
    elif len(current) > 1:
        pages.append(current[:-1])
        pages.append(current[-1:])
    else:  # one row so tall that it fills the page: the totals follow alone
        pages.append(current)
        pages.append([])
    return pages


# --- drawing ----------------------------------------------------------------------------------


def _draw_title(canvas: Canvas, report: PrintReport) -> None:
    top = PAGE_HEIGHT - MARGIN
    printed = format_jst(report.printed_at)
    label_w = text_width("出力日時", size=8) + text_width(" (Printed) ", size=6.4)
    x = PAGE_WIDTH - MARGIN - text_width(printed, size=8.5) - label_w
    x = draw_bilingual(canvas, x, top - 10, "出力日時", "Printed", size=8)
    draw_text(canvas, x + 4, top - 10, printed, size=8.5)
    y = top - 32
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=20, centred=True)
    y -= 16
    width = text_width(SUBTITLE[0], size=9, font=MINCHO)
    draw_text(canvas, PAGE_WIDTH / 2 - width / 2, y, SUBTITLE[0], size=9, font=MINCHO)
    canvas.setFont(LATIN, 7.5)
    canvas.drawCentredString(PAGE_WIDTH / 2, y - 11, SUBTITLE[1])
    canvas.setLineWidth(1)
    canvas.line(MARGIN, y - 18, PAGE_WIDTH - MARGIN, y - 18)


def _draw_details(canvas: Canvas, y: float, report: PrintReport) -> None:
    row_h, label_w = 15.0, 110.0
    canvas.setLineWidth(0.6)
    for ja, en, value in _detail_rows(report):
        canvas.setFillColor(HEADING_GREY)
        canvas.rect(MARGIN, y - row_h, label_w, row_h, stroke=0, fill=1)
        canvas.setFillColor(black)
        draw_bilingual(canvas, MARGIN + 5, y - row_h + 4.5, ja, en, size=8)
        inner = CONTENT_WIDTH - label_w - 12
        shown = wrap_cell(value, inner, size=CELL_SIZE)[0] if value else ""
        draw_text(canvas, MARGIN + label_w + 6, y - row_h + 4.5, shown, size=CELL_SIZE + 0.5)
        canvas.rect(MARGIN, y - row_h, CONTENT_WIDTH, row_h)
        y -= row_h


def _draw_continued(canvas: Canvas, batch: str) -> float:
    y = PAGE_HEIGHT - MARGIN - 12
    end = draw_bilingual(canvas, MARGIN, y, TITLE_JA, TITLE_EN, size=12)
    draw_text(canvas, end + 12, y, f"{batch}（続き）", size=10)
    return PAGE_HEIGHT - MARGIN - _TOP_OTHER


def _draw_row(
    canvas: Canvas, y: float, laid: tuple[float, list[list[str]]], *, reprint: bool
) -> float:
    height, cells = laid
    if reprint:
        GRID.shade(canvas, y, height, _REPRINT_SHADE)
    x = MARGIN
    for index, (lines, (_, _, width)) in enumerate(zip(cells, COLUMNS, strict=True)):
        baseline = y - CELL_PAD - 7.0
        for line in lines:
            if index == 5:  # sheets: right-aligned
                right = x + width - CELL_PAD - text_width(line, size=CELL_SIZE)
                draw_text(canvas, right, baseline, line, size=CELL_SIZE)
            else:
                draw_text(canvas, x + CELL_PAD, baseline, line, size=CELL_SIZE)
            baseline -= CELL_LEADING
        x += width
    GRID.rule(canvas, y, height)
    return y - height


def _draw_totals(canvas: Canvas, y: float, sums: Totals) -> None:
    row_h, label_w, value_w = 16.0, 150.0, 200.0
    rows = (
        (
            "印刷回数",
            "Prints",
            f"{sums.prints:,} 回",
            f"うち再印刷 (reprints) {sums.reprints:,} 回",
        ),
        (
            "印刷枚数合計",
            "Sheets in all",
            f"{sums.sheets:,} 枚",
            f"うち再印刷 (reprints) {sums.reprint_sheets:,} 枚",
        ),
    )
    canvas.setLineWidth(0.6)
    for ja, en, value, of_which in rows:
        canvas.setFillColor(HEADING_GREY)
        canvas.rect(MARGIN, y - row_h, label_w, row_h, stroke=0, fill=1)
        canvas.setFillColor(black)
        draw_bilingual(canvas, MARGIN + 5, y - row_h + 5, ja, en, size=8.5)
        draw_text(canvas, MARGIN + label_w + 6, y - row_h + 5, value, size=9)
        draw_text(canvas, MARGIN + label_w + 90, y - row_h + 5, of_which, size=8.5)
        canvas.rect(MARGIN, y - row_h, label_w + value_w + 90, row_h)
        y -= row_h
    draw_text(canvas, MARGIN, y - 12, LEGEND[0], size=8, font=MINCHO)
    draw_text(canvas, MARGIN, y - 22, LEGEND[1], size=7)  # ※ from the Japanese font


def _draw_footer(canvas: Canvas, batch: str, number: int, total: int) -> None:
    y = MARGIN - 6
    canvas.setLineWidth(0.4)
    canvas.line(MARGIN, y + 10, PAGE_WIDTH - MARGIN, y + 10)
    canvas.setFont(LATIN, 6.5)
    canvas.drawString(MARGIN, y, f"lgwan-gateway print-log report {batch}")
    canvas.drawRightString(PAGE_WIDTH - MARGIN, y, f"{TITLE_EN} / {batch}   {number} / {total}")
