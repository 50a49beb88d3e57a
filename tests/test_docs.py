"""The documentation matches the code it describes.

- Every ``lgwan-client …`` / ``lgwan-gateway …`` command line in a shell block of
  README.md parses with the program's real argparse parser (the checker of
  ``tools.compose_commands``, also behind ``make compose-check``), and together
  they show every subcommand of both tools.
- Commands named inline in README.md and docs/COMPLIANCE.md name real subcommands.
- docs/CONFIGURATION.md is what ``tools/config_reference.py`` generates from the
  example configurations.
- Every ``tests/….py::name`` cited in docs/COMPLIANCE.md exists, every rule row
  cites a test and a command, and (when ``../shared/SPEC.md`` is at hand) every
  rule of SPEC §1 has its row.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tools import config_reference
from tools.compose_commands import PACKAGE_PROGRAMS, Commands, CommandTree, Report, load_program

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
COMPLIANCE = ROOT / "docs" / "COMPLIANCE.md"
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"
SPEC = ROOT.parent / "shared" / "SPEC.md"

SHELL_BLOCKS = frozenset({"", "sh", "bash", "shell", "console"})
_FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_CONTAINER = re.compile(r"^(\s*)docker compose (?:exec|run)(?:\s+-{1,2}[\w-]+)*\s+[\w.-]+\s+")
_ENVIRONMENT = re.compile(r"^(\s*)(?:[A-Z_][A-Z0-9_]*=\S*\s+)+")
_INLINE = re.compile(r"`(lgwan-(?:client|gateway)(?: [^`]*)?)`")
_CITATION = re.compile(r"tests/[\w/]+\.py::[A-Za-z_]\w*(?:::[A-Za-z_]\w*)?")
_CELL_SPLIT = re.compile(r"(?<!\\)\|")


# -- README command lines --------------------------------------------------------------------------


class _Recorder(Commands):
    """The compose checker, remembering every lgwan-* invocation it was given."""

    def __init__(self) -> None:
        super().__init__(Report(), {})
        self.invocations: list[tuple[str, list[str]]] = []

    def check_invocation(self, where: str, name: str, args: list[str]) -> None:
        self.invocations.append((name, list(args)))
        super().check_invocation(where, name, args)


def _shell_blocks(markdown: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each fenced shell block."""
    for found in _FENCE.finditer(markdown):
        if found.group(1) in SHELL_BLOCKS:
            yield markdown.count("\n", 0, found.start(2)) + 1, found.group(2)


def _unwrap(line: str) -> str:
    """A command line without ``docker compose exec SERVICE`` or ``VAR=value`` in front."""
    line = _CONTAINER.sub(r"\1", line)
    return _ENVIRONMENT.sub(r"\1", line)


def _check_markdown(markdown: str) -> _Recorder:
    recorder = _Recorder()
    for first, block in _shell_blocks(markdown):
        script = "\n".join(_unwrap(line) for line in block.splitlines())
        recorder.check_script(f"README.md block at line {first}", script)
    return recorder


@cache
def _tree(program: str) -> CommandTree:
    loaded = load_program(program)
    assert loaded.parser is not None, f"{PACKAGE_PROGRAMS[program]} is not importable"
    assert loaded.tree is not None
    return loaded.tree


