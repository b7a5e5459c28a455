"""Which gateways a target is reached through: `--via`, the inventory's `via`, chains."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.controller.inventory import load_inventory
from shoal.controller.targets import Target, parse_targets
from shoal.protocol.errors import ConfigError

INVENTORY = """\
[defaults]
via = "jump"

[groups.dmz]
hosts = ["web[1-2]"]
via = "gw2"

[hosts."jump"]
port = 9000
key_file = "jump.key"

[hosts."gw2"]
via = "jump,gw1"

[hosts."direct"]
via = ""
"""


def chain(target: Target) -> list[str]:
    """The gateways, first hop first."""
    names = []
    hop = target.via
    while hop is not None:
        names.insert(0, hop.name)
        hop = hop.via
    return names


@pytest.fixture
def inventory(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def test_without_via_targets_are_direct() -> None:
    assert [chain(t) for t in parse_targets("a,b")] == [[], []]


def test_via_names_one_gateway_or_a_chain_for_every_target() -> None:
    targets = parse_targets("web[1-2]", via="gw1:9000,[fd00::1]:8471")
    assert [chain(t) for t in targets] == [["gw1:9000", "[fd00::1]:8471"]] * 2
    last = targets[0].via
    assert last is not None and (last.host, last.port) == ("fd00::1", 8471)
    assert targets[0].via is targets[1].via  # built once: one connection to it


def test_the_inventory_gives_each_host_its_gateways_and_each_gateway_its_settings(inventory) -> None:  # type: ignore[no-untyped-def]
    by_name = {t.name: t for t in parse_targets("web1,db1,jump,gw2,direct", inventory=inventory)}
    assert {name: chain(t) for name, t in by_name.items()} == {
        "web1": ["jump", "gw1", "gw2"],  # the group's gw2, reached as gw2's own via says
        "db1": ["jump"],                  # [defaults]
        "jump": [],                       # a gateway is never reached through itself
        "gw2": ["jump", "gw1"],
        "direct": [],
    }
    jump = by_name["db1"].via
    assert jump is not None and jump.port == 9000 and str(jump.key_file).endswith("/jump.key")


def test_via_on_the_command_line_replaces_the_inventorys(inventory) -> None:  # type: ignore[no-untyped-def]
    # gw9 itself is reached as the inventory says for it: [defaults] through jump
    assert [chain(t) for t in parse_targets("web1,db1", inventory=inventory, via="gw9")] == [["jump", "gw9"]] * 2
    assert [chain(t) for t in parse_targets("web1,db1", inventory=inventory, via="")] == [[], []]


def test_a_gateway_among_the_targets_is_reached_the_way_its_chain_reaches_it() -> None:
    by_name = {t.name: chain(t) for t in parse_targets("gw1,gw2,web1", via="gw1,gw2")}
    assert by_name == {"gw1": [], "gw2": ["gw1"], "web1": ["gw1", "gw2"]}


@pytest.mark.parametrize("via, reason", [
    ("gw[1-2]", "a gateway is one host, not a group, block or range"),
    ("@dmz", "a gateway is one host"),
    ("10.0.0.0/24", "a gateway is one host"),
    ("gw1,,gw2", "empty gateway name"),
    ("gw1,gw1", "gateways loop: gw1 -> gw1"),
    ("gw1:99999", "bad port"),
])
def test_bad_gateways_are_config_errors(via: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_targets("web1", via=via)
    assert reason in str(info.value)


def test_gateways_that_reach_each_other_are_a_loop(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text('[hosts."a"]\nvia = "b"\n[hosts."b"]\nvia = "a"\n[hosts."c"]\nvia = "a"\n')
    with pytest.raises(ConfigError, match="gateways loop: a -> b -> a"):
        parse_targets("c", inventory=load_inventory(path))


@pytest.mark.parametrize("value", ["1", "[\"gw1\"]", "\"gw1,\"", "\" ,gw1\""])
def test_a_bad_via_in_the_inventory_names_its_line(tmp_path: Path, value: str) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text(f'[groups.web]\nhosts = ["web1"]\nvia = {value}\n')
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.where == f"{path}:3" and "via must name gateways" in info.value.reason
