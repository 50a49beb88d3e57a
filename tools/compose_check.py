"""``make compose-check``: validate the docker-compose deployment without a Docker engine.

``python -m tools.compose_check [DIR]`` reads ``docker-compose.yml``,
``Dockerfile`` and ``.dockerignore`` in DIR (default: the repository) and
checks what the deployment promises:

- the services ``gateway``, ``print-site`` and ``ward`` exist;
- every published port is bound to 127.0.0.1, and no service uses the host network;
- in every ``lgwan-gateway serve`` service: the keys and configuration are on
  read-only mounts, state is on named volumes, a health check runs, it restarts
  ``unless-stopped``, it publishes (if at all) the port it listens on, and it
  waits for a one-shot init service that mounts the same keys and config writable;
- no secret in any environment (names like ``*PASSWORD*``, values like private
  keys), no ``env_file``, no privileged or root container;
- every ``command``, ``entrypoint`` and health check — and every shell script the
  Dockerfile installs — runs a program that exists, and each ``lgwan-gateway`` /
  ``lgwan-client`` invocation names a subcommand of the installed package and
  parses with its real argument parser;
- the Dockerfile builds on a tagged slim Python image, runs as a non-root
  ``USER``, has a ``HEALTHCHECK``, copies no keys or configuration, declares no
  secret-named ``ENV``/``ARG`` and installs no test extras;
- ``.dockerignore`` keeps ``keys/``, configuration files and ``.venv/`` out of the build.

Exit status 0 with ``compose-check: ok (N checks)``, else 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tools.compose_commands import Commands, Report
from tools.compose_image import SECRET_NAME, Image, check_dockerfile, check_dockerignore

PROG = "compose-check"
ROOT = Path(__file__).resolve().parent.parent
REQUIRED_SERVICES = ("gateway", "print-site", "ward")
CONFIG_ENV = "LGWAN_GATEWAY_CONFIG"
DEFAULT_CONFIG = "config/gateway.toml"
PROTECTED = ("keys", "config")
SECRET_VALUE = re.compile(r"-----BEGIN|PRIVATE KEY|AGE-SECRET-KEY")


def _argv(value: Any) -> list[str]:
    """A compose ``command``/``entrypoint`` (string or list) as argv."""
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def _health_argv(test: Any) -> list[str] | None:
    """A health check's command line; None when it is disabled."""
    if isinstance(test, str):
        return ["sh", "-c", test]
    items = [str(t) for t in test or []]
    if not items or items[0] == "NONE":
        return None
    if items[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(items[1:])]
    return items[1:] if items[0] == "CMD" else items


@dataclass(frozen=True)
class Mount:
    """One entry of a service's ``volumes``."""

    source: str
    target: str
    read_only: bool


def _mounts(service: dict[str, Any]) -> list[Mount]:
    """A service's ``volumes``, short (``src:dst[:ro]``) or long syntax."""
    mounts = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            mounts.append(
                Mount(
                    str(entry.get("source", "")),
                    str(entry.get("target", "")),
                    bool(entry.get("read_only", False)),
                )
            )
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:
            mounts.append(Mount("", parts[0], False))
        else:
            options = parts[2].split(",") if len(parts) > 2 else []
            mounts.append(Mount(parts[0], parts[1], "ro" in options))
    return mounts


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's ``environment``, list (``K=V``) or mapping syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (str(item).partition("=") for item in env)
        return {name: value for name, _, value in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _ports(entry: Any) -> tuple[str, str]:
    """(host IP, container port) of one ``ports`` entry; host IP "" = every interface."""
    if isinstance(entry, dict):
        return str(entry.get("host_ip", "")), str(entry.get("target", ""))
    text = str(entry).split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]:")
        return host, rest.rpartition(":")[2]
    parts = text.split(":")
    host = parts[0] if len(parts) == 3 else ""
    return host, parts[-1]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve_listen(argv: list[str]) -> str | None:
    """The PORT of ``lgwan-gateway … serve --listen HOST:PORT``.

    Returns:
        the port; "" for ``serve`` without ``--listen``; None when ``argv`` is not ``serve``.
    """
    if not argv or PurePosixPath(argv[0]).name != "lgwan-gateway" or "serve" not in argv:
        return None
    for i, token in enumerate(argv):
        if token.startswith("--listen="):
            return token.split("=", 1)[1].rpartition(":")[2]
        if token == "--listen" and i + 1 < len(argv):  # noqa: S105 - an option, not a password
            return argv[i + 1].rpartition(":")[2]
    return ""


