"""Internal reports go to SHOAL_DEBUG_LOG, never to the user's stderr; bugs exit 70."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.controller.cli.main import EXIT_SOFTWARE
from shoal.controller.debuglog import setup_debug_log
from tests.agents import shoal

ROOT = Path(__file__).resolve().parents[2]

# A callback that raises and a task whose exception nobody retrieves: the two
# reports asyncio prints itself, with a traceback, through logging.
_LOOP_ACCIDENTS = """
import asyncio, gc
from shoal.controller.debuglog import setup_debug_log

async def fail() -> None:
    raise ValueError("task went wrong")

async def main() -> None:
    asyncio.get_running_loop().call_soon(lambda: 1 / 0)
    task = asyncio.ensure_future(fail())
    while not task.done():
        await asyncio.sleep(0)
    del task
    gc.collect()
    await asyncio.sleep(0)

setup_debug_log()
asyncio.run(main())
print("finished")
"""


def run_accidents(env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-c", _LOOP_ACCIDENTS], cwd=ROOT, env=env,
                          capture_output=True, timeout=60)


def test_asyncio_reports_stay_off_stderr() -> None:
    done = run_accidents(dict(os.environ))
    assert (done.returncode, done.stdout, done.stderr) == (0, b"finished\n", b"")


def test_asyncio_reports_go_to_the_debug_log(tmp_path: Path) -> None:
    log = tmp_path / "debug.log"
    done = run_accidents({**os.environ, "SHOAL_DEBUG_LOG": str(log)})
    assert (done.returncode, done.stderr) == (0, b"")
    text = log.read_text()
    assert "Exception in callback" in text and "ZeroDivisionError" in text
    assert "Task exception was never retrieved" in text and "ValueError: task went wrong" in text


def test_an_internal_error_is_one_line_and_exit_70(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                    capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from shoal.controller.cli import hosts as hosts_command

    def broken(*args: object) -> int:
        raise RuntimeError("something impossible")

    log = tmp_path / "debug.log"
    monkeypatch.setenv("SHOAL_DEBUG_LOG", str(log))
    monkeypatch.setattr(hosts_command, "run", broken)
    status, out, err = shoal(capsysbinary, "hosts", "web01")
    assert (status, out) == (EXIT_SOFTWARE, b"")
    assert err.decode().splitlines() == [
        "shoal: internal error: RuntimeError: something impossible "
        "(a bug in shoal; set SHOAL_DEBUG_LOG=FILE for the traceback)"]
    assert "Traceback" in log.read_text() and "RuntimeError: something impossible" in log.read_text()
    monkeypatch.delenv("SHOAL_DEBUG_LOG")
    setup_debug_log()  # closes the file handler this run installed
