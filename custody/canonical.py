"""Canonical JSON: the one byte string a record or log entry is signed and hashed as.

A value is a ``dict`` with ``str`` keys, a ``list``, a ``str``, an ``int``, a
``bool`` or ``None``. Floats are refused (their text form is not unique), so are
integers outside the I-JSON safe range (±(2**53 - 1), exact in every JSON
implementation), strings that are not valid Unicode (lone surrogates) and nesting
deeper than :data:`MAX_DEPTH`.

The encoding is ``json.dumps`` with sorted keys (by code point), no whitespace
(``separators=(",", ":")``) and ``ensure_ascii=False``, encoded as UTF-8. It never
contains a raw newline: control characters inside strings are escaped, so a
canonical document is always exactly one line.
"""

import json
from typing import NoReturn

from custody.errors import RecordError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer magnitude accepted (I-JSON, RFC 7493 §2.2)."""

MAX_DEPTH = 32
"""Deepest nesting of containers accepted (the top-level value is depth 1)."""

MAX_JSON_BYTES = 1 << 20
"""Default size cap of :func:`parse_json_strict`, in bytes."""

_MAX_INT_DIGITS = len(str(MAX_SAFE_INTEGER))


def canonical_json(obj: object) -> bytes:
    """Encode a JSON value in its canonical form.

    Args:
        obj: A JSON value made of dict (str keys), list, str, int, bool and None.

    Returns:
        The canonical UTF-8 encoding, without a trailing newline.

    Raises:
        RecordError: A float or other unsupported type, a non-str key, an integer
            outside the safe range, a string that is not valid Unicode, or
            nesting deeper than MAX_DEPTH.
    """
    check_json_value(obj)
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def check_json_value(obj: object) -> None:
    """Check that a value is within the canonical JSON data model.

    Args:
        obj: The value to check.

    Raises:
        RecordError: As for :func:`canonical_json`.
    """
    _check(obj, 1, "$")


def _check(obj: object, depth: int, where: str) -> None:
    if depth > MAX_DEPTH:
        raise RecordError(f"{where}: nesting deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, bool):
        return
    if isinstance(obj, int):
        if not -MAX_SAFE_INTEGER <= obj <= MAX_SAFE_INTEGER:
            raise RecordError(f"{where}: integer outside ±(2**53 - 1)")
        return
    if isinstance(obj, str):
        _check_text(obj, where)
        return
    if isinstance(obj, list):
        for index, item in enumerate(obj):
            _check(item, depth + 1, f"{where}[{index}]")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise RecordError(f"{where}: object key of type {type(key).__name__}")
            _check_text(key, where)
            _check(value, depth + 1, f"{where}.{key}")
        return
    raise RecordError(f"{where}: {type(obj).__name__} is not a canonical JSON type")


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{where}: string is not valid Unicode") from None


def parse_json_strict(data: bytes, *, max_bytes: int = MAX_JSON_BYTES) -> object:
    """Parse UTF-8 JSON, refusing anything canonical_json would not produce.

    Whitespace and key order are accepted (callers that need the canonical
    byte form compare ``canonical_json(result)`` with the input).

    Args:
        data: The document bytes.
        max_bytes: Refuse documents longer than this many bytes.

    Returns:
        The parsed value (dict, list, str, int, bool or None).

    Raises:
        RecordError: Too large, not UTF-8, not JSON, duplicate object keys,
            NaN/Infinity, a float, an integer outside the safe range, a lone
            surrogate escape, or nesting deeper than MAX_DEPTH.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RecordError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise RecordError(f"document of {len(data)} bytes exceeds the cap of {max_bytes}")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 at byte {exc.start}") from None
    try:
        value: object = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_float=_refuse_float,
            parse_int=_parse_int,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as exc:
        raise RecordError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RecordError(f"nesting deeper than {MAX_DEPTH}") from None
    check_json_value(value)
    return value


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise RecordError(f"duplicate object key {key[:64]!r}")
        result[key] = value
    return result


def _refuse_float(text: str) -> NoReturn:
    raise RecordError(f"non-integer number {text[:32]!r}")


def _refuse_constant(text: str) -> NoReturn:
    raise RecordError(f"non-finite number {text!r}")


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise RecordError("integer outside ±(2**53 - 1)")
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise RecordError("integer outside ±(2**53 - 1)")
    return value
