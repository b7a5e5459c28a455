"""The public API is what `__all__` says, and every name in it resolves."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["shoal.protocol", "shoal.agent", "shoal.controller"])
def test_every_exported_name_resolves(package: str) -> None:
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name


def test_unknown_names_raise_attribute_error() -> None:
    from shoal import agent, controller

    with pytest.raises(AttributeError):
        agent.NoSuchThing  # noqa: B018
    with pytest.raises(AttributeError):
        controller.NoSuchThing  # noqa: B018


@pytest.mark.parametrize("name", sorted(__import__("shoal.controller.cli.main", fromlist=["SUBCOMMANDS"]).SUBCOMMANDS))
def test_every_subcommand_module_exists_and_has_the_interface(name: str) -> None:
    from shoal.controller.cli.main import SUBCOMMANDS

    module = importlib.import_module(SUBCOMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run) and module.__doc__
