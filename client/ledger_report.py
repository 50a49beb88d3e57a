"""The 確認書 (hand-over record) of one batch: a PDF to sign, and the same table as CSV.

Every ledger entry of the batch becomes one row, oldest first: when it happened
(JST), what happened, who handled it, content, quantity, the other party, the
method, the cabinet, the carrier, the serials and remarks. The PDF (A4
landscape) carries the batch details above the table, blank signature boxes for
both parties (区 and 委託先) after it, and on every page the ledger head it was
printed from (seq and hash) and the ward key's fingerprint, so the signed paper
pins the ledger as it stood. The CSV has the same columns (UTF-8 with BOM, so
spreadsheet programs read the Japanese).
"""

from __future__ import annotations

import contextlib
import csv
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.lib.pagesizes import A4, landscape
from reportlab.pdfgen.canvas import Canvas

from client import handover, ledger
from client.handover import event_time
from client.ledger import EVENT_DVD_CREATED
from client.pdf import (
    GOTHIC,
    JST,
    LATIN,
    MARGIN,
    MINCHO,
    PRIVATE_MODE,
    draw_bilingual,
    draw_text,
    format_jst,
    text_width,
    wrap,
    write_pdf,
)
from custody import ChainHead

TITLE_JA = "確認書"
TITLE_EN = "Hand-over record"
SUBTITLE = (
    "暗号化データ及びパスワード通知書の授受記録",
    "Record of the hand-over and return of encrypted data and password notices",
)
STATEMENT = (
    "上記のとおり授受したことを確認します。",
    "Both parties confirm the hand-overs and returns listed above.",
)

COLUMNS: tuple[tuple[str, str, float], ...] = (
    # Japanese heading, English heading, width in points (sum: the landscape content width)
    ("連番", "Seq", 24),
    ("日時", "Date/time, JST", 70),
    ("事象", "Event", 58),
    ("取扱者", "Handler", 56),
    ("内容", "Content", 84),
    ("数量", "Quantity", 56),
    ("受渡先", "Recipient", 82),
    ("方法", "Method", 56),
    ("保管庫", "Cabinet", 50),
    ("運搬者", "Carrier", 56),
    ("番号", "Serial", 92),
    ("備考", "Notes", 74),
)
CSV_HEADER = tuple(f"{ja} ({en})" for ja, en, _ in COLUMNS)

EVENT_LABELS = {
    ledger.EVENT_SEALED: ("暗号化", "sealed"),
    ledger.EVENT_SENT: ("LGWAN送信", "sent"),
    EVENT_DVD_CREATED: ("DVD作成", "disc made"),
    ledger.EVENT_MEDIA_OUT: ("媒体持出", "disc out"),
    ledger.EVENT_NOTICE_OUT: ("通知書交付", "notice out"),
    ledger.EVENT_MEDIA_RETURN: ("媒体返却", "disc returned"),
    ledger.EVENT_NOTICE_RETURN: ("通知書返却", "notice returned"),
    ledger.EVENT_DELIVERY: ("通知書納品", "notices delivered"),
    ledger.EVENT_ERASURE_VERIFIED: ("消去確認", "erasure verified"),
}
METHOD_LABELS = {
    "hand": ("手渡し", "by hand"),
    "registered-mail": ("簡易書留", "registered mail"),
    "phone": ("電話", "by phone"),
}

BACKFILL_NOTE_AFTER = timedelta(minutes=10)
"""An entry recorded this long after (or before) its event says when it was recorded."""

_PAGE_SIZE: tuple[float, float] = landscape(A4)
PAGE_WIDTH, PAGE_HEIGHT = _PAGE_SIZE
CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
CELL_SIZE = 7.5
CELL_LEADING = 9.5
CELL_PAD = 2.5
MAX_CELL_LINES = 12
FOOTER_HEIGHT = 10.0
"""Kept clear above the bottom margin; the footer line is drawn in the margin."""
SIGNATURE_HEIGHT = 92.0
SIGNATURE_GAP = 10.0
"""The confirmation sentence (20) and the two signature boxes."""

