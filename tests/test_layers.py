"""The import rules between layers, checked on every module's import statements.

    shoal.protocol           imports nothing of ours
    shoal.hostio             imports only shoal.protocol
    shoal.agent (daemon)     never imports shoal.controller
    shoal.controller         never imports the agent daemon (cli/demo.py's in-process agents excepted)
    controller library       never imports the terminal layer, the CLI, or argparse
    controller terminal      never imports the CLI

Lazy imports inside functions count too: they are imports all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {  # folder -> layer; a file belongs to the deepest folder that holds it
    "protocol": "protocol",
    "agent/hostio": "hostio",
    "agent": "agent",
    "controller": "library",
    "controller/term": "term",
    "controller/cli": "cli",
}
PREFIX = {  # first parts of an imported name -> layer
    "shoal.protocol": "protocol",
    "shoal.hostio": "hostio",
    "shoal.agent": "agent",
    "shoal.controller.term": "term",
    "shoal.controller.cli": "cli",
    "shoal.controller": "library",
}
ALLOWED = {
    "protocol": {"protocol"},
    "hostio": {"hostio", "protocol"},
    "agent": {"agent", "hostio", "protocol"},
    "library": {"library", "hostio", "protocol"},
    "term": {"term", "library", "hostio", "protocol"},
    "cli": {"cli", "term", "library", "hostio", "protocol"},
}
EXCEPTIONS = {("controller/cli/demo.py", "agent")}  # the demo runs agents in-process
OLD_NAMES = {"agent", "controller", "protocol"}


def _layer_of_file(path: Path) -> str:
    rel = path.relative_to(ROOT).parent.as_posix()
    while rel not in FOLDERS:
        rel = rel.rpartition("/")[0]
    return FOLDERS[rel]


def _layer_of_name(name: str) -> str | None:
    for prefix in sorted(PREFIX, key=len, reverse=True):
        if name == prefix or name.startswith(prefix + "."):
            return PREFIX[prefix]
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write shoal.… in full"
            found.append((node.lineno, node.module or ""))
    return found


MODULES = sorted(p for folder in ("protocol", "agent", "controller") for p in (ROOT / folder).rglob("*.py")
                 if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_module_imports_follow_the_layers(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    layer = _layer_of_file(path)
    for line, name in _imports(path):
        top = name.split(".")[0]
        assert top not in OLD_NAMES, f"{rel}:{line}: imports {name}; every import of ours reads shoal.…"
        if layer == "library":
            assert top != "argparse", f"{rel}:{line}: the controller library does not parse command lines"
        imported = _layer_of_name(name)
        if imported is None or (rel, imported) in EXCEPTIONS:
            continue
        assert imported in ALLOWED[layer], f"{rel}:{line}: the {layer} layer may not import {name}"


def test_every_module_was_checked() -> None:
    """A new top folder or layer must be added to the table above, not slip past it."""
    assert len(MODULES) > 80
    assert {_layer_of_file(p) for p in MODULES} == set(ALLOWED)


MAX_LINES = 500  # issue 14: a module past this holds more than one thing; split it by what it holds


def test_no_module_is_over_the_line_limit() -> None:
    long = {p.relative_to(ROOT).as_posix(): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"over {MAX_LINES} lines (split each by what it holds): {long}"
