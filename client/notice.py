"""The パスワード通知書 (password notice): the paper that carries a batch's passphrase.

One A4 page: the batch details, the passphrase in large monospace, how the notice
must travel (separately from the data: by hand, registered mail or phone) and a
receipt box for the recipient. Its text layer has one line ``Batch: <id>`` and
one line ``Passphrase: <passphrase>`` (SPEC §6), each drawn as a single Latin
string, so ``pdftotext`` yields them whole. The passphrase never goes into the
PDF metadata, a log or an exception message.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.pdfgen.canvas import Canvas

from client.pdf import (
    GOTHIC,
    LATIN,
    MARGIN,
    MINCHO,
    MONO_BOLD,
    PAGE_HEIGHT,
    PAGE_WIDTH,
    draw_bilingual,
    draw_text,
    format_jst,
    text_width,
    wrap,
    write_pdf,
)

TITLE_JA = "パスワード通知書"
TITLE_EN = "Password notice"
BATCH_LABEL = "Batch: "
PASSPHRASE_LABEL = "Passphrase: "  # noqa: S105 -- a printed label, not a secret

PASSPHRASE_SIZE = 22.0
"""Point size of the passphrase line; it is condensed horizontally if too wide."""

READING_NOTE = (
    "英字の O・I・L は使われていません。そう読めたら数字の 0・1・1 です。",
    "The letters O, I and L are not used: read them as the digits 0, 1 and 1. "
    "With the age tool, type it exactly as printed, hyphens included.",
)

HANDLING = (
    (
        "本通知書は暗号化データとは別に届けます（手渡し・簡易書留・電話による口頭）。"
        "ディスクと同封せず、データの転送経路では決して送りません。",
        "This notice travels separately from the data: by hand, by registered mail, "
        "or read out by phone. Never with the disc, never over the transfer channel.",
    ),
    (
        "受領後は鍵付キャビネットに施錠して保管し、データとは別に管理してください。",
        "Keep it in a locked cabinet, apart from the data.",
    ),
    (
        "複写・撮影・電子メール等での送信はしないでください。",
        "Do not copy, photograph or e-mail it.",
    ),
    (
        "復号が終わったら、本通知書は裁断等により確実に廃棄してください。",
        "Destroy it (shred) once the batch has been decrypted.",
    ),
)

_GREY = Color(0.93, 0.93, 0.93)
_RED = Color(0.75, 0.05, 0.05)
_CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN


def render_password_notice(
    out: Path,
    *,
    batch_id: str,
    notice_type: str,
    file_count: int,
    record_total: int,
    created_at: datetime,
    passphrase: str,
    ward_name: str,
    created_by: str,
) -> None:
    """Write the password notice for one batch to ``out`` (atomically, mode 0600).

    Args:
        out: Destination PDF path; its directory must exist.
        batch_id: The batch id, printed after ``Batch:``.
        notice_type: The kind of print data (e.g. ``KAIGO``).
        file_count: Number of print files in the batch.
        record_total: Number of records over all files.
        created_at: When the batch was sealed (timezone-aware; shown in JST).
        passphrase: The batch passphrase, printed after ``Passphrase:`` exactly as given.
        ward_name: The ward (区) that sealed the batch.
        created_by: The staff member who sealed it.

    Raises:
        ValueError: An argument is unusable (the message never contains the passphrase).
        OSError: The file could not be written; ``out`` is left as it was.
    """
    _check(batch_id, passphrase, file_count, record_total)
    created = format_jst(created_at)  # raises ValueError on a naive datetime
    details = (
        ("区", "Ward", ward_name),
        ("バッチ番号", "Batch", batch_id),
        ("通知書種別", "Notice type", notice_type),
        ("ファイル数", "Files", f"{file_count:,}"),
        ("レコード数", "Records", f"{record_total:,}"),
        ("作成日時", "Created", created),
        ("作成者", "Created by", created_by),
    )

    def draw(canvas: Canvas) -> None:
        y = _draw_header(canvas, ward_name)
        y = _draw_details(canvas, y, details)
        y = _draw_passphrase(canvas, y, batch_id, passphrase)
        y = _draw_handling(canvas, y)
        _draw_receipt(canvas, y)
        _draw_footer(canvas, ward_name, batch_id)
        canvas.showPage()

    write_pdf(
        out,
        draw,
        title=f"{TITLE_JA} ({TITLE_EN}) {batch_id}",
        subject=f"{notice_type} {batch_id}",
        author=ward_name,
    )


def _check(batch_id: str, passphrase: str, file_count: int, record_total: int) -> None:
    if not batch_id or not batch_id.isascii() or not batch_id.isprintable():
        raise ValueError("batch id must be non-empty printable ASCII")
    if not passphrase or not passphrase.isascii() or not passphrase.isprintable():
        raise ValueError("passphrase must be non-empty printable ASCII")
    if passphrase != passphrase.strip():
        raise ValueError("passphrase must not start or end with a space")
    if file_count < 0 or record_total < 0:
        raise ValueError("file and record counts must not be negative")


def _draw_header(canvas: Canvas, ward_name: str) -> float:
    top = PAGE_HEIGHT - MARGIN
    # 取扱注意 stamp, top right
    stamp_w, stamp_h = 150.0, 22.0
    canvas.setStrokeColor(_RED)
    canvas.setFillColor(_RED)
    canvas.setLineWidth(1.5)
    canvas.rect(PAGE_WIDTH - MARGIN - stamp_w, top - stamp_h, stamp_w, stamp_h)
    draw_bilingual(
        canvas, PAGE_WIDTH - MARGIN - stamp_w / 2, top - 15, "取扱注意", "Confidential",
        size=11, centred=True,
    )  # fmt: skip
    canvas.setFillColor(black)
    canvas.setStrokeColor(black)
    draw_text(canvas, MARGIN, top - 15, ward_name, size=10.5)
    y = top - 62
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=22, centred=True)
    canvas.setLineWidth(1)
    canvas.line(MARGIN, y - 12, PAGE_WIDTH - MARGIN, y - 12)
    y -= 32
    ja = "下記バッチの暗号化ファイル（共通鍵暗号方式）を復号するためのパスワードをお知らせします。"
    en = "This notice gives the passphrase that decrypts the encrypted batch below."
    y = _paragraph(canvas, y, ja, size=10.5)
    return _paragraph(canvas, y, en, size=9.5, font=LATIN) - 8


def _draw_details(canvas: Canvas, y: float, rows: tuple[tuple[str, str, str], ...]) -> float:
    row_h, label_w = 21.0, 190.0
    top = y
    canvas.setFillColor(_GREY)
    canvas.rect(MARGIN, top - row_h * len(rows), label_w, row_h * len(rows), stroke=0, fill=1)
    canvas.setFillColor(black)
    canvas.setLineWidth(0.6)
    for ja, en, value in rows:
        baseline = y - row_h + 6.5
        draw_bilingual(canvas, MARGIN + 8, baseline, ja, en, size=10.5)
        draw_text(canvas, MARGIN + label_w + 10, baseline, value, size=11)
        canvas.line(MARGIN, y - row_h, PAGE_WIDTH - MARGIN, y - row_h)
        y -= row_h
    canvas.rect(MARGIN, y, _CONTENT_WIDTH, top - y)
    canvas.line(MARGIN + label_w, y, MARGIN + label_w, top)
    return y - 26


def _draw_passphrase(canvas: Canvas, y: float, batch_id: str, passphrase: str) -> float:
    draw_bilingual(canvas, MARGIN, y, "パスワード", "Passphrase", size=13)
    box_top = y - 10
    box_h = 108.0
    canvas.setLineWidth(2)
    canvas.rect(MARGIN, box_top - box_h, _CONTENT_WIDTH, box_h)
    inner = _CONTENT_WIDTH - 32
    canvas.setFont(MONO_BOLD, 12)
    canvas.drawString(MARGIN + 16, box_top - 24, f"{BATCH_LABEL}{batch_id}")
    line = f"{PASSPHRASE_LABEL}{passphrase}"
    width = text_width(line, size=PASSPHRASE_SIZE, font=MONO_BOLD)
    canvas.saveState()  # horizontal scaling is graphics state: keep it to this line
    text = canvas.beginText(MARGIN + 16, box_top - 60)
    text.setFont(MONO_BOLD, PASSPHRASE_SIZE)
    text.setHorizScale(min(100.0, 100.0 * inner / width))
    text.textOut(line)
    canvas.drawText(text)
    canvas.restoreState()
    draw_text(canvas, MARGIN + 16, box_top - 82, READING_NOTE[0], size=8.5)
    canvas.setFont(LATIN, 7.5)
    canvas.drawString(MARGIN + 16, box_top - 96, READING_NOTE[1])
    canvas.setLineWidth(1)
    return box_top - box_h - 26


def _draw_handling(canvas: Canvas, y: float) -> float:
    draw_bilingual(canvas, MARGIN, y, "取扱い", "Handling", size=13)
    y -= 19
    for n, (ja, en) in enumerate(HANDLING, start=1):
        canvas.setFont(GOTHIC, 10)
        canvas.drawString(MARGIN + 4, y, f"{n}.")
        y = _paragraph(canvas, y, ja, size=10, indent=20)
        y = _paragraph(canvas, y, en, size=8.5, font=LATIN, indent=20) - 4
    return y - 14


def _draw_receipt(canvas: Canvas, y: float) -> float:
    draw_bilingual(canvas, MARGIN, y, "受領確認", "Receipt", size=13)
    top = y - 10
    row_h = 26.0
    label_w = 170.0
    rows = (
        ("受領日", "Date received", "　　　　年　　　月　　　日"),
        ("受領者 所属・氏名", "Recipient", ""),
        ("受渡方法", "Delivered", "□ 手渡し　　□ 簡易書留　　□ 口頭（電話）"),
    )
    seal_w = 86.0
    table_w = _CONTENT_WIDTH - seal_w
    canvas.setLineWidth(0.8)
    canvas.rect(MARGIN, top - row_h * len(rows), _CONTENT_WIDTH, row_h * len(rows))
    canvas.line(MARGIN + label_w, top, MARGIN + label_w, top - row_h * len(rows))
    canvas.line(MARGIN + table_w, top, MARGIN + table_w, top - row_h * len(rows))
    for i, (ja, en, filler) in enumerate(rows):
        baseline = top - row_h * (i + 1) + 9
        draw_bilingual(canvas, MARGIN + 8, baseline, ja, en, size=9.5)
        draw_text(canvas, MARGIN + label_w + 10, baseline, filler, size=10)
        if i:
            canvas.line(MARGIN, top - row_h * i, MARGIN + table_w, top - row_h * i)
    canvas.setFont(GOTHIC, 9)
    canvas.drawCentredString(MARGIN + table_w + seal_w / 2, top - 14, "印・署名")
    canvas.setFont(LATIN, 7.5)
    canvas.drawCentredString(MARGIN + table_w + seal_w / 2, top - 24, "Seal / signature")
    return top - row_h * len(rows)


def _draw_footer(canvas: Canvas, ward_name: str, batch_id: str) -> None:
    canvas.setFillColor(black)
    draw_text(canvas, MARGIN, MARGIN - 16, f"{ward_name}　lgwan-client", size=8)
    canvas.setFont(LATIN, 8)
    canvas.drawRightString(PAGE_WIDTH - MARGIN, MARGIN - 16, f"{TITLE_EN} / {batch_id}")


def _paragraph(
    canvas: Canvas, y: float, text: str, *, size: float, font: str = MINCHO, indent: float = 0.0
) -> float:
    """Draw wrapped text starting at baseline ``y``; return the next free baseline."""
    for line in wrap(text, size=size, width=_CONTENT_WIDTH - indent, font=font):
        draw_text(canvas, MARGIN + indent, y, line, size=size, font=font)
        y -= size * 1.45
    return y
