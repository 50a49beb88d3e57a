"""``lgwan-gateway``'s core commands in Japanese and English: help, errors, summaries, envelopes.

Each language is chosen three ways: ``--lang ja``, the locale (``LANG=ja_JP.UTF-8``
without ``--lang``) and ``--lang en`` over a Japanese locale.
"""

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from envelope import (
    ArmorError,
    EnvelopeError,
    HeaderError,
    HmacError,
    ManifestError,
    NoMatchError,
    PassphraseError,
    PayloadError,
)
from gateway import cli
from gateway.i18n import install

BIN = Path(sys.executable).parent
TOOL = "lgwan-gateway"


def _run(cwd: Path, *args: str, lang: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the gateway with ``LANG`` set to ``lang`` (C.UTF-8 when None)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES") and not k.startswith("LGWAN_")
    }
    env["LANG"] = lang or "C.UTF-8"
    return subprocess.run(
        [str(BIN / TOOL), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _japanese(cwd: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same command chosen Japanese by ``--lang ja`` and by the locale."""
    return [_run(cwd, "--lang", "ja", *args), _run(cwd, *args, lang="ja_JP.UTF-8")]


def _english(cwd: Path, *args: str) -> list[subprocess.CompletedProcess[str]]:
    """The same command in English by default and by ``--lang en`` over a Japanese locale."""
    return [_run(cwd, *args), _run(cwd, "--lang", "en", *args, lang="ja_JP.UTF-8")]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised gateway (its config is ``root/gateway.toml``)."""
    base = tmp_path_factory.mktemp("i18n-core")
    done = _run(base, "init", "--root", "gw")
    assert done.returncode == 0, done.stderr
    return base / "gw"


def test_user_add_help(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "user", "add", "--help"):
        assert done.returncode == 0
        assert "使い方:" in done.stdout
        assert "アカウント名 (利用者ID)" in done.stdout
        assert "利用者ID・パスワード通知書" in done.stdout
    for done in _english(tmp_path, "user", "add", "--help"):
        assert done.returncode == 0
        assert "account name (user ID)" in done.stdout
        assert "使い方" not in done.stdout


def test_subcommand_help_lists_translated_commands(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "audit", "--help"):
        assert "ハッシュチェーンと署名付きチェックポイントをすべて検証する" in done.stdout
    for done in _english(tmp_path, "audit", "--help"):
        assert "check the hash chain and every signed checkpoint" in done.stdout


def test_init_refuses_an_initialised_root(root: Path) -> None:
    base = root.parent
    for done in _japanese(base, "init", "--root", "gw"):
        assert done.returncode == 1
        assert "lgwan-gateway: エラー: " in done.stderr
        assert "初期化済みです" in done.stderr
        assert "ヒント: init は既存のものを上書きしません" in done.stderr
    for done in _english(base, "init", "--root", "gw"):
        assert done.returncode == 1
        assert "is already initialised" in done.stderr
        assert "hint: init never overwrites anything" in done.stderr


def test_missing_configuration_exit_78(tmp_path: Path) -> None:
    for done in _japanese(tmp_path, "--config", "missing.toml", "audit", "verify"):
        assert done.returncode == 78
        assert "missing.toml: 設定ファイルが見つかりません" in done.stderr
    for done in _english(tmp_path, "--config", "missing.toml", "audit", "verify"):
        assert done.returncode == 78
        assert "missing.toml: configuration file not found" in done.stderr


def test_audit_verify_summary(root: Path) -> None:
    config = str(root / "gateway.toml")
    for done in _japanese(root, "--config", config, "audit", "verify"):
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("正常: 記録 1 件、")
        assert "署名鍵 SHA256:" in done.stdout
    for done in _english(root, "--config", config, "audit", "verify"):
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("ok: 1 records, head seq 1")


def test_audit_export_summary_translated_file_stays_english(root: Path) -> None:
    config = str(root / "gateway.toml")
    export = ("--config", config, "audit", "export", "--format", "csv", "--out")
    done = _run(root, *export, "ja.csv", lang="ja_JP.UTF-8")
    assert done.returncode == 0, done.stderr
    assert "1 件の記録を ja.csv に出力しました" in done.stdout
    head = (root / "ja.csv").read_text(encoding="utf-8-sig").splitlines()[0]
    assert head.startswith("seq,time,event,")
    done = _run(root, "--lang", "en", *export, "en.csv", lang="ja_JP.UTF-8")
    assert "1 record written to en.csv" in done.stdout


def test_user_commands(root: Path) -> None:
    config = str(root / "gateway.toml")
    passwd = ("--config", config, "user", "passwd", "x1", "--password-fd", "0")
    ja, en = _run(root, "--lang", "ja", *passwd), _run(root, "--lang", "en", *passwd)
    assert ja.returncode == en.returncode == 2
    assert "パスワードが 12 文字より短いです" in ja.stderr
    assert "ヒント: --password-fd を省略すると強力なパスワードを生成します" in ja.stderr
    assert "the password is shorter than 12 characters" in en.stderr
    add = ("--config", config, "user", "add", "x1", "--role", "ward", "--tenant", "shinjuku",
           "--pubkey", "k.pub")  # fmt: skip
    ja, en = _run(root, *add, lang="ja_JP.UTF-8"), _run(root, *add)
    assert ja.returncode == en.returncode == 2
    assert "--notice-out がないとパスワードが失われます" in ja.stderr
    assert "without --notice-out it would be lost" in en.stderr


def test_serve_and_pull_errors(root: Path) -> None:
    config = str(root / "gateway.toml")
    done = _run(root, "--lang", "ja", "--config", config, "serve", "--listen", "bad")
    assert done.returncode == 2
    assert "'bad' は HOST:PORT の形式ではありません" in done.stderr
    assert "ヒント: HOST:PORT を指定してください" in done.stderr
    pull = ("--config", config, "pull", "--password-fd", "0")
    ja, en = _run(root, *pull, lang="ja_JP.UTF-8"), _run(root, "--lang", "en", *pull)
    assert ja.returncode == en.returncode == 78
    assert "pull.host: 設定されていません" in ja.stderr
    assert "pull.host: is not set (the gateway to pull from)" in en.stderr


# -- envelope errors: one translated line per class, through cli.main() -------------------------


@pytest.fixture
def english_after() -> Iterator[None]:
    """Leave the process in English (the language other tests expect)."""
    yield
    install("en")


def _main_raising(
    monkeypatch: pytest.MonkeyPatch, exc: EnvelopeError, lang: str
) -> tuple[int, list[str]]:
    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser()
        parser.add_argument("--lang")

        def run(_args: argparse.Namespace) -> int:
            raise exc

        parser.set_defaults(run=run)
        return parser

    monkeypatch.setattr(cli, "_build_parser", build)
    captured: list[str] = []
    monkeypatch.setattr(cli, "_error", lambda message, hint: captured.extend([message, hint]))
    code = cli.main(["--lang", lang])
    return code, captured


CASES = [
    (NoMatchError("wrong passphrase"), "パスフレーズが違います", "wrong passphrase: it does not"),
    (
        NoMatchError("the file is not passphrase-encrypted (no scrypt stanza)"),
        "このパスフレーズでは暗号化ファイルを開けません: the file is not passphrase-encrypted",
        "does not open this envelope: the file is not passphrase-encrypted",
    ),
    (
        PassphraseError("the passphrase does not match its check group: a typo?"),
        "通知書の印字と一致しません: the passphrase does not match its check group",
        "not as printed on the notice: the passphrase does not match",
    ),
    (HmacError("header MAC does not verify"), "封かん後に改変", "changed after sealing"),
    (
        PayloadError("payload is truncated: the final chunk is missing"),
        "途中で切れているか、改ざんされています: payload is truncated",
        "truncated or was tampered with: payload is truncated",
    ),
    (HeaderError("header is truncated"), "ヘッダーが壊れている", "header is damaged"),
    (ArmorError("no armor BEGIN line"), "ASCII armor", "ASCII armor"),
    (ManifestError("manifest is too large"), "内容一覧 (manifest) が正しくありません", "not valid"),
    (EnvelopeError("something else"), "処理できません: something else", "cannot be processed"),
]


@pytest.mark.parametrize(("exc", "ja", "en"), CASES, ids=lambda v: type(v).__name__)
def test_envelope_errors_are_explained(
    monkeypatch: pytest.MonkeyPatch, english_after: None, exc: EnvelopeError, ja: str, en: str
) -> None:
    code, (message, _hint) = _main_raising(monkeypatch, exc, "ja")
    assert code == 1
    assert ja in message
    assert "\n" not in message
    code, (message, _hint) = _main_raising(monkeypatch, exc, "en")
    assert code == 1
    assert en in message


def test_wrong_passphrase_detail_not_repeated(english_after: None) -> None:
    install("en")
    message, hint = cli.envelope_message(NoMatchError("wrong passphrase"))
    assert message == "wrong passphrase: it does not open this envelope"
    assert hint is not None and "password notice" in hint
    install("ja")
    message, hint = cli.envelope_message(NoMatchError("wrong passphrase"))
    assert message == "パスフレーズが違います: この暗号化ファイルを開けません"
    assert hint is not None and "パスワード通知書" in hint


def test_envelope_error_reaches_stderr_in_japanese(
    monkeypatch: pytest.MonkeyPatch, english_after: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(_args: argparse.Namespace) -> int:
        raise HmacError("x")

    def build() -> argparse.ArgumentParser:
        parser = argparse.ArgumentParser()
        parser.add_argument("--lang")
        parser.set_defaults(run=run)
        return parser

    monkeypatch.setattr(cli, "_build_parser", build)
    assert cli.main(["--lang", "ja"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert (
        err[0] == "lgwan-gateway: エラー: 暗号化ファイルのヘッダーが封かん後に改変されています: x"
    )
    assert err[1].startswith("ヒント: ファイルは証拠として保存し")
