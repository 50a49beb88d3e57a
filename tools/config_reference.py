"""Generate ``docs/CONFIGURATION.md`` from the example configurations.

``python tools/config_reference.py`` reads ``config/client.example.toml`` and
``config/gateway.example.toml`` and writes ``docs/CONFIGURATION.md``: every
section and every key with its default (as written in the example) and the
comment above it. A table that the example only shows commented out (such as
``[tenants.<name>]``) is listed too, marked as an example, not a default.

``--check`` writes nothing: exit 0 when the file is what would be generated,
1 when it is stale or missing (run the command without ``--check``), 2 when an
example cannot be read. Every value is checked against ``tomllib`` so the
reference can never show a value the loader would read differently.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = Path("docs") / "CONFIGURATION.md"
EXAMPLES = (
    ("lgwan-client", Path("config") / "client.example.toml", "LGWAN_CLIENT_CONFIG"),
    ("lgwan-gateway", Path("config") / "gateway.example.toml", "LGWAN_GATEWAY_CONFIG"),
)
EXIT_OK, EXIT_STALE, EXIT_BROKEN = 0, 1, 2

_SECTION = re.compile(r"^\[([A-Za-z0-9_.-]+)\]$")
_KEY = re.compile(r"^([A-Za-z0-9_-]+)\s*=\s*(.+)$")


class ExampleError(Exception):
    """An example configuration cannot be turned into a reference."""


@dataclass
class Key:
    """One ``key = value`` line with the comment lines directly above it."""

    name: str
    value: str
    comment: list[str]


@dataclass
class Section:
    """One ``[table]``: its own comment and its keys, in file order."""

    name: str
    comment: list[str]
    keys: list[Key] = field(default_factory=list)
    example: bool = False
    """True for a table the file only shows commented out (no default)."""


@dataclass
class Example:
    """One example file: the program it configures, its header comment, its sections."""

    program: str
    path: Path
    env_var: str
    intro: list[str]
    sections: list[Section]


def _uncomment(line: str) -> str:
    """``# text`` → ``text`` (one ``#`` and one space removed)."""
    text = line.lstrip()[1:]
    return text[1:] if text.startswith(" ") else text


def _is_commented_table(lines: Sequence[str]) -> bool:
    return any(_SECTION.match(line.strip()) for line in lines)


def _parse_lines(lines: Iterable[str], where: str) -> list[Section]:
    """Sections of TOML text whose comments document the key below them."""
    sections: list[Section] = []
    pending: list[str] = []

    def flush_example() -> None:
        header = next(i for i, text in enumerate(pending) if _SECTION.match(text.strip()))
        body = pending[header:]
        tables = _parse_lines(body, where)
        for table in tables:
            table.example = True
        tables[0].comment = [*pending[:header], *tables[0].comment]
        sections.extend(tables)
        pending.clear()

    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if line.startswith("#"):
            pending.append(_uncomment(line))
        elif not line:
            if pending and _is_commented_table(pending):
                flush_example()
        elif found := _SECTION.match(line):
            sections.append(Section(found.group(1), _trim(pending)))
            pending = []
        elif found := _KEY.match(line):
            if not sections:
                raise ExampleError(f"{where}:{number}: key {found.group(1)!r} outside a table")
            sections[-1].keys.append(Key(found.group(1), found.group(2).strip(), _trim(pending)))
            pending = []
        else:
            raise ExampleError(f"{where}:{number}: not a table, key or comment: {line[:60]!r}")
    if pending:
        if not _is_commented_table(pending):
            raise ExampleError(f"{where}: a comment at the end documents nothing")
        flush_example()
    return sections


def _trim(lines: list[str]) -> list[str]:
    """Comment lines without leading and trailing empty ones."""
    start, end = 0, len(lines)
    while start < end and not lines[start].strip():
        start += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return lines[start:end]


def _split_intro(text: str) -> tuple[list[str], list[str]]:
    """The header comment (up to the first non-comment line) and the rest of the lines."""
    lines = text.splitlines()
    intro: list[str] = []
    for index, raw in enumerate(lines):
        if raw.strip().startswith("#"):
            intro.append(_uncomment(raw))
            continue
        return intro, lines[index:]
    return intro, []


def _toml_value(text: str, where: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}\n")["value"]
    except tomllib.TOMLDecodeError as exc:
        raise ExampleError(f"{where}: {text[:60]!r} is not one TOML value: {exc}") from None


def _check_against_toml(sections: list[Section], loaded: dict[str, Any], where: str) -> None:
    """Every parsed key must be a key ``tomllib`` reads, with the same value, and vice versa."""
    seen: set[tuple[str, str]] = set()
    for section in sections:
        table: Any = loaded
        for part in section.name.split("."):
            table = table.get(part, {}) if isinstance(table, dict) else {}
        for key in section.keys:
            name = f"{where}: [{section.name}] {key.name}"
            if key.name not in table:
                raise ExampleError(f"{name}: not read by tomllib")
            if _toml_value(key.value, name) != table[key.name]:
                raise ExampleError(f"{name}: {key.value!r} differs from what tomllib reads")
            seen.add((section.name, key.name))
    expected = set(_leaves(loaded))
    if missed := sorted(expected - seen):
        raise ExampleError(f"{where}: keys not documented: {missed}")


