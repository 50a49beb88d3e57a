"""Shared pieces of the ward's printed documents (password notice, 確認書 report).

Japanese text uses reportlab's built-in CID fonts, which need no font file: the
PDF names the font and the viewer supplies a matching Japanese face (Acrobat
ships them; poppler uses any installed Japanese font, e.g. IPA or Noto CJK).
Every heading carries its English term beside it, in a Latin font, and every
time shown to a person is in JST.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from reportlab.lib.pagesizes import A4
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas

GOTHIC = "HeiseiKakuGo-W5"
"""Japanese sans-serif (ゴシック体) for headings and labels."""
MINCHO = "HeiseiMin-W3"
"""Japanese serif (明朝体) for running text."""
LATIN = "Helvetica"
LATIN_BOLD = "Helvetica-Bold"
MONO_BOLD = "Courier-Bold"
"""Monospace for anything a person must type back exactly."""

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN = 42.0
"""Page margin in points (about 15 mm)."""

JST = ZoneInfo("Asia/Tokyo")

PRIVATE_MODE = 0o600

_EN_SIZE_RATIO = 0.8
_LATIN_PARTNER = {GOTHIC: LATIN, MINCHO: "Times-Roman"}
_NO_BREAK_BEFORE = frozenset(
    "、。，．・：；？！）」』】〕ー"  # closing punctuation, prolonged-sound mark
    "ぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮヵヶ"  # small kana
)


def register_fonts() -> None:
    """Register the Japanese CID fonts with reportlab (idempotent)."""
    registered = set(pdfmetrics.getRegisteredFontNames())
    for name in (GOTHIC, MINCHO):
        if name not in registered:
            pdfmetrics.registerFont(UnicodeCIDFont(name))


def format_jst(moment: datetime) -> str:
    """Format an aware datetime for people, e.g. ``2026年7月15日 10:32 JST``.

    Raises:
        ValueError: ``moment`` is naive (no timezone), so its instant is unknown.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("a timezone-aware datetime is required")
    local = moment.astimezone(JST)
    return f"{local.year}年{local.month}月{local.day}日 {local:%H:%M} JST"


def text_width(text: str, *, size: float, font: str = GOTHIC) -> float:
    """Width in points of ``text`` as :func:`draw_text` draws it."""
    return sum(_width(run, f, size) for f, run in _runs(text, font))


def draw_text(
    canvas: Canvas, x: float, y: float, text: str, *, size: float, font: str = GOTHIC
) -> float:
    """Draw ``text`` at baseline ``y``; return the end x.

    With a Japanese ``font``, ASCII runs (digits, Latin letters, spaces) are drawn
    in its Latin partner (Helvetica beside ゴシック, Times beside 明朝): the CID
    fonts' own half-width glyphs are substituted unevenly by some viewers.
    """
    for run_font, run in _runs(text, font):
        canvas.setFont(run_font, size)
        canvas.drawString(x, y, run)
        x += _width(run, run_font, size)
    return x


def draw_bilingual(
    canvas: Canvas,
    x: float,
    y: float,
    japanese: str,
    english: str,
    *,
    size: float,
    font: str = GOTHIC,
    centred: bool = False,
) -> float:
    """Draw ``japanese`` followed by ``(english)`` in a Latin font; return the end x.

    The English part is slightly smaller, as on bilingual Japanese forms.
    """
    en_text = f" ({english})"
    en_size = size * _EN_SIZE_RATIO
    if centred:
        total = text_width(japanese, size=size, font=font)
        total += _width(en_text, LATIN, en_size)
        x -= total / 2
    x = draw_text(canvas, x, y, japanese, size=size, font=font)
    canvas.setFont(LATIN, en_size)
    canvas.drawString(x, y, en_text)
    return x + _width(en_text, LATIN, en_size)


def wrap(text: str, *, size: float, width: float, font: str = GOTHIC) -> list[str]:
    """Break ``text`` into lines no wider than ``width``.

    Breaks at spaces when there are any (English) and between any two characters
    otherwise (Japanese has no spaces), but never before closing punctuation, a
    prolonged-sound mark or a small kana (the basic 禁則処理 rule).
    """
    lines: list[str] = []
    for paragraph in text.split("\n"):
        spaced = " " in paragraph
        units = paragraph.split(" ") if spaced else list(paragraph)
        joiner = " " if spaced else ""
        line = ""
        for unit in units:
            candidate = f"{line}{joiner}{unit}" if line else unit
            fits = text_width(candidate, size=size, font=font) <= width
            if fits or not line or (not spaced and unit in _NO_BREAK_BEFORE):
                line = candidate
            else:
                lines.append(line)
                line = unit
        lines.append(line)
    return lines


def _width(text: str, font: str, size: float) -> float:
    return float(pdfmetrics.stringWidth(text, font, size))


def _runs(text: str, font: str) -> list[tuple[str, str]]:
    """Split ``text`` into (font, run) pieces: ASCII runs go to the Latin partner."""
    latin = _LATIN_PARTNER.get(font)
    if latin is None:
        return [(font, text)] if text else []
    runs: list[tuple[str, str]] = []
    for char in text:
        char_font = latin if char.isascii() else font
        if runs and runs[-1][0] == char_font:
            runs[-1] = (char_font, runs[-1][1] + char)
        else:
            runs.append((char_font, char))
    return runs


def write_pdf(
    out: Path,
    draw: Callable[[Canvas], None],
    *,
    title: str,
    subject: str = "",
    author: str = "",
    mode: int = PRIVATE_MODE,
) -> None:
    """Render a PDF with ``draw`` and move it into place atomically with ``mode``.

    The document is written to a temporary file beside ``out`` (created 0600, so a
    secret on it is never readable by others, not even briefly), flushed to disk,
    then renamed over ``out``. On any failure the temporary file is removed and
    ``out`` is left as it was.

    Raises:
        OSError: The file could not be written.
    """
    register_fonts()
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            canvas = Canvas(fh, pagesize=A4, pageCompression=1)
            canvas.setTitle(title)
            canvas.setSubject(subject)
            canvas.setAuthor(author)
            canvas.setCreator("lgwan-client")
            draw(canvas)
            canvas.save()
            fh.flush()
            os.fsync(fh.fileno())
        tmp.chmod(mode)
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
