"""Command lines of the docker-compose deployment, checked against the installed package.

:class:`Commands` checks an argv (a compose ``command``/``entrypoint``/health
check, a Dockerfile ``CMD``): its program must exist in the image, and every
``lgwan-gateway``/``lgwan-client`` invocation — also inside ``sh -c`` strings
and the shell scripts the Dockerfile installs — must name a subcommand of the
package and parse with the package's own argparse parser (built by
``gateway.cli``/``client.cli`` without running it; ``PROGRAM --help`` is the
fallback when the module cannot be imported).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PACKAGE_PROGRAMS = {"lgwan-gateway": "gateway.cli", "lgwan-client": "client.cli"}
BASE_PROGRAMS = frozenset({"sh", "bash", "sleep", "python", "python3", "true", "cat", "tail"})
"""Programs of the python:*-slim base image that commands may use."""
SHELL_SEPARATORS = frozenset({";", "&&", "||", "|", "(", "$", "!", "then", "do", "else", "exec"})


@dataclass
class Report:
    """Counts checks and collects one line per problem."""

    checks: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str) -> bool:
        self.checks += 1
        if not ok and problem not in self.problems:
            self.problems.append(problem)
        return ok


class CommandTree:
    """One (sub)parser: its subcommands and the options that take a value.

    Built from an argparse parser, or — the fallback — read lazily from
    ``PROGRAM [SUB…] --help`` (``help_argv``), one subprocess per level visited.
    """

    def __init__(
        self,
        children: dict[str, CommandTree] | None = None,
        valued_options: frozenset[str] = frozenset(),
        help_argv: list[str] | None = None,
    ) -> None:
        self._children = children
        self._valued = valued_options
        self._help_argv = help_argv

    @property
    def children(self) -> dict[str, CommandTree]:
        self._load()
        return self._children or {}

    @property
    def valued_options(self) -> frozenset[str]:
        self._load()
        return self._valued

    def _load(self) -> None:
        if self._children is not None or self._help_argv is None:
            return
        done = subprocess.run(  # noqa: S603 - argv of our own console script
            [*self._help_argv, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},  # argparse's English headings
        )
        text = done.stdout
        self._valued = frozenset(re.findall(r"^\s+(--?[\w-]+) [A-Z{]", text, re.MULTILINE))
        positionals = text.partition("positional arguments:")[2].split("\n\n", 1)[0]
        found = re.search(r"^\s+\{([\w,-]+)\}", positionals, re.MULTILINE)  # the subparsers
        names = found.group(1).split(",") if found else []
        self._children = {n: CommandTree(help_argv=[*self._help_argv, n]) for n in names}


@dataclass
class Program:
    """An installed console script: its command tree and, when importable, its parser."""

    name: str
    tree: CommandTree | None
    parser: argparse.ArgumentParser | None
    error: str = ""


def _tree_from_parser(parser: argparse.ArgumentParser) -> CommandTree:
    children: dict[str, CommandTree] = {}
    valued: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                children[name] = _tree_from_parser(sub)
        elif action.nargs != 0:
            valued.update(action.option_strings)
    return CommandTree(children, frozenset(valued))


def load_program(name: str) -> Program:
    """The parser built by the package (``build_parser``/``_build_parser``), else ``--help``."""
    module_name = PACKAGE_PROGRAMS[name]
    try:
        module = importlib.import_module(module_name)
        builder = getattr(module, "build_parser", None) or getattr(module, "_build_parser", None)
        if callable(builder):
            parser = builder()
            if isinstance(parser, argparse.ArgumentParser):
                return Program(name, _tree_from_parser(parser), parser)
    except Exception:  # noqa: S110 - any import trouble: fall back to the console script
        pass
    beside = Path(sys.executable).parent / name
    executable = str(beside) if beside.exists() else shutil.which(name)
    if executable is None:
        return Program(
            name, None, None, f"{name} is not installed and {module_name} not importable"
        )
    tree = CommandTree(help_argv=[executable])
    if not tree.children:
        return Program(name, None, None, f"'{name} --help' lists no subcommands")
    return Program(name, tree, None)


class Commands:
    """Checks argv lists against the installed programs and the image's own scripts."""

    def __init__(self, report: Report, installed: dict[str, Path | None]) -> None:
        self.report = report
        self.installed = installed
        self.programs: dict[str, Program] = {}

    def program(self, name: str) -> Program:
        if name not in self.programs:
            self.programs[name] = load_program(name)
        return self.programs[name]

    def check_argv(self, where: str, argv: list[str]) -> None:
        """One command line: its program exists; lgwan-* subcommands exist and parse."""
        if not self.report.check(bool(argv), f"{where}: empty command"):
            return
        name = PurePosixPath(argv[0]).name
        if name in ("sh", "bash") and "-c" in argv[1:-1]:
            self.check_script(where, argv[argv.index("-c") + 1])
            return
        known = name in PACKAGE_PROGRAMS or name in BASE_PROGRAMS or name in self.installed
        if not self.report.check(known, f"{where}: '{argv[0]}' is not a program in the image"):
            return
        if name in PACKAGE_PROGRAMS:
            self.check_invocation(where, name, argv[1:])
        script = self.installed.get(name)
        if script is not None and _is_shell(script):
            self.check_script(f"{where} → {script.name}", script.read_text(encoding="utf-8"))

    def check_invocation(self, where: str, name: str, args: list[str]) -> None:
        program = self.program(name)
        if not self.report.check(program.tree is not None, f"{where}: {program.error}"):
            return
        assert program.tree is not None
        node, path = program.tree, [name]
        tokens = iter(args)
        for token in tokens:
            if token.startswith("-"):
                if token in node.valued_options and "=" not in token:
                    next(tokens, None)
                continue
            if not node.children:
                break
            if not self.report.check(
                token in node.children,
                f"{where}: '{' '.join(path)} {token}': unknown subcommand "
                f"(known: {', '.join(sorted(node.children))})",
            ):
                return
            node, path = node.children[token], [*path, token]
        if not self.report.check(
            not node.children, f"{where}: '{' '.join(path)}' needs a subcommand"
        ):
            return
        if program.parser is not None and not {"-h", "--help"} & set(args):
            try:
                program.parser.parse_args(args)
                ok, message = True, ""
            except SystemExit as exc:
                ok, message = False, f"exit {exc.code}"
            except Exception as exc:  # the parser's own usage error (it raises, not exits)
                ok, message = False, str(exc)
            self.report.check(ok, f"{where}: '{' '.join([name, *args])}': {message}")

    def check_script(self, where: str, script: str) -> None:
        """Every lgwan-gateway / lgwan-client command in a POSIX shell script."""
        for line in _logical_lines(script):
            try:
                lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                tokens = list(lexer)
            except ValueError:
                continue
            for i, token in enumerate(tokens):
                if token in PACKAGE_PROGRAMS and (i == 0 or tokens[i - 1] in SHELL_SEPARATORS):
                    self.check_invocation(where, token, _until_operator(tokens[i + 1 :]))


def _is_shell(path: Path) -> bool:
    try:
        first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    except (OSError, UnicodeDecodeError):
        return False
    return first.startswith("#!") and first.rstrip().endswith(("/sh", "/bash", " sh", " bash"))


def _logical_lines(script: str) -> Iterator[str]:
    """Lines with backslash continuations joined, here-document bodies skipped."""
    pending, heredoc = "", None
    for raw in script.splitlines():
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line, pending = pending + raw, ""
        marker = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if marker:
            heredoc = marker.group(1)
        yield line


def _until_operator(tokens: list[str]) -> list[str]:
    args: list[str] = []
    for token in tokens:
        if token and all(c in "();<>|&" for c in token):
            if args and args[-1].isdigit() and token.startswith(">"):
                args.pop()  # the fd of a redirection such as 2>&1
            break
        args.append(token)
    return args
