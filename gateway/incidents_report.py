"""The 事故報告書 (incident report): a PDF for the ward, and the same rows as CSV.

One row per :class:`gateway.incidents.Incident`, oldest first: when (JST),
what kind (Japanese label with its English term), the account or staff
member, the ward (tenant), the batch, the source address and the detail.
The PDF is A4 landscape; above the table it states the period, the number of
incidents and the audit log's verification verdict with the signer's
fingerprint (a log that did not verify is itself the first thing to report),
and every page carries that verdict in its footer. The CSV (UTF-8 with BOM,
so spreadsheet programs read the Japanese) has the same columns plus the
audit record's seq; its times are ISO 8601 with the +09:00 offset. Both are
written atomically, mode 0600.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A4, landscape
from reportlab.pdfgen.canvas import Canvas

from gateway.incidents import Findings, Incident
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

TITLE_JA = "事故報告書"
TITLE_EN = "Incident report"
SUBTITLE = (
    "個人情報の取扱いに係る事故等の報告",
    "Incidents in the handling of personal data, for reporting to the ward at once",
)

KIND_LABELS: dict[str, tuple[str, str]] = {
    "account_locked_out": ("アカウントロック", "account locked out"),
    "brute_force": ("総当たり攻撃", "brute-force burst"),
    "path_refused": ("不正パス拒否", "path trick refused"),
    "upload_rejected": ("受信拒否", "upload rejected"),
    "quarantine": ("隔離", "quarantined"),
    "forward_failed": ("転送失敗", "forwarding failed"),
    "no_route": ("転送先未設定", "no forward route"),
    "conflict": ("バッチ重複", "conflicting batch"),
    "custody_refused": ("取扱拒否", "custody action refused"),
    "reprint": ("再印刷", "reprint"),
    "erasure_certificate_rejected": ("消去証明書拒否", "erasure certificate rejected"),
    "audit_tampered": ("監査ログ改ざん", "audit log tampered"),
}
"""Japanese label and English term of each incident kind (others: the kind itself)."""

COLUMNS: tuple[tuple[str, str, float], ...] = (
    # Japanese heading, English heading, width in points (sum: the landscape content width)
    ("日時", "Time, JST", 74),
    ("種別", "Kind", 92),
    ("利用者・取扱者", "User / actor", 78),
    ("区", "Tenant", 60),
    ("バッチ番号", "Batch", 104),
    ("接続元", "Source", 84),
    ("詳細", "Detail", 265.89),
)
CSV_HEADER = (
    *(f"{ja} ({en})" for ja, en, _ in COLUMNS[:2]),
    "種別コード (Kind code)",
    *(f"{ja} ({en})" for ja, en, _ in COLUMNS[2:]),
    "監査記録番号 (Audit seq)",
)

_PAGE_SIZE: tuple[float, float] = landscape(A4)
PAGE_WIDTH, PAGE_HEIGHT = _PAGE_SIZE
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CELL_SIZE = 7.5
CELL_LEADING = 9.5
CELL_PAD = 2.5
MAX_CELL_LINES = 14
FOOTER_HEIGHT = 10.0
_TOP_FIRST = 165.0
"""Title (78), the details (5 rows of 15) and a gap, on page 1."""
_TOP_OTHER = 40.0
GRID = Grid(MARGIN, [width for _, _, width in COLUMNS], pad=CELL_PAD, leading=CELL_LEADING)

_LIGHT = Color(0.97, 0.97, 0.97)
_ALERT = Color(1.0, 0.86, 0.86)


@dataclass(frozen=True)
class Context:
    """What the report states above the table and in its footer."""

    findings: Findings
    since: datetime | None
    printed_at: datetime
    log: Path


def kind_label(kind: str) -> tuple[str, str]:
    """The Japanese label and English term of an incident kind."""
    return KIND_LABELS.get(kind, (kind, kind))


def write_csv(out: Path, incidents: Sequence[Incident]) -> None:
    """Write the rows as CSV (:func:`gateway.report_table.write_csv`: BOM, atomic, 0600).

    Raises:
        OSError: The file could not be written; ``out`` is left as it was.
    """
    write_table_csv(
        out,
        CSV_HEADER,
        (
            [
                row.at.astimezone(JST).isoformat(timespec="seconds"),
                kind_label(row.kind)[0],
                row.kind,
                row.user,
                row.tenant,
                row.batch,
                row.source,
                row.detail,
                "" if row.seq is None else str(row.seq),
            ]
            for row in incidents
        ),
    )


def render_pdf(out: Path, context: Context) -> None:
    """Write the 事故報告書 to ``out`` (A4 landscape, atomically, mode 0600).

    Raises:
        OSError: The file could not be written; ``out`` is left as it was.
    """
    rows = context.findings.incidents

    def draw(canvas: Canvas) -> None:
        canvas.setPageSize((PAGE_WIDTH, PAGE_HEIGHT))
        header = [heading_lines(ja, en, width - 2 * CELL_PAD) for ja, en, width in COLUMNS]
        header_h = max(len(lines) for lines in header) * CELL_LEADING + 2 * CELL_PAD
        laid = [_lay_out(row) for row in rows] or [_nothing()]
        pages = _paginate([height for height, _ in laid], header_h)
        for number, indexes in enumerate(pages, 1):
            if number == 1:
                _draw_title(canvas, context.printed_at)
                _draw_details(canvas, PAGE_HEIGHT - MARGIN - 78, context)
                y = PAGE_HEIGHT - MARGIN - _TOP_FIRST
            else:
                y = _draw_continued(canvas)
            y = GRID.heading_row(canvas, y, header, header_h)
            for i in indexes:
                alert = bool(rows) and rows[i].kind == "audit_tampered"
                y = _draw_row(canvas, y, laid[i], shade=_ALERT if alert else _stripe(i))
            _draw_footer(canvas, context.findings, number, len(pages))
            canvas.showPage()

    write_pdf(out, draw, title=f"{TITLE_JA} ({TITLE_EN})", subject=TITLE_EN)


# --- rows ---------------------------------------------------------------------------------


def _cells(row: Incident) -> tuple[str, ...]:
    ja, en = kind_label(row.kind)
    day, _, time = format_jst(row.at).partition(" ")
    return (
        f"{day}\n{time}",
        f"{ja}\n({en})",
        row.user,
        row.tenant,
        row.batch,
        row.source,
        row.detail,
    )


def _nothing() -> tuple[float, list[list[str]]]:
    cells: list[list[str]] = [[] for _ in COLUMNS]
    cells[1] = ["該当なし", "(none)"]
    return 2 * CELL_LEADING + 2 * CELL_PAD, cells


def _lay_out(row: Incident) -> tuple[float, list[list[str]]]:
    """Row height and each cell's wrapped lines."""
    cells = []
    for text, (_, _, width) in zip(_cells(row), COLUMNS, strict=True):
        lines = wrap_cell(text, width - 2 * CELL_PAD, size=CELL_SIZE) if text else []
        if len(lines) > MAX_CELL_LINES:
            lines = [*lines[: MAX_CELL_LINES - 1], "…"]
        cells.append(lines)
    height = max(1, *(len(c) for c in cells)) * CELL_LEADING + 2 * CELL_PAD
    return height, cells


