"""Tests for envelope.printdata: one record-counting rule for the ward and the print site."""

import hashlib
import io

import pytest

from envelope import printdata
from envelope.errors import ManifestError

HEADER = "被保険者番号,氏名,住所,所得段階,年額保険料\r\n"


def _csv(rows: int, *, newline: str = "\r\n") -> bytes:
    """A CP932 premium-notice CSV with a header and ``rows`` data rows."""
    lines = [HEADER.rstrip("\r\n")]
    lines += [
        f"{i:010d},新宿 花子{i},東京都新宿区西新宿{i}丁目,第{i % 18 + 1}段階,{i * 100}"
        for i in range(rows)
    ]
    return (newline.join(lines) + newline).encode("cp932")


def _count(data: bytes, name: str = "kaigo.csv", encoding: str = "cp932") -> int:
    return printdata.count_records(io.BytesIO(data), name, encoding)


def _teed(data: bytes, name: str) -> tuple[int, bytes]:
    """Count ``data`` and return the count and every byte handed to on_bytes."""
    seen: list[bytes] = []
    count = printdata.count_records(io.BytesIO(data), name, "cp932", on_bytes=seen.append)
    return count, b"".join(seen)


@pytest.mark.parametrize("rows", [0, 1, 2, 1000])
def test_counts_csv_rows_after_header(rows: int) -> None:
    """A CP932 CSV counts its data rows, not the header."""
    assert _count(_csv(rows)) == rows


def test_counts_lf_and_crlf_alike() -> None:
    """LF, CRLF and a missing final newline give the same count."""
    crlf = _csv(5)
    lf = _csv(5, newline="\n")
    assert b"\r\n" in crlf and b"\r" not in lf
    assert _count(crlf) == _count(lf) == _count(crlf.rstrip(b"\r\n")) == 5


def test_quoted_newlines_are_one_record() -> None:
    """A quoted field spanning lines (CRLF inside) counts as one record."""
    data = (HEADER + '0000000001,"山田\r\n太郎","東京都\n新宿区",第1段階,100\r\n').encode("cp932")
    assert data.count(b"\n") == 4
    assert _count(data) == 1


def test_quoted_commas_and_quotes_are_one_field() -> None:
    """Commas and doubled quotes inside quotes do not add columns."""
    data = (HEADER + '1,"山田, 太郎","say ""はい""",第1段階,100\r\n').encode("cp932")
    assert _count(data) == 1


def test_cp932_specific_characters_decode() -> None:
    """CP932-only characters (NEC specials, e.g. ①, ㈱, 髙) are accepted."""
    data = (HEADER + "1,髙橋 ①,㈱新宿,第1段階,100\r\n").encode("cp932")
    with pytest.raises(UnicodeEncodeError):
        "①㈱髙".encode("shift_jis")
    assert _count(data) == 1


def test_suffix_is_case_insensitive() -> None:
    """A .CSV file is parsed as CSV as well."""
    assert printdata.is_csv("KAIGO.CSV") and printdata.is_csv("a.Csv")
    assert not printdata.is_csv("a.csv.pdf") and not printdata.is_csv("csv")
    assert _count(_csv(3), name="KAIGO.CSV") == 3


def test_inconsistent_columns_name_the_row() -> None:
    """A data row with a different column count is refused, naming the file and the row."""
    data = (HEADER + "1,a,b,c,100\r\n2,a,b,c\r\n3,a,b,c,100\r\n").encode("cp932")
    with pytest.raises(ManifestError) as info:
        _count(data)
    message = str(info.value)
    assert "kaigo.csv" in message
    assert "row 3 " in message
    assert "4 columns" in message and "header has 5" in message


def test_extra_column_on_first_data_row_is_row_2() -> None:
    """The first data row is row 2 (the header is row 1)."""
    data = (HEADER + "1,a,b,c,100,extra\r\n").encode("cp932")
    with pytest.raises(ManifestError, match=r"row 2 has 6 columns"):
        _count(data)


def test_blank_line_in_the_middle_is_refused() -> None:
    """An empty line is a row with no columns, not skipped silently."""
    data = (HEADER + "1,a,b,c,100\r\n\r\n2,a,b,c,100\r\n").encode("cp932")
    with pytest.raises(ManifestError, match="row 3 has 0 columns"):
        _count(data)


