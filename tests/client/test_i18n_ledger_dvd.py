"""The ledger, hand-over and DVD commands speak Japanese (--lang ja or a ja_* locale) and English.

Real ``lgwan-client`` subprocesses: help texts, refusals of the hand-over rules,
the ``record``/``verify``/``dvd`` summaries and the ``outstanding`` table headings
(on a pseudo-terminal), once per language choice.
"""

import os
import pty
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
PROG = "lgwan-client"
BATCH_LIKE = "20260715-KAIGO-7F3KQ2"
JA_FLAG = ("--lang", "ja")
EN_FLAG = ("--lang", "en")

# (extra arguments, LANG): Japanese by the flag and by the locale; English by the flag even
# in a Japanese locale (English by default is what every other CLI test runs in).
JAPANESE = [
    pytest.param(JA_FLAG, "C.UTF-8", id="lang-ja"),
    pytest.param((), "ja_JP.UTF-8", id="LANG"),
]
ENGLISH = [pytest.param(EN_FLAG, "ja_JP.UTF-8", id="lang-en")]


def _env(lang: str) -> dict[str, str]:
    drop = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("LGWAN_")}
    env.update(LANG=lang, COLUMNS="200")
    return env


def _run(cwd: Path, lang: str, *args: str, tty: bool = False) -> tuple[int, str, str]:
    """Run lgwan-client; stdout on a pseudo-terminal when ``tty``. Returns code, out, err."""
    argv = [str(BIN / PROG), *args]
    if not tty:
        done = subprocess.run(
            argv, cwd=cwd, env=_env(lang), capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=120, check=False,
        )  # fmt: skip
        return done.returncode, done.stdout, done.stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=_env(lang), stdout=slave, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, b"".join(chunks).decode(), err.decode()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ward directory with a key and one sealed batch (made once, in English)."""
    root = tmp_path_factory.mktemp("ward")
    (root / "client.toml").write_text(
        '[ward]\nhandler = "tanaka"\n[seal]\nwork_factor = 10\n[ledger]\nmin_gap_minutes = 60\n',
        encoding="utf-8",
    )
    for args in (
        ("--config", "client.toml", "keygen"),
        ("sample", "--records", "20", "--seed", "3", "--out", "kaigo.csv"),
    ):
        assert _run(root, "C.UTF-8", *args)[0] == 0
    code, out, err = _run(
        root, "C.UTF-8", "--config", "client.toml", "seal", "kaigo.csv", "--notice-type", "KAIGO"
    )
    assert code == 0, err
    (root / "batch.txt").write_text(out.strip(), encoding="ascii")
    return root


@pytest.fixture
def ward(template: Path, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A fresh copy of the template; yields its directory and the batch id."""
    shutil.copytree(template, tmp_path, dirs_exist_ok=True)
    yield tmp_path, (tmp_path / "batch.txt").read_text(encoding="ascii")


def _media_out(root: Path, batch: str, lang: str, *flag: str) -> tuple[int, str, str]:
    return _run(
        root, lang, *flag, "--config", "client.toml", "ledger", "record", "media-out",
        "--batch", batch, "--serial", "DVD-20260715-001", "--to-org", "印刷センター",
        "--to-person", "山田", "--cabinet", "A棚", "--carrier", "佐藤",
    )  # fmt: skip