def _config_file(service: dict[str, Any], argv: list[str], workdir: str) -> PurePosixPath:
    """The file ``serve`` reads: ``--config``, else ``$LGWAN_GATEWAY_CONFIG``, else the default."""
    named = None
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):  # noqa: S105 - an option, not a password
            named = argv[i + 1]
    named = named or _environment(service).get(CONFIG_ENV) or DEFAULT_CONFIG
    path = PurePosixPath(named)
    if not path.is_absolute():
        path = PurePosixPath(str(service.get("working_dir") or workdir)) / path
    return path


def _covering(mounts: list[Mount], path: PurePosixPath) -> Mount | None:
    """The innermost mount holding ``path``."""
    best = None
    for mount in mounts:
        target = PurePosixPath(mount.target)
        if (path == target or target in path.parents) and (
            best is None or len(target.parts) > len(PurePosixPath(best.target).parts)
        ):
            best = mount
    return best


def check_compose(
    report: Report, compose: dict[str, Any], commands: Commands, image: Image
) -> None:
    """Every compose check; ``image`` supplies what services inherit from the Dockerfile."""
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    named_volumes = set((compose.get("volumes") or {}).keys())
    for name in REQUIRED_SERVICES:
        report.check(name in services, f"docker-compose.yml: no service '{name}'")
    for name, service in services.items():
        where = f"service {name}"
        report.check(service.get("network_mode") != "host", f"{where}: uses the host network")
        report.check(not service.get("privileged"), f"{where}: runs privileged")
        user = str(service.get("user", image.user)).split(":")[0]
        report.check(user not in ("", "0", "root"), f"{where}: runs as root")
        report.check("env_file" not in service, f"{where}: env_file cannot be checked for secrets")
        for key, value in _environment(service).items():
            report.check(not SECRET_NAME.search(key), f"{where}: secret-like variable {key}")
            report.check(not SECRET_VALUE.search(value), f"{where}: {key} holds a private key")
        for entry in service.get("ports") or []:
            host, _ = _ports(entry)
            report.check(
                _loopback(host), f"{where}: port '{entry}' is not bound to 127.0.0.1 (loopback)"
            )
        for mount in _mounts(service):
            if mount.source and not mount.source.startswith((".", "/", "~")):
                report.check(
                    mount.source in named_volumes,
                    f"{where}: volume '{mount.source}' is not declared under volumes:",
                )
        argv = _argv(service.get("entrypoint")) + _argv(service.get("command")) or image.cmd
        commands.check_argv(f"{where} command", argv)
        health = service.get("healthcheck") or {}
        test = None if health.get("disable") else _health_argv(health.get("test")) or image.health
        if test is not None:
            commands.check_argv(f"{where} healthcheck", test)
        listen = _serve_listen(argv)
        if listen is None:
            if not _completes(name, services):
                report.check(
                    service.get("restart") == "unless-stopped",
                    f"{where}: restart is not unless-stopped",
                )
            continue
        _check_serve(report, name, service, argv, listen, test, services, named_volumes, image)


def _completes(name: str, services: dict[str, dict[str, Any]]) -> bool:
    """Whether another service waits for ``name`` to complete (a one-shot service)."""
    for other in services.values():
        depends = other.get("depends_on") or {}
        if isinstance(depends, dict):
            spec = depends.get(name) or {}
            if spec.get("condition") == "service_completed_successfully":
                return True
    return False