def test_bad_quoting_is_refused() -> None:
    """Text after a closing quote is malformed CSV (strict mode)."""
    data = (HEADER + '1,"a"b,c,d,100\r\n').encode("cp932")
    with pytest.raises(ManifestError, match="not valid CSV near row 2"):
        _count(data)


def test_unterminated_quote_is_refused() -> None:
    """A quote left open to the end of the file is malformed CSV."""
    data = (HEADER + '1,"a,b,c,100\r\n').encode("cp932")
    with pytest.raises(ManifestError, match="not valid CSV"):
        _count(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(HEADER.encode("cp932") + b"1,\x82,b,c,100\r\n", id="truncated-lead-byte"),
        pytest.param(HEADER.encode("cp932") + b"1,\x85\x40,b,c,100\r\n", id="unassigned-pair"),
        pytest.param(HEADER.encode("cp932") + b"1,\x81\x7f,b,c,100\r\n", id="bad-trail-byte"),
        pytest.param(HEADER.encode("utf-8"), id="utf-8"),
        pytest.param(_csv(10) + b"\x81", id="truncated-at-eof"),
    ],
)
def test_bytes_not_cp932_are_refused(data: bytes) -> None:
    """Bytes that do not decode as CP932 are refused with ManifestError naming the file."""
    with pytest.raises(ManifestError, match=r"kaigo\.csv: not valid cp932 text"):
        _count(data)


def test_bad_bytes_deep_in_a_large_file_are_refused() -> None:
    """A decoding error past the first read block is still found."""
    data = _csv(30_000) + b"\x85\x40,a,b,c,d\r\n"
    assert len(data) > 1 << 20
    with pytest.raises(ManifestError, match="not valid cp932"):
        _count(data)


def test_empty_csv_is_refused() -> None:
    """A CSV without even a header row is refused."""
    with pytest.raises(ManifestError, match="no header row"):
        _count(b"")


def test_empty_header_row_is_refused() -> None:
    """A CSV whose first line is empty is refused."""
    with pytest.raises(ManifestError, match="header row is empty"):
        _count(b"\r\n1,2\r\n")


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("表紙.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 10),
        ("empty.bin", b""),
        ("readme.txt", "1,2\r\n3\r\n".encode("cp932")),
        ("not-csv.csv.bak", b"\xff\xfe"),
    ],
)
def test_non_csv_counts_one(name: str, data: bytes) -> None:
    """Any file not named .csv counts as one record, whatever its content."""
    assert _count(data, name=name) == 1


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("kaigo.csv", _csv(3)),
        ("kaigo.csv", _csv(40_000)),
        ("表紙.pdf", bytes(range(256)) * 9000),
        ("empty.bin", b""),
    ],
)
def test_on_bytes_receives_exactly_the_file(name: str, data: bytes) -> None:
    """on_bytes sees every byte once, in order, for CSV and non-CSV files."""
    count, seen = _teed(data, name)
    assert hashlib.sha256(seen).hexdigest() == hashlib.sha256(data).hexdigest()
    assert len(seen) == len(data)
    assert count == (1 if not name.endswith(".csv") else data.count(b"\r\n") - 1)


def test_on_bytes_blocks_are_bounded() -> None:
    """Counting streams: no block handed to on_bytes exceeds the read size."""
    data = _csv(60_000)
    sizes: list[int] = []
    printdata.count_records(
        io.BytesIO(data), "kaigo.csv", "cp932", on_bytes=lambda b: sizes.append(len(b))
    )
    assert sum(sizes) == len(data)
    assert max(sizes) <= 1 << 20
    assert len(sizes) >= 2


def test_stream_is_left_open() -> None:
    """count_records does not close the caller's stream."""
    stream = io.BytesIO(_csv(2))
    printdata.count_records(stream, "kaigo.csv", "cp932")
    assert not stream.closed
    assert stream.tell() == len(_csv(2))


def test_other_encoding_is_honoured() -> None:
    """The configured encoding is used (UTF-8 text passes with encoding utf-8)."""
    data = _csv(4).decode("cp932").encode("utf-8")
    assert _count(data, encoding="utf-8") == 4
    with pytest.raises(ManifestError):
        _count(data, encoding="cp932")


def test_unknown_encoding_is_a_lookup_error() -> None:
    """An unknown encoding is a configuration error (LookupError), for any file type."""
    with pytest.raises(LookupError):
        _count(_csv(1), encoding="no-such-encoding")
    with pytest.raises(LookupError):
        _count(b"x", name="a.pdf", encoding="no-such-encoding")
