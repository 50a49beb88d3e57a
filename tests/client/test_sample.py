"""Tests for client.sample: the synthetic 介護保険料納入通知書 print data."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client import sample

FISCAL_YEAR = 2026
SEED = 20260715
KATAKANA_NAME = re.compile(r"^[ァ-ヶー]+\u3000[ァ-ヶー]+$")
POSTCODE = re.compile(r"^\d{3}-\d{4}$")
INSURED = re.compile(r"^\d{10}$")
PAYMENT_COLUMNS = [f"第{n}期納付額" for n in range(1, 10)]
DUE_COLUMNS = [f"第{n}期納期限" for n in range(1, 10)]


def _write(path: Path, records: int, **kw: object) -> bytes:
    kw.setdefault("seed", SEED)
    kw.setdefault("fiscal_year", FISCAL_YEAR)
    assert sample.write_sample(path, records, **kw) == records  # type: ignore[arg-type]
    return path.read_bytes()


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("cp932"), newline="")))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A 2,000-record file shared by the read-only tests."""
    return _write(tmp_path_factory.mktemp("sample") / "kaigo.csv", 2000)


@pytest.fixture(scope="module")
def rows(data: bytes) -> list[dict[str, str]]:
    """The rows of the shared file, decoded from CP932."""
    return _rows(data)


def test_header_row_is_the_column_tuple(data: bytes) -> None:
    """The first line is the header, exactly COLUMNS, with the columns print needs."""
    header = data.split(b"\r\n", 1)[0].decode("cp932").split(",")
    assert header == list(sample.COLUMNS)
    for name in ("通知書番号", "被保険者番号", "氏名", "氏名カナ", "郵便番号", "住所", "所得段階"):
        assert name in header
    assert header[-18:] == PAYMENT_COLUMNS + DUE_COLUMNS


def test_record_count_and_crlf_line_endings(data: bytes) -> None:
    """2,000 records give 2,001 CRLF-terminated lines and no bare LF."""
    assert data.endswith(b"\r\n")
    assert data.count(b"\r\n") == 2001
    assert data.count(b"\n") == 2001


def test_file_is_cp932_not_utf8(data: bytes) -> None:
    """The bytes decode as CP932 with Japanese in them, and are not UTF-8."""
    text = data.decode("cp932")
    assert "東京都新宿区" in text
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")


def test_insured_numbers_are_ten_digits_and_unique(rows: list[dict[str, str]]) -> None:
    """Every 被保険者番号 has 10 digits and none repeats; 通知書番号 are unique too."""
    numbers = [r["被保険者番号"] for r in rows]
    assert all(INSURED.match(n) for n in numbers)
    assert len(set(numbers)) == len(rows)
    assert len({r["通知書番号"] for r in rows}) == len(rows)


def test_people_look_real(rows: list[dict[str, str]]) -> None:
    """Names have a kanji and a full-width katakana reading, addresses are in 新宿区."""
    for r in rows:
        assert "\u3000" in r["氏名"]
        assert KATAKANA_NAME.match(r["氏名カナ"]), r["氏名カナ"]
        assert POSTCODE.match(r["郵便番号"])
        assert r["郵便番号"][:3] in {"160", "161", "162", "169"}
        assert r["住所"].startswith("東京都新宿区")
        assert r["性別"] in {"男", "女"}
    assert len({r["氏名"] for r in rows}) > 500
    assert len({r["住所"] for r in rows}) > 1800
    assert any(r["方書"] for r in rows)
    assert any(not r["方書"] for r in rows)


def test_everyone_is_65_or_over_on_april_first(rows: list[dict[str, str]]) -> None:
    """生年月日 makes every person a first-category insured person (65+) in the fiscal year."""
    cutoff = date(FISCAL_YEAR, 4, 1)
    for r in rows:
        born = date.fromisoformat(r["生年月日"])
        age = cutoff.year - born.year - ((cutoff.month, cutoff.day) < (born.month, born.day))
        assert 65 <= age <= 105
        assert r["賦課年度"] == str(FISCAL_YEAR)


def test_bands_and_premiums_follow_the_table(rows: list[dict[str, str]]) -> None:
    """所得段階 is 1-18 and 年額保険料 is the table's amount for that band."""
    table = {b.band: b.annual_yen for b in sample.INCOME_BANDS}
    seen = set()
    for r in rows:
        band = int(r["所得段階"])
        assert 1 <= band <= 18
        assert int(r["年額保険料"]) == table[band]
        seen.add(band)
    assert len(seen) >= 15