_GREY = Color(0.90, 0.90, 0.90)
_LIGHT = Color(0.97, 0.97, 0.97)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Row:
    """One ledger entry as the report shows it; lines within a cell separated by newlines."""

    seq: str
    at: datetime
    cells: tuple[str, ...]
    """Event … notes: every column after seq and date/time."""


def rows(entries: Sequence[Mapping[str, object]]) -> list[Row]:
    """The report's rows for a batch's entries, in ledger order."""
    return [_row(entry) for entry in entries]


def write_csv(out: Path, entries: Sequence[Mapping[str, object]]) -> None:
    """Write the table as CSV (UTF-8 with BOM, CRLF) atomically, mode 0600.

    Cells starting with a formula character are prefixed with ``'`` so a
    spreadsheet shows them as text.

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_HEADER)
            for row in rows(entries):
                when = f"{row.at.astimezone(JST):%Y-%m-%d %H:%M:%S}"
                cells = [row.seq, when, *(_one_line(c) for c in row.cells)]
                writer.writerow([_defang(cell) for cell in cells])
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(PRIVATE_MODE)
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def render_pdf(
    out: Path,
    entries: Sequence[Mapping[str, object]],
    *,
    batch: str,
    ward_name: str,
    head: ChainHead,
    signer: str,
    printed_at: datetime,
) -> None:
    """Write the batch's 確認書 to ``out`` (A4 landscape, atomically, mode 0600).

    Args:
        out: the PDF path; its directory must exist.
        entries: the batch's ledger entries, in order (verified by the caller).
        batch: the batch id.
        ward_name: the ward (区) printed at the top.
        head: the ledger head the entries were read at, printed on every page.
        signer: the ward key's fingerprint the ledger verified against.
        printed_at: when the report is made (aware).

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    table = rows(entries)
    sealed = handover.sealed_entry(entries) or {}

    def draw(canvas: Canvas) -> None:
        canvas.setPageSize((PAGE_WIDTH, PAGE_HEIGHT))
        header = [_header_cell(ja, en, width) for ja, en, width in COLUMNS]
        header_h = max(len(lines) for lines in header) * CELL_LEADING + 2 * CELL_PAD
        laid = [_lay_out(row) for row in table]
        pages = _paginate([h for h, _ in laid], header_h)
        total = len(pages)
        for number, (indexes, signature_here) in enumerate(pages, 1):
            if number == 1:
                y = _draw_title(canvas, ward_name, printed_at)
                _draw_details(canvas, y, batch, ward_name, sealed)
                y = PAGE_HEIGHT - MARGIN - _TOP_FIRST  # as _paginate assumed
            else:
                y = _draw_continued(canvas, batch)
            if indexes:
                y = _draw_header_row(canvas, y, header, header_h)
                for i in indexes:
                    y = _draw_row(canvas, y, laid[i], shaded=i % 2 == 1)
            if signature_here:
                _draw_signatures(canvas, y - SIGNATURE_GAP)
            _draw_footer(canvas, batch, head, signer, number, total)
            canvas.showPage()

    write_pdf(
        out,
        draw,
        title=f"{TITLE_JA} ({TITLE_EN}) {batch}",
        subject=batch,
        author=ward_name,
    )


