"""Fuzzing signed custody records: every mutation is rejected (issue 8 §1, custody records).

Receipts, status records, erasure certificates (any body) and checkpoints are
signed, serialized with ``dumps_record`` and then mutated byte by byte
(flips, overwrites, truncations, insertions, deletions, whitespace, escapes)
and structurally (fields dropped, added or renamed, kind swapped, body values
changed, signer swapped, a signature from another record, Unicode
normalisation, duplicate keys, floats and huge integers, nesting bombs).

``loads_record`` accepts exactly the canonical bytes (the trailing newline
optional), so the one byte-level no-op is dropping that newline. Verification
(``loads_record`` + ``verify_record``, and ``verify_checkpoint`` for
checkpoints) must either raise the documented error (RecordError,
SignatureError; ChainError for a checkpoint body) or return exactly the
original body. ``LGWAN_FUZZ_EXAMPLES`` (default 10,000) sets the total cases.
"""

import base64
import io
import json
import os
import tracemalloc
import unicodedata
from collections import Counter
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody import (
    GENESIS,
    ChainError,
    ChainHead,
    RecordError,
    SignatureError,
    canonical_json,
    dumps_record,
    fingerprint,
    loads_record,
    make_checkpoint,
    make_entry,
    sign_record,
    verify_chain,
    verify_checkpoint,
    verify_record,
)
from custody.canonical import MAX_SAFE_INTEGER
from custody.records import (
    KIND_CHECKPOINT,
    KIND_ERASURE_CERTIFICATE,
    KIND_RECEIPT,
    KIND_STATUS,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
PUBLIC = KEY.public_key()
TOTAL = int(os.environ.get("LGWAN_FUZZ_EXAMPLES", "10000"))
PERCENT = {"bytes": 45, "structure": 35, "text": 15, "checkpoint": 5}
EXAMPLES = {name: -(-TOTAL * pct // 100) for name, pct in PERCENT.items()}  # rounded up
RAN: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
KINDS = [KIND_RECEIPT, KIND_STATUS, KIND_ERASURE_CERTIFICATE, KIND_CHECKPOINT]
SIGNED_ERRORS = (RecordError, SignatureError)

RECEIPT = {
    "batch_id": "20260715-KAIGO-7F3KQ2",
    "tenant": "shinjuku",
    "uploader": "ward-upload",
    "file": "20260715-KAIGO-7F3KQ2.age",
    "size": 1_234_567,
    "sha256": "ab" * 32,
    "received_at": "2026-07-15T09:00:00+09:00",
    "gateway_key": fingerprint(PUBLIC),
}
STATUS = {"batch_id": "20260715-KAIGO-7F3KQ2", "state": "forwarded", "attempts": 1, "ok": True}
CERTIFICATE = {
    "batch_id": "20260715-KAIGO-7F3KQ2",
    "erased_at": "2026-07-20T17:30:00+09:00",
    "method": "上書き消去（NIST SP 800-88 Clear）",
    "witness": "山田　太郎",
    "files": [{"name": "print.csv", "sha256": "cd" * 32, "size": 2048}],
    "note": None,
}
LINE, HEAD = make_entry(GENESIS, {"event": "sealed"}, "2026-07-15T09:00:00+09:00")


def _fuzz_settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.text(max_size=12)
    | st.sampled_from(["é", "é", "Å", "Å", "ｋｉｎｄ", "カ", "ｶ", "ﬁ", "\u200b", "\x00"])
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


class Signed:
    """A signed record, its bytes and what verification must return (a short repr)."""

    def __init__(self, kind: str, body: dict[str, object], key: Ed25519PrivateKey = KEY) -> None:
        self.kind = kind
        self.body = body
        self.doc = sign_record(kind, body, key)
        self.data = dumps_record(self.doc)

    def __repr__(self) -> str:
        return f"<{self.kind} record, {len(self.data)} bytes>"


FIXED = [
    Signed(KIND_RECEIPT, RECEIPT),
    Signed(KIND_STATUS, STATUS),
    Signed(KIND_ERASURE_CERTIFICATE, CERTIFICATE),
    Signed(KIND_ERASURE_CERTIFICATE, {}),
]
CHECKPOINT = make_checkpoint(HEAD, "2026-07-15T10:00:00+09:00", KEY)
FIXED.append(Signed(KIND_CHECKPOINT, dict(CHECKPOINT["body"])))  # type: ignore[call-overload]
records = st.sampled_from(FIXED) | st.builds(Signed, st.sampled_from(KINDS), bodies)


def _verify(record: Signed, data: bytes) -> dict[str, object] | None:
    """Verify ``data`` as ``record``'s kind; None when refused with a documented error."""
    try:
        body = verify_record(loads_record(data), PUBLIC, kind=record.kind)
        if record.kind == KIND_CHECKPOINT:
            verify_checkpoint(loads_record(data), PUBLIC)
    except SIGNED_ERRORS:
        return None
    except ChainError:
        assert record.kind == KIND_CHECKPOINT
        return None
    return body


def _assert_only_original(record: Signed, data: bytes, name: str) -> None:
    """Verification of ``data`` refuses it or yields exactly the original body."""
    RAN[name] += 1
    body = _verify(record, data)
    if body is not None:
        ACCEPTED[name] += 1
        assert canonical_json(body) == canonical_json(record.body)
        assert data in (record.data, record.data.removesuffix(b"\n")), "accepted changed bytes"


INSERTS = [
    b" ",
    b"\n",
    b"\r\n",
    b"\t",
    b"\xef\xbb\xbf",
    b",",
    b'"',
    b"\\",
    b"0",
    b"-",
    b"{}",
    b"\x00",
]


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(out)))
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        if op == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = draw(st.sampled_from(INSERTS) | st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif op == "dup":
            out[at:at] = out[at : at + draw(st.integers(1, 64))]
    return bytes(out)


@given(record=records, data=st.data())
@_fuzz_settings("bytes")
def test_byte_mutations_are_rejected(record: Signed, data: st.DataObject) -> None:
    """Flips, overwrites, truncations, insertions, deletions of the serialized record."""
    _assert_only_original(record, data.draw(byte_mutations(record.data)), "bytes")


def _normalise(value: object, form: str) -> object:
    if isinstance(value, str):
        return unicodedata.normalize(form, value)
    if isinstance(value, list):
        return [_normalise(v, form) for v in value]
    if isinstance(value, dict):
        return {unicodedata.normalize(form, k): _normalise(v, form) for k, v in value.items()}
    return value


def _change_leaf(value: object, draw: st.DrawFn) -> object:
    """Change one value somewhere inside ``value`` (always a real change)."""
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        action = draw(st.sampled_from(["descend", "drop", "rename", "add"]))
        changed = dict(value)
        if action == "descend":
            changed[key] = _change_leaf(value[key], draw)
        elif action == "drop":
            del changed[key]
        elif action == "rename":
            changed[key + draw(st.sampled_from(["\u0301", " ", "\u200b", "_"]))] = changed.pop(key)
        else:
            new = key + "2"
            while new in value:
                new += "2"
            changed[new] = 0
        return changed
    if isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        return [*value[:index], _change_leaf(value[index], draw), *value[index + 1 :]]
    if isinstance(value, bool):
        return draw(st.sampled_from([not value, int(value), str(value).lower(), None]))
    if isinstance(value, int):
        return draw(st.sampled_from([value + 1, value - 1, -value - 1, str(value), float(value)]))
    if isinstance(value, str):
        return draw(st.sampled_from([value + "x", "x" + value, value.upper() + "\u0301", None]))
    others = [c for c in (0, False, "", [], {}, None) if type(c) is not type(value) or c != value]
    return draw(st.sampled_from(others))


Mutation = Callable[[dict[str, object]], dict[str, object]]
FIELD_NAMES = ["kind", "body", "signer", "alg", "sig"]
RENAMES = {"Kind", "kind ", "ｋｉｎｄ", "ki\u200bnd", "sig\u0301", "Body", "signature", "SIG"}
HUGE_NUMBERS = [2**53, -(2**53), 2**64, 10**400, 1.0, 0.5, 1e300, float("inf"), float("nan")]


@st.composite
def structural_mutations(draw: st.DrawFn, record: Signed) -> tuple[dict[str, object], bool]:
    """A changed record dict; and whether its body was left equal to the original."""
    doc = dict(record.doc)
    op = draw(
        st.sampled_from(
            ["drop", "add", "rename", "kind", "body", "signer", "sig", "other", "nfc", "number"]
        )
    )
    same_body = op not in ("body", "nfc", "number")
    if op == "drop":
        del doc[draw(st.sampled_from(FIELD_NAMES))]
    elif op == "add":
        doc[draw(st.sampled_from(["extra", "sig2", "key", "Kind"]))] = draw(json_values)
    elif op == "rename":
        doc[draw(st.sampled_from(sorted(RENAMES)))] = doc.pop(draw(st.sampled_from(FIELD_NAMES)))
    elif op == "kind":
        doc["kind"] = draw(st.sampled_from([*KINDS, "Receipt", "receipt ", "ledger-entry", 1]))
        same_body = doc["kind"] == record.kind
    elif op == "body":
        doc["body"] = _change_leaf(record.body, draw) if record.body else {"x": 1}
    elif op == "signer":
        doc["signer"] = draw(
            st.sampled_from([fingerprint(OTHER.public_key()), "", None, "SHA256:"])
        )
    elif op == "sig":
        donor = draw(st.sampled_from(FIXED))
        doc["sig"] = donor.doc["sig"]
        same_body = donor.data == record.data
    elif op == "other":  # a complete, valid record by another key
        doc = sign_record(record.kind, record.body, OTHER)
    elif op == "nfc":
        form = draw(st.sampled_from(["NFC", "NFD", "NFKC", "NFKD"]))
        doc["body"] = _normalise(record.body, form)
        same_body = canonical_json(doc["body"]) == canonical_json(record.body)
    else:
        path = draw(st.sampled_from(["body", "sig", "kind", "alg"]))
        number = draw(st.sampled_from(HUGE_NUMBERS))
        doc[path] = {"n": number} if path == "body" else number
    return doc, same_body


def _verify_doc(record: Signed, doc: dict[str, object]) -> dict[str, object] | None:
    """Verify a record dict directly (no bytes); None when refused with a documented error."""
    try:
        return verify_record(doc, PUBLIC, kind=record.kind)
    except SIGNED_ERRORS:
        return None


@given(record=records, data=st.data())
@_fuzz_settings("structure")
def test_structural_mutations_are_rejected(record: Signed, data: st.DataObject) -> None:
    """Field-level changes, as a dict and re-serialized: refused unless the body is unchanged."""
    doc, same_body = data.draw(structural_mutations(record))
    RAN["structure"] += 1
    body = _verify_doc(record, doc)
    if body is not None:
        ACCEPTED["structure"] += 1
        assert same_body and canonical_json(body) == canonical_json(record.body)
        assert canonical_json(doc) == canonical_json(record.doc)
    try:
        serialized = canonical_json(doc) + b"\n"
    except RecordError:
        serialized = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    body = _verify(record, serialized)
    if body is not None:
        assert serialized == record.data
    # The relabelled record verified as the kind it now claims: the signature binds the kind.
    claimed = doc.get("kind")
    if isinstance(claimed, str) and claimed != record.kind and claimed in KINDS:
        with pytest.raises(SIGNED_ERRORS):
            verify_record(doc, PUBLIC, kind=claimed)


def _escape_one(text: str, index: int) -> str:
    """Replace the string character at ``index`` by its \\u escape (the same JSON value)."""
    return text[:index] + f"\\u{ord(text[index]):04x}" + text[index + 1 :]


def _inject(text: str, member: str) -> str:
    """Add ``member`` as the first member of the outer body object."""
    if '"body":{}' in text:
        return text.replace('"body":{}', '"body":{' + member + "}", 1)
    return text.replace('"body":{', '"body":{' + member + ",", 1)


@st.composite
def text_mutations(draw: st.DrawFn, record: Signed) -> bytes:
    """Same-value or near-value rewrites of the JSON text: whitespace, escapes, duplicates."""
    text = record.data.decode().removesuffix("\n")
    op = draw(
        st.sampled_from(["space", "escape", "dup", "reorder", "ascii", "depth", "float", "big"])
    )
    if op == "space":
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from([" ", "\t", "\r\n", "\n", "\u3000"])) + text[at:]
    elif op == "escape":
        letters = [i for i, c in enumerate(text) if c.isalnum()]
        text = _escape_one(text, draw(st.sampled_from(letters)))
    elif op == "dup":
        name = draw(st.sampled_from(FIELD_NAMES))
        donor = draw(st.sampled_from(FIXED)).doc[name]
        dup = json.dumps({name: donor}, ensure_ascii=False, separators=(",", ":"))[1:-1]
        text = "{" + dup + "," + text[1:] if draw(st.booleans()) else text[:-1] + "," + dup + "}"
    elif op == "reorder":
        text = json.dumps(record.doc, ensure_ascii=False, separators=(",", ":"))
    elif op == "ascii":
        text = json.dumps(record.doc, sort_keys=True, separators=(",", ":"))
    elif op == "depth":
        depth = draw(st.sampled_from([31, 32, 33, 100, 1000, 100_000, 600_000]))
        bomb = (
            "[" * depth + "]" * depth
            if draw(st.booleans())
            else '{"a":' * depth + "1" + "}" * depth
        )
        text = _inject(text, '"bomb":' + bomb)
    elif op == "float":
        number = draw(st.sampled_from(["1.0", "1e0", "1E+0", "-0", "0.0", "NaN", "Infinity", "01"]))
        text = _inject(text, '"n":' + number)
    else:
        digits = draw(st.sampled_from([16, 17, 100, 5000, 100_000]))
        text = _inject(text, '"n":' + "9" * digits)
    return text.encode("utf-8", "surrogatepass") + b"\n"


@given(record=records, data=st.data())
@_fuzz_settings("text")
def test_text_rewrites_are_rejected(record: Signed, data: st.DataObject) -> None:
    """Whitespace, escapes, duplicate keys, key order, depth bombs, floats and huge integers."""
    _assert_only_original(record, data.draw(text_mutations(record)), "text")


@given(data=st.data())
@_fuzz_settings("checkpoint")
def test_mutated_checkpoints_never_pin_another_head(data: st.DataObject) -> None:
    """verify_chain with a mutated checkpoint: fails, or pins exactly the original head."""
    record = FIXED[-1]
    mutated = data.draw(byte_mutations(record.data) | text_mutations(record))
    RAN["checkpoint"] += 1
    try:
        doc = json.loads(mutated)
    except (ValueError, RecursionError):  # lenient json: duplicates, floats, NaN are let through
        doc = {"kind": "checkpoint"}
    if not isinstance(doc, dict):
        doc = {"kind": "checkpoint"}
    report = verify_chain([LINE], checkpoints=[doc], public_key=PUBLIC)
    if report.ok:
        ACCEPTED["checkpoint"] += 1
        head = verify_checkpoint(doc, PUBLIC)
        assert head == ChainHead(HEAD.seq, HEAD.hash)
        assert canonical_json(doc) == canonical_json(record.doc)


def test_malleated_signature_is_rejected() -> None:
    """Ed25519's S + L (the same signature, non-canonically encoded) does not verify."""
    order = 2**252 + 27742317777372353535851937790883648493
    record = FIXED[0]
    raw = base64.b64decode(str(record.doc["sig"]))
    s_plus_l = int.from_bytes(raw[32:], "little") + order
    assert s_plus_l < 2**256
    doc = dict(record.doc)
    doc["sig"] = base64.b64encode(raw[:32] + s_plus_l.to_bytes(32, "little")).decode()
    with pytest.raises(SignatureError):
        verify_record(doc, PUBLIC, kind=record.kind)


def test_regression_verify_chain_reads_streams_in_bounded_memory() -> None:
    """Regression: iterating a file read a whole unterminated 64 MiB line (130 MiB traced)."""
    stream = io.BytesIO(LINE + b"x" * (64 << 20))
    tracemalloc.start()
    try:
        report = verify_chain(stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not report.ok
    assert report.records == 1
    assert report.first_bad_line == 2
    assert "longer than the cap" in str(report.reason)
    assert peak < 1 << 20


def test_zz_case_count() -> None:
    """At least LGWAN_FUZZ_EXAMPLES (default 10,000) cases ran, when the whole file ran."""
    if set(PERCENT) - set(RAN):
        pytest.skip("only part of the fuzz file was selected")
    total = sum(RAN[name] for name in PERCENT)
    print(f"custody record fuzz cases: {dict(RAN)}, total {total}; no-ops accepted: {ACCEPTED}")
    assert total >= TOTAL
