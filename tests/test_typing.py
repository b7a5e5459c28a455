"""protocol/ stays clean under `mypy --strict` (skipped, with the reason, if mypy is absent)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_protocol_is_clean_under_mypy_strict() -> None:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.skip("mypy is not installed (it is a development tool, not a dependency)")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "protocol"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_protocol_imports_no_io_modules() -> None:
    io_modules = ("socket", "asyncio", "subprocess", "selectors", "ssl", "logging", "time", "os")
    for name in sorted(os.listdir(os.path.join(ROOT, "protocol"))):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(ROOT, "protocol", name)) as f:
            for line in f:
                words = line.split()
                if words[:1] in (["import"], ["from"]) and len(words) > 1:
                    assert words[1].split(".")[0] not in io_modules, f"protocol/{name}: {line.strip()}"
