"""Tests for envelope.manifest: batch ids, notice types, file names, dumps/parse."""

import json
import re
import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envelope import manifest
from envelope.errors import EnvelopeError, ManifestError
from envelope.manifest import FileEntry, Manifest

JST = timezone(timedelta(hours=9), "JST")
DIGEST = "ab" * 32


def _doc(**overrides: Any) -> dict[str, Any]:
    """A valid manifest document, with top-level keys overridden."""
    doc: dict[str, Any] = {
        "format": manifest.MANIFEST_FORMAT,
        "batch_id": "20260715-KAIGO-7F3KQ2",
        "notice_type": "KAIGO",
        "created_at": "2026-07-15T09:30:00+09:00",
        "created_by": "山田 太郎",
        "files": [{"name": "介護保険料_2026.csv", "size": 123, "sha256": DIGEST, "records": 70000}],
    }
    doc.update(overrides)
    return doc


def _entry(**overrides: Any) -> dict[str, Any]:
    """A valid files entry, with keys overridden."""
    entry: dict[str, Any] = {"name": "a.csv", "size": 1, "sha256": DIGEST, "records": 1}
    entry.update(overrides)
    return entry


def _bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def _sample() -> Manifest:
    return Manifest(
        batch_id="20260715-KAIGO-7F3KQ2",
        notice_type="KAIGO",
        created_at=datetime(2026, 7, 15, 9, 30, tzinfo=JST),
        created_by="山田 太郎",
        files=(
            FileEntry(name="介護保険料_2026.csv", size=123, sha256=DIGEST, records=70000),
            FileEntry(name="表紙.pdf", size=4567, sha256="0" * 64, records=1),
        ),
    )


# --- batch ids and notice types -------------------------------------------------


def test_new_batch_id_format() -> None:
    """new_batch_id gives DATE-TYPE-SUFFIX with the local date of ``now``."""
    batch = manifest.new_batch_id("KAIGO", datetime(2026, 7, 15, 23, 59, tzinfo=JST))
    assert re.fullmatch(r"20260715-KAIGO-[0-9A-HJKMNP-TV-Z]{6}", batch)
    assert manifest.check_batch_id(batch) == batch


def test_new_batch_id_uses_local_date_not_utc() -> None:
    """The date in the id is the date in ``now``'s own time zone."""
    now = datetime(2026, 7, 15, 0, 30, tzinfo=JST)  # still 14 July in UTC
    assert manifest.new_batch_id("KAIGO", now).startswith("20260715-")