def _row(entry: Mapping[str, object]) -> Row:
    event = str(entry.get("event"))
    at = event_time(entry)
    ja, en = EVENT_LABELS.get(event, (event, ""))
    content, quantity, party, method, notes = _describe(event, entry)
    if entry.get("note"):
        notes.append(str(entry["note"]))
    recorded = entry.get("time")
    if isinstance(recorded, str) and "at" in entry:
        recorded_at = datetime.fromisoformat(recorded)
        if abs(recorded_at - at) > BACKFILL_NOTE_AFTER:
            notes.append(f"記録 (recorded) {recorded_at.astimezone(JST):%Y-%m-%d %H:%M}")
    cells = (
        f"{ja}\n({en})" if en else ja,
        _str(entry.get("handler")),
        content,
        quantity,
        party,
        method,
        _str(entry.get("cabinet")),
        _str(entry.get("carrier")),
        "\n".join(_serials(event, entry)),
        "\n".join(notes),
    )
    return Row(_str(entry.get("seq")), at, cells)


def _describe(event: str, e: Mapping[str, object]) -> tuple[str, str, str, str, list[str]]:
    """Content, quantity, other party, method and notes of one entry."""
    recipient = "\n".join(_str(e.get(k)) for k in ("to_org", "to_person") if e.get(k))
    if event == ledger.EVENT_SEALED:
        quantity = f"{_num(e.get('file_count'))} ファイル\n{_num(e.get('record_total'))} 件"
        sha = _str(e.get("envelope_sha256"))[:12]
        return (
            f"{_str(e.get('notice_type'))} 印刷データ暗号化",
            quantity,
            "",
            "",
            [f"SHA-256 {sha}…"],
        )
    if event == ledger.EVENT_SENT:
        party = f"{_str(e.get('tenant'))}\n({_str(e.get('user'))})"
        return (
            "暗号化データ送信",
            f"{_num(e.get('size'))} bytes",
            party,
            "LGWAN-ASP",
            ["受領証 (receipt)"],
        )
    if event == ledger.EVENT_ERASURE_VERIFIED:
        sha = _str(e.get("certificate_sha256"))[:12]
        return (
            "データ消去証明書 検証",
            f"{_num(e.get('items'))} 件",
            "",
            "",
            [f"消去 (erased) {_str(e.get('erased_at'))}", f"SHA-256 {sha}…"],
        )
    if event == EVENT_DVD_CREATED:
        parts = e.get("parts") or len(_serials(event, e)) or 1
        discs = e.get("discs")
        images = [d for d in discs if isinstance(d, dict)] if isinstance(discs, list) else []
        notes = [f"SHA-256 {_str(d.get('sha256'))[:12]}…" for d in images]
        return f"DVDイメージ作成 ({_str(e.get('kind'))})", f"{_num(parts)} 枚", "", "", notes
    if event == ledger.EVENT_MEDIA_OUT:
        quantity = (
            f"{_num(e.get('discs'))} 枚\n{_num(e.get('files'))} ファイル\n"
            f"{_num(e.get('records'))} 件"
        )
        return _str(e.get("content")), quantity, recipient, "", []
    if event == ledger.EVENT_NOTICE_OUT:
        ja, en = METHOD_LABELS.get(_str(e.get("method")), (_str(e.get("method")), ""))
        notes = [f"追跡番号 (tracking) {_str(e['tracking'])}"] if e.get("tracking") else []
        return "パスワード通知書", "1 通", recipient, f"{ja}\n({en})", notes
    if event in handover.RETURN_EVENTS:
        media = event == ledger.EVENT_MEDIA_RETURN
        content = "ディスク返却" if media else "パスワード通知書返却"
        count = len(_serials(event, e))
        quantity = f"{count} 枚" if media else f"{count} 通"
        party = f"返却者 (by)\n{_str(e.get('returned_by'))}"
        return content, quantity, party, "", [f"状態 (condition) {_str(e.get('condition'))}"]
    if event == ledger.EVENT_DELIVERY:
        sender = "\n".join(_str(e.get(k)) for k in ("from_org", "from_person") if e.get(k))
        party = f"納品元 (from)\n{sender}" if sender else ""
        short = e.get("shortfall")
        note = f"不足 (shortfall) {_num(short)}" if short else "不足なし (no shortfall)"
        return "封入封緘済み通知書", f"{_num(e.get('quantity'))} 通", party, "", [note]
    return "", "", "", "", []


