"""Every package passes `mypy --strict`, checked under the names it installs as.

mypy cannot follow setuptools' package-dir mapping, so the test lays out a `shoal/`
tree of symlinks in a temporary directory: each installed package points at its
folder in the checkout. mypy is a test dependency: a missing mypy fails the suite
instead of skipping, so the check always runs in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# installed package -> folder in the checkout; sub-packages listed here are left out
# of their parent's link tree so that each file has exactly one module name.
PACKAGES = {
    "protocol": ROOT / "protocol",
    "hostio": ROOT / "agent" / "hostio",
    "agent": ROOT / "agent",
    "controller": ROOT / "controller",
}


def _link_tree(base: Path) -> Path:
    shoal = base / "shoal"
    for name, folder in PACKAGES.items():
        target = shoal / name
        target.mkdir(parents=True)
        nested = {p for p in PACKAGES.values() if p.parent == folder}
        for entry in folder.iterdir():
            if entry in nested or entry.name == "__pycache__":
                continue
            (target / entry.name).symlink_to(entry)
    return base


def test_all_packages_are_clean_under_mypy_strict(tmp_path: Path) -> None:
    base = _link_tree(tmp_path)
    args = [arg for name in PACKAGES for arg in ("-p", f"shoal.{name}")]
    env = dict(os.environ, MYPYPATH=str(base))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--strict", "--no-incremental", *args],
                          cwd=base, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_protocol_imports_no_io_modules() -> None:
    io_modules = ("socket", "asyncio", "subprocess", "selectors", "ssl", "logging", "time", "os")
    for path in sorted((ROOT / "protocol").rglob("*.py")):
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                assert words[1].split(".")[0] not in io_modules, f"{path.relative_to(ROOT)}: {line.strip()}"
