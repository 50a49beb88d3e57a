"""The print site's custody commands in Japanese and English (``--lang`` or the locale).

Messages, prompts' surroundings, table headings and progress labels follow the
language; audit records, reason codes and the report files stay English.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from envelope import passphrase
from gateway import i18n
from gateway.dvd_disc import DiscError
from gateway.envelope_check import _ as keep_english
from gateway.envelope_check import english
from tests.conftest import Result
from tests.gateway.custody_kit import BATCH, HANDLER, CustodySite, make_site

_LOCALE_VARIABLES = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CustodySite:
    """A print site with staff and BATCH in its spool; the locale is C unless a test says so."""
    for name in _LOCALE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")
    made = make_site(tmp_path)
    made.spool_batch()
    return made


@pytest.fixture
def japanese(site: CustodySite, monkeypatch: pytest.MonkeyPatch) -> CustodySite:
    """The site, its commands run under LANG=ja_JP.UTF-8 (no --lang)."""
    monkeypatch.setenv("LANG", "ja_JP.UTF-8")
    return site


def _ja(site: CustodySite, *args: object, **secrets: str) -> Result:
    return site.gateway("--lang", "ja", *args, **secrets)


def _en(site: CustodySite, *args: object, **secrets: str) -> Result:
    return site.gateway("--lang", "en", *args, **secrets)


def _not_opened(site: CustodySite, *lang: str) -> Result:
    return site.gateway(
        *lang, "print-log", "add", "--batch", BATCH, "--file", "print.csv",
        "--printer", "RICOH-1", "--sheets", 3, "--as", HANDLER, "--password-fd", "{handler}",
    )  # fmt: skip


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "japanese", "english_text"),
    [
        (("open",), "パスワード通知書の受領方法", "how the passphrase notice arrived"),
        (("erase",), "承認する取扱責任者", "the approving manager"),
        (("print-log", "add"), "印刷先プリンタ名", "the printer's name"),
        (("dvd-import",), "バッチの属する区", "the ward the batch belongs to"),
        (("incidents",), "報告書も出力する", "also write the report"),
    ],
)
def test_help_follows_lang(
    site: CustodySite, command: tuple[str, ...], japanese: str, english_text: str
) -> None:
    """--help of the custody commands: Japanese with --lang ja, English with --lang en."""
    ja = _ja(site, *command, "--help")
    en = _en(site, *command, "--help")
    assert ja.code == en.code == 0, ja.err + en.err
    assert japanese in ja.out and english_text not in ja.out and "使い方:" in ja.out
    assert english_text in en.out and japanese not in en.out and "usage:" in en.out


def test_help_in_japanese_from_the_locale_and_lang_en_overrides(japanese: CustodySite) -> None:
    """LANG=ja_JP.UTF-8 alone gives Japanese; --lang en still gives English."""
    ja = japanese.gateway("staff", "add", "--help")
    en = japanese.gateway("--lang", "en", "staff", "add", "--help")
    assert "名簿に印字する氏名" in ja.out and "使い方:" in ja.out
    assert "as printed on the roster" in en.out and "使い方" not in en.out


# -- errors ---------------------------------------------------------------------------------


def test_custody_refusal_in_both_languages_audited_in_english(site: CustodySite) -> None:
    """A refused print-log entry says why in the chosen language; the audit keeps its code."""
    ja = _not_opened(site, "--lang", "ja")
    en = _not_opened(site, "--lang", "en")
    assert ja.code == en.code == 1
    assert f"バッチ {BATCH} はこの印刷拠点で復号されていません" in ja.err, ja.err
    assert "エラー:" in ja.err and "ヒント:" in ja.err and "先に復号してください" in ja.err
    assert f"batch {BATCH} was not opened at this site" in en.err, en.err
    assert "バッチ" not in en.err
    refusals = site.audit("custody_refused")
    assert [r["reason"] for r in refusals] == ["not_opened", "not_opened"]


def test_unknown_staff_from_the_locale(japanese: CustodySite) -> None:
    """Without --lang, LANG=ja_JP gives Japanese errors (and usage errors)."""
    done = japanese.gateway("staff", "disable", "nobody")
    assert done.code != 0
    assert "職員 'nobody' はいません" in done.err, done.err
    assert "'lgwan-gateway staff list' で確認してください" in done.err
    sheets = japanese.gateway("print-log", "add", "--batch", BATCH, "--file", "f", "--printer", "p",
                          "--sheets", 0, "--as", HANDLER)  # fmt: skip
    assert sheets.code == 2 and "--sheets は 1 から 1,000,000 までにしてください" in sheets.err


def test_dvd_refusal_shown_in_japanese_audited_in_english(
    site: CustodySite, tmp_path: Path
) -> None:
    """dvd-import's refusal is Japanese on the terminal, English in the audit log's reason."""
    empty = tmp_path / "not-a-disc"
    empty.mkdir()
    done = _ja(site, "dvd-import", empty, "--tenant", "shinjuku")
    assert done.code == 1 and done.out == ""
    assert "DISC.json も .iso イメージもありません" in done.err, done.err
    [refused] = site.audit("dvd_refused")
    assert "holds neither DISC.json nor .iso images" in str(refused["reason"])


def test_wrong_passphrase_in_japanese(site: CustodySite) -> None:
    """open with another batch's passphrase: refused in Japanese, nothing released."""
    done = _ja(site, "open", BATCH, "--as", HANDLER, "--password-fd", "{handler}",
               "--passphrase-fd", "{fd}", "--via", "hand", fd=passphrase.generate())  # fmt: skip
    assert done.code == 1 and "Traceback" not in done.err
    assert "このパスフレーズではこのバッチを復号できません" in done.err, done.err
    assert "パスワード通知書と照らし合わせて" in done.err
    assert not (site.work / BATCH).exists()