def _serials(event: str, entry: Mapping[str, object]) -> list[str]:
    if event == EVENT_DVD_CREATED:
        value = entry.get(handover.FIELD_SERIALS)
        return [str(v) for v in value] if isinstance(value, list) else []
    return handover.item_serials(entry)


def _str(value: object) -> str:
    return "" if value is None else str(value)


def _num(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else _str(value)


def _one_line(cell: str) -> str:
    """A cell's lines joined for CSV: an English gloss ``(…)`` stays beside its Japanese."""
    joined = ""
    for line in cell.splitlines():
        sep = " " if line.startswith("(") else " / "
        joined = f"{joined}{sep}{line}" if joined else line
    return joined


def _defang(cell: str) -> str:
    return f"'{cell}" if cell.startswith(_FORMULA_START) else cell


def _when(at: datetime) -> str:
    """``2026年7月15日`` and ``10:32 JST`` on two lines."""
    day, _, time = format_jst(at).partition(" ")
    return f"{day}\n{time}"


# --- layout -------------------------------------------------------------------------------


def _header_cell(ja: str, en: str, width: float) -> list[tuple[str, str, float]]:
    """Lines of a heading cell: (font, text, size); Japanese then the English beneath."""
    inner = width - 2 * CELL_PAD
    lines = [(GOTHIC, line, 8.0) for line in wrap(ja, size=8.0, width=inner)]
    lines += [(LATIN, line, 6.0) for line in wrap(en, size=6.0, width=inner, font=LATIN)]
    return lines


def _lay_out(row: Row) -> tuple[float, list[list[str]]]:
    """Row height and each cell's wrapped lines."""
    texts = (row.seq, _when(row.at), *row.cells)
    cells = []
    for text, (_, _, width) in zip(texts, COLUMNS, strict=True):
        lines = _wrap_cell(text, width - 2 * CELL_PAD) if text else []
        if len(lines) > MAX_CELL_LINES:
            lines = [*lines[: MAX_CELL_LINES - 1], "…"]
        cells.append(lines)
    height = max(1, *(len(c) for c in cells)) * CELL_LEADING + 2 * CELL_PAD
    return height, cells


def _wrap_cell(text: str, width: float) -> list[str]:
    """Wrap a cell; a word wider than the cell (a hash, a long serial) is broken anywhere."""
    lines: list[str] = []
    for line in wrap(text, size=CELL_SIZE, width=width):
        while text_width(line, size=CELL_SIZE) > width and len(line) > 1:
            cut = len(line) - 1
            while cut > 1 and text_width(line[:cut], size=CELL_SIZE) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


_TOP_FIRST = 142.0
"""Height of the title (72) and the details (4 rows of 15, then 10) on page 1."""
_TOP_OTHER = 40.0


def _paginate(heights: Sequence[float], header_h: float) -> list[tuple[list[int], bool]]:
    """Rows per page, and whether the signature block goes on that page (the last).

    The signatures never stand on a page of their own: when they do not fit
    under the last row, that row moves over with them, so what is signed is
    on the page that is signed.
    """
    bottom = MARGIN + FOOTER_HEIGHT
    pages: list[tuple[list[int], bool]] = []
    current: list[int] = []
    y = PAGE_HEIGHT - MARGIN - _TOP_FIRST - header_h
    for i, height in enumerate(heights):
        if current and y - height < bottom:
            pages.append((current, False))
            current = []
            y = PAGE_HEIGHT - MARGIN - _TOP_OTHER - header_h
        current.append(i)
        y -= height
    if y - SIGNATURE_GAP - SIGNATURE_HEIGHT >= bottom:
        pages.append((current, True))
    elif len(current) > 1:
        pages.append((current[:-1], False))
        pages.append((current[-1:], True))
    else:  # one row so tall it fills the page: signatures follow alone
        pages.append((current, False))
        pages.append(([], True))
    return pages


# --- drawing ------------------------------------------------------------------------------


def _draw_title(canvas: Canvas, ward_name: str, printed_at: datetime) -> float:
    top = PAGE_HEIGHT - MARGIN
    draw_text(canvas, MARGIN, top - 10, ward_name, size=10.5)
    printed = format_jst(printed_at)
    label = ("出力日時", "Printed")
    label_w = text_width(f"{label[0]}", size=8) + text_width(f" ({label[1]}) ", size=6.4)
    x = PAGE_WIDTH - MARGIN - text_width(printed, size=8.5) - label_w
    x = draw_bilingual(canvas, x, top - 10, *label, size=8)
    draw_text(canvas, x + 4, top - 10, printed, size=8.5)
    y = top - 32
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=20, centred=True)
    y -= 16
    draw_text(
        canvas,
        PAGE_WIDTH / 2 - text_width(SUBTITLE[0], size=9, font=MINCHO) / 2,
        y,
        SUBTITLE[0],
        size=9,
        font=MINCHO,
    )
    canvas.setFont(LATIN, 7.5)
    canvas.drawCentredString(PAGE_WIDTH / 2, y - 11, SUBTITLE[1])
    canvas.setLineWidth(1)
    canvas.line(MARGIN, y - 18, PAGE_WIDTH - MARGIN, y - 18)
    return y - 24


