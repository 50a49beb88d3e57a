"""The Dockerfile and .dockerignore of the docker-compose deployment, checked as text.

:func:`check_dockerfile` returns what the final stage gives every container
(user, command, health check, programs installed into ``/usr/local/bin``), so
the compose checks can judge services that inherit them.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tools.compose_commands import Report

SECRET_NAME = re.compile(r"PASS|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_?KEY", re.IGNORECASE)
SECRET_FILES = ("*_ed25519*", "*ssh_host_*", "id_*", "*.pem", "*.key", ".env", "*.db")
IGNORED_PATHS = ("keys/ward_ed25519", "config/gateway.toml", "config/client.toml", ".venv/bin")
"""Paths that must never reach the build context."""


@dataclass
class Image:
    """What the final stage of the Dockerfile gives every container."""

    user: str = ""
    cmd: list[str] = field(default_factory=list)
    health: list[str] | None = None
    installed: dict[str, Path | None] = field(default_factory=dict)
    workdir: str = "/"


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    kept = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    found = []
    for line in re.sub(r"\\\n", " ", kept).splitlines():
        word, _, rest = line.strip().partition(" ")
        if word:
            found.append((word.upper(), rest.strip()))
    return found


def _exec_form(text: str) -> list[str]:
    """argv of ``["exec", "form"]``; the shell form runs under ``sh -c``."""
    try:
        value = json.loads(text)
    except ValueError:
        return ["sh", "-c", text]
    return [str(v) for v in value] if isinstance(value, list) else ["sh", "-c", text]


def check_dockerfile(report: Report, text: str, context: Path) -> Image:
    """The Dockerfile checks; returns what its final stage gives the containers."""
    image = Image()
    froms = 0
    for word, rest in _instructions(text):
        if word == "FROM":
            froms += 1
            base = next((w for w in rest.split() if not w.startswith("--")), "")
            image = Image(installed=image.installed)
            tagged = ":" in base.rsplit("/", 1)[-1] or "@sha256:" in base
            report.check(
                tagged and not base.endswith(":latest"), f"Dockerfile: FROM {base} is not pinned"
            )
            report.check(
                base.startswith("python:") and "slim" in base,
                f"Dockerfile: FROM {base} is not a slim Python image",
            )
        elif word == "WORKDIR":
            image.workdir = rest
        elif word == "USER":
            image.user = rest.split(":")[0]
        elif word in ("CMD", "ENTRYPOINT"):
            image.cmd = _exec_form(rest)
        elif word == "HEALTHCHECK":
            command = re.sub(r"^(--[\w-]+=\S+\s+)*", "", rest)
            cmd = re.sub(r"^CMD\s+", "", command, flags=re.IGNORECASE)
            image.health = None if command.upper() == "NONE" else _exec_form(cmd)
        elif word in ("ENV", "ARG"):
            for name in re.findall(r"(?:^|\s)([A-Za-z_]\w*)(?==|\s|$)", rest):
                report.check(not SECRET_NAME.search(name), f"Dockerfile: {word} {name} (secret)")
        elif word in ("COPY", "ADD"):
            _check_copy(report, rest, context, image)
        elif word == "RUN" and re.search(r"pip3? install", rest):
            report.check(
                not re.search(r"\[(test|dev)[^\]]*\]|\s-e\s|--editable", rest),
                "Dockerfile: pip installs the project editable or with test/dev extras",
            )
    report.check(froms > 0, "Dockerfile: no FROM")
    report.check(
        image.user not in ("", "0", "root"), "Dockerfile: final stage has no non-root USER"
    )
    report.check(image.health is not None, "Dockerfile: no HEALTHCHECK")
    return image


def _check_copy(report: Report, rest: str, context: Path, image: Image) -> None:
    """A COPY/ADD: sources exist and carry no keys or configuration; note installed programs."""
    words = [w for w in rest.split() if not w.startswith("--")]
    from_stage = "--from=" in rest
    if len(words) < 2:
        return
    *sources, destination = words
    if destination.startswith("/usr/local/bin/") and len(sources) == 1:
        name = PurePosixPath(destination).name
        image.installed[name] = None if from_stage else context / sources[0]
    if from_stage:
        return
    for source in sources:
        if not any(c in source for c in "*?["):
            report.check(
                (context / source).exists(), f"Dockerfile: COPY {source}: no such file in context"
            )
        parts = PurePosixPath(source.rstrip("/")).parts
        name = parts[-1] if parts else "."
        bad = (
            source in (".", "./", "*")
            or "keys" in parts
            or (name.endswith(".toml") and name != "pyproject.toml")
            or any(fnmatch.fnmatch(name, pattern) for pattern in SECRET_FILES)
        )
        report.check(not bad, f"Dockerfile: COPY {source} may carry keys or configuration")


def check_dockerignore(report: Report, text: str) -> None:
    """``keys/``, configuration files and ``.venv/`` stay out of the build context."""
    patterns = [
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]
    for path in IGNORED_PATHS:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False  # Docker's rule: the last matching pattern wins; "!" re-includes
        for pattern in patterns:
            negated = pattern.startswith("!")
            clean = pattern.lstrip("!").strip("/")
            if any(fnmatch.fnmatch(p, clean) for p in prefixes):
                excluded = not negated
        report.check(excluded, f".dockerignore: {path} is not excluded from the build context")