def _notice_out(root: Path, batch: str, lang: str, *flag: str) -> tuple[int, str, str]:
    """The notice, by the disc's carrier, a moment after the disc: refused (same occasion)."""
    return _run(
        root, lang, *flag, "--config", "client.toml", "ledger", "record", "notice-out",
        "--batch", batch, "--method", "hand", "--to-org", "印刷センター", "--to-person", "山田",
        "--cabinet", "B棚", "--carrier", "佐藤",
    )  # fmt: skip


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "lang"), JAPANESE)
def test_ledger_and_dvd_help_in_japanese(tmp_path: Path, flag: tuple[str, ...], lang: str) -> None:
    code, out, _err = _run(tmp_path, lang, *flag, "ledger", "record", "--help")
    assert code == 0
    assert "使い方:" in out and "usage:" not in out
    assert "記録に残す備考" in out  # --note
    assert "事象とそのオプション" in out  # the epilog
    code, out, _err = _run(tmp_path, lang, *flag, "dvd", "--help")
    assert code == 0
    assert "書き込むイメージ" in out
    assert "バッチのパスフレーズをファイル記述子 N から読む" in out
    code, out, _err = _run(tmp_path, lang, *flag, "ledger", "--help")
    assert "ハッシュチェーンとすべての署名を検証する" in out


@pytest.mark.parametrize(("flag", "lang"), ENGLISH)
def test_ledger_and_dvd_help_in_english(tmp_path: Path, flag: tuple[str, ...], lang: str) -> None:
    code, out, _err = _run(tmp_path, lang, *flag, "ledger", "record", "--help")
    assert code == 0
    assert "usage:" in out and "使い方" not in out
    assert "a remark for the record" in out
    assert "events and their options" in out
    code, out, _err = _run(tmp_path, lang, *flag, "dvd", "--help")
    assert "image to write" in out and "書き込む" not in out


# --- refusals before any ledger is read ----------------------------------------------------


@pytest.mark.parametrize(("flag", "lang"), JAPANESE)
def test_refusals_in_japanese(tmp_path: Path, flag: tuple[str, ...], lang: str) -> None:
    code, out, err = _run(tmp_path, lang, *flag, "ledger", "record", "sent", "--batch", BATCH_LIKE)
    assert (code, out) == (1, "")
    refusal = "'sent' は lgwan-client send だけが記録します。手作業では記録できません"
    assert err == f"{PROG}: エラー: {refusal}\n"
    code, _out, err = _run(tmp_path, lang, *flag, "ledger", "record", "media-out", "--batch", "x")
    assert code == 2
    assert err == f"{PROG}: エラー: media-out には --serial が必要です\n"


@pytest.mark.parametrize(("flag", "lang"), ENGLISH)
def test_refusals_in_english(tmp_path: Path, flag: tuple[str, ...], lang: str) -> None:
    code, _out, err = _run(tmp_path, lang, *flag, "ledger", "record", "sent", "--batch", BATCH_LIKE)
    assert code == 1
    assert err == (
        f"{PROG}: error: 'sent' entries are recorded by lgwan-client send only, never by hand\n"
    )
    code, _out, err = _run(tmp_path, lang, *flag, "ledger", "record", "media-out", "--batch", "x")
    assert (code, err) == (2, f"{PROG}: error: media-out needs --serial\n")


# --- the hand-over rules, the summaries and the table, on a real ledger --------------------


@pytest.mark.parametrize(("flag", "lang"), JAPANESE)
def test_hand_over_in_japanese(ward: tuple[Path, str], flag: tuple[str, ...], lang: str) -> None:
    root, batch = ward
    code, out, err = _media_out(root, batch, lang, *flag)
    assert code == 0, err
    assert out == f"{batch} (DVD-20260715-001) の media-out を台帳 seq 2 として記録しました\n"
    before = (root / "ledger" / "ledger.jsonl").read_bytes()
    code, out, err = _notice_out(root, batch, lang, *flag)
    assert (code, out) == (1, "")
    assert err.startswith(f"{PROG}: エラー: DVD バッチ {batch} のパスワード通知書がディスクの")
    assert "60 分以上の間隔を空けた別の機会に受け渡してください" in err
    assert (root / "ledger" / "ledger.jsonl").read_bytes() == before  # nothing recorded
    code, out, err = _run(root, lang, *flag, "--config", "client.toml", "ledger", "verify")
    assert code == 0, err
    assert out.startswith("正常: 台帳 ")
    assert "2 件の記録、ハッシュチェーンと署名に改ざんはありません" in out
    code, out, err = _run(
        root, lang, *flag, "--config", "client.toml", "ledger", "outstanding", "--days", "0",
        tty=True,
    )  # fmt: skip
    assert code == 1, err
    for heading in ("バッチ", "品目", "番号", "持出日時 (JST)", "日数", "受渡先", "取扱者"):
        assert heading in out
    assert "ディスク" in out and "DVD-20260715-001" in out
    assert "out since" not in out


