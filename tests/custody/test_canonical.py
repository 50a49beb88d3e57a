"""Canonical JSON encoding and the strict parser."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from custody.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    canonical_json,
    check_json_value,
    parse_json_strict,
)
from custody.errors import CustodyError, RecordError

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text()
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def test_exact_bytes_for_a_known_value() -> None:
    """Keys are sorted, there is no whitespace and non-ASCII stays raw UTF-8."""
    value = {"z": [1, True, None], "a": "新宿区", "m": {"b": -2, "a": "x\ny"}}
    expected = '{"a":"新宿区","m":{"a":"x\\ny","b":-2},"z":[1,true,null]}'.encode()
    assert canonical_json(value) == expected


def test_control_characters_are_escaped_so_output_is_one_line() -> None:
    """Newlines and other control characters never appear raw in the output."""
    encoded = canonical_json({"k": "a\nb\rc\x00d\x1f\u2028"})
    assert b"\n" not in encoded and b"\r" not in encoded and b"\x00" not in encoded


@pytest.mark.parametrize(
    "value",
    [
        1.0,
        float("nan"),
        float("inf"),
        (1, 2),
        {1, 2},
        b"bytes",
        {1: "int key"},
        {"k": object()},
        MAX_SAFE_INTEGER + 1,
        -MAX_SAFE_INTEGER - 1,
        "lone \ud800 surrogate",
        {"lone \udfff": 1},
    ],
    ids=lambda value: re.sub(r" at 0x[0-9a-f]+", "", repr(value)),  # stable for pytest-xdist
)
def test_canonical_json_refuses_values_outside_the_model(value: object) -> None:
    """Floats, NaN, tuples, sets, bytes, non-str keys, big ints and lone surrogates fail."""
    with pytest.raises(RecordError):
        canonical_json(value)


def test_nesting_limit() -> None:
    """Nesting up to MAX_DEPTH encodes; one level deeper fails."""
    ok: object = 0
    for _ in range(MAX_DEPTH - 1):
        ok = [ok]
    check_json_value(ok)
    with pytest.raises(RecordError, match="nesting"):
        canonical_json([ok])


def test_record_error_is_a_custody_error() -> None:
    """Every custody failure shares one base class."""
    with pytest.raises(CustodyError):
        canonical_json(0.5)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a":1,"a":2}',
        b'{"a":{"b":1,"b":1}}',
        b"NaN",
        b"[Infinity]",
        b'{"x":-Infinity}',
        b"1.0",
        b"[1e3]",
        b"-0.0",
        b"\xff",
        b'"\xc3"',
        b"\xef\xbb\xbf{}",
        b'"\\ud800"',
        b"{} {}",
        b"",
        b"[" * 100_000,
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        str(MAX_SAFE_INTEGER + 1).encode(),
        b"1" * 5000,
    ],
    ids=lambda data: repr(data[:24]),
)
def test_parse_refuses_hostile_documents(data: bytes) -> None:
    """Duplicate keys, NaN/Infinity, floats, bad UTF-8, BOM, surrogates, junk and depth fail."""
    with pytest.raises(RecordError):
        parse_json_strict(data)


def test_parse_size_cap() -> None:
    """A document over max_bytes is refused before parsing; at the cap it parses."""
    data = b'"' + b"a" * 8 + b'"'
    assert parse_json_strict(data, max_bytes=len(data)) == "a" * 8
    with pytest.raises(RecordError, match="exceeds"):
        parse_json_strict(data, max_bytes=len(data) - 1)


def test_parse_refuses_str_input() -> None:
    """Only bytes are accepted, so the UTF-8 check cannot be bypassed."""
    with pytest.raises(RecordError):
        parse_json_strict('{"a":1}')  # type: ignore[arg-type]


def test_parse_accepts_whitespace_and_any_key_order() -> None:
    """The parser is strict about values, not layout."""
    assert parse_json_strict(b' { "b" : [ 1 , 2 ] , "a" : null } \n') == {"a": None, "b": [1, 2]}


@given(JSON_VALUES)
def test_round_trip(value: object) -> None:
    """Parsing the canonical form gives the value back, and re-encoding is stable."""
    encoded = canonical_json(value)
    assert parse_json_strict(encoded) == value
    assert canonical_json(parse_json_strict(encoded)) == encoded


@given(JSON_VALUES)
def test_canonical_form_is_what_json_reads(value: object) -> None:
    """The standard library reads the canonical form as the same value."""
    assert json.loads(canonical_json(value).decode("utf-8")) == value


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 9), min_size=2, max_size=6))
def test_key_order_does_not_matter(value: dict[str, int]) -> None:
    """Two dicts with the same items in another insertion order encode identically."""
    reordered = dict(reversed(list(value.items())))
    assert canonical_json(reordered) == canonical_json(value)