def test_new_batch_id_unique_over_1000() -> None:
    """A thousand ids drawn at the same instant are all different."""
    now = datetime(2026, 7, 15, tzinfo=JST)
    ids = {manifest.new_batch_id("KAIGO", now) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(manifest.BATCH_ID_RE.fullmatch(i) for i in ids)


def test_new_batch_id_is_filename_safe() -> None:
    """A batch id passes the file-name check (it names <batch>.age on disk)."""
    batch = manifest.new_batch_id("JUMINZEI2", datetime(2026, 6, 1, tzinfo=JST))
    assert manifest.check_file_name(batch + ".age") == batch + ".age"


@pytest.mark.parametrize("notice_type", ["kaigo", "K", "1KAIGO", "KAI-GO", "A" * 17, "", "KAIGO\n"])
def test_new_batch_id_refuses_bad_notice_type(notice_type: str) -> None:
    """An invalid notice type is refused before an id is made."""
    with pytest.raises(ManifestError, match="notice type"):
        manifest.new_batch_id(notice_type, datetime(2026, 7, 15, tzinfo=JST))


@pytest.mark.parametrize("notice_type", ["KA", "KAIGO", "JUMINZEI2", "A" * 16])
def test_check_notice_type_accepts(notice_type: str) -> None:
    """Upper-case 2-16 letters/digits starting with a letter are accepted."""
    assert manifest.check_notice_type(notice_type) == notice_type


@pytest.mark.parametrize(
    "batch_id",
    [
        "",
        "20260715-KAIGO-7F3KQ",
        "20260715-KAIGO-7F3KQ22",
        "2026071-KAIGO-7F3KQ2",
        "20260715-kaigo-7F3KQ2",
        "20260715-KAIGO-7f3kq2",
        "20260715_KAIGO_7F3KQ2",
        "20260715-KAIGO-7F3KQ2\n",
        "../20260715-KAIGO-7F3KQ2",
        "20260715-KAIGO-7F3KQ2.age",
        "\uff12\uff10\uff12\uff160715-KAIGO-7F3KQ2",
        "\u0662\u0660\u0662\u0666\u0660\u0667\u0661\u0665-KAIGO-7F3KQ2",
        None,
        20260715,
    ],
)
def test_check_batch_id_refuses(batch_id: object) -> None:
    """Malformed batch ids (and non-strings) are refused."""
    with pytest.raises(ManifestError, match="batch id"):
        manifest.check_batch_id(batch_id)


# --- file names ----------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("", id="empty"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("../x", id="parent"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a/../../b", id="nested-parent"),
    pytest.param("a/b", id="slash"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("..\\..\\x", id="windows-parent"),
    pytest.param("C:x", id="drive-relative"),
    pytest.param("C:\\Windows\\x", id="drive-absolute"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\x1b[31mb", id="escape"),
    pytest.param("a\nb", id="newline"),
    pytest.param("a\rb", id="carriage-return"),
    pytest.param("a\x7fb", id="delete"),
    pytest.param("a\x85b", id="c1-control"),
    pytest.param("evil\u202etxt.exe", id="rtl-override"),
    pytest.param("a\u200bb", id="zero-width-space"),
    pytest.param("\ufeffa.csv", id="bom"),
    pytest.param("a\u2028b", id="line-separator"),
    pytest.param("a\u2029b", id="paragraph-separator"),
    pytest.param("a\ud800b", id="lone-surrogate"),
    pytest.param("a.csv.", id="trailing-dot"),
    pytest.param("a.csv ", id="trailing-space"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param(".csv", id="only-extension"),
    pytest.param("a*b", id="star"),
    pytest.param("a?b", id="question"),
    pytest.param('a"b', id="quote"),
    pytest.param("a<b", id="less"),
    pytest.param("a>b", id="greater"),
    pytest.param("a|b", id="pipe"),
    pytest.param("a:b", id="colon"),
    pytest.param("a" * 256, id="overlong-ascii"),
    pytest.param("あ" * 85 + "a", id="overlong-utf8-256-bytes"),
    pytest.param("e\u0301.csv", id="non-nfc"),
    pytest.param("\u30ab\u3099.csv", id="non-nfc-japanese"),
    pytest.param("manifest.json", id="manifest"),
    pytest.param("MANIFEST.JSON", id="manifest-upper"),
    pytest.param("Manifest.json", id="manifest-mixed"),
    pytest.param(None, id="none"),
    pytest.param(b"a.csv", id="bytes"),
    pytest.param(42, id="int"),
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_check_file_name_refuses_hostile(name: object) -> None:
    """Every hostile or unportable name is refused with ManifestError."""
    with pytest.raises(ManifestError):
        manifest.check_file_name(name)


@pytest.mark.parametrize("name", [p for p in HOSTILE_NAMES if p.id != "bytes"])
def test_parse_refuses_hostile_name(name: object) -> None:
    """A manifest listing a hostile name is refused as a whole."""
    if isinstance(name, str) and "\ud800" in name:
        data = json.dumps(_doc(files=[_entry(name=name)])).encode("ascii")
    else:
        data = _bytes(_doc(files=[_entry(name=name)]))
    with pytest.raises(ManifestError):
        manifest.parse(data)


@pytest.mark.parametrize(
    "name",
    [
        "介護保険料_2026.csv",
        "介護保険料納入通知書（普通徴収）.csv",
        "a.csv",
        "A",
        "report 2026-07.pdf",
        "ｶﾅ.txt",
        "a.b.c",
        "x" * 255,
        "あ" * 85,
        "\u30ac.csv",
        "新宿区　通知.csv",
    ],
)
def test_check_file_name_accepts_good(name: str) -> None:
    """Ordinary print-file names, Japanese included, are accepted unchanged."""
    assert manifest.check_file_name(name) == name


def test_refusal_message_does_not_echo_long_name() -> None:
    """The refusal message quotes at most 40 characters of the name."""
    name = "x" * 100 + "/" + "y" * 100
    with pytest.raises(ManifestError) as info:
        manifest.check_file_name(name)
    assert "x" * 41 not in str(info.value)
    assert "y" not in str(info.value)


# --- dumps and parse -----------------------------------------------------------


def test_dumps_parse_round_trip() -> None:
    """parse(dumps(m)) == m for a typical manifest."""
    original = _sample()
    assert manifest.parse(manifest.dumps(original)) == original


def test_dumps_is_utf8_json_with_format_first() -> None:
    """dumps writes readable UTF-8 JSON (Japanese unescaped), format key first, newline end."""
    data = manifest.dumps(_sample())
    assert data.endswith(b"\n")
    text = data.decode("utf-8")
    assert "介護保険料_2026.csv" in text
    doc = json.loads(text)
    assert next(iter(doc)) == "format"
    assert doc["format"] == manifest.MANIFEST_FORMAT
    assert doc["created_at"] == "2026-07-15T09:30:00+09:00"


def test_record_total_sums_files() -> None:
    """record_total is the sum of every file's records."""
    assert _sample().record_total == 70001


def test_parse_accepts_valid_document() -> None:
    """A valid hand-written document parses to the expected fields."""
    parsed = manifest.parse(_bytes(_doc()))
    assert parsed.batch_id == "20260715-KAIGO-7F3KQ2"
    assert parsed.created_at == datetime(2026, 7, 15, 0, 30, tzinfo=UTC)
    assert parsed.created_at.utcoffset() == timedelta(hours=9)
    assert parsed.files[0] == FileEntry("介護保険料_2026.csv", 123, DIGEST, 70000)


def test_manifest_error_is_envelope_error() -> None:
    """ManifestError is an EnvelopeError (one base per package)."""
    with pytest.raises(EnvelopeError):
        manifest.parse(b"")


@pytest.mark.parametrize(
    "key", ["format", "batch_id", "notice_type", "created_at", "created_by", "files"]
)
def test_parse_refuses_missing_key(key: str) -> None:
    """A manifest missing any top-level key is refused."""
    doc = _doc()
    del doc[key]
    with pytest.raises(ManifestError, match="missing"):
        manifest.parse(_bytes(doc))


def test_parse_refuses_unknown_key() -> None:
    """A manifest with an extra top-level key is refused."""
    with pytest.raises(ManifestError, match="unknown"):
        manifest.parse(_bytes(_doc(extra=1)))


@pytest.mark.parametrize("key", ["name", "size", "sha256", "records"])
def test_parse_refuses_missing_entry_key(key: str) -> None:
    """A files entry missing any key is refused."""
    entry = _entry()
    del entry[key]
    with pytest.raises(ManifestError, match="missing"):
        manifest.parse(_bytes(_doc(files=[entry])))


def test_parse_refuses_unknown_entry_key() -> None:
    """A files entry with an extra key (e.g. a path) is refused."""
    with pytest.raises(ManifestError, match="unknown"):
        manifest.parse(_bytes(_doc(files=[_entry(path="../x")])))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(
            b'{"format": "lgwan-manifest/v1", "format": "lgwan-manifest/v1"}', id="top-level"
        ),
        pytest.param(
            (
                b'{"format": "lgwan-manifest/v1", "batch_id": "20260715-KAIGO-7F3KQ2", '
                b'"notice_type": "KAIGO", "created_at": "2026-07-15T09:30:00+09:00", '
                b'"created_by": "x", "files": [{"name": "a.csv", "name": "../x", "size": 1, '
                b'"sha256": "' + DIGEST.encode() + b'", "records": 1}]}'
            ),
            id="entry-name",
        ),
    ],
)
def test_parse_refuses_duplicate_json_keys(data: bytes) -> None:
    """A JSON object with a repeated key is refused (no last-one-wins)."""
    with pytest.raises(ManifestError, match="duplicate key"):
        manifest.parse(data)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", True),
        ("size", False),
        ("records", True),
        ("size", -1),
        ("records", -1),
        ("size", 1.0),
        ("records", 1.5),
        ("size", "1"),
        ("size", None),
        ("size", 2**63),
        ("size", [1]),
    ],
)
def test_parse_refuses_bad_counts(field: str, value: object) -> None:
    """Sizes and record counts must be non-negative JSON integers (no bool, float, text)."""
    with pytest.raises(ManifestError, match="non-negative integers"):
        manifest.parse(_bytes(_doc(files=[_entry(**{field: value})])))


def test_parse_accepts_zero_and_large_counts() -> None:
    """Zero and 2**63-1 are valid sizes and record counts."""
    parsed = manifest.parse(_bytes(_doc(files=[_entry(size=0, records=2**63 - 1)])))
    assert parsed.files[0].size == 0
    assert parsed.files[0].records == 2**63 - 1


@pytest.mark.parametrize(
    "digest",
    ["AB" * 32, "ab" * 31, "ab" * 33, "g" * 64, " " + "a" * 63, "a" * 64 + "\n", 0, None],
)
def test_parse_refuses_bad_sha256(digest: object) -> None:
    """sha256 must be exactly 64 lower-case hex digits."""
    with pytest.raises(ManifestError, match="sha256"):
        manifest.parse(_bytes(_doc(files=[_entry(sha256=digest)])))


@pytest.mark.parametrize("batch_id", ["20260715-KAIGO-7F3KQ", "x", "", 1, None])
def test_parse_refuses_bad_batch_id(batch_id: object) -> None:
    """A manifest whose batch id is malformed is refused."""
    with pytest.raises(ManifestError, match="batch id"):
        manifest.parse(_bytes(_doc(batch_id=batch_id)))


@pytest.mark.parametrize("notice_type", ["kaigo", "", 1, None])
def test_parse_refuses_bad_notice_type(notice_type: object) -> None:
    """A manifest whose notice type is malformed is refused."""
    with pytest.raises(ManifestError, match="notice type"):
        manifest.parse(_bytes(_doc(notice_type=notice_type)))


@pytest.mark.parametrize(
    ("created_at", "message"),
    [
        ("2026-07-15T09:30:00", "no UTC offset"),
        ("2026-07-15", "no UTC offset"),
        ("yesterday", "ISO 8601"),
        ("", "ISO 8601"),
        (1752539400, "must be text"),
        (None, "must be text"),
    ],
)
def test_parse_refuses_bad_created_at(created_at: object, message: str) -> None:
    """created_at must be ISO 8601 text with an offset (no naive times)."""
    with pytest.raises(ManifestError, match=message):
        manifest.parse(_bytes(_doc(created_at=created_at)))


@pytest.mark.parametrize("created_by", [None, 1, ["x"], "x" * 201])
def test_parse_refuses_bad_created_by(created_by: object) -> None:
    """created_by must be text of at most 200 characters."""
    with pytest.raises(ManifestError, match="created_by"):
        manifest.parse(_bytes(_doc(created_by=created_by)))


@pytest.mark.parametrize("fmt", ["lgwan-manifest/v2", "", None, 1])
def test_parse_refuses_other_format(fmt: object) -> None:
    """Only lgwan-manifest/v1 is accepted."""
    with pytest.raises(ManifestError, match="format"):
        manifest.parse(_bytes(_doc(format=fmt)))


@pytest.mark.parametrize(
    "names",
    [
        ["a.csv", "a.csv"],
        ["a.csv", "A.CSV"],
        ["Straße.csv", "STRASSE.csv"],
        ["b.pdf", "a.csv", "B.pdf"],
    ],
)
def test_parse_refuses_duplicate_names_case_insensitively(names: list[str]) -> None:
    """Two files whose names differ only by case are refused."""
    files = [_entry(name=n) for n in names]
    with pytest.raises(ManifestError, match="share a name"):
        manifest.parse(_bytes(_doc(files=files)))


@pytest.mark.parametrize("files", [[], {}, "a.csv", None, ["a.csv"]])
def test_parse_refuses_bad_files(files: object) -> None:
    """files must be a non-empty list of objects."""
    with pytest.raises(ManifestError):
        manifest.parse(_bytes(_doc(files=files)))


def test_parse_accepts_max_files() -> None:
    """Exactly MAX_FILES files are accepted."""
    files = [_entry(name=f"{i}.csv") for i in range(manifest.MAX_FILES)]
    assert len(manifest.parse(_bytes(_doc(files=files))).files) == manifest.MAX_FILES


def test_parse_refuses_too_many_files() -> None:
    """More than MAX_FILES files are refused."""
    files = [_entry(name=f"{i}.csv") for i in range(manifest.MAX_FILES + 1)]
    with pytest.raises(ManifestError, match="entries"):
        manifest.parse(_bytes(_doc(files=files)))


def test_parse_refuses_oversized_data() -> None:
    """Input above MAX_MANIFEST_BYTES is refused before it is decoded."""
    data = _bytes(_doc()) + b" " * manifest.MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError, match="too large"):
        manifest.parse(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("{}".encode("utf-16"), id="utf-16"),
        pytest.param(_bytes(_doc()).replace("山田".encode(), "山田".encode("cp932")), id="cp932"),
        pytest.param(b'{"format": "\xff"}', id="invalid-byte"),
        pytest.param(b"\xc0\xaf", id="overlong-utf8"),
    ],
)
def test_parse_refuses_non_utf8(data: bytes) -> None:
    """Bytes that are not UTF-8 are refused as ManifestError."""
    with pytest.raises(ManifestError, match="UTF-8 JSON"):
        manifest.parse(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'"x"', id="string"),
        pytest.param(b"null", id="null"),
        pytest.param(b"{} {}", id="trailing-data"),
        pytest.param(b"1" * 5000, id="huge-integer"),
        pytest.param(b"[" * 200_000 + b"]" * 200_000, id="deep-nesting"),
    ],
)
def test_parse_refuses_malformed_json(data: bytes) -> None:
    """Anything that is not one JSON object is a ManifestError (never another exception)."""
    with pytest.raises(ManifestError):
        manifest.parse(data)


