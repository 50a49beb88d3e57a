"""Both tools speak Japanese and English: catalogs complete, language chosen by --lang or locale."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from client import i18n as client_i18n
from gateway import i18n as gateway_i18n

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str, lang_env: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LANGUAGE", "LC_ALL", "LC_MESSAGES")}
    env["LANG"] = lang_env or "C.UTF-8"
    return subprocess.run(
        [str(BIN / tool), *args], capture_output=True, text=True, env=env, check=False
    )


def test_every_message_has_japanese_and_the_catalogs_are_compiled() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "i18n.py"), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.parametrize("module", [client_i18n, gateway_i18n])
def test_language_choice(module: object) -> None:
    choose = module.choose  # type: ignore[attr-defined]
    assert choose(["--lang", "ja", "status"], {}) == "ja"
    assert choose(["--lang=en"], {"LANG": "ja_JP.UTF-8"}) == "en"
    assert choose([], {"LANG": "ja_JP.UTF-8"}) == "ja"
    assert choose([], {"LC_ALL": "C", "LANG": "ja_JP.UTF-8"}) == "en"
    assert choose([], {"LANGUAGE": "ja:en", "LANG": "C"}) == "ja"
    assert choose([], {}) == "en"
    assert choose(["--lang", "fr"], {}) == "en"


@pytest.mark.parametrize("tool", ["lgwan-client", "lgwan-gateway"])
def test_help_in_japanese_with_lang_and_with_locale(tool: str) -> None:
    for done in (
        _run(tool, "--lang", "ja", "--help"),
        _run(tool, "--help", lang_env="ja_JP.UTF-8"),
    ):
        assert done.returncode == 0
        assert "使い方:" in done.stdout
        assert "設定ファイル" in done.stdout
        assert "usage:" not in done.stdout


@pytest.mark.parametrize("tool", ["lgwan-client", "lgwan-gateway"])
def test_help_in_english_by_default_and_with_lang_en(tool: str) -> None:
    for done in (
        _run(tool, "--help"),
        _run(tool, "--lang", "en", "--help", lang_env="ja_JP.UTF-8"),
    ):
        assert done.returncode == 0
        assert "usage:" in done.stdout
        assert "configuration file (TOML)" in done.stdout
        assert "使い方" not in done.stdout


@pytest.mark.parametrize("tool", ["lgwan-client", "lgwan-gateway"])
def test_usage_error_line_in_both_languages(tool: str) -> None:
    ja = _run(tool, "--lang", "ja", "no-such-command")
    en = _run(tool, "no-such-command")
    assert ja.returncode == en.returncode == 2
    assert ja.stderr.startswith(f"{tool}: エラー: ")
    assert "無効な選択肢" in ja.stderr
    assert en.stderr.startswith(f"{tool}: error: ")
    assert "invalid choice" in en.stderr