def _draw_details(
    canvas: Canvas, y: float, batch: str, ward_name: str, sealed: Mapping[str, object]
) -> None:
    sealed_at = format_jst(event_time(sealed)) if sealed else ""
    pairs = (
        (("区", "Ward", ward_name), ("バッチ番号", "Batch", batch)),
        (
            ("通知書種別", "Notice type", _str(sealed.get("notice_type"))),
            ("暗号化日時", "Sealed", sealed_at),
        ),
        (
            ("ファイル数", "Files", _num(sealed.get("file_count"))),
            ("レコード数", "Records", _num(sealed.get("record_total"))),
        ),
        (("暗号化ファイル SHA-256", "Envelope", _str(sealed.get("envelope_sha256"))), None),
    )
    row_h, label_w, half = 15.0, 128.0, CONTENT_WIDTH / 2
    canvas.setLineWidth(0.6)
    for left, right in pairs:
        for x, cell, span in ((MARGIN, left, not right), (MARGIN + half, right, False)):
            if cell is None:
                continue
            ja, en, value = cell
            canvas.setFillColor(_GREY)
            canvas.rect(x, y - row_h, label_w, row_h, stroke=0, fill=1)
            canvas.setFillColor(black)
            draw_bilingual(canvas, x + 5, y - row_h + 4.5, ja, en, size=8)
            draw_text(canvas, x + label_w + 6, y - row_h + 4.5, value, size=9)
            width = CONTENT_WIDTH if span else half
            canvas.rect(x, y - row_h, width, row_h)
        y -= row_h


def _draw_continued(canvas: Canvas, batch: str) -> float:
    y = PAGE_HEIGHT - MARGIN - 12
    end = draw_bilingual(canvas, MARGIN, y, TITLE_JA, TITLE_EN, size=12)
    draw_text(canvas, end + 12, y, f"{batch}（続き）", size=10)
    return PAGE_HEIGHT - MARGIN - _TOP_OTHER


def _draw_header_row(
    canvas: Canvas, y: float, header: list[list[tuple[str, str, float]]], height: float
) -> float:
    canvas.setFillColor(_GREY)
    canvas.rect(MARGIN, y - height, CONTENT_WIDTH, height, stroke=0, fill=1)
    canvas.setFillColor(black)
    x = MARGIN
    for lines, (_, _, width) in zip(header, COLUMNS, strict=True):
        baseline = y - CELL_PAD - 7.5
        for font, text, size in lines:
            draw_text(canvas, x + CELL_PAD, baseline, text, size=size, font=font)
            baseline -= CELL_LEADING
        x += width
    _grid(canvas, y, height)
    return y - height