def _paginate(heights: Sequence[float], header_h: float) -> list[list[int]]:
    """Row indexes per page (every page has at least one row)."""
    bottom = MARGIN + FOOTER_HEIGHT
    pages: list[list[int]] = [[]]
    y = PAGE_HEIGHT - MARGIN - _TOP_FIRST - header_h
    for i, height in enumerate(heights):
        if pages[-1] and y - height < bottom:
            pages.append([])
            y = PAGE_HEIGHT - MARGIN - _TOP_OTHER - header_h
        pages[-1].append(i)
        y -= height
    return pages


def _stripe(i: int) -> Color | None:
    return _LIGHT if i % 2 else None


# --- drawing ------------------------------------------------------------------------------


def _draw_title(canvas: Canvas, printed_at: datetime) -> None:
    top = PAGE_HEIGHT - MARGIN
    printed = format_jst(printed_at)
    label = ("出力日時", "Printed")
    label_w = text_width(label[0], size=8) + text_width(f" ({label[1]}) ", size=6.4)
    x = PAGE_WIDTH - MARGIN - text_width(printed, size=8.5) - label_w
    x = draw_bilingual(canvas, x, top - 10, *label, size=8)
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


def _draw_details(canvas: Canvas, y: float, context: Context) -> None:
    findings = context.findings
    period = "全期間 (whole log)"
    if context.since is not None:
        period = f"{format_jst(context.since)} 以降 (since)"
    verdict = "正常 (intact)" if findings.intact else "改ざんの疑い (NOT intact)"
    pairs = (
        ("対象期間", "Period", period),
        ("件数", "Incidents", str(len(findings.incidents))),
        ("監査ログ", "Audit log", str(context.log)),
        ("監査ログ検証", "Audit log check", f"{verdict}  {findings.verification}"),
        ("署名鍵", "Signed by", findings.signer),
    )
    row_h, label_w = 15.0, 128.0
    canvas.setLineWidth(0.6)
    for ja, en, value in pairs:
        canvas.setFillColor(HEADING_GREY if findings.intact or ja != "監査ログ検証" else _ALERT)
        canvas.rect(MARGIN, y - row_h, label_w, row_h, stroke=0, fill=1)
        canvas.setFillColor(black)
        draw_bilingual(canvas, MARGIN + 5, y - row_h + 4.5, ja, en, size=8)
        room = CONTENT_WIDTH - label_w - 12
        shown = wrap_cell(value, room, size=CELL_SIZE)[0] if value else ""
        draw_text(canvas, MARGIN + label_w + 6, y - row_h + 4.5, shown, size=8.5)
        canvas.rect(MARGIN, y - row_h, CONTENT_WIDTH, row_h)
        y -= row_h


