"""The 取扱責任者及び取扱者名簿 (roster of managers and handlers): a PDF for the ward, and CSV.

Managers (取扱責任者) come first, then handlers (取扱者), each by staff name;
disabled members stay on the roster, marked 停止 (disabled) with the date, so
the ward sees everyone who has had access to its data. The PDF is A4 portrait,
Japanese with the English term beside every heading, times in JST, and a page
number on every page. The CSV has the same columns (UTF-8 with BOM, CRLF; times
ISO 8601 with their +09:00 offset) so spreadsheet programs read the Japanese.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from reportlab.pdfgen.canvas import Canvas

from gateway.pdf import (
    JST,
    LATIN,
    MARGIN,
    PAGE_HEIGHT,
    PAGE_WIDTH,
    draw_bilingual,
    draw_text,
    format_jst,
    register_fonts,
    text_width,
    wrap,
    write_pdf,
)
from gateway.report_table import HEADING_GREY, Grid
from gateway.report_table import write_csv as write_table_csv
from gateway.state import StaffMember

TITLE_JA = "取扱責任者及び取扱者名簿"
TITLE_EN = "Roster of responsible managers and handlers"
STATEMENT = (
    "委託業務において個人情報を取り扱う者は、以下のとおりです。",
    "The following persons handle personal information in the entrusted work.",
)

ROLE_LABELS = {"manager": ("取扱責任者", "manager"), "handler": ("取扱者", "handler")}
STATUS_LABELS = {True: ("有効", "active"), False: ("停止", "disabled")}

COLUMNS: tuple[tuple[str, str, float], ...] = (
    # Japanese heading, English heading, width in points (sum: the portrait content width)
    ("番号", "No.", 26),
    ("区分", "Role", 62),
    ("氏名", "Full name", 120),
    ("職員名", "Staff name", 86),
    ("状態", "Status", 40),
    ("登録日", "Since", 88),
    ("停止日", "Disabled", 0),  # the rest of the content width
)
CSV_HEADER = tuple(f"{ja} ({en})" for ja, en, _ in COLUMNS)

CONTENT_WIDTH = float(PAGE_WIDTH) - 2 * MARGIN
WIDTHS = (*(w for _, _, w in COLUMNS[:-1]), CONTENT_WIDTH - sum(w for _, _, w in COLUMNS[:-1]))
HEADER_HEIGHT = 26.0
CELL_SIZE = 9.0
CELL_LEADING = 11.5
CELL_PAD = 4.0
FOOTER_Y = MARGIN - 16

GRID = Grid(MARGIN, WIDTHS, pad=CELL_PAD, leading=CELL_LEADING)


def ordered(members: Sequence[StaffMember]) -> list[StaffMember]:
    """The roster's order: managers, then handlers, each by staff name."""
    rank = {role: i for i, role in enumerate(ROLE_LABELS)}
    return sorted(members, key=lambda m: (rank.get(m.role, len(rank)), m.name))


def cells(member: StaffMember, number: int, *, bilingual: bool) -> list[str]:
    """One member's cells; with ``bilingual`` role and status carry the English term too."""
    role = ROLE_LABELS.get(member.role, (member.role, member.role))
    status = STATUS_LABELS[member.active]
    return [
        str(number),
        f"{role[0]} ({role[1]})" if bilingual else role[0],
        member.full_name,
        member.name,
        f"{status[0]} ({status[1]})" if bilingual else status[0],
        _date(member.created_at),
        "" if member.active else _date(member.updated_at),
    ]


