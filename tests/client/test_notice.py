"""Tests for client.notice (the password notice PDF) and the client.pdf helpers."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from client import notice, pdf

BATCH = "20260715-KAIGO-7F3KQ2"
PASSPHRASE = "7F3K-Q2AB-M9XD-4HTR-0WZC-8NPE-J6VS-XM4D"
JST_OFFSET = timezone(timedelta(hours=9))
CREATED = datetime(2026, 7, 15, 1, 32, tzinfo=UTC)  # 10:32 JST

needs_pdftotext = pytest.mark.skipif(
    shutil.which("pdftotext") is None, reason="pdftotext (poppler-utils) is not installed"
)
needs_pdftoppm = pytest.mark.skipif(
    shutil.which("pdftoppm") is None, reason="pdftoppm (poppler-utils) is not installed"
)


def _render(out: Path, **overrides: Any) -> Path:
    args: dict[str, Any] = {
        "batch_id": BATCH,
        "notice_type": "KAIGO",
        "file_count": 2,
        "record_total": 70_000,
        "created_at": CREATED,
        "passphrase": PASSPHRASE,
        "ward_name": "新宿区 福祉部 介護保険課",
        "created_by": "山田 太郎",
        **overrides,
    }
    notice.render_password_notice(out, **args)
    return out


def _pdftotext(path: Path) -> str:
    done = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
    )
    return done.stdout.decode("utf-8")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rendered notice shared by the read-only tests."""
    return _render(tmp_path_factory.mktemp("notice") / f"{BATCH}.notice.pdf")


def test_a_one_page_a4_pdf_is_written(rendered: Path) -> None:
    """The output is a single A4 portrait page."""
    assert rendered.read_bytes().startswith(b"%PDF-")
    reader = PdfReader(rendered)
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)


def test_pypdf_finds_batch_and_passphrase_lines(rendered: Path) -> None:
    """pypdf's text layer has the exact lines 'Batch: <id>' and 'Passphrase: <passphrase>'."""
    lines = [line.strip() for line in PdfReader(rendered).pages[0].extract_text().splitlines()]
    assert f"Batch: {BATCH}" in lines
    assert f"Passphrase: {PASSPHRASE}" in lines


@needs_pdftotext
def test_pdftotext_finds_batch_and_passphrase_lines(rendered: Path) -> None:
    """pdftotext yields the lines 'Batch: <id>' and 'Passphrase: <passphrase>' whole."""
    lines = [line.strip() for line in _pdftotext(rendered).splitlines()]
    assert f"Batch: {BATCH}" in lines
    assert f"Passphrase: {PASSPHRASE}" in lines


@needs_pdftotext
def test_japanese_headings_and_instructions_extract(rendered: Path) -> None:
    """The Japanese headings, each with its English term, and the handling rules extract."""
    text = _pdftotext(rendered)
    for heading in (
        "パスワード通知書 (Password notice)",
        "バッチ番号 (Batch)",
        "通知書種別 (Notice type)",
        "ファイル数 (Files)",
        "レコード数 (Records)",
        "作成日時 (Created)",
        "作成者 (Created by)",
        "区 (Ward)",
        "受領確認 (Receipt)",
    ):
        assert heading in text, heading
    for phrase in ("手渡し", "簡易書留", "口頭", "鍵付キャビネット", "registered mail"):
        assert phrase in text, phrase
    assert "2026年7月15日 10:32 JST" in text
    assert "70,000" in text


def test_japanese_text_is_in_the_pypdf_layer_too(rendered: Path) -> None:
    """Without poppler, pypdf still extracts the Japanese title and the JST time."""
    text = PdfReader(rendered).pages[0].extract_text()
    assert "パスワード通知書" in text
    assert "鍵付キャビネット" in text
    assert "10:32 JST" in text


def test_file_is_mode_0600_even_over_a_readable_file(tmp_path: Path) -> None:
    """The notice holds a secret: it is written 0600, also when replacing a 0644 file."""
    out = tmp_path / "n.pdf"
    out.write_bytes(b"old")
    out.chmod(0o644)
    _render(out)
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["n.pdf"]


def test_passphrase_is_not_in_metadata_or_plain_bytes(rendered: Path) -> None:
    """The passphrase appears neither in the document info nor anywhere uncompressed."""
    reader = PdfReader(rendered)
    meta = reader.metadata
    assert meta is not None
    assert meta.title is not None
    assert "パスワード通知書" in meta.title
    assert BATCH in meta.title
    for value in meta.values():
        assert PASSPHRASE not in str(value)
        assert PASSPHRASE.replace("-", "") not in str(value)
    assert PASSPHRASE.encode() not in rendered.read_bytes()