def _leaves(node: CommandTree, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if not node.children:
        yield path
    for name, child in node.children.items():
        yield from _leaves(child, (*path, name))


def _subcommand_path(program: str, args: list[str]) -> tuple[str, ...]:
    """The subcommands an argv names, skipping options and their values."""
    node, path = _tree(program), ()
    tokens = iter(args)
    for token in tokens:
        if token.startswith("-"):
            if token in node.valued_options and "=" not in token:
                next(tokens, None)
            continue
        if token not in node.children:
            break
        node, path = node.children[token], (*path, token)
    return path


def test_readme_command_lines_parse_with_the_real_parsers() -> None:
    """Every lgwan-* line in README's shell blocks (compose ones too) parses; none is missed."""
    recorder = _check_markdown(README.read_text(encoding="utf-8"))
    assert recorder.report.problems == []
    lines = [
        _unwrap(line)
        for _, block in _shell_blocks(README.read_text(encoding="utf-8"))
        for line in block.splitlines()
        if re.match(r"\s*lgwan-(client|gateway)\b", _unwrap(line))
    ]
    assert len(recorder.invocations) == len(lines) >= 60


def test_readme_shows_every_subcommand_of_both_tools() -> None:
    """The walk-throughs use each subcommand of lgwan-client and lgwan-gateway at least once."""
    recorder = _check_markdown(README.read_text(encoding="utf-8"))
    shown = {(name, _subcommand_path(name, args)) for name, args in recorder.invocations}
    missing = [
        f"{program} {' '.join(leaf)}"
        for program in sorted(PACKAGE_PROGRAMS)
        for leaf in _leaves(_tree(program))
        if (program, leaf) not in shown
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("lgwan-client seal kaigo.csv", "--notice-type", id="required-option-missing"),
        pytest.param("lgwan-gateway user create x", "unknown subcommand", id="unknown-subcommand"),
        pytest.param("lgwan-gateway staff", "needs a subcommand", id="group-without-command"),
        pytest.param(
            "docker compose exec ward lgwan-client send B --pasword-fd 3",
            "--pasword-fd",
            id="misspelt-option-in-compose",
        ),
        pytest.param("LANG=ja_JP.UTF-8 lgwan-gateway batches --all", "--all", id="env-prefix"),
    ],
)
def test_a_wrong_command_line_is_caught(line: str, expected: str) -> None:
    """The checker names a README line the real parser would refuse (and the culprit)."""
    recorder = _check_markdown(f"# t\n\n```sh\n{line}\n```\n")
    assert len(recorder.invocations) == 1
    assert any(expected in problem for problem in recorder.report.problems), (
        recorder.report.problems
    )


def _inline_commands(markdown: str) -> Iterator[list[str]]:
    """Commands quoted inline (`lgwan-gateway user unlock NAME`), split into words."""
    prose = _FENCE.sub("", markdown)
    for found in _INLINE.finditer(prose):
        yield found.group(1).replace("\\|", "|").split()


def _unknown_subcommands(words: list[str]) -> list[str]:
    """Words in subcommand position that are not subcommands (``a|b`` checks each)."""
    node = _tree(words[0])
    tokens = iter(words[1:])
    for token in tokens:
        if token.startswith(("-", "[")):
            if token in node.valued_options:
                next(tokens, None)
            continue
        if not node.children or not re.fullmatch(r"[a-z][a-z0-9|-]*", token):
            return []
        names = token.split("|")
        unknown = [n for n in names if n not in node.children]
        if unknown:
            return unknown
        node = node.children[names[0]]
    return []


@pytest.mark.parametrize("document", [README, COMPLIANCE], ids=lambda p: p.name)
def test_inline_commands_name_real_subcommands(document: Path) -> None:
    """`lgwan-…` commands quoted in the prose name subcommands that exist."""
    commands = list(_inline_commands(document.read_text(encoding="utf-8")))
    assert commands
    wrong = {" ".join(c): u for c in commands if (u := _unknown_subcommands(c))}
    assert wrong == {}


# -- docs/CONFIGURATION.md -------------------------------------------------------------------------