def write_csv(out: Path, members: Sequence[StaffMember]) -> None:
    """Write the roster as CSV (:func:`gateway.report_table.write_csv`: BOM, atomic, 0600).

    Dates are ISO 8601 with the JST offset.

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    rows = []
    for number, member in enumerate(ordered(members), 1):
        row = cells(member, number, bilingual=True)
        row[5] = _iso(member.created_at)
        row[6] = "" if member.active else _iso(member.updated_at)
        rows.append(row)
    write_table_csv(out, CSV_HEADER, rows)


def render_pdf(
    out: Path, members: Sequence[StaffMember], *, prepared_at: datetime, site: str = ""
) -> None:
    """Write the roster PDF (A4 portrait) atomically, mode 0600.

    Args:
        out: The PDF file.
        members: Every staff member (active and disabled).
        prepared_at: When the roster was made (aware; shown in JST).
        site: The print site's name or computer, shown when given.

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
        ValueError: ``prepared_at`` is naive.
    """
    register_fonts()  # the layout measures Japanese text
    rows = [_lay_out(cells(m, n, bilingual=False)) for n, m in enumerate(ordered(members), 1)]
    managers = sum(1 for m in members if m.active and m.role == "manager")
    handlers = sum(1 for m in members if m.active and m.role == "handler")
    pages = _paginate([_height(row) for row in rows])

    def draw(canvas: Canvas) -> None:
        for index, page in enumerate(pages):
            if index == 0:
                y = _draw_title(canvas, prepared_at, site, managers, handlers)
            else:
                y = PAGE_HEIGHT - MARGIN - 12
                draw_bilingual(
                    canvas, MARGIN, y, f"{TITLE_JA}(続き)", f"{TITLE_EN}, continued", size=10
                )
                y -= 14
            y = _draw_header_row(canvas, y)
            for i in page:
                y = _draw_row(canvas, y, rows[i])
            if not rows and index == 0:
                draw_bilingual(canvas, MARGIN, y - 16, "登録者なし", "nobody registered", size=9)
            _draw_footer(canvas, index + 1, len(pages), prepared_at)
            canvas.showPage()

    write_pdf(out, draw, title=f"{TITLE_JA} ({TITLE_EN})", subject=TITLE_EN)


# --- layout -------------------------------------------------------------------------------

_TOP_FIRST = 130.0
"""Height above the table on the first page (title, statement, details)."""
_TOP_REST = 40.0


def _lay_out(row: Sequence[str]) -> list[list[str]]:
    """Each cell's lines at its column's width (long full names wrap)."""
    return [
        wrap(cell, size=CELL_SIZE, width=width - 2 * CELL_PAD) if cell else [""]
        for cell, width in zip(row, WIDTHS, strict=True)
    ]


def _height(row: Sequence[Sequence[str]]) -> float:
    return max(len(lines) for lines in row) * CELL_LEADING + 2 * CELL_PAD


def _paginate(heights: Sequence[float]) -> list[list[int]]:
    """Row indexes per page: below the title on the first page, the short heading after."""
    pages: list[list[int]] = [[]]
    room = _room(_TOP_FIRST)
    for index, height in enumerate(heights):
        if height > room and pages[-1]:
            pages.append([])
            room = _room(_TOP_REST)
        pages[-1].append(index)
        room -= height
    return pages


def _room(top: float) -> float:
    return float(PAGE_HEIGHT) - 2 * MARGIN - top - HEADER_HEIGHT - 20


def _draw_title(
    canvas: Canvas, prepared_at: datetime, site: str, managers: int, handlers: int
) -> float:
    y = PAGE_HEIGHT - MARGIN - 16
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=16, centred=True)
    y -= 30
    draw_text(canvas, MARGIN, y, STATEMENT[0], size=10)
    y -= 13
    canvas.setFont(LATIN, 8)
    canvas.drawString(MARGIN, y, STATEMENT[1])
    y -= 22
    details = [
        ("作成日時", "Prepared", format_jst(prepared_at)),
        ("人数", "Active members", f"取扱責任者 {managers} 名 / 取扱者 {handlers} 名"),
    ]
    if site:
        details.append(("作成場所", "Prepared at", site))
    for ja, en, value in details:
        end = draw_bilingual(canvas, MARGIN, y, ja, en, size=9)
        draw_text(canvas, max(end + 8, MARGIN + 150), y, value, size=9)
        y -= 15
    return float(PAGE_HEIGHT) - MARGIN - _TOP_FIRST


def _draw_header_row(canvas: Canvas, top: float) -> float:
    x = MARGIN
    GRID.shade(canvas, top, HEADER_HEIGHT, HEADING_GREY)
    for (ja, en, _), width in zip(COLUMNS, WIDTHS, strict=True):
        draw_text(canvas, x + CELL_PAD, top - 11, ja, size=8.5)
        canvas.setFont(LATIN, 6.5)
        canvas.drawString(x + CELL_PAD, top - 21, en)
        x += width
    GRID.rule(canvas, top, HEADER_HEIGHT)
    return top - HEADER_HEIGHT


def _draw_row(canvas: Canvas, top: float, row: Sequence[Sequence[str]]) -> float:
    height = _height(row)
    x = MARGIN
    for lines, width in zip(row, WIDTHS, strict=True):
        y = top - CELL_PAD - CELL_SIZE
        for line in lines:
            draw_text(canvas, x + CELL_PAD, y, line, size=CELL_SIZE)
            y -= CELL_LEADING
        x += width
    GRID.rule(canvas, top, height)
    return top - height


def _draw_footer(canvas: Canvas, page: int, pages: int, prepared_at: datetime) -> None:
    stamp = f"{format_jst(prepared_at)}  {page} / {pages}"
    draw_text(canvas, MARGIN, FOOTER_Y, TITLE_JA, size=7)
    width = text_width(stamp, size=7)
    draw_text(canvas, PAGE_WIDTH - MARGIN - width, FOOTER_Y, stamp, size=7)


def _date(moment: datetime) -> str:
    local = moment.astimezone(JST)
    return f"{local.year}年{local.month}月{local.day}日"


def _iso(moment: datetime) -> str:
    return moment.astimezone(JST).isoformat(timespec="seconds")
