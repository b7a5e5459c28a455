"""`shoal completion` and `shoal man`: scripts and a page generated from the argparse tree,
checked by running them in real bash and zsh and rendering the page with groff."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from shoal.controller.cli.argtree import commands
from shoal.controller.cli.main import SUBCOMMANDS
from tests.agents import shoal
from tests.programs import SHOAL

INVENTORY = """\
[groups.web]
hosts = ["web[01-03]"]

[groups.db]
hosts = ["db1", "10.0.0.0/30"]

[hosts."lb1"]
port = 9000
"""


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A PATH whose `shoal` runs this tree's controller, and an inventory to complete from."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "shoal"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.join(SHOAL)} "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "inventory.toml").write_text(INVENTORY)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path),
            "SHOAL_INVENTORY": str(tmp_path / "inventory.toml")}


def complete_bash(env: dict[str, str], *words: str) -> list[str]:
    """Complete the last of `words` with the generated script, as bash would on TAB."""
    quoted = " ".join("'" + word.replace("'", "'\\''") + "'" for word in words)
    script = (f"source <(shoal completion bash) || exit 9; COMP_WORDS=({quoted}); "
              f"COMP_CWORD={len(words) - 1}; _shoal; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert (done.returncode, done.stderr) == (0, "")
    return [line for line in done.stdout.splitlines() if line]


def test_bash_completes_subcommands(env: dict[str, str]) -> None:
    assert complete_bash(env, "shoal", "")[:3] == ["run", "shell", "batch"]
    assert set(complete_bash(env, "shoal", "")) >= set(SUBCOMMANDS)
    assert complete_bash(env, "shoal", "co") == ["completion"]


def test_bash_completes_each_subcommands_options(env: dict[str, str]) -> None:
    assert complete_bash(env, "shoal", "run", "--fa") == ["--fanout", "--failed-only"]
    assert complete_bash(env, "shoal", "run", "--ti") == ["--timeout"]
    assert complete_bash(env, "shoal", "hosts", "--cou") == ["--count"]
    assert complete_bash(env, "shoal", "hosts", "--co") == ["--count", "--config", "--color"]
    assert "--fanout" not in complete_bash(env, "shoal", "hosts", "--")
    assert complete_bash(env, "shoal", "run", "-o", "") == ["stream", "gather", "json"]
    assert complete_bash(env, "shoal", "completion", "") == ["bash", "zsh"]


def test_bash_completes_groups_and_hosts_from_the_inventory(env: dict[str, str], tmp_path: Path) -> None:
    assert complete_bash(env, "shoal", "run", "@") == ["@web", "@db"]
    assert complete_bash(env, "shoal", "run", "-f", "4", "") == [
        "@web", "@db", "web01", "web02", "web03", "db1", "lb1"]
    assert complete_bash(env, "shoal", "hosts", "web01,@d") == ["web01,@db"]
    assert complete_bash(env, "shoal", "hosts", "@web!web0") == ["@web!web01", "@web!web02", "@web!web03"]
    assert complete_bash(env, "shoal", "hosts", "db1", "-x", "w") == ["web01", "web02", "web03"]
    other = tmp_path / "other.toml"
    other.write_text('[groups.edge]\nhosts = ["e1"]\n')
    assert complete_bash(env, "shoal", "ping", "--inventory", str(other), "") == ["@edge", "e1"]


def test_bash_leaves_the_remote_command_alone(env: dict[str, str]) -> None:
    assert complete_bash(env, "shoal", "run", "web1", "--", "") == []


def test_hosts_listing_errors_are_one_line(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    status, out, err = shoal(capsysbinary, "completion", "--hosts", "w", "--inventory", str(tmp_path / "no.toml"))
    assert (status, out) == (2, b"") and err.count(b"\n") == 1 and b"inventory file not found" in err
    status, out, err = shoal(capsysbinary, "completion")
    assert (status, out, err) == (2, b"", b"shoal: completion: name a shell: shoal completion bash, "
                                          b"or shoal completion zsh\n")


_ZSH_DRIVER = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D; PS1='> '"
zpty -w z "zstyle ':completion:*' menu no; setopt nobeep; unsetopt listambiguous"
zpty -w z "$2"$'\t\t'
zpty -r z out "*$3*"
print -r -- "$out"
zpty -d z
"""


def complete_zsh(env: dict[str, str], tmp_path: Path, line: str, expect: str) -> str:
    """Type `line` and TAB twice in an interactive zsh; return its screen once `expect` shows."""
    functions = tmp_path / "zfunc"
    functions.mkdir(exist_ok=True)
    script = subprocess.run(["sh", "-c", "shoal completion zsh"], capture_output=True, env=env, check=True)
    (functions / "_shoal").write_bytes(script.stdout)
    done = subprocess.run(["zsh", "-f", "-c", _ZSH_DRIVER, "zsh", str(functions), line, expect],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_zsh_script(env: dict[str, str], tmp_path: Path) -> None:
    script = subprocess.run(["sh", "-c", "shoal completion zsh"], capture_output=True, text=True, env=env,
                            check=True).stdout
    assert script.startswith("#compdef shoal\n")
    if shutil.which("zsh") is None:
        # No zsh here (.ci/run installs it): at least every subcommand and option is in it.
        for command in commands():
            assert f"{command.name}) _arguments" in script
            assert all(f"'{flag}[" in script for option in command.options for flag in option.flags)
        return
    assert subprocess.run(["zsh", "-n", "-c", script], capture_output=True).returncode == 0
    listing = complete_zsh(env, tmp_path, "shoal c", "print a bash or zsh completion script")
    assert "check" in listing and "certs" in listing
    options = complete_zsh(env, tmp_path, "shoal run --tls-c", "controller certificate for mutual TLS")
    assert "--tls-cert" in options and "--tls-ca" in options
    groups = complete_zsh(env, tmp_path, "shoal hosts @", "@web")
    assert "@db" in groups


def test_man_page_covers_every_subcommand_and_option(env: dict[str, str]) -> None:
    page = subprocess.run(["sh", "-c", "shoal man"], capture_output=True, text=True, env=env, check=True).stdout
    assert page.startswith(".TH SHOAL 1 ")
    for command in commands():
        assert f".SS shoal {command.name}\n" in page
        for option in command.options:
            assert all(flag.replace("-", "\\-") in page for flag in option.flags)
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "EXIT STATUS", "ENVIRONMENT"):
        assert f"\n.SH {section}\n" in page


def test_man_page_renders_without_warnings(env: dict[str, str], tmp_path: Path) -> None:
    page = tmp_path / "shoal.1"
    page.write_bytes(subprocess.run(["sh", "-c", "shoal man"], capture_output=True, env=env, check=True).stdout)
    if shutil.which("groff") is None:
        text = page.read_text()
        assert all(not line.startswith(("'", ".\\\"")) or line.startswith(".") for line in text.splitlines())
        return
    checked = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                             timeout=60)
    assert (checked.returncode, checked.stderr) == (0, "")
    shown = subprocess.run(["groff", "-man", "-Tascii", "-P-c", "-P-b", "-P-u", str(page)], capture_output=True,
                           text=True, timeout=60, check=True).stdout
    assert "shoal - run commands on many hosts" in shown
    assert "-x, --exclude PATTERN" in shown
    assert "run a command on many hosts" in shown
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True, timeout=60,
                                  env={**env, "MANPAGER": "cat", "MANWIDTH": "80"})
        assert rendered.returncode == 0 and "EXIT STATUS" in rendered.stdout
