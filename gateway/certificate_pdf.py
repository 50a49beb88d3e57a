"""The データ消去証明書 (erasure certificate) PDF: the printable face of a signed certificate.

The certificate itself is the signed canonical JSON ``<batch>.erasure.json``
(see :mod:`gateway.erase_cli`); this module renders its body for people, in
Japanese with the English term beside every heading (A4 portrait, as many
pages as the items need): batch, tenant, channel, method, start and end (JST),
handler and approving manager, the print-site key's fingerprint, every erased
item with its kind, path, size and SHA-256 taken before erasure, and the note
that overwriting is best effort on SSDs and copy-on-write filesystems.
Everything shown comes from the signed body, so the paper says what the JSON
proves; the JSON is what the ward verifies (``lgwan-client verify-certificate``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.pdfgen.canvas import Canvas

from gateway.pdf import (
    LATIN,
    MARGIN,
    MINCHO,
    PAGE_HEIGHT,
    PAGE_WIDTH,
    draw_bilingual,
    draw_text,
    format_jst,
    text_width,
    wrap,
)
from gateway.pdf import write_pdf as _write_pdf

TITLE_JA = "データ消去証明書"
TITLE_EN = "Erasure certificate"
PUBLIC_MODE = 0o644
"""The certificate holds no secret: it is handed to the ward."""

KIND_LABELS = {
    "envelope": ("暗号化ファイル", "Envelope"),
    "plaintext": ("復号データ", "Plaintext"),
    "staging": ("受信途中の複製", "Staging copy"),
    "quarantine": ("隔離された複製", "Quarantine copy"),
    "retained": ("保管中の複製", "Retained copy"),
}
"""A label for each of :data:`custody.erasure_certificate.ITEM_KINDS`."""
CHANNEL_LABELS = {"lgwan": "LGWAN-ASP", "dvd": "DVD"}

NOTE_JA = (
    "上書き消去は、SSDやコピーオンライト方式のファイルシステムでは最善努力にとどまります"
    "（装置が旧データのブロックを別の場所に保持することがあります）。"
    "このため、復号した印刷データは作業ディレクトリ以外には書き出していません。"
)
NOTE_EN = (
    "Overwriting is best effort on SSDs and copy-on-write filesystems (the device may keep"
    " the old blocks elsewhere); for this reason decrypted print data is never written"
    " outside the work directory."
)
VERIFY_JA = (
    "本証明書の原本は、印刷拠点の鍵で署名したJSONファイル（{name}）です。"
    "区は検証コマンドで、その署名と各ファイルのSHA-256を検証できます。"
)
VERIFY_EN = (
    "The original of this certificate is the JSON file {name}, signed with the print site's"
    " key; the ward checks its signature and every SHA-256 with lgwan-client verify-certificate."
)

_CONTENT_WIDTH = PAGE_WIDTH - 2 * MARGIN
_GREY = Color(0.92, 0.92, 0.92)
_BOTTOM = MARGIN + 36
_ROW_H = 18.0
_LABEL_W = 190.0
_MONO = "Courier"


@dataclass(frozen=True)
class CertificateView:
    """What the PDF shows: the certificate's signed body, plus names for people."""

    body: Mapping[str, object]
    """The verified body of the signed record (the fields of the erasure certificate)."""
    json_name: str
    """The file name of the signed JSON original, e.g. ``<batch>.erasure.json``."""
    full_names: Mapping[str, str]
    """Staff name → full name, where the roster knows one (shown beside the name)."""


