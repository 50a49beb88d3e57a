"""Synthetic 介護保険料納入通知書 (care-insurance premium notice) print data.

One CSV row per first-category insured person (65+) paying by bill (普通徴収):
who they are, where the notice goes, their income band (所得段階), the annual
premium (年額保険料) and its nine instalments (納期) with due dates (納期限),
July to March. Everything is fake: names come from Faker's ``ja_JP`` tables,
addresses are built from real 新宿区 town names and postcodes with random
丁目/番/号, and numbers are random. The output stands in for personal data, so
it is written like personal data: atomically and mode 0600.

File format, chosen to match what a Japanese municipal system hands a print
vendor:

- CP932 (Windows Shift_JIS) by default; every field is made encodable first
  (a character the encoding lacks becomes ``〓``, the customary geta mark).
- CRLF line endings (``\\r\\n``), as mainframe exports and vendors' variable-data
  print tools expect, and as RFC 4180 specifies for CSV.
- A header row of :data:`COLUMNS`; numbers and dates half-width, dates ISO
  ``YYYY-MM-DD``; 住所 and 方書 in full-width digits as printed on the envelope.

Due dates: the last day of each month from July to February, and March 31 of
the next calendar year, moved to the following Monday when they fall on a
Saturday or Sunday (national holidays are not modelled). December uses the
25th instead of the 31st because offices close for the New Year.

Instalments: 第2期 to 第9期 are ``annual // 9`` rounded down to 100 yen; 第1期
takes the remainder, so the nine always sum exactly to the annual premium.

Determinism: the same ``seed``, ``records``, ``fiscal_year`` and ``encoding``
give the same bytes (with the same Faker version). Without ``fiscal_year`` the
current Japanese fiscal year (April to March, Asia/Tokyo) is used.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import os
import random
import secrets
import tempfile
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from itertools import accumulate
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

from faker import Faker

from client.i18n import _

MAX_RECORDS = 10_000_000
"""Upper bound on ``records``: well above a ward's run, below a runaway typo."""

MIN_FISCAL_YEAR = 2000
MAX_FISCAL_YEAR = 2100

INSTALMENTS = 9
"""Nine instalments (納期), July to March."""

INSTALMENT_MONTHS = (7, 8, 9, 10, 11, 12, 1, 2, 3)

FIRST_CATEGORY_AGE = 65
"""第1号被保険者: residents aged 65 or over."""

COLUMNS: tuple[str, ...] = (
    "通知書番号",
    "賦課年度",
    "被保険者番号",
    "氏名",
    "氏名カナ",
    "性別",
    "生年月日",
    "郵便番号",
    "住所",
    "方書",
    "所得段階",
    "年額保険料",
    *(f"第{n}期納付額" for n in range(1, INSTALMENTS + 1)),
    *(f"第{n}期納期限" for n in range(1, INSTALMENTS + 1)),
)
"""The header row, in order."""

PREFECTURE_CITY = "東京都新宿区"

SUBSTITUTE_CHAR = "〓"
"""Stands in for a character the output encoding cannot represent."""

_JST = ZoneInfo("Asia/Tokyo")
_FULL_WIDTH_DIGITS = str.maketrans("0123456789", "０１２３４５６７８９")


class IncomeBand(NamedTuple):
    """One row of the premium table."""

    band: int
    """所得段階, 1 to 18."""
    ratio_permille: int
    """Multiplier of the base premium, in thousandths."""
    annual_yen: int
    """年額保険料: base × ratio, rounded to the nearest 100 yen."""
    share_permille: int
    """How many of every 1,000 generated records fall in this band."""


BASE_ANNUAL_PREMIUM_YEN = 79_200
"""基準額 (band with ratio 1.0), per year. Illustrative, not the ward's official figure."""

_BAND_RATIOS_AND_SHARES = (
    (285, 200),
    (485, 80),
    (685, 70),
    (900, 100),
    (1000, 100),
    (1100, 110),
    (1250, 100),
    (1400, 60),
    (1550, 40),
    (1700, 30),
    (1850, 25),
    (2000, 20),
    (2200, 15),
    (2400, 12),
    (2650, 10),
    (2900, 10),
    (3150, 8),
    (3400, 10),
)

INCOME_BANDS: tuple[IncomeBand, ...] = tuple(
    IncomeBand(
        band=n,
        ratio_permille=ratio,
        annual_yen=(BASE_ANNUAL_PREMIUM_YEN * ratio + 50_000) // 100_000 * 100,
        share_permille=share,
    )
    for n, (ratio, share) in enumerate(_BAND_RATIOS_AND_SHARES, start=1)
)
"""The 18 income bands. Source: illustrative, not the ward's official table; shaped
like a large Tokyo ward's (reduced ratios 0.285/0.485/0.685 for the lowest bands,
the standard ratio 1.0 in band 5, up to 3.4 for the highest incomes)."""

