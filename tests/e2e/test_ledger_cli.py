"""`lgwan-client ledger record|report|outstanding|verify` through the real CLI (subprocesses)."""

import csv
import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pypdf import PdfReader

from client.ledger import KIND_LEDGER_ENTRY
from custody import canonical_json, public_key_to_openssh, sign_record
from tests.conftest import CliRunner, Result, run_cli

LEDGER = Path("ledger/ledger.jsonl")
DISC = "DVD-20260715-001"
ORG = "株式会社印刷センター"
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
Tamper = Callable[[list[bytes]], list[bytes]]


def _config(root: Path, *, min_gap: int = 60) -> None:
    """A fast client config: low scrypt work factor, a handler, the given notice/disc gap."""
    text = (
        '[ward]\nhandler = "tanaka"\n[seal]\nwork_factor = 10\n'
        f"[ledger]\nmin_gap_minutes = {min_gap}\n"
    )
    (root / "client.toml").write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ward directory with a key and a sealed batch, made once through the CLI."""
    root = tmp_path_factory.mktemp("ward")
    _config(root)
    for args in (
        ("--config", "client.toml", "keygen"),
        ("sample", "--records", "20", "--seed", "3", "--out", "kaigo.csv"),
    ):
        assert run_cli("lgwan-client", *args, cwd=root).code == 0
    done = run_cli(
        "lgwan-client", "--config", "client.toml", "seal", "kaigo.csv", "--notice-type", "KAIGO",
        cwd=root,
    )  # fmt: skip
    assert done.code == 0, done.err
    (root / "batch.txt").write_text(done.out.strip(), encoding="ascii")
    return root


@pytest.fixture
def batch(template: Path, tmp_path: Path) -> Iterator[str]:
    """A copy of the template in tmp_path (the `client` fixture's cwd); yields the batch id."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    yield (tmp_path / "batch.txt").read_text(encoding="ascii")


def _ledger(client: CliRunner, *args: str) -> Result:
    return client("--config", "client.toml", "ledger", *args)


def _now() -> datetime:
    return datetime.now().astimezone().replace(microsecond=0)


def _media_out(client: CliRunner, batch: str, *extra: str, **opts: str) -> Result:
    options = {"serial": DISC, "cabinet": "A棚", "carrier": "佐藤", **opts}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return _ledger(
        client, "record", "media-out", "--batch", batch, "--to-org", ORG,
        "--to-person", "山田 太郎", *args, *extra,
    )  # fmt: skip


def _notice_out(client: CliRunner, batch: str, *extra: str, **opts: str) -> Result:
    options = {"method": "hand", "cabinet": "B棚", "carrier": "鈴木", **opts}
    args = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return _ledger(
        client, "record", "notice-out", "--batch", batch, "--to-org", ORG,
        "--to-person", "山田 太郎", *args, *extra,
    )  # fmt: skip


def _entries(root: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (root / LEDGER).read_bytes().splitlines()]


def _assert_refused(done: Result, root: Path, before: bytes, reason: str) -> None:
    """Exit 1, exactly one stderr line naming the reason, nothing written."""
    assert done.code == 1, done.err
    lines = done.err.splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith("lgwan-client: error: ")
    assert reason in lines[0]
    assert done.out == ""
    assert (root / LEDGER).read_bytes() == before


def test_disc_and_notice_on_separate_occasions_are_recorded(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """Disc, then its notice 4 minutes later (gap 3), other cabinet and carrier: both signed."""
    _config(tmp_path, min_gap=3)
    start = _now()
    done = _media_out(client, batch, at=start.isoformat())
    assert done.code == 0, done.err
    assert done.out == f"recorded media-out of {batch} ({DISC}) as ledger seq 2\n"
    later = (start + timedelta(minutes=4)).isoformat()
    done = _notice_out(client, batch, at=later)
    assert done.code == 0, done.err
    sealed, disc, notice = _entries(tmp_path)
    assert disc["event"] == "media-out" and disc["serials"] == [DISC]
    assert (disc["files"], disc["records"], disc["discs"]) == (1, 20, 1)  # from `sealed`
    assert disc["handler"] == "tanaka"  # [ward] handler
    assert disc["content"] == "KAIGO 暗号化印刷データ"
    assert notice["serial"] == f"{batch}-N"
    assert notice["at"] == later
    assert notice["signer"] == sealed["signer"]
    verified = _ledger(client, "verify")
    assert verified.code == 0, verified.err
    assert verified.out.startswith("ok: ") and "3 records" in verified.out


def test_notice_from_the_disc_cabinet_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A password notice never shares a cabinet with its disc."""
    _config(tmp_path, min_gap=0)
    assert _media_out(client, batch).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    _assert_refused(_notice_out(client, batch, cabinet="Ａ棚"), tmp_path, before, "same cabinet")


def test_notice_within_the_gap_of_its_disc_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A DVD batch's notice minutes after the disc is the same occasion."""
    assert _media_out(client, batch).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    _assert_refused(_notice_out(client, batch), tmp_path, before, "at least 60 minutes apart")


def test_disc_within_the_gap_after_its_notice_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """The gap holds either way round: a disc soon after the notice is refused."""
    assert _notice_out(client, batch).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    _assert_refused(_media_out(client, batch), tmp_path, before, "separate occasions")


def test_notice_with_the_disc_carrier_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """The person who carried the disc may not carry its notice (gap rule off)."""
    _config(tmp_path, min_gap=0)
    assert _media_out(client, batch).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    done = _notice_out(client, batch, carrier="佐藤")
    _assert_refused(done, tmp_path, before, "needs another carrier")


def test_return_without_a_hand_over_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A disc that never went out cannot come back."""
    before = (tmp_path / LEDGER).read_bytes()
    done = _ledger(
        client, "record", "media-return", "--batch", batch, "--serial", DISC,
        "--returned-by", "山田", "--condition", "異常なし",
    )  # fmt: skip
    _assert_refused(done, tmp_path, before, "no outstanding hand-over of disc")


def test_second_hand_over_before_return_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A disc that is out cannot be handed out again until it is returned."""
    assert _media_out(client, batch).code == 0
    before = (tmp_path / LEDGER).read_bytes()
    done = _media_out(client, batch, cabinet="C棚", carrier="田中")
    _assert_refused(done, tmp_path, before, "already handed out")


def test_hand_over_of_a_never_sealed_batch_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A batch the ledger never saw sealed cannot be handed over."""
    before = (tmp_path / LEDGER).read_bytes()
    other = batch[:-6] + ("ZZZZZ9" if batch[-6:] != "ZZZZZ9" else "ZZZZZ8")
    _assert_refused(_media_out(client, other), tmp_path, before, "never sealed")


@pytest.mark.parametrize("event", ["sealed", "sent", "dvd-created"])
def test_automatic_events_cannot_be_recorded_by_hand(
    tmp_path: Path, client: CliRunner, batch: str, event: str
) -> None:
    """sealed, sent and dvd-created belong to seal, send and dvd."""
    before = (tmp_path / LEDGER).read_bytes()
    done = _ledger(client, "record", event, "--batch", batch)
    _assert_refused(done, tmp_path, before, "never by hand")


def test_event_in_the_future_is_refused(tmp_path: Path, client: CliRunner, batch: str) -> None:
    """--at an hour ahead is refused; nothing is written."""
    before = (tmp_path / LEDGER).read_bytes()
    ahead = (_now() + timedelta(hours=1)).isoformat()
    _assert_refused(_media_out(client, batch, at=ahead), tmp_path, before, "in the future")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--at", "2026-07-15T10:00"), "has no UTC offset"),
        (("--tracking", "RM1"), "--tracking does not apply to media-out"),
        (("--discs", "0"), "--discs must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(
    tmp_path: Path, client: CliRunner, batch: str, args: tuple[str, ...], message: str
) -> None:
    """A naive --at, an option of another event, a zero count: exit 2, nothing written."""
    before = (tmp_path / LEDGER).read_bytes()
    done = _media_out(client, batch, *args)
    assert done.code == 2, done.err
    assert message in done.err
    assert (tmp_path / LEDGER).read_bytes() == before


def test_registered_mail_needs_a_tracking_number(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A notice by registered mail is refused without --tracking, recorded with it."""
    done = _notice_out(client, batch, method="registered-mail", carrier="日本郵便")
    assert done.code == 2 and "--tracking" in done.err
    done = _notice_out(
        client, batch, method="registered-mail", carrier="日本郵便", tracking="RM123456789JP"
    )
    assert done.code == 0, done.err
    assert _entries(tmp_path)[-1]["tracking"] == "RM123456789JP"


def test_return_closes_the_one_outstanding_disc(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """Without --serial the return names the only disc out; a second return is refused."""
    assert _media_out(client, batch).code == 0
    args = (
        "record",
        "media-return",
        "--batch",
        batch,
        "--returned-by",
        "山田",
        "--condition",
        "ok",
    )
    done = _ledger(client, *args)
    assert done.code == 0, done.err
    assert _entries(tmp_path)[-1]["serials"] == [DISC]
    before = (tmp_path / LEDGER).read_bytes()
    _assert_refused(_ledger(client, *args), tmp_path, before, "no outstanding hand-over")


def test_outstanding_lists_items_not_returned(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """JSON lines off a TTY and exit 1 while a disc is out; exit 0 and nothing once back."""
    assert _media_out(client, batch).code == 0
    assert _ledger(client, "outstanding").code == 0  # out less than 7 days
    done = _ledger(client, "outstanding", "--days", "0")
    assert done.code == 1, done.err
    (row,) = [json.loads(line) for line in done.out.splitlines()]
    assert (row["batch"], row["kind"], row["serial"]) == (batch, "media", DISC)
    assert row["to_org"] == ORG and row["days_out"] == 0
    back = _ledger(
        client, "record", "media-return", "--batch", batch, "--returned-by", "山田",
        "--condition", "ok",
    )  # fmt: skip
    assert back.code == 0, back.err
    done = _ledger(client, "outstanding", "--days", "0")
    assert (done.code, done.out) == (0, "")


def test_report_pdf_and_csv_hold_the_events(tmp_path: Path, client: CliRunner, batch: str) -> None:
    """The 確認書 PDF's text layer and the CSV hold every recorded event."""
    _config(tmp_path, min_gap=0)
    assert _media_out(client, batch).code == 0
    done = _notice_out(client, batch, method="registered-mail", tracking="RM99JP", carrier="郵便")
    assert done.code == 0, done.err
    done = _ledger(client, "report", batch, "--out", "kakunin.pdf")
    assert done.code == 0, done.err
    assert done.out.strip() == "kakunin.pdf"
    text = "".join(
        "".join(p.extract_text() for p in PdfReader(tmp_path / "kakunin.pdf").pages).split()
    )
    for expected in (batch, DISC, f"{batch}-N", "RM99JP", "tanaka", "確認書", "委託先"):
        assert expected in text, expected
    if shutil.which("pdftotext"):
        layer = subprocess.run(
            ["pdftotext", tmp_path / "kakunin.pdf", "-"], capture_output=True, check=True
        ).stdout.decode()
        assert "媒体持出" in layer and "通知書交付" in layer
    done = _ledger(client, "report", batch, "--out", "kakunin.txt", "--format", "csv")
    assert done.code == 0, done.err
    raw = (tmp_path / "kakunin.txt").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    table = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    assert [row[0] for row in table[1:]] == ["1", "2", "3"]
    assert "RM99JP" in table[3][-1]


def test_report_of_a_tampered_ledger_is_refused(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """No 確認書 is printed from a ledger that does not verify."""
    assert _media_out(client, batch).code == 0
    path = tmp_path / LEDGER
    path.write_bytes(path.read_bytes().replace("A棚".encode(), "C棚".encode()))
    done = _ledger(client, "report", batch, "--out", "r.pdf")
    assert done.code == 1
    assert "not intact" in done.err and "seq 2" in done.err
    assert not (tmp_path / "r.pdf").exists()


def _resign_last(lines: list[bytes]) -> list[bytes]:
    """Change the last entry and sign it with another key, hash chain intact."""
    entry = json.loads(lines[-1])
    body = {k: v for k, v in entry.items() if k not in ("hash", "signer", "alg", "sig")}
    body["cabinet"] = "C棚"
    signed = sign_record(KIND_LEDGER_ENTRY, body, OTHER_KEY)
    forged = {**body, **{k: signed[k] for k in ("signer", "alg", "sig")}}
    forged["hash"] = hashlib.sha256(canonical_json(forged)).hexdigest()
    return [*lines[:-1], canonical_json(forged) + b"\n"]


@pytest.mark.parametrize(
    ("tamper", "bad_seq"),
    [
        (lambda ls: [ls[0], ls[1].replace(b"tanaka", b"tanakb"), ls[2]], 2),
        (lambda ls: [ls[0], ls[2]], 2),
        (lambda ls: [ls[0], ls[2], ls[1]], 2),
        (_resign_last, 3),
    ],
    ids=["changed-byte", "removed-line", "reordered", "other-key"],
)
def test_verify_names_the_first_bad_record(
    tmp_path: Path, client: CliRunner, batch: str, tamper: Tamper, bad_seq: int
) -> None:
    """Changed bytes, a removed or reordered line, a forged signature: exit 1 naming it."""
    _config(tmp_path, min_gap=0)
    assert _media_out(client, batch).code == 0
    assert _notice_out(client, batch).code == 0
    path = tmp_path / LEDGER
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    path.write_bytes(b"".join(tamper(lines)))
    done = _ledger(client, "verify")
    assert done.code == 1, done.out
    assert f"first bad record seq {bad_seq}" in done.err
    assert done.out == ""


def test_verify_against_a_pinned_foreign_key_fails_at_the_first_record(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """--public-key pins the key: the ward's own entries do not verify against another."""
    pinned = tmp_path / "other.pub"
    pinned.write_text(public_key_to_openssh(OTHER_KEY.public_key()) + "\n", encoding="ascii")
    done = _ledger(client, "verify", "--public-key", str(pinned))
    assert done.code == 1
    assert "first bad record seq 1 (line 1)" in done.err
    assert _ledger(client, "verify").code == 0


def test_verify_refuses_a_public_key_file_swapped_beside_the_private_key(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """A .pub that is not the private key's half is refused rather than trusted (exit 78)."""
    pub = tmp_path / "keys" / "ward_ed25519.pub"
    pub.write_text(public_key_to_openssh(OTHER_KEY.public_key()) + "\n", encoding="ascii")
    done = _ledger(client, "verify")
    assert done.code == 78
    assert "ward_ed25519.pub does not match ward_ed25519" in done.err


def test_auditor_verifies_with_the_public_key_alone(
    tmp_path: Path, client: CliRunner, batch: str
) -> None:
    """Without the private key, <key>.pub is enough to verify the ledger."""
    (tmp_path / "keys" / "ward_ed25519").unlink()
    done = _ledger(client, "verify")
    assert done.code == 0, done.err
    assert "1 record," in done.out