def test_parse_refuses_huge_integer_size() -> None:
    """A size with thousands of digits is a ManifestError, not a ValueError."""
    data = _bytes(_doc(files=[_entry(size=0)])).replace(b'"size": 0', b'"size": ' + b"9" * 5000)
    with pytest.raises(ManifestError):
        manifest.parse(data)


def test_parse_refuses_nan_size() -> None:
    """JSON's non-standard NaN/Infinity are not counts."""
    for token in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        data = _bytes(_doc(files=[_entry(size=0)])).replace(b'"size": 0', b'"size": ' + token)
        with pytest.raises(ManifestError):
            manifest.parse(data)


# --- property: dumps -> parse round trip ----------------------------------------

_NAME_CHARS = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"),
    exclude_characters='/\\:*?"<>|',
)


def _usable_name(name: str) -> bool:
    """True for names check_file_name should accept (beyond the character set)."""
    return (
        bool(name)
        and not name.startswith(".")
        and unicodedata.normalize("NFC", name) == name
        and name.casefold() != manifest.MANIFEST_NAME
        and name.split(".", 1)[0].upper() not in manifest._WINDOWS_DEVICES
    )


_names: st.SearchStrategy[str] = (
    st.text(_NAME_CHARS, min_size=1, max_size=40).map(lambda s: s.strip(". ")).filter(_usable_name)
)
_entries = st.builds(
    FileEntry,
    name=_names,
    size=st.integers(min_value=0, max_value=2**63 - 1),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    records=st.integers(min_value=0, max_value=2**63 - 1),
)
_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda m: timezone(timedelta(minutes=m))
)
_types = st.from_regex(manifest.NOTICE_TYPE_RE, fullmatch=True)


