"""The deploy folder: install.sh into a staging root, the systemd unit, the examples.

install.sh is run for real (venv + pip install) once per module into a --destdir.
It gets --system-site-packages so the venv reuses the psutil and cryptography this
machine already has instead of downloading and building them each time; pip still
builds shoal itself from a copy of the tree. That keeps the module to tens of
seconds while exercising every step a host install takes except systemctl.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from shoal.agent.config import load_config
from shoal.hostio.keyfile import load_key_file

pytestmark = pytest.mark.slow  # a shared fixture or each test takes over 5 s

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PREFIX = "/opt/shoal-test"  # not the default, so the unit's ExecStart rewrite is exercised


def run_install(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run install.sh with the POSIX shell, as a packager or admin would."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("SHOAL_", "PIP_"))}
    result = subprocess.run(["sh", str(DEPLOY / "install.sh"), *args], capture_output=True,
                            text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        pytest.fail(f"install.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return result


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Mode and contents of every regular file and directory outside the venv."""
    files: dict[str, tuple[int, bytes]] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        if relative.startswith(PREFIX.lstrip("/")):
            continue
        info = path.lstat()
        files[relative] = (info.st_mode, path.read_bytes() if path.is_file() else b"")
    return files


@dataclass(frozen=True)
class Staged:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    before_second: dict[str, tuple[int, bytes]]
    after_second: dict[str, tuple[int, bytes]]

    @property
    def venv(self) -> Path:
        return self.root / PREFIX.lstrip("/")


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Staged:
    root = tmp_path_factory.mktemp("destdir")
    args = ("--destdir", str(root), "--prefix", PREFIX, "--no-systemd", "--source", str(REPO),
            "--system-site-packages")
    first = run_install(*args)
    # An admin's edit, which the second run must keep (it never rewrites agent.toml).
    with open(root / "etc" / "shoal" / "agent.toml", "a") as config:
        config.write("# edited by the admin\n")
    before = snapshot(root)
    second = run_install(*args)
    return Staged(root, first, second, before, snapshot(root))


# -- install.sh -------------------------------------------------------------------

