"""What the print site's tabular reports share: their CSV files and their PDF table grid.

The 名簿 (:mod:`gateway.roster_report`), the 印刷記録簿
(:mod:`gateway.printlog_report`) and the 事故報告書
(:mod:`gateway.incidents_report`) each come as a CSV file and an A4 PDF table.
The CSV files are written the same way (UTF-8 with a BOM so Excel shows
Japanese, CRLF, atomically, mode 0600, formula cells defused); the PDF tables
share their cell wrapping, bilingual headings and grid. Each report keeps its
own columns, rows and page furniture.
"""

import contextlib
import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from reportlab.lib.colors import Color, black
from reportlab.pdfgen.canvas import Canvas

from gateway.pdf import GOTHIC, LATIN, PRIVATE_MODE, draw_text, text_width, wrap

HEADING_GREY = Color(0.90, 0.90, 0.90)
"""The background of heading rows and label cells."""
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Cell starts a spreadsheet would run as a formula (CSV injection)."""

HeadingLines = list[tuple[str, str, float]]
"""A heading cell's lines: (font, text, size)."""


def defang(cell: str) -> str:
    """``cell`` with a leading ``'`` when a spreadsheet would take it for a formula."""
    return f"'{cell}" if cell.startswith(FORMULA_START) else cell


def write_csv(out: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Write ``header`` and ``rows`` (each cell defused) as CSV: UTF-8 with BOM, CRLF, 0600.

    Written to a temporary file in the same directory, fsynced, then renamed.

    Raises:
        OSError: the file could not be written; ``out`` is left as it was.
    """
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in rows:
                writer.writerow([defang(cell) for cell in row])
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(PRIVATE_MODE)
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def wrap_cell(text: str, width: float, *, size: float) -> list[str]:
    """Wrap a cell's text; a word wider than the cell (a batch id, a hash) is broken anywhere."""
    lines: list[str] = []
    for line in wrap(text, size=size, width=width):
        while text_width(line, size=size) > width and len(line) > 1:
            cut = len(line) - 1
            while cut > 1 and text_width(line[:cut], size=size) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
        lines.append(line)
    return lines


def heading_lines(ja: str, en: str, inner: float) -> HeadingLines:
    """A heading cell's lines within ``inner`` points: the Japanese, the English beneath."""
    lines = [(GOTHIC, line, 8.0) for line in wrap(ja, size=8.0, width=inner)]
    lines += [(LATIN, line, 6.0) for line in wrap(en, size=6.0, width=inner, font=LATIN)]
    return lines


class Grid:
    """A table's columns on the page: where they start and how wide each is."""

    def __init__(self, left: float, widths: Sequence[float], *, pad: float, leading: float) -> None:
        self.left = left
        self.widths = tuple(widths)
        self.width = sum(self.widths)
        self.pad = pad
        self.leading = leading

    def rule(self, canvas: Canvas, top: float, height: float) -> None:
        """The row's frame and its column rules."""
        canvas.setStrokeColor(black)
        canvas.setLineWidth(0.5)
        canvas.rect(self.left, top - height, self.width, height, stroke=1, fill=0)
        x = self.left
        for width in self.widths[:-1]:
            x += width
            canvas.line(x, top, x, top - height)

    def shade(self, canvas: Canvas, top: float, height: float, color: Color) -> None:
        """Fill the row's background."""
        canvas.setFillColor(color)
        canvas.rect(self.left, top - height, self.width, height, stroke=0, fill=1)
        canvas.setFillColor(black)

    def heading_row(
        self, canvas: Canvas, top: float, cells: Sequence[HeadingLines], height: float
    ) -> float:
        """Draw a grey heading row of bilingual cells; returns the y under it."""
        self.shade(canvas, top, height, HEADING_GREY)
        x = self.left
        for lines, width in zip(cells, self.widths, strict=True):
            baseline = top - self.pad - 7.5
            for font, text, size in lines:
                draw_text(canvas, x + self.pad, baseline, text, size=size, font=font)
                baseline -= self.leading
            x += width
        self.rule(canvas, top, height)
        return top - height
