"""The ward's hand-over ledger: signed entries, chain, lock, torn-line repair, seal's entry."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pypdf import PdfReader

from client import ledger, seal
from client.config import ClientConfig, IdentitySection, LedgerSection, SealSection
from client.errors import ClientError, ConfigError
from client.ledger import Ledger
from custody import canonical_json, fingerprint, private_key_to_openssh

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
SHA = "ab" * 32


def _book(tmp_path: Path) -> Path:
    return tmp_path / "ledger" / "ledger.jsonl"


def _fill(path: Path, count: int) -> None:
    with Ledger.open(path, KEY) as book:
        for n in range(count):
            book.record("sent", batch=f"20260715-KAIGO-00000{n}", size=n, sha256=SHA)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _rehash(entry: dict[str, object]) -> bytes:
    """Re-serialise an edited entry with a correct chain hash (what a forger can do)."""
    entry = {k: v for k, v in entry.items() if k != "hash"}
    entry["hash"] = hashlib.sha256(canonical_json(entry)).hexdigest()
    return canonical_json(entry) + b"\n"


def test_record_returns_the_signed_entry_as_written(tmp_path: Path) -> None:
    """record() returns the entry with seq, prev, time, signer and hash, as on disk."""
    path = _book(tmp_path)
    with Ledger.open(path, KEY) as book:
        entry = book.record("sealed", batch="20260715-KAIGO-7F3KQ2", file_count=2)
    assert json.loads(path.read_bytes()) == entry
    assert entry["seq"] == 1
    assert entry["event"] == "sealed"
    assert entry["signer"] == fingerprint(KEY.public_key())
    assert entry["alg"] == "ed25519"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", str(entry["time"]))


def test_ledger_file_is_private(tmp_path: Path) -> None:
    """The ledger file is created mode 0600."""
    path = _book(tmp_path)
    _fill(path, 1)
    assert path.stat().st_mode & 0o777 == 0o600


def test_intact_ledger_verifies(tmp_path: Path) -> None:
    """A ledger written in several sessions verifies with the ward's public key."""
    path = _book(tmp_path)
    _fill(path, 3)
    _fill(path, 2)
    report = Ledger.verify(path, KEY.public_key())
    assert report.ok, report.reason
    assert report.records == 5
    assert [e["seq"] for e in ledger.entries(path)] == [1, 2, 3, 4, 5]


def test_verify_with_another_key_fails_at_the_first_entry(tmp_path: Path) -> None:
    """Entries signed by the ward's key do not verify against another key."""
    path = _book(tmp_path)
    _fill(path, 2)
    report = Ledger.verify(path, OTHER.public_key())
    assert not report.ok
    assert report.first_bad_line == 1
    assert "signed by" in str(report.reason)


