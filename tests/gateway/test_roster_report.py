"""Tests for gateway.roster_report: the 取扱責任者及び取扱者名簿 PDF and CSV (in process)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pypdf import PdfReader

from gateway.roster_report import cells, ordered, render_pdf, write_csv
from gateway.state import StaffMember

T0 = datetime(2026, 7, 15, 1, 0, tzinfo=UTC)  # 10:00 JST


def _member(name: str, role: str = "handler", active: bool = True, **kw: str) -> StaffMember:
    later = T0 + timedelta(days=30)
    return StaffMember(
        name, role, kw.get("full_name", name.upper()), "$argon2id$x", active, T0,
        T0 if active else later,
    )  # fmt: skip


def _text(path: Path) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(path).pages)


def test_order_is_managers_then_handlers_by_name() -> None:
    """Managers first, then handlers, each alphabetically; disabled ones keep their place."""
    members = [
        _member("b-handler"),
        _member("z-boss", "manager"),
        _member("a-handler", active=False),
    ]
    assert [m.name for m in ordered(members)] == ["z-boss", "a-handler", "b-handler"]


def test_cells_show_role_status_and_dates_in_jst() -> None:
    """A disabled handler's row: 取扱者, 停止 and both dates as JST calendar dates."""
    row = cells(_member("kato", active=False), 3, bilingual=False)
    assert row == ["3", "取扱者", "KATO", "kato", "停止", "2026年7月15日", "2026年8月14日"]
    assert cells(_member("sato", "manager"), 1, bilingual=True)[1] == "取扱責任者 (manager)"


def test_empty_roster_pdf_says_nobody(tmp_path: Path) -> None:
    """A roster with nobody on it is still a valid one-page document saying so."""
    out = tmp_path / "roster.pdf"
    render_pdf(out, [], prepared_at=T0, site="print-pc")
    assert len(PdfReader(out).pages) == 1
    text = _text(out)
    assert "nobody registered" in text and "print-pc" in text
    assert "2026年7月15日10:00JST" in "".join(text.split())


def test_long_full_name_wraps_instead_of_being_cut(tmp_path: Path) -> None:
    """A 100-character full name is printed whole, over several lines of its cell."""
    name = "".join(chr(0x4E00 + i) for i in range(100))
    out = tmp_path / "roster.pdf"
    render_pdf(out, [_member("long", full_name=name)], prepared_at=T0)
    text = "".join(_text(out).split())
    assert name in text


def test_naive_prepared_time_is_refused(tmp_path: Path) -> None:
    """prepared_at without a timezone is refused and no file is left behind."""
    out = tmp_path / "roster.pdf"
    with pytest.raises(ValueError, match="timezone-aware"):
        render_pdf(out, [_member("sato")], prepared_at=datetime(2026, 7, 15))
    assert list(tmp_path.iterdir()) == []


def test_csv_replaces_an_older_file_atomically(tmp_path: Path) -> None:
    """Writing over an existing CSV replaces it whole; no temporary file stays."""
    out = tmp_path / "roster.csv"
    out.write_text("old")
    write_csv(out, [_member("sato")])
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    assert "sato" in out.read_text(encoding="utf-8-sig")
    assert [p.name for p in tmp_path.iterdir()] == ["roster.csv"]
