"""A key's relay right: the destination syntax, the defaults per kind of key, agent.toml."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shoal.agent.config import KeyPolicy, dump_config, load_config
from shoal.agent.config.destinations import parse_destination
from shoal.agent.config.settings import AgentConfig
from shoal.protocol.errors import ConfigError


@pytest.mark.parametrize("text, canonical", [
    ("10.1.0.0/16", "10.1.0.0/16"),
    ("10.1.2.3", "10.1.2.3/32"),
    ("10.1.2.3:8470", "10.1.2.3/32:8470"),
    ("10.1.0.0/16:8470-8479", "10.1.0.0/16:8470-8479"),
    ("10.1.0.9/16:22", "10.1.0.0/16:22"),
    ("fd00::/8", "fd00::/8"),
    ("[fd00::/8]:8470", "[fd00::/8]:8470"),
    ("[::1]", "::1/128"),
    ("unix:/run/shoal.sock", "unix:/run/shoal.sock"),
])
def test_destinations_parse_and_print_canonically(text: str, canonical: str) -> None:
    assert str(parse_destination("relay[0]", text)) == canonical


@pytest.mark.parametrize("text, reason", [
    ("", "expected a destination"),
    ("web1:8470", "is not an address or CIDR block"),
    ("10.0.0.0/33", "is not an address or CIDR block"),
    ("10.0.0.0/8:0", "ports must be 1-65535"),
    ("10.0.0.0/8:9-8", "first not above last"),
    ("10.0.0.0/8:http", "bad port"),
    ("[fd00::/8", "expected [IPv6 block]"),
    ("unix:run/x.sock", "plain absolute path"),
    ("unix:/run/../etc/x.sock", "plain absolute path"),
])
def test_bad_destinations_say_why(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_destination("relay[2]", text)
    assert info.value.where == "relay[2]" and reason in info.value.reason


def test_a_destination_admits_its_block_ports_and_path_only() -> None:
    block = parse_destination("r", "10.1.0.0/16:8470-8471")
    assert block.allows("10.1.200.3", 8471, None)
    assert not block.allows("10.1.200.3", 8472, None)
    assert not block.allows("10.2.0.1", 8470, None)
    assert not block.allows("::ffff:10.1.0.1", 8470, None)  # another family is another address
    assert not block.allows(None, 0, "/run/shoal.sock")
    sock = parse_destination("r", "unix:/run/shoal.sock")
    assert sock.allows(None, 0, "/run/shoal.sock") and not sock.allows(None, 0, "/run/shoal.sock2")
    assert not sock.allows("10.1.0.1", 8470, None)
    v6 = parse_destination("r", "fd00::/8")
    assert v6.allows("fd00::7%eth0", 1, None)  # a zone does not matter


def test_who_may_relay_by_default_and_how_a_list_narrows_it() -> None:
    admin = KeyPolicy("admin", "/k/admin", allow_all=True)
    listed = KeyPolicy("ops", "/k/ops", commands=("uptime",))
    narrowed = KeyPolicy("jump", "/k/jump", allow_all=True, relay=("10.0.0.0/8:8470",))
    nowhere = KeyPolicy("none", "/k/none", allow_all=True, relay=())
    granted = KeyPolicy("relayer", "/k/r", relay=("10.0.0.0/8:8470", "unix:/run/a.sock"))
    assert [p.may_relay() for p in (admin, listed, narrowed, nowhere, granted)] == [True, False, True, False, True]
    assert admin.allows_relay("192.0.2.1", 22, None) and admin.allows_relay(None, 0, "/anything")
    assert not listed.allows_relay("10.0.0.1", 8470, None)
    assert narrowed.allows_relay("10.9.9.9", 8470, None) and not narrowed.allows_relay("10.9.9.9", 22, None)
    assert granted.allows_relay(None, 0, "/run/a.sock") and not granted.allows_relay(None, 0, "/run/b.sock")


def test_relay_lists_load_from_agent_toml_and_write_back(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent('''\
        [[keys]]
        name = "jump"
        file = "/etc/shoal/jump.key"
        allow = "listed"
        relay = ["10.1.0.0/16:8470", "[fd00::/8]:8470-8479", "unix:/run/shoal.sock"]

        [[keys]]
        name = "admin"
        file = "/etc/shoal/admin.key"
        allow = "all"
        relay = ["192.168.0.0/24"]
    '''))
    config = load_config(path)
    assert [k.relay for k in config.keys] == [("10.1.0.0/16:8470", "[fd00::/8]:8470-8479", "unix:/run/shoal.sock"),
                                              ("192.168.0.0/24",)]
    path.write_text(dump_config(config))
    assert load_config(path) == config
    assert load_config(path) != AgentConfig(keys=(KeyPolicy("jump", "/etc/shoal/jump.key"),
                                                  KeyPolicy("admin", "/etc/shoal/admin.key", allow_all=True)))


def test_a_bad_relay_entry_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[[keys]]\nname = "jump"\nfile = "/etc/shoal/jump.key"\nrelay = ["10.0.0.0/8", "gw1"]\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.where == f"{path}:4"
    assert "'gw1' is not an address or CIDR block" in info.value.reason