def _leaves(table: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, str]]:
    """(dotted table, key) of every non-table value below the top level."""
    for name, value in table.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}.{name}" if prefix else name)
        elif prefix:
            yield prefix, name


def load_example(program: str, path: Path, env_var: str, root: Path = ROOT) -> Example:
    """Parse one example file and check it against ``tomllib``.

    Raises:
        ExampleError: unreadable file, a line that is neither table, key nor
            comment, or a value ``tomllib`` reads differently.
    """
    where = path.as_posix()
    try:
        text = (root / path).read_text(encoding="utf-8")
        loaded = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ExampleError(f"{where}: {exc}") from None
    intro, rest = _split_intro(text)
    sections = _parse_lines(rest, where)
    _check_against_toml([s for s in sections if not s.example], loaded, where)
    for section in sections:
        if section.example:
            body = "\n".join(f"{k.name} = {k.value}" for k in section.keys)
            _check_against_toml(
                [section], _nested(section.name, tomllib.loads(body)), f"{where} (example)"
            )
    return Example(program, path, env_var, _trim(intro), sections)


def _nested(dotted: str, values: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = values
    for part in reversed(dotted.split(".")):
        result = {part: result}
    return result


def _paragraphs(lines: list[str]) -> list[str]:
    """Comment lines joined into paragraphs (an empty comment line separates them)."""
    out: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            out.append(" ".join(current))
            current = []
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _prose(text: str) -> str:
    """Comment text for Markdown: ``<batch>`` must not vanish as an HTML tag."""
    parts = _cell(text).split("`")
    return "`".join(p if i % 2 else p.replace("<", "\\<") for i, p in enumerate(parts))


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{_cell(text)}{pad}{fence}"


def _render_section(example: Example, section: Section) -> list[str]:
    out = [f"### {example.program} `[{section.name}]`", ""]
    for paragraph in _paragraphs(section.comment):
        out += [_prose(paragraph), ""]
    column = "example" if section.example else "default"
    if section.example:
        out += [
            "Not present by default: the values below are an example, "
            "commented out in the example file.",
            "",
        ]
    out += [f"| key | {column} | meaning |", "|---|---|---|"]
    last_described = ""
    for key in section.keys:
        meaning = " ".join(_paragraphs(key.comment))
        if meaning:
            last_described = key.name
        elif last_described:
            meaning = f"see `{last_described}` above"
        out.append(f"| `{key.name}` | {_code(key.value)} | {_prose(meaning)} |")
    out.append("")
    return out


def render(examples: Sequence[Example]) -> str:
    """The whole reference as Markdown (deterministic: no dates, no paths outside the repo)."""
    sources = " and ".join(f"`{e.path.as_posix()}`" for e in examples)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by tools/config_reference.py from "
        + " and ".join(e.path.as_posix() for e in examples)
        + ". Do not edit: change the example files, then run "
        "`python tools/config_reference.py` (make test checks it with --check). -->",
        "",
        f"Every key of {sources}, at its default, with the comment the example file "
        "gives it. Both tools read TOML chosen with `--config FILE`, else the file named "
        "by the environment variable, else `config/<tool>.toml` under the current "
        "directory. Unknown sections and keys are refused (exit 78), so a misspelt key "
        "never passes silently. No key holds a secret: passwords and passphrases are "
        "typed at a prompt or read with `--password-fd` / `--passphrase-fd`.",
        "",
        "| tool | example | environment variable | sections | keys |",
        "|---|---|---|---|---|",
    ]
    for example in examples:
        tables = [s for s in example.sections if not s.example]
        out.append(
            f"| `{example.program}` | `{example.path.as_posix()}` | `{example.env_var}` "
            f"| {len(tables)} | {sum(len(s.keys) for s in tables)} |"
        )
    out.append("")
    for example in examples:
        out += [f"## {example.program} (`{example.path.as_posix()}`)", ""]
        for paragraph in _paragraphs(example.intro):
            out += [_prose(paragraph), ""]
        for section in example.sections:
            out += _render_section(example, section)
    return "\n".join(out).rstrip("\n") + "\n"


def generate(root: Path = ROOT) -> str:
    """The reference generated from the example files under ``root``."""
    return render([load_example(program, path, env, root) for program, path, env in EXAMPLES])


def main(argv: Sequence[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the reference; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="config_reference",
        description="Generate docs/CONFIGURATION.md from config/*.example.toml.",
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if the file is stale"
    )
    parser.add_argument(
        "--output", type=Path, default=ROOT / OUTPUT, metavar="FILE", help="default: %(default)s"
    )
    args = parser.parse_args(argv)
    try:
        text = generate()
    except ExampleError as exc:
        print(f"config_reference: error: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    output: Path = args.output
    if args.check:
        try:
            current = output.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            print(
                f"config_reference: {output} is stale or missing; "
                "run 'python tools/config_reference.py'",
                file=sys.stderr,
            )
            return EXIT_STALE
        print(f"config_reference: {output} is up to date")
        return EXIT_OK
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"config_reference: wrote {output}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