@st.composite
def _manifests(draw: st.DrawFn) -> Manifest:
    notice_type = draw(_types)
    suffix = draw(st.text("0123456789ABCDEFGHJKMNPQRSTVWXYZ", min_size=6, max_size=6))
    created = draw(
        st.datetimes(
            min_value=datetime(2000, 1, 2),
            max_value=datetime(9999, 12, 30),
            timezones=_offsets,
        )
    ).replace(microsecond=0)
    files = draw(st.lists(_entries, min_size=1, max_size=8, unique_by=lambda e: e.name.casefold()))
    return Manifest(
        batch_id=f"{created:%Y%m%d}-{notice_type}-{suffix}",
        notice_type=notice_type,
        created_at=created,
        created_by=draw(
            st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn")), max_size=200)
        ),
        files=tuple(files),
    )


@settings(max_examples=200, deadline=None)
@given(_manifests())
def test_dumps_parse_round_trip_property(original: Manifest) -> None:
    """parse(dumps(m)) == m for any valid manifest (property)."""
    parsed = manifest.parse(manifest.dumps(original))
    assert parsed == original
    assert parsed.created_at.utcoffset() == original.created_at.utcoffset()
    assert manifest.dumps(parsed) == manifest.dumps(original)


@pytest.mark.parametrize("name", ["CON", "nul.csv", "COM1.txt", "lpt9", "Aux.dat"])
def test_windows_device_names_are_refused(name: str) -> None:
    """Names Windows treats as devices are refused even with an extension."""
    with pytest.raises(ManifestError):
        manifest.check_file_name(name)


@pytest.mark.parametrize("name", ["CONSOLE.csv", "COM10.txt", "nullable.csv"])
def test_names_merely_starting_like_devices_are_accepted(name: str) -> None:
    """Only exact device stems are refused, not longer names that begin the same way."""
    assert manifest.check_file_name(name) == name


def test_parse_refuses_control_characters_in_created_by() -> None:
    """created_by is printed on paperwork: an escape sequence in it is refused."""
    with pytest.raises(ManifestError, match="created_by"):
        manifest.parse(_bytes(_doc(created_by="yamada\x1b[2J")))


def test_parse_refuses_batch_id_of_another_notice_type() -> None:
    """The TYPE inside the batch id must equal notice_type."""
    with pytest.raises(ManifestError, match="disagree"):
        manifest.parse(_bytes(_doc(notice_type="JUMIN")))


@pytest.mark.parametrize("batch_id", ["20261345-KAIGO-7F3KQ2", "99999999-KAIGO-7F3KQ2"])
def test_batch_id_with_impossible_date_is_refused(batch_id: str) -> None:
    """A batch id must start with a real calendar date."""
    with pytest.raises(ManifestError, match="real date"):
        manifest.check_batch_id(batch_id)