def test_edited_field_with_recomputed_hash_is_caught_by_the_signature(tmp_path: Path) -> None:
    """Changing a field and fixing the chain hash still fails: the signature covers it."""
    path = _book(tmp_path)
    _fill(path, 3)
    lines = _lines(path)
    entry = json.loads(lines[1])
    entry["size"] = 999
    lines[1] = _rehash(entry)
    path.write_bytes(b"".join(lines))
    report = Ledger.verify(path, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 2
    assert "bad signature" in str(report.reason)


def test_removed_entry_breaks_the_chain(tmp_path: Path) -> None:
    """Removing an entry in the middle is reported at the line after the gap."""
    path = _book(tmp_path)
    _fill(path, 4)
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:1] + lines[2:]))
    report = Ledger.verify(path, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 2


def test_rechained_ledger_without_the_key_fails(tmp_path: Path) -> None:
    """Renumbering and re-hashing after a removal fails: seq and prev are signed."""
    path = _book(tmp_path)
    _fill(path, 3)
    first, _, third = (json.loads(line) for line in _lines(path))
    third["seq"], third["prev"] = 2, first["hash"]
    path.write_bytes(_lines(path)[0] + _rehash(third))
    report = Ledger.verify(path, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 2


def test_torn_last_line_is_cut_and_the_repair_recorded(tmp_path: Path) -> None:
    """A line torn by a crash is truncated at open and a signed `repaired` entry says so."""
    path = _book(tmp_path)
    _fill(path, 2)
    torn = b'{"event":"sent","batch":"2026'
    with path.open("ab") as handle:
        handle.write(torn)
    with Ledger.open(path, KEY) as book:
        book.record("sent", batch="20260715-KAIGO-AAAAAA", size=1, sha256=SHA)
    events = [(e["event"], e.get("truncated_bytes")) for e in ledger.entries(path)]
    assert events == [("sent", None), ("sent", None), ("repaired", len(torn)), ("sent", None)]
    assert Ledger.verify(path, KEY.public_key()).ok


def test_torn_line_is_reported_by_verify(tmp_path: Path) -> None:
    """A ledger ending in a torn line does not verify until it is reopened."""
    path = _book(tmp_path)
    _fill(path, 1)
    with path.open("ab") as handle:
        handle.write(b'{"event"')
    report = Ledger.verify(path, KEY.public_key())
    assert not report.ok
    assert report.first_bad_line == 2


def test_damaged_ledger_refuses_to_open(tmp_path: Path) -> None:
    """A changed complete line stops recording: nothing is appended after it."""
    path = _book(tmp_path)
    _fill(path, 2)
    path.write_bytes(path.read_bytes().replace(b'"size":1', b'"size":7'))
    before = path.read_bytes()
    with pytest.raises(ClientError, match="damaged"):
        Ledger.open(path, KEY)
    assert path.read_bytes() == before


@pytest.mark.parametrize("name", ["seq", "prev", "time", "hash", "event", "sig", "signer", "alg"])
def test_reserved_field_names_are_refused(tmp_path: Path, name: str) -> None:
    """A caller cannot set a field the ledger sets itself; nothing is written."""
    path = _book(tmp_path)
    with Ledger.open(path, KEY) as book, pytest.raises(ClientError, match="reserved"):
        book.record("sent", **{name: "x"})
    assert path.read_bytes() == b""


@pytest.mark.parametrize("event", ["Sent", "", "sent!", "a" * 33, "-x"])
def test_malformed_event_names_are_refused(tmp_path: Path, event: str) -> None:
    """Event names are lower-case words joined by hyphens."""
    with Ledger.open(_book(tmp_path), KEY) as book, pytest.raises(ClientError, match="event"):
        book.record(event, batch="b")


def test_non_json_field_is_refused_and_ledger_stays_usable(tmp_path: Path) -> None:
    """A float field is refused cleanly and the next record still chains."""
    path = _book(tmp_path)
    with Ledger.open(path, KEY) as book:
        with pytest.raises(ClientError, match="cannot record"):
            book.record("sent", ratio=0.5)
        book.record("sent", ratio="1/2")
    assert Ledger.verify(path, KEY.public_key()).records == 1


def test_entries_filters_by_batch(tmp_path: Path) -> None:
    """entries(path, batch) yields only that batch's entries, in order."""
    path = _book(tmp_path)
    _fill(path, 3)
    found = list(ledger.entries(path, "20260715-KAIGO-000001"))
    assert [e["seq"] for e in found] == [2]
    assert list(ledger.entries(tmp_path / "absent.jsonl")) == []


def test_second_process_waits_for_the_lock(tmp_path: Path) -> None:
    """While one Ledger is open another process cannot open it (lock timeout)."""
    path = _book(tmp_path)
    code = (
        "import sys; from pathlib import Path; from client.ledger import Ledger;"
        "from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey as K\n"
        "try:\n Ledger.open(Path(sys.argv[1]), K.generate(), lock_timeout=0.3)\n"
        "except Exception as e: print(type(e).__name__, e)"
    )
    with Ledger.open(path, KEY):
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
    assert "locked by another" in done.stdout


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    """Four processes recording 25 entries each leave one valid 100-entry chain."""
    path = _book(tmp_path)
    key_file = tmp_path / "k"
    key_file.write_bytes(private_key_to_openssh(KEY))
    key_file.chmod(0o600)
    code = (
        "import sys; from pathlib import Path; from client import ledger\n"
        "key = ledger.load_key(Path(sys.argv[2]), 'k')\n"
        "for n in range(25):\n"
        "    with ledger.Ledger.open(Path(sys.argv[1]), key) as book:\n"
        "        book.record('sent', batch=sys.argv[3], n=n)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path), str(key_file), f"w{i}"])
        for i in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    report = Ledger.verify(path, KEY.public_key())
    assert report.ok, report.reason
    assert report.records == 100


def test_load_key_refuses_a_key_readable_by_others(tmp_path: Path) -> None:
    """A private key with group/other permissions is a configuration error naming the setting."""
    key_file = tmp_path / "k"
    key_file.write_bytes(private_key_to_openssh(KEY))
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        ledger.load_key(key_file, "--key")
    assert info.value.exit_code == 78
    assert str(info.value).startswith("--key")


def test_load_key_refuses_missing_and_garbage(tmp_path: Path) -> None:
    """A missing key or a file that is not an Ed25519 key is refused with exit 78."""
    with pytest.raises(ConfigError, match="keygen"):
        ledger.load_key(tmp_path / "none", "identity.private_key")
    junk = tmp_path / "junk"
    junk.write_bytes(b"not a key")
    junk.chmod(0o600)
    with pytest.raises(ConfigError, match="not an OpenSSH"):
        ledger.load_key(junk, "identity.private_key")


def _seal_config(tmp_path: Path) -> ClientConfig:
    return ClientConfig(
        seal=SealSection(work_factor=10, csv_encoding="utf-8"),
        identity=IdentitySection(private_key="keys/ward"),
        ledger=LedgerSection(path="ledger/ledger.jsonl"),
        base_dir=tmp_path,
    )


def _print_file(tmp_path: Path) -> Path:
    data = tmp_path / "data.csv"
    data.write_text("番号,氏名\n1,山田\n2,佐藤\n", encoding="utf-8")
    return data


def test_seal_records_a_signed_sealed_entry_without_the_passphrase(tmp_path: Path) -> None:
    """seal with the ward's key records batch, counts, envelope hash and files — no passphrase."""
    cfg = _seal_config(tmp_path)
    (tmp_path / "keys").mkdir()
    key_file = tmp_path / "keys" / "ward"
    key_file.write_bytes(private_key_to_openssh(KEY))
    key_file.chmod(0o600)
    result = seal.seal([_print_file(tmp_path)], "KAIGO", cfg)
    path = cfg.path(cfg.ledger.path)
    (entry,) = ledger.entries(path)
    envelope = result.envelope_path.read_bytes()
    assert entry["event"] == "sealed"
    assert entry["batch"] == result.manifest.batch_id
    assert entry["notice_type"] == "KAIGO"
    assert (entry["file_count"], entry["record_total"]) == (1, 2)
    assert entry["envelope_sha256"] == hashlib.sha256(envelope).hexdigest()
    assert entry["envelope_size"] == len(envelope)
    assert entry["files"] == [
        {"name": "data.csv", "size": f.size, "sha256": f.sha256, "records": 2}
        for f in result.manifest.files
    ]
    text = "".join(page.extract_text() for page in PdfReader(result.notice_path).pages)
    secret = re.search(r"Passphrase:\s*(\S+)", text)
    assert secret is not None
    assert secret.group(1).encode() not in path.read_bytes()
    assert Ledger.verify(path, KEY.public_key()).ok


def test_seal_without_a_key_records_nothing(tmp_path: Path) -> None:
    """Without the ward's key, seal still works and no ledger is created."""
    cfg = _seal_config(tmp_path)
    result = seal.seal([_print_file(tmp_path)], "KAIGO", cfg)
    assert result.envelope_path.exists()
    assert not cfg.path(cfg.ledger.path).exists()


def test_seal_rolls_back_when_the_ledger_cannot_record(tmp_path: Path) -> None:
    """A damaged ledger fails the seal and leaves no envelope and no notice."""
    cfg = _seal_config(tmp_path)
    (tmp_path / "keys").mkdir()
    key_file = tmp_path / "keys" / "ward"
    key_file.write_bytes(private_key_to_openssh(KEY))
    key_file.chmod(0o600)
    path = cfg.path(cfg.ledger.path)
    _fill(path, 1)
    path.write_bytes(path.read_bytes().replace(b'"size":0', b'"size":5'))
    with pytest.raises(ClientError, match="damaged"):
        seal.seal([_print_file(tmp_path)], "KAIGO", cfg)
    assert list(cfg.path(cfg.seal.out_dir).iterdir()) == []
    assert list(cfg.path(cfg.seal.notice_dir).iterdir()) == []


def test_entries_refuse_an_endless_line_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"x" * (16 << 20))  # 16 MiB, no newline: not a torn entry, an attack
    tracemalloc.start()
    try:
        with pytest.raises(ClientError, match="longer than the cap"):
            list(ledger.entries(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20