def test_premium_table_shape() -> None:
    """18 bands with rising premiums from 0.285 to 3.4 times the base; shares sum to 1,000."""
    bands = sample.INCOME_BANDS
    assert [b.band for b in bands] == list(range(1, 19))
    assert bands[0].ratio_permille == 285
    assert bands[-1].ratio_permille == 3400
    assert all(a.annual_yen < b.annual_yen for a, b in pairwise(bands))
    assert all(b.annual_yen % 100 == 0 for b in bands)
    assert sum(b.share_permille for b in bands) == 1000


def test_instalments_sum_to_the_annual_premium(rows: list[dict[str, str]]) -> None:
    """The nine 納付額 add up exactly to 年額保険料; 第2期 onward are whole hundreds."""
    for r in rows:
        parts = [int(r[c]) for c in PAYMENT_COLUMNS]
        assert sum(parts) == int(r["年額保険料"])
        assert all(p % 100 == 0 for p in parts[1:])
        assert parts[0] >= parts[1]


@given(st.integers(min_value=0, max_value=10_000_000))
def test_instalment_split_property(annual: int) -> None:
    """For any amount the split sums exactly and puts the remainder on 第1期."""
    parts = sample.instalments(annual)
    assert len(parts) == 9
    assert sum(parts) == annual
    assert len(set(parts[1:])) == 1
    assert parts[1] % 100 == 0
    assert 0 <= parts[0] - parts[1] < 900


def test_due_dates_run_july_to_march_in_order(rows: list[dict[str, str]]) -> None:
    """Every row carries the nine due dates of FY2026, on weekdays, July to March."""
    expected = [
        "2026-07-31",
        "2026-08-31",
        "2026-09-30",
        "2026-11-02",  # Oct 31 is a Saturday
        "2026-11-30",
        "2026-12-25",
        "2027-02-01",  # Jan 31 is a Sunday
        "2027-03-01",  # Feb 28 is a Sunday
        "2027-03-31",
    ]
    assert [d.isoformat() for d in sample.due_dates(FISCAL_YEAR)] == expected
    for r in rows:
        assert [r[c] for c in DUE_COLUMNS] == expected


