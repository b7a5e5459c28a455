"""`shoal run`'s import diet: what a run must not import before it connects.

A whole `shoal run host -- true` process is mostly Python start-up and imports
(tests/bench/bench_core.py prints it against `python -c pass` and ssh), so each
module below, imported on the way to the first connection, is start-up time every
run pays for nothing. No timings here: the test runs a real `shoal run` against a
closed loopback port in a fresh interpreter (the run fails at connect, the point
where it would start talking) and checks which modules were loaded. A run that does
connect imports nothing more before its first message (measured with -X importtime).
The ways start-up was made cheaper must not change what a user sees: the installed
entry point (controller/cli/entry.py) exits as main() does, and help is as wide as
argparse would make it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agents import AgentThread
from tests.programs import SHOAL

# Module -> why `shoal run` (no key file, no TLS, no config or inventory file, stdin
# not forwarded, one plain target) must not need it. Not listed because a run cannot
# shed them: ssl (asyncio imports it, TLS or not), pathlib with urllib.parse and
# ipaddress (the config and inventory lookups), json (message bodies), dataclasses
# with inspect (the controller's records; asyncio imports inspect anyway).
NOT_IMPORTED = {
    "cryptography": "AES-GMAC frame MACs load it when a keyed session negotiates them; "
                    "TLS and certificates only with --tls-*",
    "psutil": "host probes and metrics, not runs",
    "tomllib": "read only when a config or inventory file exists",
    "importlib.metadata": "the package version, for --version and the agent's HELLO only",
    "email": "importlib.metadata's dependency",
    "platform": "the Python version, for --version only",
    "tempfile": "the stdin spool, only when stdin is forwarded",
    "shutil": "argparse's help formatter asks it for the terminal's width, for every option "
              "added; controller/cli/main.py asks the terminal itself",
    "bz2": "shutil's, for archives", "lzma": "shutil's, for archives",
    "zlib": "a host's colour (a checksum of its name), only when output is coloured",
    "difflib": "--diff only",
    "termios": "--pty on a terminal only", "tty": "--pty on a terminal only",
    "shlex": "--script's #! line only",
    "shoal.agent": "the daemon: the controller never imports it",
    "shoal.hostio.tls": "--tls-* only",
    "shoal.hostio.keyfile": "--key-file only",
    "shoal.controller.cli.shell": "another subcommand",
    "shoal.controller.cli.completion": "another subcommand (it builds every parser)",
    "shoal.controller.cli.argtree": "every subcommand's parser, for completion and man",
    "shoal.controller.term.repl": "the shell", "shoal.controller.term.lineedit": "the shell",
    "shoal.controller.transfer": "put and get",
    "shoal.controller.put": "put", "shoal.controller.get": "get",
    "shoal.controller.tree": "put -r and get -r", "shoal.controller.treesync": "put -r",
    "shoal.controller.treeget": "get -r",
    "shoal.controller.pki": "certs",
    "shoal.controller.bootstrap": "bootstrap",
    "shoal.controller.probe": "discover",
    "shoal.controller.pool": "the shell and batch",
    "shoal.controller.script": "--script only",
}

# Modules the interpreter already holds before shoal's first import (site's .pth
# files may load some, e.g. a machine-wide certifi hook importing tempfile) are not
# shoal's doing, so the probe reports only what the run itself added.
_PROBE = """
import sys
before = set(sys.modules)
from shoal.controller.cli.main import main
status = main(sys.argv[1:])
print(status)
print("\\n".join(sorted(set(sys.modules) - before)))
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _modules_of_run(*argv: str) -> tuple[int, set[str]]:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60, cwd=Path(__file__).parent)
    status, *modules = done.stdout.splitlines()
    return int(status), set(modules)


def _heavy(modules: set[str], allowed: tuple[str, ...] = ()) -> dict[str, str]:
    return {name: why for name, why in NOT_IMPORTED.items() if name not in allowed
            and (name in modules or any(m.startswith(name + ".") for m in modules))}


def test_run_to_connect_imports_nothing_heavy() -> None:
    status, modules = _modules_of_run("run", f"127.0.0.1:{_closed_port()}", "-n", "--", "true")
    assert status == 255  # unreachable: the run got as far as connecting
    assert "shoal.controller.client" in modules  # the probe saw a real run
    assert _heavy(modules) == {}


def test_keyed_run_leaves_cryptography_to_the_handshake(tmp_path: Path) -> None:
    from shoal.hostio.keyfile import write_key_file

    write_key_file(tmp_path / "key")
    status, modules = _modules_of_run("run", f"127.0.0.1:{_closed_port()}", "--key-file", str(tmp_path / "key"),
                                      "-n", "--", "true")
    assert status == 255 and "shoal.hostio.keyfile" in modules
    assert _heavy(modules, allowed=("shoal.hostio.keyfile",)) == {}


@pytest.mark.parametrize("argv", [["--help"], ["--help", "run"]])
def test_help_still_lists_every_subcommand(argv: list[str]) -> None:
    from shoal.controller.cli.main import SUBCOMMANDS

    done = subprocess.run([*SHOAL, *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert all(name in done.stdout for name in SUBCOMMANDS)


# The installed `shoal` (controller/cli/entry.py): main() with the collector off while
# it imports, and the imported objects frozen. It must behave as main() does, and leave
# the collector on for the run itself.
_ENTRY = """
import atexit, gc, sys
atexit.register(lambda: print("gc", gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr))
from shoal.controller.cli.entry import entry
entry()
"""


def test_installed_entry_runs_with_the_collector_on_for_the_run(agents: AgentThread) -> None:
    address = agents.targets_spec()
    done = subprocess.run([sys.executable, "-c", _ENTRY, "run", address, "-n", "--",
                           "echo out; echo err >&2; exit 3"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (3, "out\n")
    err, failed_line, collector = done.stderr.splitlines()  # the command's, shoal's line for the host, the probe's
    assert (err, collector) == ("err", "gc True True") and address in failed_line


@pytest.mark.parametrize(("argv", "status"), [(["run"], 2), (["run", "127.0.0.1:{port}", "--", "true"], 255)])
def test_installed_entry_exits_as_main_does(argv: list[str], status: int) -> None:
    argv = [word.format(port=_closed_port()) for word in argv]
    done = subprocess.run([sys.executable, "-c", _ENTRY, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == status and "Traceback" not in done.stderr


@pytest.mark.parametrize("columns", [None, "40", "100", "250", "0", "wide"])
def test_help_is_as_wide_as_argparse_would_make_it(monkeypatch: pytest.MonkeyPatch, columns: str | None) -> None:
    """The width shutil is no longer imported for: the same help, byte for byte."""
    import argparse

    from shoal.controller.cli.main import build_parser

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    parser, run = build_parser("run")
    assert run is not None
    ours = parser.format_help(), run.format_help()
    parser.formatter_class, run.formatter_class = argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter
    assert ours == (parser.format_help(), run.format_help())