def render_certificate(out: Path, view: CertificateView) -> None:
    """Write the certificate PDF to ``out`` (atomically, mode 0644).

    Raises:
        ValueError: the body lacks a field or holds one of the wrong type.
        OSError: the file could not be written; ``out`` is left as it was.
    """
    body = view.body
    batch = _text(body, "batch_id")
    started = _time(body, "started_at")
    finished = _time(body, "finished_at")
    items = _items(body)
    channel = _text(body, "channel")
    opened = body.get("opened")
    if not isinstance(opened, bool):
        raise ValueError("the certificate's opened field is not a boolean")
    rows = (
        ("バッチID", "Batch", batch),
        ("委託元", "Tenant", _text(body, "tenant")),
        ("受渡し経路", "Channel", CHANNEL_LABELS.get(channel, channel)),
        ("復号の有無", "Opened", "復号済み (opened)" if opened else "未復号 (not opened)"),
        ("消去方法", "Method", _text(body, "method")),
        ("消去開始", "Started", format_jst(started)),
        ("消去完了", "Finished", format_jst(finished)),
        ("取扱者", "Handler", _person(view, _text(body, "handler"))),
        ("承認した取扱責任者", "Approving manager", _person(view, _text(body, "approver"))),
        ("印刷拠点の署名鍵", "Print-site key", _text(body, "printsite_key")),
        ("消去した複製の数", "Items erased", str(len(items))),
    )

    def draw(canvas: Canvas) -> None:
        pages = _Pages(canvas, batch)
        y = _draw_header(canvas)
        y = _draw_rows(canvas, y, rows)
        y = _draw_items(pages, y, items)
        y = _draw_notes(pages, y, view.json_name)
        _draw_signatures(pages, y, rows[7][2], rows[8][2])
        pages.finish()

    _write_pdf(
        out,
        draw,
        title=f"{TITLE_JA} ({TITLE_EN}) {batch}",
        subject=f"{_text(body, 'tenant')} {batch}",
        author=_text(body, "printsite_key"),
        mode=PUBLIC_MODE,
    )


class _Pages:
    """Page breaks and footers (``batch — page n``) for a document of unknown length."""

    def __init__(self, canvas: Canvas, batch: str) -> None:
        self.canvas = canvas
        self._batch = batch
        self._page = 1

    def room(self, y: float, needed: float) -> float:
        """``y`` if ``needed`` points fit above the footer, else the top of a new page."""
        if y - needed >= _BOTTOM:
            return y
        self._footer()
        self.canvas.showPage()
        self._page += 1
        return float(PAGE_HEIGHT - MARGIN - 10)

    def finish(self) -> None:
        self._footer()
        self.canvas.showPage()

    def _footer(self) -> None:
        text = f"{TITLE_JA} ({TITLE_EN}) {self._batch} — {self._page}"
        draw_text(self.canvas, MARGIN, MARGIN, text, size=7.5)


def _draw_header(canvas: Canvas) -> float:
    top = PAGE_HEIGHT - MARGIN
    draw_text(canvas, MARGIN, top - 12, "LGWAN-ASP", size=10)
    y = top - 52
    draw_bilingual(canvas, PAGE_WIDTH / 2, y, TITLE_JA, TITLE_EN, size=20, centred=True)
    canvas.setLineWidth(1)
    canvas.line(MARGIN, y - 12, PAGE_WIDTH - MARGIN, y - 12)
    y -= 32
    ja = "下記の印刷データについて、本システムが保持していた全ての複製を消去したことを証明します。"
    en = "We certify that every copy of the print data below held by this system has been erased."
    y = _paragraph(canvas, y, ja, size=10.5, font=MINCHO)
    return _paragraph(canvas, y, en, size=9, font=LATIN) - 8


def _draw_rows(canvas: Canvas, y: float, rows: Sequence[tuple[str, str, str]]) -> float:
    top = y
    canvas.setFillColor(_GREY)
    canvas.rect(MARGIN, top - _ROW_H * len(rows), _LABEL_W, _ROW_H * len(rows), stroke=0, fill=1)
    canvas.setFillColor(black)
    canvas.setLineWidth(0.6)
    for ja, en, value in rows:
        baseline = y - _ROW_H + 5.5
        draw_bilingual(canvas, MARGIN + 6, baseline, ja, en, size=9)
        size = 9.5
        room = _CONTENT_WIDTH - _LABEL_W - 16
        while size > 5.5 and text_width(value, size=size) > room:
            size -= 0.5
        draw_text(canvas, MARGIN + _LABEL_W + 8, baseline, value, size=size)
        canvas.line(MARGIN, y - _ROW_H, PAGE_WIDTH - MARGIN, y - _ROW_H)
        y -= _ROW_H
    canvas.rect(MARGIN, y, _CONTENT_WIDTH, top - y)
    canvas.line(MARGIN + _LABEL_W, y, MARGIN + _LABEL_W, top)
    return y - 24