def _nominal_due(year: int, month: int) -> date:
    """End of ``month`` (25th in December) of the fiscal year starting in ``year``."""
    y = year if month >= 4 else year + 1
    if month == 12:
        return date(y, 12, 25)
    return date(y + month // 12, month % 12 + 1, 1) - timedelta(days=1)


@pytest.mark.parametrize("year", range(2020, 2040))
def test_due_dates_are_month_ends_moved_to_weekdays(year: int) -> None:
    """Each 納期限 July-March is its month end, or the Monday after when that is a weekend."""
    days = sample.due_dates(year)
    assert all(a < b for a, b in pairwise(days))
    for day, month in zip(days, (7, 8, 9, 10, 11, 12, 1, 2, 3), strict=True):
        nominal = _nominal_due(year, month)
        assert day.weekday() < 5
        assert 0 <= (day - nominal).days <= 2
        assert all(
            (nominal + timedelta(days=k)).weekday() >= 5 for k in range((day - nominal).days)
        )


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    """Output is a function of the seed: identical for the same seed, different otherwise."""
    a = _write(tmp_path / "a.csv", 300)
    b = _write(tmp_path / "b.csv", 300)
    c = _write(tmp_path / "c.csv", 300, seed=SEED + 1)
    assert a == b
    assert a != c


def test_other_fiscal_year_changes_the_data(tmp_path: Path) -> None:
    """The fiscal year shows in 賦課年度, the due dates and the ages."""
    rows = _rows(_write(tmp_path / "a.csv", 5, fiscal_year=2027))
    assert {r["賦課年度"] for r in rows} == {"2027"}
    assert rows[0]["第1期納期限"] == "2027-08-02"  # July 31, 2027 is a Saturday


def test_utf8_encoding_is_available(tmp_path: Path) -> None:
    """encoding='utf-8' writes the same rows in UTF-8."""
    cp932 = _write(tmp_path / "a.csv", 50)
    utf8 = _write(tmp_path / "b.csv", 50, encoding="utf-8")
    assert utf8.decode("utf-8") == cp932.decode("cp932")


def test_characters_outside_cp932_become_geta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A character CP932 lacks (𠮷) is written as 〓 instead of failing the run."""
    monkeypatch.setattr(sample, "SHINJUKU_TOWNS", (("𠮷野町", "160-0000", 0),))
    rows = _rows(_write(tmp_path / "a.csv", 20))
    assert all(r["住所"].startswith("東京都新宿区〓野町") for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"records": 0}, "records must be between 1"),
        ({"records": -5}, "records must be between 1"),
        ({"records": sample.MAX_RECORDS + 1}, "records must be between 1"),
        ({"records": True}, "records must be an integer"),
        ({"records": 2.5}, "records must be an integer"),
        ({"encoding": "no-such-codec"}, "unknown encoding"),
        ({"encoding": "ascii"}, "cannot represent Japanese"),
        ({"fiscal_year": 1999}, "fiscal year must be between"),
        ({"fiscal_year": 2101}, "fiscal year must be between"),
    ],
)
def test_bad_arguments_raise_value_error(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    """Out-of-range arguments raise ValueError with a clear message and write nothing."""
    args: dict[str, object] = {"records": 10, "seed": 1, "fiscal_year": FISCAL_YEAR, **kwargs}
    records = args.pop("records")
    with pytest.raises(ValueError, match=message):
        sample.write_sample(tmp_path / "x.csv", records, **args)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_directory_as_output_is_refused(tmp_path: Path) -> None:
    """Naming a directory as the output raises ValueError and leaves it alone."""
    with pytest.raises(ValueError, match="is a directory"):
        sample.write_sample(tmp_path, 10, seed=1, fiscal_year=FISCAL_YEAR)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error while streaming removes the temp file and keeps the previous output."""
    out = tmp_path / "kaigo.csv"
    out.write_bytes(b"previous run\r\n")
    real_rows = sample._rows

    def failing_rows(*args: object) -> Iterator[list[str]]:
        rows = real_rows(*args)  # type: ignore[arg-type]
        yield next(rows)
        raise OSError("disk full")

    monkeypatch.setattr(sample, "_rows", failing_rows)
    with pytest.raises(OSError, match="disk full"):
        sample.write_sample(out, 100, seed=1, fiscal_year=FISCAL_YEAR)
    assert out.read_bytes() == b"previous run\r\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kaigo.csv"]


def test_output_is_private_and_whole(tmp_path: Path) -> None:
    """The finished file is mode 0600 (it stands in for personal data); no temp remains."""
    out = tmp_path / "kaigo.csv"
    _write(out, 10)
    assert out.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["kaigo.csv"]


def test_missing_directory_is_an_os_error(tmp_path: Path) -> None:
    """A destination in a missing directory raises OSError (the CLI's file error)."""
    with pytest.raises(FileNotFoundError):
        sample.write_sample(tmp_path / "nope" / "x.csv", 1, seed=1, fiscal_year=FISCAL_YEAR)


@pytest.mark.parametrize(
    ("moment", "year"),
    [
        (datetime(2026, 3, 31, 14, 59, tzinfo=UTC), 2025),  # 23:59 JST, Mar 31
        (datetime(2026, 3, 31, 15, 0, tzinfo=UTC), 2026),  # 00:00 JST, Apr 1
        (datetime(2026, 7, 15, 1, 0, tzinfo=UTC), 2026),
        (datetime(2027, 1, 10, 1, 0, tzinfo=UTC), 2026),
    ],
)
def test_default_fiscal_year_starts_in_april_jst(moment: datetime, year: int) -> None:
    """The default 賦課年度 is the Japanese fiscal year (April-March) in Asia/Tokyo."""
    assert sample.current_fiscal_year(moment) == year


@pytest.mark.slow
def test_a_ward_sized_run_of_70000_records(tmp_path: Path) -> None:
    """A Shinjuku-sized July run (70,000 records) is written, encodes in CP932, all unique."""
    out = tmp_path / "kaigo.csv"
    assert sample.write_sample(out, 70_000, seed=SEED, fiscal_year=FISCAL_YEAR) == 70_000
    rows = _rows(out.read_bytes())
    assert len(rows) == 70_000
    assert len({r["被保険者番号"] for r in rows}) == 70_000
    assert all(sum(int(r[c]) for c in PAYMENT_COLUMNS) == int(r["年額保険料"]) for r in rows)