SHINJUKU_TOWNS: tuple[tuple[str, str, int], ...] = (
    # (町名, 郵便番号, highest 丁目 or 0 for a town without 丁目: "富久町１６番５号")
    ("西新宿", "160-0023", 8),
    ("新宿", "160-0022", 7),
    ("歌舞伎町", "160-0021", 2),
    ("四谷", "160-0004", 4),
    ("若葉", "160-0011", 3),
    ("信濃町", "160-0016", 0),
    ("大京町", "160-0015", 0),
    ("左門町", "160-0017", 0),
    ("須賀町", "160-0018", 0),
    ("内藤町", "160-0014", 0),
    ("富久町", "162-0067", 0),
    ("余丁町", "162-0055", 0),
    ("河田町", "162-0054", 0),
    ("若松町", "162-0056", 0),
    ("原町", "162-0053", 3),
    ("弁天町", "162-0851", 0),
    ("戸山", "162-0052", 3),
    ("神楽坂", "162-0825", 6),
    ("市谷加賀町", "162-0062", 2),
    ("早稲田鶴巻町", "162-0041", 0),
    ("西早稲田", "169-0051", 3),
    ("大久保", "169-0072", 3),
    ("百人町", "169-0073", 4),
    ("北新宿", "169-0074", 4),
    ("高田馬場", "169-0075", 4),
    ("下落合", "161-0033", 4),
    ("中落合", "161-0032", 4),
    ("上落合", "161-0034", 3),
    ("西落合", "161-0031", 4),
    ("中井", "161-0035", 2),
)
"""Town names and postcodes of 新宿区 (Shinjuku City); the street numbers are fictitious."""

_BUILDING_SHARE = 0.4
_FEMALE_SHARE = 0.56  # women outnumber men among those aged 65+
_MEAN_YEARS_OVER_65 = 10.0
_MAX_AGE = 105


def write_sample(
    out: Path,
    records: int,
    *,
    seed: int | None = None,
    encoding: str = "cp932",
    fiscal_year: int | None = None,
) -> int:
    """Write ``records`` synthetic premium-notice rows (plus a header) to ``out``.

    The file is streamed to a temporary file beside ``out`` and renamed into place,
    so ``out`` is either untouched or complete.

    Args:
        out: Destination CSV path; its directory must exist.
        records: Number of data rows, 1 to :data:`MAX_RECORDS`.
        seed: Makes the output reproducible; ``None`` draws a random seed.
        encoding: Output encoding (default CP932).
        fiscal_year: 賦課年度; defaults to the current Japanese fiscal year.

    Returns:
        The number of data rows written (the header is not counted).

    Raises:
        ValueError: An argument is out of range or the encoding is unknown.
        OSError: The file could not be written; no partial file is left.
    """
    fiscal_year = _check_args(out, records, encoding, fiscal_year)
    if seed is None:
        seed = secrets.randbits(64)
    written = 0
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding=encoding, errors="strict", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(COLUMNS)
            for row in _rows(records, seed, fiscal_year, encoding):
                writer.writerow(row)
                written += 1
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return written


def current_fiscal_year(now: datetime | None = None) -> int:
    """The Japanese fiscal year (April to March) of ``now`` in Asia/Tokyo."""
    today = (now or datetime.now(_JST)).astimezone(_JST).date()
    return today.year if today.month >= 4 else today.year - 1


def due_dates(fiscal_year: int) -> tuple[date, ...]:
    """The nine 納期限 of ``fiscal_year``, July to March (rule in the module docstring)."""
    result = []
    for month in INSTALMENT_MONTHS:
        year = fiscal_year if month >= 4 else fiscal_year + 1
        if month == 12:
            day = date(year, 12, 25)
        else:
            day = date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)
        while day.weekday() >= 5:
            day += timedelta(days=1)
        result.append(day)
    return tuple(result)


def instalments(annual_yen: int) -> tuple[int, ...]:
    """Split an annual premium into nine; 第1期 takes the remainder of the 100-yen rounding."""
    if annual_yen < 0:
        raise ValueError(f"annual premium must not be negative, got {annual_yen}")
    later = annual_yen // INSTALMENTS // 100 * 100
    return (annual_yen - later * (INSTALMENTS - 1),) + (later,) * (INSTALMENTS - 1)


