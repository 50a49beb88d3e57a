"""``lgwan-client``'s core commands speak Japanese (``--lang ja`` or a ``ja_*`` locale) and English.

Help, usage and failure lines of keygen/sample/seal/send/status/verify-certificate
run as real subprocesses; the status table, the certificate notes and the
one-line explanations of envelope and custody failures are checked in process.
"""

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from client import certificate_store, cli, i18n, status
from client.certificate_store import CertificateCopy
from client.errors import explain
from custody import SignatureError
from envelope import HeaderError, NoMatchError, PayloadError

BIN = Path(sys.executable).parent
BATCH = "20260715-KAIGO-7F3KQ2"


def _client(
    tmp_path: Path, *args: str, lang: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run lgwan-client in ``tmp_path`` with LANG=``lang`` (C.UTF-8 when None), no config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES") and not k.startswith("LGWAN_")
    }
    env["LANG"] = lang or "C.UTF-8"
    return subprocess.run(
        [str(BIN / "lgwan-client"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )


def _japanese(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same command with --lang ja, and with a ja_JP locale and no --lang."""
    return [
        _client(tmp_path, "--lang", "ja", *args),
        _client(tmp_path, *args, lang="ja_JP.UTF-8"),
    ]


def _english(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same command by default, and with --lang en overriding a ja_JP locale."""
    return [_client(tmp_path, *args), _client(tmp_path, "--lang", "en", *args, lang="ja_JP.UTF-8")]


@pytest.fixture
def japanese() -> Iterator[None]:
    """Japanese for in-process calls; English again afterwards."""
    i18n.install("ja")
    try:
        yield
    finally:
        i18n.install("en")


def test_subcommand_help_in_both_languages(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "seal", "--help"):
        assert done.returncode == 0, done.stderr
        assert "使い方:" in done.stdout
        assert "印刷データ (CSV)" in done.stdout
        assert "パスワード通知書の出力先" in done.stdout
    top = _client(tmp_path, "--lang", "ja", "--help")
    assert "暗号化したバッチをゲートウェイへ送信し、受領証を検証する" in top.stdout
    assert "消去証明書を台帳と照合し" in top.stdout
    for done in _english(tmp_path, "seal", "--help"):
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout
        assert "where the password notice goes" in done.stdout
        assert "使い方" not in done.stdout


def test_usage_error_and_its_hint(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "send", "nope"):
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            "lgwan-client: エラー: 'nope' はバッチ番号でも .age ファイルでもありません",
            f"ヒント: seal が出力したバッチ番号を指定してください。例: {BATCH}",
        ]
    for done in _english(tmp_path, "send", "nope"):
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            "lgwan-client: error: 'nope' is neither a batch id nor a .age file",
            f"hint: give the batch id printed by seal, e.g. {BATCH}",
        ]
    missing = _client(tmp_path, "--lang", "ja", "sample", "--out", "x.csv")
    assert missing.returncode == 2
    assert "次の引数が必要です: --records" in missing.stderr
    assert "ヒント: 'lgwan-client sample --help' を実行してください" in missing.stderr


def test_sample_and_seal_refusals(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    for done in _japanese(tmp_path, "sample", "--records", "0", "--out", "x.csv"):
        assert done.returncode == 2
        assert "件数は 1 以上 10,000,000 以下にしてください (指定値: 0)" in done.stderr
    for done in _japanese(tmp_path, "seal", "--notice-type", "KAIGO", "empty.csv"):
        assert done.returncode == 2
        assert "lgwan-client: エラー: empty.csv: ファイルが空です" in done.stderr
    for done in _english(tmp_path, "seal", "--notice-type", "KAIGO", "empty.csv"):
        assert done.returncode == 2
        assert "lgwan-client: error: empty.csv: the file is empty" in done.stderr
    bad = _client(tmp_path, "--lang", "ja", "seal", "--notice-type", "kaigo", "empty.csv")
    assert "通知書の種類 'kaigo' が正しくありません: notice type must be" in bad.stderr


def test_configuration_errors(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "--config", "none.toml", "keygen"):
        assert done.returncode == 78
        assert "lgwan-client: エラー: none.toml: 設定ファイルが見つかりません" in done.stderr
    for done in _english(tmp_path, "--config", "none.toml", "keygen"):
        assert done.returncode == 78
        assert "none.toml: configuration file not found" in done.stderr
    (tmp_path / f"{BATCH}.age").write_bytes(b"age")
    for done in _japanese(tmp_path, "send", f"{BATCH}.age"):
        assert done.returncode == 78
        assert "(既定値): gateway.user: が空です。委託先がアカウントと一緒に交付した" in done.stderr
    for done in _japanese(tmp_path, "verify-certificate", "x.erasure.json"):
        assert done.returncode == 78
        assert "printsite.signing_key: が空です: 印刷拠点の鍵が固定されていません" in done.stderr
        assert "ヒント: [printsite] signing_key = " in done.stderr


def test_keygen_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("old")
    for done in _japanese(tmp_path, "keygen", "--out", "k"):
        assert done.returncode == 1
        assert "k は既にあります。keygen は鍵を上書きしません" in done.stderr
        assert "ヒント: 別の --out を指定するか" in done.stderr
    for done in _english(tmp_path, "keygen", "--out", "k"):
        assert "k already exists; keygen never overwrites a key" in done.stderr


def _failing(exc: Exception) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lgwan-client")
    i18n.add_lang_argument(parser)

    def fail(_args: argparse.Namespace) -> int:
        raise exc

    parser.set_defaults(run=fail)
    return parser


@pytest.mark.parametrize(
    ("exc", "japanese", "english"),
    [
        (
            NoMatchError("wrong passphrase"),
            "このパスフレーズでは暗号化ファイルを開けません (パスフレーズが誤っているか、"
            "パスフレーズで暗号化されたファイルではありません)",
            "the passphrase does not open this envelope (a wrong passphrase, or a file not "
            "sealed with a passphrase)",
        ),
        (
            PayloadError("payload is truncated: the final chunk is missing"),
            "暗号化ファイルの内容が破損しているか、途中で切れているか、改変されています: "
            "payload is truncated: the final chunk is missing",
            "the envelope's contents are damaged, truncated or changed: payload is truncated: "
            "the final chunk is missing",
        ),
        (
            HeaderError("header is truncated"),
            "読み取れる age 形式の暗号化ファイルではありません: header is truncated",
            "the file is not a readable age envelope: header is truncated",
        ),
        (
            SignatureError("bad signature"),
            "署名を検証できません: bad signature",
            "the signature does not verify: bad signature",
        ),
    ],
)
def test_envelope_and_custody_failures_get_one_translated_line(
    capsys: pytest.CaptureFixture[str], exc: Exception, japanese: str, english: str
) -> None:
    try:
        assert cli.run(lambda: _failing(exc), ["--lang", "ja"]) == cli.EXIT_FAILED
        assert capsys.readouterr().err == f"lgwan-client: エラー: {japanese}\n"
    finally:
        i18n.install("en")
    assert cli.run(lambda: _failing(exc), ["--lang", "en"]) == cli.EXIT_FAILED
    assert capsys.readouterr().err == f"lgwan-client: error: {english}\n"
    assert explain(exc) == english


@pytest.mark.usefixtures("japanese")
def test_status_table_headings_in_japanese(capsys: pytest.CaptureFixture[str]) -> None:
    moment = datetime(2026, 7, 15, 1, 32, 5, tzinfo=UTC)
    good = status.BatchStatus(BATCH, "forwarded", moment, None, 3)
    bad = status.BatchStatus("20260716-KAIGO-AAAAAA", None, None, None, None, problem="x")
    status.render_table([good, bad])
    out = capsys.readouterr().out
    for heading in ("バッチ", "状態", "日時 (JST)", "理由", "署名が無効"):
        assert heading in out
    assert "2026-07-15 10:32:05 JST" in out and "forwarded" in out  # values stay as they are
    assert status.as_dict(bad)["error"] == "signature INVALID (x)"  # JSON stays English
    status.render_table([])
    assert "ゲートウェイにバッチはありません" in capsys.readouterr().out


@pytest.mark.usefixtures("japanese")
def test_certificate_notes_in_japanese(tmp_path: Path) -> None:
    path = tmp_path / f"{BATCH}.erasure.json"
    valid = CertificateCopy(BATCH, path, certificate_store.CHECK_VALID, saved=True)
    unchecked = CertificateCopy(
        BATCH, path, certificate_store.CHECK_UNCHECKED, problem="[printsite] signing_key が空です"
    )
    items = [
        status.BatchStatus(BATCH, "erased", None, None, 1, None, c) for c in (valid, unchecked)
    ]
    notes = status.certificate_notes(items)
    assert [(n.message, n.hint) for n in notes] == [
        (
            f"{BATCH}: {path} として保存した消去証明書を検証しました",
            f"台帳に記録するには 'lgwan-client verify-certificate {path}' を実行してください",
        ),
        (
            f"{BATCH}: 消去証明書 {path} は検証していません ([printsite] signing_key が空です)",
            f"[printsite] signing_key を設定してから 'lgwan-client verify-certificate {path}' "
            "を実行してください",
        ),
    ]
