"""The agent refuses files someone else could have changed, as ssh's StrictModes does (issue 13, point 12).

Each case runs the installed `shoal-agent`: a start or --check-config must stop with
one line naming the path and what is wrong, and exit 2.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from shoal.hostio.keyfile import write_key_file
from shoal.controller import pki as pki_module
from tests.rawpeer import DEADLINE
from tests.programs import SHOAL_AGENT

NOBODY = 65534


def agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL_AGENT, *args], capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL)


def setup(folder: Path) -> tuple[Path, Path]:
    """A config naming one key, both in `folder`."""
    folder.mkdir(exist_ok=True)
    key = folder / "monitor.key"
    write_key_file(key)
    conf = folder / "agent.toml"
    conf.write_text(f'[[keys]]\nname = "monitor"\nfile = "{key}"\ncommands = ["uptime"]\n')
    return conf, key


def test_a_world_writable_config_is_refused(tmp_path: Path) -> None:
    conf, _ = setup(tmp_path / "etc")
    conf.chmod(0o666)
    result = agent("--config", str(conf), "--check-config")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"shoal-agent: {conf}: configuration file is writable by group or others "
                             f"(mode 0666); run chmod go-w {conf}\n")


@pytest.mark.parametrize("how", ["config", "flag"])
def test_a_key_in_a_group_writable_directory_is_refused_at_start(tmp_path: Path, how: str) -> None:
    conf, key = setup(tmp_path / "etc")
    keys = tmp_path / "keys"
    keys.mkdir()
    moved = keys / "monitor.key"
    key.rename(moved)
    conf.write_text(f'[[keys]]\nname = "monitor"\nfile = "{moved}"\ncommands = ["uptime"]\n')
    keys.chmod(0o775)
    args = ["--config", str(conf)] if how == "config" else ["--key-file", str(moved)]
    result = agent(*args, "--listen", "127.0.0.1:0")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"shoal-agent: {moved}: directory {keys} is writable by group or others "
                             f"(mode 0775); run chmod go-w {keys}\n")


def test_a_sticky_world_writable_directory_is_accepted(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp, which every pytest tmp_path is under
    conf, _ = setup(shared)
    result = agent("--config", str(conf), "--check-config")
    assert (result.returncode, result.stderr) == (0, "")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
@pytest.mark.parametrize("owned", ["config", "directory"])
def test_a_file_or_directory_owned_by_someone_else_is_refused(tmp_path: Path, owned: str) -> None:
    conf, _ = setup(tmp_path / "etc")
    target = conf if owned == "config" else conf.parent
    os.chown(target, NOBODY, NOBODY)
    what = "configuration file" if owned == "config" else f"directory {conf.parent}"
    result = agent("--config", str(conf), "--check-config")
    assert (result.returncode, result.stderr) == (2, f"shoal-agent: {conf}: {what} is owned by uid {NOBODY}, not root\n")


def test_tls_files_in_a_group_writable_directory_are_named_by_check_config(tmp_path: Path) -> None:
    certs = pki_module.init_pki(tmp_path / "pki", [])
    folder = Path(certs["agent_cert"]).parent
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[tls]\ncert = "{certs["agent_cert"]}"\nkey = "{certs["agent_key"]}"\nca = "{certs["ca_cert"]}"\n')
    folder.chmod(0o775)
    result = agent("--config", str(conf), "--check-config")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"shoal-agent: {conf}:{line}: tls.{name}: {path}: directory {folder} is writable by group or others "
        f"(mode 0775); run chmod go-w {folder}"
        for line, name, path in ((2, "cert", certs["agent_cert"]), (3, "key", certs["agent_key"]),
                                 (4, "ca", certs["ca_cert"]))]