def _check_args(out: Path, records: int, encoding: str, fiscal_year: int | None) -> int:
    if isinstance(records, bool) or not isinstance(records, int):
        raise ValueError(_("records must be an integer, got {value}").format(value=repr(records)))
    if not 1 <= records <= MAX_RECORDS:
        raise ValueError(
            _("records must be between 1 and {max:,}, got {value:,}").format(
                max=MAX_RECORDS, value=records
            )
        )
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(_("unknown encoding {name}").format(name=repr(encoding))) from None
    try:
        "".join((*COLUMNS, "男女")).encode(encoding)
    except UnicodeEncodeError:
        raise ValueError(
            _("encoding {name} cannot represent Japanese text").format(name=repr(encoding))
        ) from None
    if fiscal_year is None:
        fiscal_year = current_fiscal_year()
    if not MIN_FISCAL_YEAR <= fiscal_year <= MAX_FISCAL_YEAR:
        raise ValueError(
            _("fiscal year must be between {low} and {high}, got {value}").format(
                low=MIN_FISCAL_YEAR, high=MAX_FISCAL_YEAR, value=fiscal_year
            )
        )
    if out.is_dir():
        raise ValueError(_("{path} is a directory, not a file name").format(path=out))
    return fiscal_year


def _rows(records: int, seed: int, fiscal_year: int, encoding: str) -> Iterator[list[str]]:
    """Yield the data rows one at a time (nothing accumulates in memory)."""
    rng = random.Random(seed)  # noqa: S311 -- reproducible fake data, not a secret
    fake = Faker("ja_JP")
    fake.seed_instance(rng.getrandbits(64))
    bands = INCOME_BANDS
    cum_shares = list(accumulate(b.share_permille for b in bands))
    due = [d.isoformat() for d in due_dates(fiscal_year)]
    cutoff = date(fiscal_year, 4, 1)  # age is counted on the first day of the fiscal year
    safe = _Sanitizer(encoding)
    insured = rng.randrange(1_000_000_000, 1_100_000_000)
    for seq in range(1, records + 1):
        insured += rng.randint(1, 9)  # issued in order; gaps are people who left
        female = rng.random() < _FEMALE_SHARE
        if female:
            first, first_kana, _ = fake.first_name_female_pair()
        else:
            first, first_kana, _ = fake.first_name_male_pair()
        last, last_kana, _ = fake.last_name_pair()
        age = min(FIRST_CATEGORY_AGE + int(rng.expovariate(1 / _MEAN_YEARS_OVER_65)), _MAX_AGE)
        born = cutoff.replace(year=fiscal_year - age - 1) + timedelta(days=rng.randrange(1, 366))
        born = min(born, cutoff.replace(year=fiscal_year - age))
        town, postcode, max_chome = rng.choice(SHINJUKU_TOWNS)
        if max_chome:
            street = f"{rng.randint(1, max_chome)}丁目{fake.ban()}{fake.gou()}"
        else:
            street = f"{fake.ban()}{fake.gou()}"
        building = ""
        if rng.random() < _BUILDING_SHARE:
            building = f"{fake.building_name()}{town}{rng.randint(1, 12)}{rng.randint(1, 15):02d}"
        band = rng.choices(bands, cum_weights=cum_shares)[0]
        yield [
            f"{fiscal_year}{seq:08d}",
            str(fiscal_year),
            f"{insured:010d}",
            safe(f"{last}\u3000{first}"),
            safe(f"{last_kana}\u3000{first_kana}"),
            "女" if female else "男",
            born.isoformat(),
            postcode,
            safe(f"{PREFECTURE_CITY}{town}{street}".translate(_FULL_WIDTH_DIGITS)),
            safe(building.translate(_FULL_WIDTH_DIGITS)),
            str(band.band),
            str(band.annual_yen),
            *(str(n) for n in instalments(band.annual_yen)),
            *due,
        ]


class _Sanitizer:
    """Replace characters the output encoding lacks, so writing never fails midway."""

    def __init__(self, encoding: str) -> None:
        self._encoding = encoding
        self._substitute = self._pick_substitute(encoding)

    @staticmethod
    def _pick_substitute(encoding: str) -> str:
        try:
            SUBSTITUTE_CHAR.encode(encoding)
        except UnicodeEncodeError:
            return "?"
        return SUBSTITUTE_CHAR

    def __call__(self, text: str) -> str:
        try:
            text.encode(self._encoding)
        except UnicodeEncodeError:
            return "".join(self._char(c) for c in text)
        return text

    def _char(self, char: str) -> str:
        try:
            char.encode(self._encoding)
        except UnicodeEncodeError:
            return self._substitute
        return char