def _check_serve(
    report: Report,
    name: str,
    service: dict[str, Any],
    argv: list[str],
    listen: str,
    test: list[str] | None,
    services: dict[str, dict[str, Any]],
    named_volumes: set[str],
    image: Image,
) -> None:
    """A ``serve`` service: read-only keys and config, state, health, restart, ports, init."""
    where = f"service {name}"
    config = _config_file(service, argv, image.workdir)
    root = config.parent.parent if config.parent.name == "config" else config.parent
    protected = {"config": config, "keys": root / "keys"}
    mounts = _mounts(service)
    _check_serve_mounts(report, where, mounts, protected, root, named_volumes)
    report.check(test is not None, f"{where}: has no health check")
    if test and PurePosixPath(test[0]).name == "lgwan-healthcheck" and len(test) > 1 and listen:
        report.check(test[1] == listen, f"{where}: health check probes {test[1]}, serve {listen}")
    report.check(
        service.get("restart") == "unless-stopped", f"{where}: restart is not unless-stopped"
    )
    for entry in service.get("ports") or []:
        _, target = _ports(entry)
        report.check(
            not listen or target == listen,
            f"{where}: publishes container port {target} but serve listens on {listen}",
        )
    depends = service.get("depends_on") or {}
    inits = [
        dep
        for dep, spec in (depends.items() if isinstance(depends, dict) else [])
        if (spec or {}).get("condition") == "service_completed_successfully"
    ]
    if not report.check(
        bool(inits), f"{where}: does not wait for an init service (service_completed_successfully)"
    ):
        return
    writable = {
        mount.source
        for dep in inits
        for mount in _mounts(services.get(dep) or {})
        if not mount.read_only
    }
    for kind, path in protected.items():
        held = _covering(mounts, path)
        if held is not None and held.source:
            report.check(
                held.source in writable,
                f"{where}: no init service mounts {held.source} ({kind}) writable",
            )


def _check_serve_mounts(
    report: Report,
    where: str,
    mounts: list[Mount],
    protected: dict[str, PurePosixPath],
    root: PurePosixPath,
    named_volumes: set[str],
) -> None:
    """Keys and config on read-only mounts (by name and by path), state on a named volume."""
    for mount in mounts:
        target = PurePosixPath(mount.target).name
        if target in PROTECTED or any(p in mount.source for p in PROTECTED):
            kind = target if target in PROTECTED else "keys/config"
            report.check(mount.read_only, f"{where}: {mount.target} ({kind}) is mounted read-write")
    for kind, path in protected.items():
        held = _covering(mounts, path)
        if report.check(held is not None, f"{where}: {path} ({kind}) is on no mount"):
            assert held is not None
            report.check(held.read_only, f"{where}: {held.target} ({kind}) is mounted read-write")
    state = _covering(mounts, root / "state.db")
    if report.check(state is not None, f"{where}: {root} (state) is on no volume"):
        assert state is not None
        report.check(
            state.source in named_volumes and not state.read_only,
            f"{where}: state {state.target} is not a writable named volume",
        )


# -- main -----------------------------------------------------------------------------------------


def run(directory: Path) -> Report:
    """Run every check on the files in ``directory``."""
    report = Report()
    texts: dict[str, str] = {}
    for name in ("docker-compose.yml", "Dockerfile", ".dockerignore"):
        try:
            texts[name] = (directory / name).read_text(encoding="utf-8")
        except OSError as exc:
            report.check(False, f"{name}: cannot read: {exc.strerror}")
    if "Dockerfile" not in texts or "docker-compose.yml" not in texts:
        return report
    check_dockerignore(report, texts.get(".dockerignore", ""))
    image = check_dockerfile(report, texts["Dockerfile"], directory)
    commands = Commands(report, image.installed)
    for where, argv in (("Dockerfile CMD", image.cmd), ("Dockerfile HEALTHCHECK", image.health)):
        if argv:
            commands.check_argv(where, argv)
    try:
        import yaml
    except ImportError:
        report.check(False, "docker-compose.yml: PyYAML is not installed (pip install pyyaml)")
        return report
    try:
        compose = yaml.safe_load(texts["docker-compose.yml"])
    except yaml.YAMLError as exc:
        report.check(False, f"docker-compose.yml: not YAML: {exc}")
        return report
    if report.check(
        isinstance(compose, dict) and isinstance(compose.get("services"), dict),
        "docker-compose.yml: no services mapping",
    ):
        check_compose(report, compose, commands, image)
    return report


def main(argv: list[str] | None = None) -> int:
    """Check the deployment files; 0 when every check passed, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="validate the docker-compose deployment without a Docker engine"
    )
    parser.add_argument(
        "directory", nargs="?", type=Path, default=ROOT,
        help="directory holding docker-compose.yml, Dockerfile, .dockerignore (default: the repo)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    report = run(args.directory)
    if not report.problems:
        print(f"{PROG}: ok ({report.checks} checks)")
        return 0
    for problem in report.problems:
        print(f"{PROG}: {problem}", file=sys.stderr)
    print(f"{PROG}: {len(report.problems)} problem(s) in {report.checks} checks", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