@pytest.mark.parametrize(("flag", "lang"), ENGLISH)
def test_hand_over_in_english(ward: tuple[Path, str], flag: tuple[str, ...], lang: str) -> None:
    root, batch = ward
    code, out, err = _media_out(root, batch, lang, *flag)
    assert (code, out) == (0, f"recorded media-out of {batch} (DVD-20260715-001) as ledger seq 2\n")
    code, _out, err = _notice_out(root, batch, lang, *flag)
    assert code == 1
    assert err.startswith(f"{PROG}: error: the password notice of DVD batch {batch} would leave")
    assert "they go on separate occasions at least 60 minutes apart" in err
    code, out, err = _run(root, lang, *flag, "--config", "client.toml", "ledger", "verify")
    assert code == 0, err
    assert "2 records, chain and signatures intact" in out
    code, out, err = _run(
        root, lang, *flag, "--config", "client.toml", "ledger", "outstanding", "--days", "0",
        tty=True,
    )  # fmt: skip
    assert code == 1, err
    for heading in ("batch", "item", "serial", "out since (JST)", "days", "recipient", "handler"):
        assert heading in out
    assert "disc" in out and "持出" not in out


@pytest.mark.parametrize(
    ("flag", "lang", "nothing"),
    [
        pytest.param(
            JA_FLAG, "C.UTF-8", "30 日以上持ち出されたままのものはありません", id="lang-ja"
        ),
        pytest.param((), "ja_JP.UTF-8", "30 日以上持ち出されたままのものはありません", id="LANG"),
        pytest.param(EN_FLAG, "ja_JP.UTF-8", "nothing out for 30 days or more", id="lang-en"),
    ],
)
def test_nothing_outstanding(
    ward: tuple[Path, str], flag: tuple[str, ...], lang: str, nothing: str
) -> None:
    root, _batch = ward
    code, out, err = _run(
        root, lang, *flag, "--config", "client.toml", "ledger", "outstanding", "--days", "30",
        tty=True,
    )  # fmt: skip
    assert code == 0, err
    assert nothing in out


# --- dvd ----------------------------------------------------------------------------------


DVD_JA = ("age 形式のディスクイメージ 1 枚を書き込み、検証しました", "で終わる必要があります")
DVD_EN = ("1 age disc image(s) written and verified", "must end in .iso")


@pytest.mark.parametrize(
    ("flag", "lang", "done", "bad_name"),
    [
        pytest.param(JA_FLAG, "C.UTF-8", *DVD_JA, id="lang-ja"),
        pytest.param((), "ja_JP.UTF-8", *DVD_JA, id="LANG"),
        pytest.param(EN_FLAG, "ja_JP.UTF-8", *DVD_EN, id="lang-en"),
    ],
)
def test_dvd_messages(
    ward: tuple[Path, str], flag: tuple[str, ...], lang: str, done: str, bad_name: str
) -> None:
    root, batch = ward
    base = (*flag, "--config", "client.toml", "dvd", batch)
    code, out, err = _run(root, lang, *base, "--out", "disc.txt")
    assert code == 2 and out == ""
    assert bad_name in err
    code, out, err = _run(root, lang, *base, "--out", "disc.iso")
    assert code == 0, err
    serial = f"DVD-{datetime.now():%Y%m%d}-001"
    assert out.startswith(f"{serial}  ")  # machine-readable stdout: the same in every language
    assert f"{PROG}: {batch}: " in err and done in err