def _draw_items(pages: _Pages, y: float, items: list[dict[str, object]]) -> float:
    canvas = pages.canvas
    y = pages.room(y, 60)
    draw_bilingual(canvas, MARGIN, y, "消去した複製", "Erased items", size=12)
    y -= 8
    note = "サイズとSHA-256は消去前に測定した値です (size and SHA-256 measured before erasure)."
    y = _paragraph(canvas, y - 4, note, size=8)
    for number, item in enumerate(items, 1):
        kind = str(item["kind"])
        ja, en = KIND_LABELS.get(kind, (kind, kind))
        path_lines = wrap(str(item["path"]), size=8, width=_CONTENT_WIDTH - 24)
        needed = 14 + 11 * len(path_lines) + 12
        y = pages.room(y, needed)
        canvas.setLineWidth(0.4)
        canvas.line(MARGIN, y, PAGE_WIDTH - MARGIN, y)
        y -= 12
        end = draw_text(canvas, MARGIN + 2, y, f"{number}.", size=9)
        end = draw_bilingual(canvas, max(end + 6, MARGIN + 24), y, ja, en, size=9)
        size_text = f"{item['size']:,} バイト (bytes)"
        draw_text(canvas, PAGE_WIDTH - MARGIN - text_width(size_text, size=9), y, size_text, size=9)
        for line in path_lines:
            y -= 11
            draw_text(canvas, MARGIN + 24, y, line, size=8)
        y -= 11
        canvas.setFont(_MONO, 7.5)
        canvas.drawString(MARGIN + 24, y, f"SHA-256 {item['sha256']}")
        y -= 4
    canvas.setLineWidth(0.4)
    canvas.line(MARGIN, y, PAGE_WIDTH - MARGIN, y)
    return y - 20


def _draw_notes(pages: _Pages, y: float, json_name: str) -> float:
    canvas = pages.canvas
    verify_ja, verify_en = VERIFY_JA.format(name=json_name), VERIFY_EN.format(name=json_name)
    for heading_ja, heading_en, ja, en in (
        ("注記", "Note", NOTE_JA, NOTE_EN),
        ("検証", "Verification", verify_ja, verify_en),
    ):
        lines = len(wrap(ja, size=9, width=_CONTENT_WIDTH)) + len(
            wrap(en, size=8.5, width=_CONTENT_WIDTH, font=LATIN)
        )
        y = pages.room(y, 24 + 13 * lines)
        draw_bilingual(canvas, MARGIN, y, heading_ja, heading_en, size=11)
        y = _paragraph(canvas, y - 5, ja, size=9, font=MINCHO)
        y = _paragraph(canvas, y, en, size=8.5, font=LATIN) - 14
    return y


def _draw_signatures(pages: _Pages, y: float, handler: str, approver: str) -> None:
    canvas = pages.canvas
    box_h, gap = 62.0, 16.0
    width = (_CONTENT_WIDTH - gap) / 2
    y = pages.room(y, box_h + 12)
    canvas.setLineWidth(0.8)
    for index, (ja, en, name) in enumerate(
        (("取扱者", "Handler", handler), ("取扱責任者（承認）", "Approving manager", approver))
    ):
        x = MARGIN + index * (width + gap)
        canvas.rect(x, y - box_h, width, box_h)
        draw_bilingual(canvas, x + 6, y - 14, ja, en, size=9)
        draw_text(canvas, x + 6, y - 30, name, size=9)
        draw_bilingual(canvas, x + width - 58, y - box_h + 8, "印", "Seal", size=8)


def _paragraph(canvas: Canvas, y: float, text: str, *, size: float, font: str = MINCHO) -> float:
    for line in wrap(text, size=size, width=_CONTENT_WIDTH, font=font):
        y -= size * 1.45
        draw_text(canvas, MARGIN, y, line, size=size, font=font)
    return y - 4


def _person(view: CertificateView, name: str) -> str:
    full = view.full_names.get(name)
    return f"{full} ({name})" if full else name


def _text(body: Mapping[str, object], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise ValueError(f"the certificate's {key} field is not text")
    return value


def _time(body: Mapping[str, object], key: str) -> datetime:
    moment = datetime.fromisoformat(_text(body, key))
    if moment.utcoffset() is None:
        raise ValueError(f"the certificate's {key} has no UTC offset")
    return moment


def _items(body: Mapping[str, object]) -> list[dict[str, object]]:
    items = body.get("items")
    if not isinstance(items, list):
        raise ValueError("the certificate's items field is not a list")
    checked: list[dict[str, object]] = []
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("kind", "path", "sha256")
        ):
            raise ValueError("an item of the certificate is malformed")
        if not isinstance(item.get("size"), int) or isinstance(item.get("size"), bool):
            raise ValueError("an item's size is not an integer")
        checked.append(item)
    return checked
