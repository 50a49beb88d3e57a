"""Japanese and English for everything a person reads from ``lgwan-client``.

Messages are written in English and wrapped in :func:`_`; the Japanese
catalog ships in the package (``client/locale/ja/LC_MESSAGES/lgwan-client.mo``,
compiled from the ``.po`` beside it by ``tools/i18n.py``). The language is
Japanese when ``--lang ja`` is given or the locale (``LANGUAGE``, ``LC_ALL``,
``LC_MESSAGES``, ``LANG``, in gettext's order) is ``ja_*``; English otherwise.
Log events, audit fields and file formats stay English whatever the language.

argparse's own words ("usage:", "the following arguments are required") come
from its module-level ``_``; :func:`install` points that at our catalog too, so
a Japanese session has no English left in its help and usage errors.
"""

import argparse
import gettext
from collections.abc import Mapping, Sequence
from pathlib import Path

DOMAIN = "lgwan-client"
LANGUAGES = ("ja", "en")
LOCALE_DIR = Path(__file__).parent / "locale"
_ENV_ORDER = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")

_catalog: gettext.NullTranslations = gettext.NullTranslations()


def choose(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The language for this run: ``--lang X`` on the command line, else the locale."""
    for index, arg in enumerate(argv):
        if arg == "--lang" and index + 1 < len(argv):
            return argv[index + 1] if argv[index + 1] in LANGUAGES else "en"
        if arg.startswith("--lang="):
            value = arg.split("=", 1)[1]
            return value if value in LANGUAGES else "en"
    for name in _ENV_ORDER:
        value = environ.get(name, "")
        if value:
            return "ja" if value.split(":")[0].lower().startswith("ja") else "en"
    return "en"


def install(language: str) -> None:
    """Use ``language``'s catalog for :func:`_` and for argparse."""
    global _catalog
    _catalog = gettext.translation(
        DOMAIN, localedir=LOCALE_DIR, languages=[language], fallback=True
    )
    argparse._ = _catalog.gettext  # type: ignore[attr-defined]
    argparse.ngettext = _catalog.ngettext  # type: ignore[attr-defined]


def _(message: str) -> str:
    """``message`` in the chosen language (English text is its own key)."""
    return _catalog.gettext(message)


def ngettext(singular: str, plural: str, count: int) -> str:
    """The singular or plural form for ``count`` in the chosen language."""
    return _catalog.ngettext(singular, plural, count)


def add_lang_argument(parser: argparse.ArgumentParser) -> None:
    """``--lang ja|en`` (read before the parser is built; here so --help shows it)."""
    parser.add_argument(
        "--lang", choices=LANGUAGES, help=_("language of messages (default: from the locale)")
    )