def _draw_row(
    canvas: Canvas, y: float, laid: tuple[float, list[list[str]]], *, shaded: bool
) -> float:
    height, cells = laid
    if shaded:
        canvas.setFillColor(_LIGHT)
        canvas.rect(MARGIN, y - height, CONTENT_WIDTH, height, stroke=0, fill=1)
        canvas.setFillColor(black)
    x = MARGIN
    for lines, (_, _, width) in zip(cells, COLUMNS, strict=True):
        baseline = y - CELL_PAD - 7.0
        for line in lines:
            draw_text(canvas, x + CELL_PAD, baseline, line, size=CELL_SIZE)
            baseline -= CELL_LEADING
        x += width
    _grid(canvas, y, height)
    return y - height


def _grid(canvas: Canvas, y: float, height: float) -> None:
    canvas.setLineWidth(0.5)
    canvas.rect(MARGIN, y - height, CONTENT_WIDTH, height)
    x = MARGIN
    for _, _, width in COLUMNS[:-1]:
        x += width
        canvas.line(x, y, x, y - height)


def _draw_signatures(canvas: Canvas, y: float) -> None:
    draw_text(canvas, MARGIN, y, STATEMENT[0], size=9.5, font=MINCHO)
    canvas.setFont(LATIN, 7.5)
    canvas.drawString(MARGIN, y - 11, STATEMENT[1])
    top = y - 20
    gap = 20.0
    box_w = (CONTENT_WIDTH - gap) / 2
    box_h = SIGNATURE_HEIGHT - 20
    parties = (("区", "Ward"), ("委託先", "Contractor"))
    fields = (("所属", "Organisation"), ("氏名", "Name"), ("日付", "Date"))
    seal_w = 70.0
    for n, (ja, en) in enumerate(parties):
        x = MARGIN + n * (box_w + gap)
        canvas.setLineWidth(0.8)
        canvas.rect(x, top - box_h, box_w, box_h)
        canvas.setFillColor(_GREY)
        canvas.rect(x, top - 18, box_w, 18, stroke=0, fill=1)
        canvas.setFillColor(black)
        draw_bilingual(canvas, x + 6, top - 13, ja, en, size=10)
        canvas.line(x, top - 18, x + box_w, top - 18)
        canvas.line(x + box_w - seal_w, top - 18, x + box_w - seal_w, top - box_h)
        row_h = (box_h - 18) / len(fields)
        for i, (fja, fen) in enumerate(fields):
            baseline = top - 18 - row_h * (i + 1) + row_h / 2 - 3
            draw_bilingual(canvas, x + 6, baseline, fja, fen, size=8.5)
            if i:
                canvas.setLineWidth(0.4)
                canvas.line(x, top - 18 - row_h * i, x + box_w - seal_w, top - 18 - row_h * i)
        canvas.setFont(GOTHIC, 9)
        canvas.drawCentredString(x + box_w - seal_w / 2, top - 32, "印・署名")
        canvas.setFont(LATIN, 6.5)
        canvas.drawCentredString(x + box_w - seal_w / 2, top - 41, "Seal / signature")


def _draw_footer(
    canvas: Canvas, batch: str, head: ChainHead, signer: str, number: int, total: int
) -> None:
    y = MARGIN - 6
    canvas.setLineWidth(0.4)
    canvas.line(MARGIN, y + 10, PAGE_WIDTH - MARGIN, y + 10)
    end = draw_text(canvas, MARGIN, y, "台帳 (Ledger) ", size=6.5)
    canvas.setFont(LATIN, 6.5)
    canvas.drawString(end, y, f"head seq {head.seq} SHA-256 {head.hash}   signed by {signer}")
    canvas.drawRightString(PAGE_WIDTH - MARGIN, y, f"{TITLE_EN} / {batch}   {number} / {total}")
