"""Fuzzing the ward's ledger: mutated ledger files never verify (issue 8 §1, ledger lines).

A real ledger (``client.ledger.Ledger``, seven signed entries) is mutated byte
by byte, line by line (dropped, duplicated, swapped, spliced from another
ledger signed by the same key or by another key) and entry by entry (a field
dropped, added or renamed, the event, batch, seq, prev or time changed, the
signer swapped, a signature from another entry, Unicode normalisation, floats
and huge integers) with the chain hash recomputed, as a forger without the key
can do, optionally re-chaining every later line too.

``Ledger.verify`` never raises on content, and reports ok only for the one
change the ledger documents it cannot show by itself: whole entries dropped
at the end (the file is then exactly a prefix of the original lines, or of
another genuine ledger signed by the same key that replaced it whole).
``check_signature`` refuses every edited entry with a custody error.
``LGWAN_FUZZ_EXAMPLES`` (default 10,000) scales the cases (a third of it here).
"""

import contextlib
import hashlib
import json
import os
import tracemalloc
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client.ledger import Ledger, check_signature
from custody import CustodyError, canonical_json, fingerprint, parse_entry, sign_record

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
PUBLIC = KEY.public_key()
TOTAL = int(os.environ.get("LGWAN_FUZZ_EXAMPLES", "10000")) // 3
PERCENT = {"bytes": 40, "lines": 20, "entries": 40}
EXAMPLES = {name: -(-TOTAL * pct // 100) for name, pct in PERCENT.items()}  # rounded up
RAN: Counter[str] = Counter()
ACCEPTED: Counter[str] = Counter()
SHA = "ab" * 32


def _fuzz_settings(name: str) -> settings:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _build(path: Path, key: Ed25519PrivateKey, batch: str) -> tuple[bytes, ...]:
    """A ledger with the events a ward records, as real lines."""
    with Ledger.open(path, key) as book:
        book.record("sealed", batch=batch, file_count=2, sha256=SHA, 名前="新宿区 介護保険")
        book.record("sent", batch=batch, size=1_234_567, sha256=SHA)
        book.record("dvd-created", batch=batch, serial="DVD-0001", copies=1)
        book.record(
            "media-out", batch=batch, serial="DVD-0001", to="印刷センター（ガ）", label="ＤＶＤ－Ｒ"
        )
        book.record("media-return", batch=batch, serial="DVD-0001", ok=True, note=None)
        book.record("erasure-verified", batch=batch, certificate=SHA, files=["print.csv"])
        book.record("sent", batch=batch + "-2", size=0, sha256=SHA, tags=[])
    return tuple(path.read_bytes().splitlines(keepends=True))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-ledger")


class Books:
    """The ledger under attack and two donors (same key, another key)."""

    def __init__(self, root: Path) -> None:
        self.lines = _build(root / "original.jsonl", KEY, "20260715-KAIGO-7F3KQ2")
        self.same_key = _build(root / "same-key.jsonl", KEY, "20260716-SHOGAI-0000AA")
        self.other_key = _build(root / "other-key.jsonl", OTHER, "20260715-KAIGO-7F3KQ2")
        self.data = b"".join(self.lines)
        self.entries = [parse_entry(line) for line in self.lines]
        self.target = root / "target.jsonl"

    def __repr__(self) -> str:
        return "<ledger of 7 lines>"


@pytest.fixture(scope="module")
def books(workdir: Path) -> Books:
    return Books(workdir)


def _assert_refused_or_prefix(books: Books, data: bytes, name: str) -> None:
    """Ledger.verify on ``data``: not ok, or ``data`` is the first lines of a genuine ledger.

    Genuine: the original, or the other ledger the same key signed (replacing
    the whole file by another of the ward's own ledgers, or a prefix of it, is
    the same undetectable-by-itself change as cutting entries at the end).
    """
    RAN[name] += 1
    books.target.write_bytes(data)
    report = Ledger.verify(books.target, PUBLIC)
    if report.ok:
        ACCEPTED[name] += 1
        genuine = (b"".join(lines[: report.records]) for lines in (books.lines, books.same_key))
        assert data in genuine, "a changed ledger verified"
    else:
        assert report.reason
        assert data != books.data


@given(data=st.data())
@_fuzz_settings("bytes")
def test_byte_mutations_never_verify(books: Books, data: st.DataObject) -> None:
    """Flips, overwrites, truncations, insertions, deletions and duplications of the file."""
    out = bytearray(books.data)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(out)))
        op = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "dup"]))
        if op == "flip" and at < len(out):
            out[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "set" and at < len(out):
            out[at] = data.draw(st.integers(0, 255))
        elif op == "truncate":
            del out[at:]
        elif op == "insert":
            out[at:at] = data.draw(
                st.sampled_from([b"\n", b" ", b"\r", b"{}\n"]) | st.binary(min_size=1, max_size=8)
            )
        elif op == "delete":
            del out[at : at + data.draw(st.integers(1, 32))]
        else:
            out[at:at] = out[at : at + data.draw(st.integers(1, 400))]
    _assert_refused_or_prefix(books, bytes(out), "bytes")


@given(data=st.data())
@_fuzz_settings("lines")
def test_line_edits_never_verify(books: Books, data: st.DataObject) -> None:
    """Lines dropped, duplicated, swapped, or spliced in from another ledger."""
    lines = list(books.lines)
    for _ in range(data.draw(st.integers(1, 2))):
        at = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["drop", "dup", "swap", "same-key", "other-key", "cut"]))
        if op == "drop":
            del lines[at]
        elif op == "dup":
            lines.insert(at, lines[at])
        elif op == "swap":
            other = data.draw(st.integers(0, len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif op == "cut":
            del lines[at:]
        else:
            donor = books.same_key if op == "same-key" else books.other_key
            lines[at] = donor[data.draw(st.integers(0, len(donor) - 1))]
        if not lines:
            break
    _assert_refused_or_prefix(books, b"".join(lines), "lines")


def _rehash(entry: dict[str, object]) -> dict[str, object]:
    """Recompute an edited entry's chain hash (what a forger without the key can do)."""
    fields = {k: v for k, v in entry.items() if k != "hash"}
    fields["hash"] = hashlib.sha256(canonical_json(fields)).hexdigest()
    return fields


def _serialize(entry: dict[str, object]) -> bytes:
    try:
        return canonical_json(_rehash(entry)) + b"\n"
    except CustodyError:  # a float or huge integer: not canonical JSON, refused when parsed
        return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"


NAMES = ["event", "batch", "seq", "prev", "time", "signer", "alg", "sig", "hash"]
VALUES = [
    None,
    0,
    1,
    True,
    "",
    "sent",
    "SENT",
    2**53,
    2**64,
    1.0,
    "2026-07-15T09:00:00",
    "2026-07-15T09:00:00+09:00",
    "0" * 64,
    fingerprint(OTHER.public_key()),
]


def _edit(books: Books, entry: dict[str, object], data: st.DataObject) -> dict[str, object]:
    """One field-level change to a parsed entry."""
    edited = dict(entry)
    op = data.draw(
        st.sampled_from(["drop", "add", "rename", "set", "nf", "sig", "forge", "resign"])
    )
    name = data.draw(st.sampled_from(sorted(edited)))
    if op == "drop":
        del edited[name]
    elif op == "add":
        edited[data.draw(st.sampled_from(["kind", "body", "extra", "Event", "ｅｖｅｎｔ"]))] = 1
    elif op == "rename":
        edited[name + data.draw(st.sampled_from(["\u0301", "_", " "]))] = edited.pop(name)
    elif op == "set":
        edited[data.draw(st.sampled_from(NAMES))] = data.draw(st.sampled_from(VALUES))
    elif op == "nf":
        form = data.draw(st.sampled_from(["NFD", "NFKC", "NFKD"]))
        edited = {
            unicodedata.normalize(form, k): unicodedata.normalize(form, v)
            if isinstance(v, str)
            else v
            for k, v in edited.items()
        }
    elif op == "sig":
        donor = data.draw(st.sampled_from([*books.entries, *map(parse_entry, books.same_key)]))
        edited["sig"] = donor["sig"]
    elif op == "forge":  # signed by another key, claiming to be that key
        body = {k: v for k, v in edited.items() if k not in ("signer", "alg", "sig", "hash")}
        body["batch"] = "20991231-FORGED-000000"
        signed = sign_record("ledger-entry", body, OTHER)
        edited = {**body, **{k: signed[k] for k in ("signer", "alg", "sig")}}
    else:  # signed by another key, claiming to be the ward's key
        body = {k: v for k, v in edited.items() if k not in ("signer", "alg", "sig", "hash")}
        signed = sign_record("ledger-entry", body, OTHER)
        edited = {**body, "signer": entry["signer"], "alg": "ed25519", "sig": signed["sig"]}
    return edited


def _rechain(lines: list[bytes], start: int) -> None:
    """Rewrite ``prev``, ``seq`` and hash of every line after ``start`` (signatures stay)."""
    prev = parse_entry(lines[start])["hash"] if lines[start].endswith(b"\n") else "0" * 64
    for i in range(start + 1, len(lines)):
        entry = parse_entry(lines[i])
        entry.update(seq=i + 1, prev=prev)
        lines[i] = canonical_json(_rehash(entry)) + b"\n"
        prev = parse_entry(lines[i])["hash"]


@given(data=st.data())
@_fuzz_settings("entries")
def test_entry_edits_never_verify(books: Books, data: st.DataObject) -> None:
    """Field-level edits with the chain hash recomputed; signatures must catch every one."""
    at = data.draw(st.integers(0, len(books.lines) - 1))
    edited = _edit(books, books.entries[at], data)
    assume(_serialize(edited) != books.lines[at])  # not a no-op (e.g. NFD of ASCII text)
    with pytest.raises(CustodyError):
        check_signature(edited, PUBLIC)
    lines = list(books.lines)
    lines[at] = _serialize(edited)
    if data.draw(st.booleans()):
        with contextlib.suppress(CustodyError):  # the edited line does not parse: leave the rest
            _rechain(lines, at)
    _assert_refused_or_prefix(books, b"".join(lines), "entries")


@pytest.mark.parametrize("size", [1 << 20, 64 << 20])
def test_huge_line_is_refused_in_bounded_memory(books: Books, size: int) -> None:
    """Regression: Ledger.verify read a whole unterminated line (64 MiB -> 130 MiB traced)."""
    books.target.write_bytes(books.data + b"x" * size)
    tracemalloc.start()
    try:
        report = Ledger.verify(books.target, PUBLIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not report.ok
    assert report.records == len(books.lines)
    assert peak < 2 << 20


def test_original_ledger_verifies(books: Books) -> None:
    """The unmutated ledger verifies with the ward's key and not with another."""
    books.target.write_bytes(books.data)
    assert Ledger.verify(books.target, PUBLIC).ok
    assert not Ledger.verify(books.target, OTHER.public_key()).ok


def test_zz_case_count() -> None:
    """At least LGWAN_FUZZ_EXAMPLES / 3 cases ran, when the whole file ran."""
    if set(PERCENT) - set(RAN):
        pytest.skip("only part of the fuzz file was selected")
    total = sum(RAN[name] for name in PERCENT)
    print(f"ledger fuzz cases: {dict(RAN)}, total {total}; accepted: {dict(ACCEPTED)}")
    assert total >= TOTAL