# -- tables and reports ---------------------------------------------------------------------


def test_incidents_table_in_japanese_csv_stays_english(site: CustodySite, tmp_path: Path) -> None:
    """Headings and detail follow the language; the CSV's columns and detail stay English."""
    assert _not_opened(site).code == 1
    out = tmp_path / "incidents.csv"
    ja = _ja(site, "incidents", "--out", out)
    assert ja.code == 0, ja.err
    assert "日時 (JST)" in ja.out and "種別" in ja.out and "詳細" in ja.out
    assert "print: not_opened (OS ユーザー " in ja.out and "custody_refused" in ja.out
    assert "1 件の事故を" in ja.err
    text = out.read_text(encoding="utf-8-sig")
    assert "OS user" in text and "OS ユーザー" not in text
    header, row = list(csv.reader(text.splitlines()))
    assert "種別コード (Kind code)" in header and "custody_refused" in row
    en = _en(site, "incidents")
    assert "TIME (JST)" in en.out and "(OS user " in en.out and "日時" not in en.out


def test_overdue_lines_in_both_languages(site: CustodySite) -> None:
    """overdue words its lines in the chosen language; ids and states stay as they are."""
    ja = _ja(site, "overdue", "--days", "0")
    en = _en(site, "overdue", "--days", "0")
    assert ja.code == en.code == 1
    assert BATCH in ja.out and "到着 " in ja.out and "(0 日)" in ja.out and "arrived" in ja.out
    assert "arrived " in en.out and "(0 days)" in en.out and "到着" not in en.out


# -- the bilingual text of records ----------------------------------------------------------


def test_text_keeps_its_english_through_format_and_exceptions() -> None:
    """A message made by envelope_check's _ is Japanese to show and English to record."""
    i18n.install("ja")
    try:
        inner = keep_english("{path} is given twice").format(path="a.iso")
        error = DiscError(keep_english("{where} lines {count}: {reason}").format(
            where="x", count=1_000, reason=inner))  # fmt: skip
        assert str(inner) == "a.iso が2回指定されています"
        assert english(inner) == "a.iso is given twice"
        assert english(error) == "x lines 1000: a.iso is given twice"
        assert english(ValueError("plain")) == "plain" and english(7) == "7"
    finally:
        i18n.install("en")
    assert str(keep_english("{path} is given twice").format(path="b")) == "b is given twice"