def test_configuration_reference_is_up_to_date() -> None:
    """`python tools/config_reference.py --check` exits 0 on the committed file."""
    done = subprocess.run(
        [sys.executable, "tools/config_reference.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_check_fails_on_a_stale_or_missing_reference(tmp_path: Path) -> None:
    """--check exits 1 for an edited or missing file; writing makes it pass again."""
    target = tmp_path / "CONFIGURATION.md"
    assert config_reference.main(["--check", "--output", str(target)]) == 1
    assert config_reference.main(["--output", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == CONFIGURATION.read_text(encoding="utf-8")
    assert config_reference.main(["--check", "--output", str(target)]) == 0
    target.write_text(target.read_text(encoding="utf-8").replace("300", "301"), encoding="utf-8")
    assert config_reference.main(["--check", "--output", str(target)]) == 1


@pytest.mark.parametrize("program", sorted(PACKAGE_PROGRAMS))
def test_reference_lists_every_key_with_its_default(program: str) -> None:
    """Each section of the example has its heading; each key its row with the default."""
    ((path, _env),) = [(p, e) for name, p, e in config_reference.EXAMPLES if name == program]
    with (ROOT / path).open("rb") as handle:
        loaded = tomllib.load(handle)
    text = CONFIGURATION.read_text(encoding="utf-8")
    for section, values in loaded.items():
        heading = f"### {program} `[{section}]`"
        assert heading in text
        body = text.split(heading, 1)[1].split("\n### ", 1)[0]
        for key, value in values.items():
            shown = re.search(rf"^\| `{re.escape(key)}` \| `(.*?)` \|", body, re.MULTILINE)
            assert shown is not None, f"[{section}] {key}"
            assert tomllib.loads(f"v = {shown.group(1)}")["v"] == value


def test_commented_tenant_table_is_documented_as_an_example() -> None:
    """The [tenants.<name>] table the gateway example shows commented out is listed, as example."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    body = text.split("### lgwan-gateway `[tenants.shinjuku]`", 1)[1]
    assert "| key | example | meaning |" in body.split("\n### ", 1)[0]
    for key in ("forward", "forward_key", "host_key", "receipt_key", "max_attempts"):
        assert f"| `{key}` |" in body


def test_generator_refuses_what_it_cannot_document(tmp_path: Path) -> None:
    """A line that is neither table, key nor comment makes the generator stop (no guessing)."""
    for _, path, _ in config_reference.EXAMPLES:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((ROOT / path).read_text(encoding="utf-8"), encoding="utf-8")
    gateway = tmp_path / config_reference.EXAMPLES[1][1]
    gateway.write_text(
        gateway.read_text(encoding="utf-8") + '\n[extra]\nnames = [\n  "a",\n]\n',
        encoding="utf-8",
    )
    with pytest.raises(config_reference.ExampleError, match="not a table, key or comment"):
        config_reference.generate(tmp_path)


# -- docs/COMPLIANCE.md ----------------------------------------------------------------------------


def _defined(path: Path) -> set[str]:
    """``name`` and ``Class::name`` of every function the test file defines."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return names


def _rows(markdown: str) -> list[list[str]]:
    """The body rows of the Markdown tables, as cells."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in _CELL_SPLIT.split(line.strip())[1:-1]]
        rows.append(cells)
    return [r for r in rows if r and not r[0].startswith("rule (")]


def test_every_cited_test_exists() -> None:
    """Each tests/<file>.py::<name> in COMPLIANCE.md is a test function in that file."""
    cited = sorted(set(_CITATION.findall(COMPLIANCE.read_text(encoding="utf-8"))))
    assert len(cited) >= 60
    missing = []
    for citation in cited:
        file, name = citation.split("::", 1)
        path = ROOT / file
        exists = path.is_file() and name in _defined(path)
        if not exists or not name.split("::")[-1].startswith("test"):
            missing.append(citation)
    assert missing == []


def test_every_rule_row_cites_a_command_and_a_test() -> None:
    """Twelve rule rows, each naming at least one lgwan-* command and one test."""
    rows = _rows(COMPLIANCE.read_text(encoding="utf-8"))
    assert len(rows) == 12
    for rule, performs, proves in rows:
        assert "`lgwan-" in performs, rule
        assert _CITATION.search(proves), rule


def test_every_spec_rule_has_its_row() -> None:
    """The first column of SPEC §1's rules table reappears, word for word, as a row."""
    if not SPEC.is_file():
        pytest.skip(f"{SPEC} is not available here")
    spec = SPEC.read_text(encoding="utf-8")
    section = spec.split("## 1.", 1)[1].split("\n## ", 1)[0]
    rules = [cells[0] for cells in _rows(section)]
    assert len(rules) == 12
    documented = [cells[0] for cells in _rows(COMPLIANCE.read_text(encoding="utf-8"))]
    assert documented == rules


def test_citation_check_catches_a_missing_test(tmp_path: Path) -> None:
    """A citation of a test that does not exist is not found in its file."""
    assert "test_demo_runs_every_step_and_cleans_up" in _defined(ROOT / "tests/e2e/test_demo.py")
    assert "test_no_such_behaviour" not in _defined(ROOT / "tests/e2e/test_demo.py")
    (tmp_path / "test_x.py").write_text(
        "class TestX:\n    def test_y(self) -> None:\n        assert True\n", encoding="utf-8"
    )
    assert _defined(tmp_path / "test_x.py") == {"TestX::test_y"}