def test_venv_holds_working_commands(staged: Staged, tmp_path: Path) -> None:
    for name in ("shoal", "shoal-agent"):
        assert os.access(staged.venv / "bin" / name, os.X_OK), name
    # The venv runs its own copy of shoal, not the source tree it was built from.
    where = subprocess.run([str(staged.venv / "bin" / "python"), "-c", "import shoal.agent.config as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(staged.venv) + "/")


def test_completion_and_man_page_are_installed_under_the_prefix(staged: Staged) -> None:
    share = staged.venv / "share"
    installed = {
        share / "bash-completion" / "completions" / "shoal": ["completion", "bash"],
        share / "zsh" / "site-functions" / "_shoal": ["completion", "zsh"],
        share / "man" / "man1" / "shoal.1": ["man"],
    }
    for path, args in installed.items():
        made = subprocess.run([str(staged.venv / "bin" / "shoal"), *args], capture_output=True, check=True).stdout
        assert path.read_bytes() == made and made, path
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert "installed" not in " ".join(line for line in staged.second.stdout.splitlines() if "/share/" in line)


def test_etc_shoal_is_private_and_holds_a_usable_key(staged: Staged) -> None:
    etc = staged.root / "etc" / "shoal"
    assert stat.S_IMODE(etc.stat().st_mode) == 0o700
    assert stat.S_IMODE((etc / "admin.key").stat().st_mode) == 0o600
    key = load_key_file(etc / "admin.key")
    assert f"key id {key.key_id}" in staged.first.stdout


def test_default_agent_toml_requires_the_admin_key(staged: Staged, tmp_path: Path) -> None:
    path = staged.root / "etc" / "shoal" / "agent.toml"
    config = load_config(path)
    assert [(k.name, k.file, k.allow_all) for k in config.keys] == [("admin", "/etc/shoal/admin.key", True)]
    assert config.listen == ("0.0.0.0:8470",)
    # --check-config loads the key file too: point a copy at the staged one, as install.sh does.
    copy = tmp_path / "agent.toml"
    copy.write_text(path.read_text().replace('"/etc/shoal/', f'"{path.parent}/'))
    checked = subprocess.run([str(staged.venv / "bin" / "shoal-agent"), "--config", str(copy), "--check-config"],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_unit_is_installed_with_the_prefix_rewritten(staged: Staged) -> None:
    installed = (staged.root / "etc" / "systemd" / "system" / "shoal-agent.service").read_text()
    assert installed == (DEPLOY / "shoal-agent.service").read_text().replace("/opt/shoal/", PREFIX + "/")
    assert f"ExecStart={PREFIX}/bin/shoal-agent --config /etc/shoal/agent.toml\n" in installed
    assert "not starting the service" in staged.first.stdout


def test_state_and_log_directories_exist(staged: Staged) -> None:
    assert stat.S_IMODE((staged.root / "var" / "lib" / "shoal").stat().st_mode) == 0o700
    assert stat.S_IMODE((staged.root / "var" / "log" / "shoal").stat().st_mode) == 0o750


def test_second_run_changes_nothing(staged: Staged) -> None:
    assert staged.after_second == staged.before_second
    assert "keeping existing key" in staged.second.stdout
    assert "keeping existing" in staged.second.stdout and "agent.toml" in staged.second.stdout
    assert (staged.root / "etc/shoal/agent.toml").read_text().endswith("# edited by the admin\n")
    assert "is up to date" in staged.second.stdout


def test_invalid_existing_config_stops_the_install(staged: Staged, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    (root / "etc" / "shoal" / "agent.toml").write_text("colour = 'red'\n")
    result = run_install("--destdir", str(root), "--prefix", PREFIX, "--no-systemd",
                         "--source", str(REPO), "--system-site-packages", check=False)
    assert result.returncode != 0
    assert "unknown key 'colour'" in result.stderr and "fix it and run this again" in result.stderr
    assert not (root / "etc" / "systemd" / "system" / "shoal-agent.service.new").exists()


def test_uninstall_keeps_keys_and_purge_removes_them(staged: Staged, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    common = ("--destdir", str(root), "--prefix", PREFIX)
    removed = run_install(*common, "--uninstall")
    assert not (root / PREFIX.lstrip("/")).exists()
    assert not (root / "etc" / "systemd" / "system" / "shoal-agent.service").exists()
    assert (root / "etc" / "shoal" / "admin.key").read_bytes() == (staged.root / "etc/shoal/admin.key").read_bytes()
    assert "--purge removes it" in removed.stdout
    run_install(*common, "--uninstall", "--purge")
    assert not (root / "etc" / "shoal").exists() and not (root / "var" / "lib" / "shoal").exists()


def test_uninstall_refuses_to_delete_a_prefix_that_is_not_a_venv(tmp_path: Path) -> None:
    precious = tmp_path / "opt" / "data"
    precious.mkdir(parents=True)
    (precious / "keep.txt").write_text("mine")
    result = run_install("--destdir", str(tmp_path), "--prefix", "/opt/data", "--uninstall", check=False)
    assert result.returncode != 0 and "refusing to delete" in result.stderr
    assert (precious / "keep.txt").read_text() == "mine"


def test_hub_install_beside_the_agent_and_its_uninstall(staged: Staged, tmp_path: Path) -> None:
    """`--hub` puts the hub's unit and hub.toml beside the agent's, sharing the virtualenv,
    key and directories; uninstalling one leaves what the other still uses."""
    root = tmp_path / "root"
    shutil.copytree(staged.root, root, symlinks=True)
    common = ("--destdir", str(root), "--prefix", PREFIX)
    hub = run_install(*common, "--hub", "--no-systemd", "--source", str(REPO), "--system-site-packages")
    units = root / "etc" / "systemd" / "system"
    installed = (units / "shoal-hub.service").read_text()
    assert installed == (DEPLOY / "shoal-hub.service").read_text().replace("/opt/shoal/", PREFIX + "/")
    assert f"ExecStart={PREFIX}/bin/shoal hub --hub-config /etc/shoal/hub.toml" in installed
    config = root / "etc" / "shoal" / "hub.toml"
    assert config.read_text() == (DEPLOY / "hub.toml").read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "keeping existing key" in hub.stdout and "systemctl enable --now shoal-hub" in hub.stdout
    assert (units / "shoal-agent.service").exists()
    config.write_text("listen = 8472\n")  # an admin's mistake: the next run stops on it, naming the line
    broken = run_install(*common, "--hub", "--no-systemd", "--source", str(REPO), "--system-site-packages",
                         check=False)
    assert broken.returncode != 0 and "hub.toml:1" in broken.stderr and "fix it and run this again" in broken.stderr
    refused = run_install(*common, "--hub", "--uninstall", "--purge", check=False)
    assert refused.returncode != 0 and "shoal-agent still uses" in refused.stderr and (units / "shoal-hub.service").exists()
    kept = run_install(*common, "--hub", "--uninstall")
    assert not (units / "shoal-hub.service").exists() and "shoal-agent still uses them" in kept.stdout
    assert (root / PREFIX.lstrip("/") / "bin" / "shoal-agent").exists() and (root / "etc/shoal/admin.key").exists()
    run_install(*common, "--uninstall")  # the last one out takes the virtualenv
    assert not (root / PREFIX.lstrip("/")).exists() and not (units / "shoal-agent.service").exists()


@pytest.mark.parametrize("args, message", [
    (("--prefix", "opt/shoal"), "--prefix must be an absolute path"),
    (("--prefix", "/opt/my shoal"), "--prefix may only hold"),
    (("--prefix",), "--prefix needs a value"),
    (("--purge",), "--purge only goes with --uninstall"),
    (("--source", "/nonexistent/shoal"), "no such source"),
    (("--key-file", "/nonexistent/admin.key"), "no such key file: /nonexistent/admin.key"),
    (("--frobnicate",), "unknown option: --frobnicate"),
    (("--hub", "--tls-dir", "/tmp"), "a hub's goes in hub.toml"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path: Path, args: tuple[str, ...],
                                                              message: str) -> None:
    root = tmp_path / "root"
    result = run_install("--destdir", str(root), *args, check=False)
    assert result.returncode != 0 and message in result.stderr
    assert not any(p.is_file() for p in root.rglob("*"))


def test_key_file_others_can_read_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    key = tmp_path / "fleet.key"
    key.write_text("shoal-key-v1 " + "ab" * 32 + "\n")
    key.chmod(0o640)
    root = tmp_path / "root"
    result = run_install("--destdir", str(root), "--key-file", str(key), check=False)
    assert result.returncode != 0
    assert f"key file {key} is accessible by others; run chmod 600 {key}" in result.stderr
    assert not any(p.is_file() for p in root.rglob("*"))


def test_help_prints_the_usage(tmp_path: Path) -> None:
    result = run_install("--help")
    assert "--destdir DIR" in result.stdout and "--uninstall" in result.stdout


# -- the installed agent under a stand-in systemd -------------------------------------

@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(60)  # a deadline against hanging, not a timing assertion
        yield sock, path


def test_installed_agent_reports_ready_and_stopping(staged: Staged, tmp_path: Path,
                                                    notify_socket: tuple[socket.socket, str]) -> None:
    # What Type=notify relies on: READY=1 once listening, STOPPING=1 on SIGTERM, exit 0.
    sock, path = notify_socket
    config = tmp_path / "agent.toml"
    config.write_text(f'listen = ["127.0.0.1:0"]\nstate_dir = "{tmp_path}"\n')
    env = {**os.environ, "NOTIFY_SOCKET": path}
    agent = subprocess.Popen([str(staged.venv / "bin" / "shoal-agent"), "--config", str(config)],
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert sock.recv(4096).split(b"\n")[0] == b"READY=1"
        # systemd may stop the unit the moment it is ready (a quick restart), so
        # SIGTERM must already be handled by then: a clean exit, not death by signal.
        agent.send_signal(signal.SIGTERM)
        status = agent.wait(timeout=60)
        assert agent.stderr is not None
        assert status == 0, agent.stderr.read().decode(errors="replace")
        assert sock.recv(4096) == b"STOPPING=1"  # sent before exiting, so already queued
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        assert agent.stderr is not None
        agent.stderr.close()


# -- the unit file --------------------------------------------------------------------

def unit_settings(unit: str = "shoal-agent.service") -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in (DEPLOY / unit).read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            settings.setdefault(name, []).append(value)
    return settings


def test_unit_is_notify_type_with_mixed_kill_mode_as_root() -> None:
    settings = unit_settings()
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["ExecStart"] == ["/opt/shoal/bin/shoal-agent --config /etc/shoal/agent.toml"]
    assert settings["KillMode"] == ["mixed"] and settings["Restart"] == ["on-failure"]
    assert "RestartSec" in settings and settings["User"] == ["root"]


def test_hub_unit_waits_for_ready_and_reloads_with_sighup() -> None:
    # systemctl start returns once the hub's socket serves; reload re-reads its key and TLS files.
    settings = unit_settings("shoal-hub.service")
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and settings["KillMode"] == ["mixed"]


def test_unit_sets_no_sandboxing_that_would_break_admin_commands() -> None:
    # Commands inherit the unit's sandbox: sudo needs new privileges, upgrades need /usr.
    settings = unit_settings()
    for name in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
                 "CapabilityBoundingSet", "SystemCallFilter", "UMask", "OOMScoreAdjust"):
        assert name not in settings, name


@pytest.mark.parametrize("name,program", [("shoal-agent.service", "shoal-agent"), ("shoal-hub.service", "shoal")])
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path, name: str, program: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify insists that ExecStart programs exist; /opt/shoal is not installed on
    # the test machine, so check a copy naming an existing program instead.
    unit = tmp_path / name
    unit.write_text((DEPLOY / name).read_text().replace(f"/opt/shoal/bin/{program} ", f"{sys.executable} "))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    # Unknown or unparsable settings are only warnings; they must not be there either.
    assert result.stderr == "" and result.stdout == ""


# -- Dockerfile and examples --------------------------------------------------------------

def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_entrypoint_uses_real_agent_options() -> None:
    from shoal.agent.cli import build_parser

    instructions = dict(dockerfile_instructions())
    assert instructions["FROM"] == "python:3.11-slim"
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint[0] == "shoal-agent"
    options = build_parser().parse_args(entrypoint[1:])
    assert options.listen == ["0.0.0.0:8470"] and options.key_file == ["/etc/shoal/admin.key"]


def test_docker_context_keeps_what_pip_needs() -> None:
    patterns = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
                if line and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "agent/config/settings.py", "controller/cli/main.py", "protocol/errors.py",
                   "deploy/install.sh", "deploy/agent.toml"):  # shoal.deploy is package data
        assert not any(fnmatch(needed, p) or needed.startswith(p.rstrip("/") + "/") for p in patterns), needed


def test_example_agent_toml_names_every_option() -> None:
    # "Every option is here": set, or commented out with its default.
    import dataclasses
    import tomllib

    from shoal.agent.config import AgentConfig, DiscoveryConfig, Limits

    text = (DEPLOY / "agent.toml").read_text()
    example = load_config(DEPLOY / "agent.toml")
    for section, cls in (("", AgentConfig), ("limits", Limits), ("discovery", DiscoveryConfig)):
        for option in dataclasses.fields(cls):
            if option.name in ("tls", "limits", "discovery", "keys"):
                continue  # tables, each present
            found = re.search(rf"^(# )?({option.name} = .*)$", text, re.MULTILINE)
            assert found, f"{section}.{option.name}"
            if found.group(1):  # commented out: with its default
                value = tomllib.loads(found.group(2))[option.name]
                default = getattr(cls(), option.name)
                assert (tuple(value) if isinstance(default, tuple) else value) == default, option.name
            elif section:  # the example's limits and discovery are the defaults, as it says
                assert getattr(getattr(example, section), option.name) == getattr(cls(), option.name), option.name
    for table in ("[tls]", "[limits]", "[discovery]", "[[keys]]"):
        assert table in text, table


def test_example_inventory_loads_with_nested_groups_and_overrides() -> None:
    from shoal.controller.inventory import load_inventory

    inventory = load_inventory(str(DEPLOY / "inventory.toml"))
    assert set(inventory.groups) >= {"web", "db", "edge", "production", "all"}
    assert inventory.settings_for("db1.example.net")["port"] == 8471
    assert inventory.settings_for("db2.example.net")["port"] == 9470
    assert inventory.settings_for("web03.example.net")["port"] == 8470
    edge = inventory.settings_for("edge2.example.net")
    assert all(name in edge for name in ("tls_cert", "tls_key", "tls_ca"))
    assert "bastion.example.net" in inventory.group_patterns("all")
