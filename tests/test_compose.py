"""The docker-compose deployment, checked without a Docker engine.

``tools.compose_check`` passes on the real Dockerfile, docker-compose.yml and
.dockerignore and names each problem in mutated copies; the image's own
scripts (``deploy/healthcheck.py``, ``deploy/compose-init.sh``) run for real:
the init script creates and links both sites on local directories, and the
sites it creates serve, accept a ward's batch and forward it to the print site.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, run_cli
from tests.integration.sites import free_port
from tools import compose_check, compose_commands

REPO = Path(__file__).resolve().parent.parent
DEPLOY_FILES = ("docker-compose.yml", "Dockerfile", ".dockerignore", "deploy")
CONTEXT_LINKS = ("pyproject.toml", "README.md", "envelope", "custody", "client", "gateway")
HEALTHCHECK = REPO / "deploy" / "healthcheck.py"
INIT_SCRIPT = REPO / "deploy" / "compose-init.sh"
TENANT = "shinjuku"
PASSWORD = "ward-password-for-the-compose-test"


# -- the validator --------------------------------------------------------------------------------


def test_the_real_files_pass() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.compose_check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("compose-check: ok (")
    assert done.stdout.rstrip().endswith(" checks)")
    assert done.stderr == ""


def _copy(tmp_path: Path) -> Path:
    """The deployment files copied (to mutate), the rest of the build context linked."""
    target = tmp_path / "context"
    target.mkdir()
    for name in DEPLOY_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name)
        else:
            shutil.copy2(source, target / name)
    for name in CONTEXT_LINKS:
        (target / name).symlink_to(REPO / name)
    return target


def _mutate(directory: Path, name: str, old: str, new: str) -> None:
    path = directory / name
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}: the mutation would test nothing"
    path.write_text(text.replace(old, new), encoding="utf-8")


MUTATIONS = {
    "port on every interface": (
        "docker-compose.yml",
        '"127.0.0.1:2222:2222"',
        '"0.0.0.0:2222:2222"',
        "service gateway: port '0.0.0.0:2222:2222' is not bound to 127.0.0.1 (loopback)",
    ),
    "port without a host address": (
        "docker-compose.yml",
        '"127.0.0.1:2222:2222"',
        '"2222:2222"',
        "service gateway: port '2222:2222' is not bound to 127.0.0.1 (loopback)",
    ),
    "keys mounted read-write": (
        "docker-compose.yml",
        "gateway-keys:/srv/gateway/keys:ro",
        "gateway-keys:/srv/gateway/keys",
        "service gateway: /srv/gateway/keys (keys) is mounted read-write",
    ),
    "config mounted read-write": (
        "docker-compose.yml",
        "print-site-config:/srv/print-site/config:ro",
        "print-site-config:/srv/print-site/config:rw",
        "service print-site: /srv/print-site/config (config) is mounted read-write",
    ),
    "unknown subcommand": (
        "docker-compose.yml",
        '["lgwan-gateway", "serve", "--listen", "0.0.0.0:2222"]\n    working_dir: /srv/gateway',
        '["lgwan-gateway", "serv", "--listen", "0.0.0.0:2222"]\n    working_dir: /srv/gateway',
        "service gateway command: 'lgwan-gateway serv': unknown subcommand",
    ),
    "unknown option": (
        "docker-compose.yml",
        '"serve", "--listen", "0.0.0.0:2222"]\n    working_dir: /srv/print-site',
        '"serve", "--bind", "0.0.0.0:2222"]\n    working_dir: /srv/print-site',
        "service print-site command: 'lgwan-gateway serve --bind 0.0.0.0:2222': "
        "unrecognized arguments",
    ),
    "unknown subcommand in the init script": (
        "deploy/compose-init.sh",
        'user add "$RELAY_USER"',
        'user create "$RELAY_USER"',
        "service init command → compose-init.sh: 'lgwan-gateway user create': unknown subcommand",
    ),
    "program missing from the image": (
        "docker-compose.yml",
        'test: ["CMD", "lgwan-healthcheck", "2222"]',
        'test: ["CMD", "curl", "-f", "http://localhost:2222"]',
        "service gateway healthcheck: 'curl' is not a program in the image",
    ),
    "health check on another port": (
        "docker-compose.yml",
        'test: ["CMD", "lgwan-healthcheck", "2222"]',
        'test: ["CMD", "lgwan-healthcheck", "22"]',
        "service gateway: health check probes 22, serve 2222",
    ),
    "secret in the environment": (
        "docker-compose.yml",
        "LGWAN_TENANT: shinjuku",
        "LGWAN_TENANT: shinjuku\n      RELAY_PASSWORD: hunter2",
        "service init: secret-like variable RELAY_PASSWORD",
    ),
    "no wait for init": (
        "docker-compose.yml",
        "      init:\n        condition: service_completed_successfully\n      print-site:",
        "      print-site:",
        "service gateway: does not wait for an init service",
    ),
    "no restart policy": (
        "docker-compose.yml",
        "    restart: unless-stopped\n    stop_grace_period: 30s\n\n  # The LGWAN-ASP",
        "    stop_grace_period: 30s\n\n  # The LGWAN-ASP",
        "service print-site: restart is not unless-stopped",
    ),
    "missing service": (
        "docker-compose.yml",
        "\n  ward:\n",
        "\n  ward-pc:\n",
        "docker-compose.yml: no service 'ward'",
    ),
    "missing USER": (
        "Dockerfile",
        "USER 10001:10001\n",
        "",
        "Dockerfile: final stage has no non-root USER",
    ),
    "root USER": (
        "Dockerfile",
        "USER 10001:10001\n",
        "USER root\n",
        "Dockerfile: final stage has no non-root USER",
    ),
    "missing HEALTHCHECK": (
        "Dockerfile",
        "HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \\\n"
        '    CMD ["lgwan-healthcheck", "2222"]\n',
        "",
        "Dockerfile: no HEALTHCHECK",
    ),
    "keys copied into the image": (
        "Dockerfile",
        "COPY deploy/healthcheck.py",
        "COPY keys/ /srv/gateway/keys/\nCOPY deploy/healthcheck.py",
        "Dockerfile: COPY keys/ may carry keys or configuration",
    ),
    "a configuration copied into the image": (
        "Dockerfile",
        "COPY deploy/healthcheck.py",
        "COPY config/gateway.toml /srv/gateway/config/\nCOPY deploy/healthcheck.py",
        "Dockerfile: COPY config/gateway.toml may carry keys or configuration",
    ),
    "test extras installed": (
        "Dockerfile",
        "RUN /opt/lgwan/bin/pip install .\n",
        "RUN /opt/lgwan/bin/pip install '.[test]'\n",
        "Dockerfile: pip installs the project editable or with test/dev extras",
    ),
    "unpinned base image": (
        "Dockerfile",
        "FROM python:3.12-slim-bookworm\n",
        "FROM python\n",
        "Dockerfile: FROM python is not pinned",
    ),
    "keys let into the build context": (
        ".dockerignore",
        "!gateway/\n",
        "!gateway/\n!keys/\n",
        ".dockerignore: keys/ward_ed25519 is not excluded from the build context",
    ),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_a_mutated_copy_fails_with_the_problem_named(tmp_path: Path, case: str) -> None:
    name, old, new, expected = MUTATIONS[case]
    directory = _copy(tmp_path)
    assert compose_check.run(directory).problems == []
    _mutate(directory, name, old, new)
    problems = compose_check.run(directory).problems
    assert any(p.startswith(expected) for p in problems), problems


def test_without_the_package_the_subcommands_come_from_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(name: str) -> None:
        raise ImportError(name)

    monkeypatch.setattr(compose_commands.importlib, "import_module", unavailable)
    program = compose_commands.load_program("lgwan-gateway")
    assert program.parser is None and program.tree is not None
    assert "add" in program.tree.children["user"].children
    directory = _copy(tmp_path)
    _mutate(directory, "deploy/compose-init.sh", 'user add "$RELAY_USER"', 'user new "$RELAY_USER"')
    (problem,) = compose_check.run(directory).problems
    assert problem.startswith(
        "service init command → compose-init.sh: 'lgwan-gateway user new': unknown subcommand"
    )


def test_the_command_line_lists_each_problem_and_exits_1(tmp_path: Path) -> None:
    directory = _copy(tmp_path)
    _mutate(directory, "docker-compose.yml", '"127.0.0.1:2222:2222"', '"0.0.0.0:2222:2222"')
    _mutate(directory, "Dockerfile", "USER 10001:10001\n", "")
    done = subprocess.run(
        [sys.executable, "-m", "tools.compose_check", str(directory)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert "compose-check: Dockerfile: final stage has no non-root USER" in lines
    assert (
        "compose-check: service gateway: port '0.0.0.0:2222:2222' is not bound to "
        "127.0.0.1 (loopback)" in lines
    )
    assert lines[-1].startswith("compose-check: 2 problem(s) in ")


def test_missing_files_are_problems(tmp_path: Path) -> None:
    problems = compose_check.run(tmp_path).problems
    assert "docker-compose.yml: cannot read: No such file or directory" in problems
    assert "Dockerfile: cannot read: No such file or directory" in problems


# -- deploy/healthcheck.py ------------------------------------------------------------------------


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net/tcp")
def test_healthcheck_sees_a_listening_port_without_connecting() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _healthcheck(str(port)).returncode == 0
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # the probe made no connection
    done = _healthcheck(str(port))
    assert done.returncode == 1
    assert f"nothing listens on TCP port {port}" in done.stderr


def test_healthcheck_refuses_a_bad_command_line() -> None:
    for args in ((), ("ssh",), ("0",), ("70000",), ("1", "2")):
        done = _healthcheck(*args)
        assert done.returncode == 2, args
        assert done.stderr == "usage: lgwan-healthcheck PORT\n"


# -- deploy/compose-init.sh -----------------------------------------------------------------------


def _init(sites: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LGWAN_")}
    environment.update(
        PATH=f"{BIN}{os.pathsep}{environment.get('PATH', '')}", LGWAN_SITES=str(sites)
    )
    environment.update(env)
    return subprocess.run(
        ["sh", str(INIT_SCRIPT)],
        cwd=sites,
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def _public(site: Path, name: str) -> str:
    return " ".join((site / "keys" / f"{name}.pub").read_text().split()[:2])


def test_init_script_creates_and_links_both_sites_once(tmp_path: Path) -> None:
    done = _init(tmp_path)
    assert done.returncode == 0, done.stderr
    gateway, print_site = tmp_path / "gateway", tmp_path / "print-site"
    for site in (gateway, print_site):
        assert (site / "config" / "gateway.toml").is_file()
        assert not (site / "gateway.toml").exists()
        for name in ("state.db", "storage", "spool", "work", "audit/audit.jsonl"):
            assert (site / name).exists(), (site, name)
        assert (site / "keys" / "ssh_host_ed25519_key").stat().st_mode & 0o077 == 0
    assert (gateway / "keys" / "forward_ed25519").stat().st_mode & 0o077 == 0
    config = (gateway / "config" / "gateway.toml").read_text()
    assert 'public_address = "gateway:2222"' in config
    assert 'forward = "sftp://relay@print-site:2222/inbox"' in config
    assert f'host_key = "{_public(print_site, "ssh_host_ed25519_key")}"' in config
    assert f'receipt_key = "{_public(print_site, "gateway_signing_ed25519")}"' in config
    assert (
        f'forward = "file://{print_site}/spool"' in (print_site / "config/gateway.toml").read_text()
    )
    listed = run_cli(
        "lgwan-gateway", "--config", print_site / "config/gateway.toml", "user", "list",
        cwd=tmp_path,
    )  # fmt: skip
    assert listed.code == 0, listed.err
    (relay,) = [json.loads(line) for line in listed.out.splitlines()]
    assert (relay["name"], relay["role"], relay["tenant"]) == ("relay", "forwarder", TENANT)
    assert "172.29.58.10/32" in json.dumps(relay)

    again = _init(tmp_path)
    assert again.returncode == 0, again.stderr
    assert "already initialised; nothing changed" in again.stdout

    (print_site / "config" / "gateway.toml").unlink()
    half = _init(tmp_path)
    assert half.returncode == 1
    assert f"{gateway} is initialised but the other site is not" in half.stderr
    assert "hint: remove the volumes" in half.stderr


def test_init_script_refuses_an_unfinished_set_up(tmp_path: Path) -> None:
    done = run_cli("lgwan-gateway", "init", "--root", tmp_path / "gateway", cwd=tmp_path)
    assert done.code == 0, done.err
    half = _init(tmp_path)
    assert half.returncode == 1
    assert f"a previous set-up of {tmp_path / 'gateway'} did not finish" in half.stderr
    assert not (tmp_path / "print-site").exists()


# -- the sites the init script makes, serving -----------------------------------------------------


def _serve(config: Path, port: int, cwd: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [str(BIN / "lgwan-gateway"), "--config", str(config), "serve",
         "--listen", f"127.0.0.1:{port}"],
        cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert line == f"listening on 127.0.0.1:{port}\n", line
    return proc


@pytest.mark.slow
def test_the_linked_sites_carry_a_ward_batch_to_the_print_site(tmp_path: Path) -> None:
    """The compose set-up on loopback: ward → gateway → relay → print-site spool."""
    gateway_port, print_site_port = free_port(), free_port()
    done = _init(
        tmp_path,
        LGWAN_GATEWAY_ADDRESS=f"127.0.0.1:{gateway_port}",
        LGWAN_PRINT_SITE_ADDRESS=f"127.0.0.1:{print_site_port}",
        LGWAN_RELAY_ALLOW="127.0.0.1/32",
    )
    assert done.returncode == 0, done.stderr
    gateway, print_site, ward = (tmp_path / n for n in ("gateway", "print-site", "ward"))
    servers = [
        _serve(print_site / "config/gateway.toml", print_site_port, print_site),
        _serve(gateway / "config/gateway.toml", gateway_port, gateway),
    ]
    try:
        health = _healthcheck(str(gateway_port))
        assert health.returncode == 0, health.stderr
        (ward / "config").mkdir(parents=True)
        steps = [
            ("lgwan-client", ["keygen"], None),
            ("lgwan-gateway", ["--config", gateway / "config/gateway.toml", "user", "add",
                               "shinjuku-pc01", "--role", "ward", "--tenant", TENANT,
                               "--pubkey", ward / "keys/ward_ed25519.pub",
                               "--allow", "127.0.0.1/32", "--password-fd", "{fd}",
                               "--client-config-out", ward / "config/client.toml"], PASSWORD),
            ("lgwan-client", ["sample", "--records", "50", "--seed", "1", "--out", "kaigo.csv"],
             None),
        ]  # fmt: skip
        for program, args, secret in steps:
            result = run_cli(program, *args, cwd=ward, secret=secret)
            assert result.code == 0, (args, result.err)
        sealed = run_cli("lgwan-client", "seal", "kaigo.csv", "--notice-type", "KAIGO", cwd=ward)
        assert sealed.code == 0, sealed.err
        batch = sealed.out.strip()
        sent = run_cli("lgwan-client", "send", batch, "--password-fd", "{fd}", cwd=ward,
                       secret=PASSWORD)  # fmt: skip
        assert sent.code == 0, sent.err
        arrived = print_site / "spool" / f"{batch}.age"
        deadline = time.monotonic() + 60
        while not arrived.exists():
            assert time.monotonic() < deadline, "the batch never reached the print-site spool"
            time.sleep(0.1)
        assert arrived.read_bytes() == (ward / "outbox" / f"{batch}.age").read_bytes()
    finally:
        for proc in reversed(servers):
            proc.terminate()
            proc.communicate(timeout=30)
    assert [proc.returncode for proc in servers] == [0, 0]