def test_failure_while_drawing_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error mid-render removes the temp file and keeps the previous notice."""

    def boom(*args: object) -> float:
        raise RuntimeError("printer on fire")

    monkeypatch.setattr(notice, "_draw_receipt", boom)
    out = tmp_path / "n.pdf"
    out.write_bytes(b"previous")
    with pytest.raises(RuntimeError, match="printer on fire"):
        _render(out)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["n.pdf"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"created_at": datetime(2026, 7, 15, 10, 32)}, "timezone-aware"),
        ({"passphrase": ""}, "passphrase must be"),
        ({"passphrase": "７F3K-Q2AB"}, "passphrase must be"),
        ({"passphrase": "7F3K-Q2AB\n"}, "passphrase must be"),
        ({"passphrase": " 7F3K-Q2AB"}, "must not start or end"),
        ({"batch_id": ""}, "batch id must be"),
        ({"file_count": -1}, "must not be negative"),
    ],
)
def test_bad_arguments_raise_without_revealing_the_secret(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    """Unusable arguments raise ValueError, write nothing and never echo the passphrase."""
    with pytest.raises(ValueError, match=message) as caught:
        _render(tmp_path / "n.pdf", **overrides)
    assert "7F3K-Q2AB" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


@needs_pdftotext
def test_long_values_stay_on_one_line(tmp_path: Path) -> None:
    """A long batch id and passphrase still come out as one line each (condensed, not wrapped)."""
    batch = "20261231-KAIGOHOKENRYO-NOUNYU-7F3KQ2AB"
    phrase = "-".join(["ABCD"] * 12)
    out = _render(tmp_path / "n.pdf", batch_id=batch, passphrase=phrase)
    lines = [line.strip() for line in _pdftotext(out).splitlines()]
    assert f"Batch: {batch}" in lines
    assert f"Passphrase: {phrase}" in lines


@needs_pdftoppm
def test_page_renders_with_ink(rendered: Path, tmp_path: Path) -> None:
    """pdftoppm renders the page, and it is neither blank nor solid."""
    subprocess.run(
        ["pdftoppm", "-gray", "-r", "40", "-singlefile", str(rendered), str(tmp_path / "p")],
        check=True,
        capture_output=True,
    )
    raw = (tmp_path / "p.pgm").read_bytes()
    magic, width, height, maxval, pixels = raw.split(maxsplit=4)
    assert magic == b"P5"
    assert maxval == b"255"
    assert len(pixels) == int(width) * int(height)
    dark = sum(1 for value in pixels if value < 128)
    assert 0.01 < dark / len(pixels) < 0.5


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 7, 15, 1, 32, tzinfo=UTC), "2026年7月15日 10:32 JST"),
        (datetime(2026, 12, 31, 15, 5, tzinfo=UTC), "2027年1月1日 00:05 JST"),
        (datetime(2026, 7, 15, 10, 32, tzinfo=JST_OFFSET), "2026年7月15日 10:32 JST"),
    ],
)
def test_format_jst(moment: datetime, expected: str) -> None:
    """Times shown to people are converted to JST and written the Japanese way."""
    assert pdf.format_jst(moment) == expected


def test_wrap_keeps_lines_within_width_and_obeys_kinsoku() -> None:
    """Japanese wraps between characters but never starts a line with 。、 or ー."""
    text = 3 * (
        "本通知書は暗号化データとは別に届けます。ディスクと同封せず、データの転送経路では決して送りません。"
    )
    lines = pdf.wrap(text, size=10, width=200, font=pdf.MINCHO)
    assert "".join(lines) == text
    assert len(lines) > 3
    for line in lines:
        assert line[0] not in "。、ー）"
        assert pdf.text_width(line, size=10, font=pdf.MINCHO) <= 200 + 10


def test_wrap_breaks_english_at_spaces() -> None:
    """English text wraps at spaces only."""
    text = "Keep it in a locked cabinet, apart from the data, and destroy it after use."
    lines = pdf.wrap(text, size=10, width=120, font=pdf.LATIN)
    assert " ".join(lines) == text
    assert all(pdf.text_width(line, size=10, font=pdf.LATIN) <= 120 for line in lines)