def _draw_continued(canvas: Canvas) -> float:
    y = PAGE_HEIGHT - MARGIN - 12
    end = draw_bilingual(canvas, MARGIN, y, TITLE_JA, TITLE_EN, size=12)
    draw_text(canvas, end + 12, y, "（続き）", size=10)
    return PAGE_HEIGHT - MARGIN - _TOP_OTHER


def _draw_row(
    canvas: Canvas, y: float, laid: tuple[float, list[list[str]]], *, shade: Color | None
) -> float:
    height, cells = laid
    if shade is not None:
        GRID.shade(canvas, y, height, shade)
    x = MARGIN
    for lines, (_, _, width) in zip(cells, COLUMNS, strict=True):
        baseline = y - CELL_PAD - 7.0
        for line in lines:
            draw_text(canvas, x + CELL_PAD, baseline, line, size=CELL_SIZE)
            baseline -= CELL_LEADING
        x += width
    GRID.rule(canvas, y, height)
    return y - height


def _draw_footer(canvas: Canvas, findings: Findings, number: int, total: int) -> None:
    y = MARGIN - 6
    canvas.setLineWidth(0.4)
    canvas.line(MARGIN, y + 10, PAGE_WIDTH - MARGIN, y + 10)
    end = draw_text(canvas, MARGIN, y, "監査ログ (Audit log) ", size=6.5)
    verdict = findings.verification if findings.intact else f"NOT intact: {findings.verification}"
    canvas.setFont(LATIN, 6.5)
    canvas.drawString(end, y, f"{verdict[:150]}   signed by {findings.signer}")
    canvas.drawRightString(PAGE_WIDTH - MARGIN, y, f"{TITLE_EN}   {number} / {total}")
