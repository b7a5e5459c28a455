"""Target strings to connect targets: ranges, CIDR, groups, IPv6, unix sockets, ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal.controller.inventory import Inventory, load_inventory
from shoal.controller.targets import DEFAULT_PORT, LARGE_TARGET_COUNT, Target, parse_targets
from shoal.protocol.errors import ConfigError


def names(spec: str, **kwargs: object) -> list[str]:
    return [t.name for t in parse_targets(spec, **kwargs)]  # type: ignore[arg-type]


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    path = tmp_path / "inventory.toml"
    path.write_text(
        '[defaults]\nkey_file = "/keys/shared"\n'
        '[groups.web]\nhosts = ["web[01-03]", "10.0.0.0/30"]\nport = 8471\n'
        '[groups.db]\nhosts = ["db1"]\ntls_cert = "/c"\ntls_key = "/k"\ntls_ca = "/ca"\n'
        '[groups.all]\ngroups = ["web", "db"]\n'
        '[groups.big]\nhosts = ["10.1.0.0/16"]\n'
        '[hosts."web01"]\nport = 9000\n'
        '[hosts."::1"]\nport = 7000\n'
        '[hosts."unix:/run/a.sock"]\nkey_file = "/keys/a"\n')
    return load_inventory(path)


def test_plain_name_gets_default_port() -> None:
    assert parse_targets("web01") == [Target("web01", "web01", DEFAULT_PORT)]


def test_ranges_and_commas_inside_brackets() -> None:
    assert names("web[01-03],db[1,3]") == ["web01", "web02", "web03", "db1", "db3"]


def test_whitespace_around_elements_is_ignored() -> None:
    assert names(" web1 , web2 ") == ["web1", "web2"]


def test_duplicates_keep_first_appearance() -> None:
    assert names("b,a,web[1-3],a,web2") == ["b", "a", "web1", "web2", "web3"]


def test_explicit_port_shows_in_name_unless_default() -> None:
    targets = parse_targets("web01:9000,web02:8470,127.0.0.1:8471")
    assert [(t.name, t.host, t.port) for t in targets] == [
        ("web01:9000", "web01", 9000), ("web02", "web02", 8470), ("127.0.0.1:8471", "127.0.0.1", 8471)]


def test_port_ranges_reach_several_agents_on_one_host() -> None:
    assert names("127.0.0.1:[8471-8473]") == ["127.0.0.1:8471", "127.0.0.1:8472", "127.0.0.1:8473"]


def test_ipv6_bracketed_bare_and_normalised() -> None:
    targets = parse_targets("[::1]:8471,::1,[0:0::2],fe80::1%eth0,[fe80::1%eth0]:9")
    assert [(t.name, t.host, t.port) for t in targets] == [
        ("[::1]:8471", "::1", 8471), ("::1", "::1", DEFAULT_PORT), ("::2", "::2", DEFAULT_PORT),
        ("fe80::1%eth0", "fe80::1%eth0", DEFAULT_PORT), ("[fe80::1%eth0]:9", "fe80::1%eth0", 9)]


def test_unix_sockets() -> None:
    targets = parse_targets("unix:/run/a.sock,unix:/tmp/s[1-2]")
    assert targets[0] == Target("unix:/run/a.sock", None, DEFAULT_PORT, path="/run/a.sock")
    assert [t.path for t in targets] == ["/run/a.sock", "/tmp/s1", "/tmp/s2"]
    assert all(t.host is None for t in targets)


def test_ipv4_cidr_leaves_out_network_and_broadcast() -> None:
    assert names("10.0.0.0/30") == ["10.0.0.1", "10.0.0.2"]
    assert len(names("10.0.0.0/28")) == 14
    assert names("10.0.0.4/31") == ["10.0.0.4", "10.0.0.5"]
    assert names("10.0.0.9/32") == ["10.0.0.9"]
    assert names("10.0.0.5/30") == ["10.0.0.5", "10.0.0.6"]


def test_ipv6_cidr() -> None:
    assert names("fd00::/126") == ["fd00::1", "fd00::2", "fd00::3"]
    assert names("fd00::/127") == ["fd00::", "fd00::1"]
    assert names("fd00::7/128") == ["fd00::7"]


def test_large_cidr_needs_yes() -> None:
    with pytest.raises(ConfigError, match="--yes"):
        parse_targets("10.0.0.0/19")
    assert len(parse_targets("10.0.0.0/20")) == LARGE_TARGET_COUNT - 2
    assert len(parse_targets("10.0.0.0/19", allow_large=True)) == 8190


def test_huge_cidr_is_refused_even_with_yes() -> None:
    with pytest.raises(ConfigError, match="at most"):
        parse_targets("fd00::/64", allow_large=True)


@pytest.mark.parametrize("spec", ["web01:0", "web01:65536", "web01:http", "web01:", "[::1]:x", "[::1]:",
                                  "web01:８０"])
def test_bad_port_names_the_target(spec: str) -> None:
    with pytest.raises(ConfigError, match="bad port") as caught:
        parse_targets(spec)
    assert repr(spec) in str(caught.value)


@pytest.mark.parametrize(("spec", "words"), [
    ("", "no targets"),
    ("a,,b", "empty element"),
    ("web[1-", "unclosed"),
    ("[::g]:1", "not an IPv6"),
    ("1::2::3", "not an IPv6"),
    ("[web01]:1", "bad range"),
    ("we b", "not a host name"),
    ("-web", "not a host name"),
    ("unix:", "no socket path"),
    ("10.0.0.0/40", "bad CIDR"),
    ("@web", "no inventory"),
])
def test_bad_targets(spec: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_targets(spec)


def test_exclusion_by_pattern() -> None:
    assert names("web[1-5]", exclude="web[2-3]") == ["web1", "web4", "web5"]
    # An excluded block drops every address in it, its edges and huge blocks too.
    assert names("10.0.0.0/29", exclude="10.0.0.0/30,10.0.0.6") == ["10.0.0.4", "10.0.0.5"]
    assert names("10.0.0.1,web1,[::1]:9", exclude="10.0.0.0/8,::/0") == ["web1"]


def test_exclusion_without_port_drops_every_port_with_port_only_that_one() -> None:
    spec = "web1:9000,web1:9001,web2:9000,unix:/a"
    assert names(spec, exclude="web1") == ["web2:9000", "unix:/a"]
    assert names(spec, exclude="web1:9001,unix:/a") == ["web1:9000", "web2:9000"]


def test_group_expansion_with_settings(inventory: Inventory) -> None:
    targets = parse_targets("@all", inventory=inventory)
    assert [(t.name, t.port) for t in targets] == [
        ("web01", 9000), ("web02", 8471), ("web03", 8471),
        ("10.0.0.1", 8471), ("10.0.0.2", 8471), ("db1", DEFAULT_PORT)]
    db1 = targets[-1]
    assert (db1.key_file, db1.tls_cert, db1.tls_key, db1.tls_ca) == ("/keys/shared", "/c", "/k", "/ca")


def test_explicit_port_beats_inventory(inventory: Inventory) -> None:
    assert parse_targets("web01:9500", inventory=inventory)[0].port == 9500
    assert parse_targets("web01", inventory=inventory)[0].port == 9000


def test_inventory_settings_for_ipv6_and_unix(inventory: Inventory) -> None:
    v6 = parse_targets("[::1]", inventory=inventory)[0]
    assert (v6.name, v6.port) == ("::1", 7000)
    unix = parse_targets("unix:/run/a.sock", inventory=inventory)[0]
    assert unix.key_file == "/keys/a"


def test_group_mixed_with_names_and_exclusion(inventory: Inventory) -> None:
    got = names("extra,@web,web02", exclude="@db,10.0.0.0/30", inventory=inventory)
    assert got == ["extra", "web01", "web02", "web03"]


def test_unknown_group(inventory: Inventory) -> None:
    with pytest.raises(ConfigError, match="unknown group 'nope'"):
        parse_targets("@nope", inventory=inventory)


def test_large_group_cidr_needs_yes(inventory: Inventory) -> None:
    with pytest.raises(ConfigError, match="--yes"):
        parse_targets("@big", inventory=inventory)


def test_target_checks_itself() -> None:
    with pytest.raises(ConfigError):
        Target("x", None, DEFAULT_PORT)
    with pytest.raises(ConfigError):
        Target("x", "x", 0)


def test_operators_on_targets() -> None:
    assert names("web[1-10]!web[3-5]") == ["web1", "web2", "web6", "web7", "web8", "web9", "web10"]
    assert names("web[1-4]&web[3-6]") == ["web3", "web4"]
    assert names("web[1-4]^web[3-6]") == ["web1", "web2", "web5", "web6"]
    assert names("web[1-5]!web2,web2") == ["web1", "web3", "web4", "web5", "web2"]


def test_step_ranges_are_names_not_cidr_blocks() -> None:
    assert names("web[1-9/2]") == ["web1", "web3", "web5", "web7", "web9"]
    assert names("10.0.0.[1-7/3]:9000") == ["10.0.0.1:9000", "10.0.0.4:9000", "10.0.0.7:9000"]


def test_names_deduplicate_ignoring_case_first_spelling_kept() -> None:
    assert names("Web1,web1,WEB2,db,web2,DB") == ["Web1", "WEB2", "db"]
    assert names("Web[1-3]!WEB2") == ["Web1", "Web3"]
    # Socket paths are files, where case matters.
    assert names("unix:/A,unix:/a") == ["unix:/A", "unix:/a"]


def test_operators_keep_port_and_block_rules_of_exclusion() -> None:
    assert names("web1:9000,web1:9001,web2:9000!web1") == ["web2:9000"]
    assert names("web1:9000,web1:9001&web1:9001") == ["web1:9001"]
    # A block on the right is matched, never enumerated: no --yes needed for a /8.
    assert names("10.0.0.0/29!10.0.0.0/8,web1") == ["web1"]
    assert names("10.0.0.1,web1,[::1]:9&10.0.0.0/8") == ["10.0.0.1"]


def test_group_algebra(inventory: Inventory) -> None:
    assert names("@all&@web", inventory=inventory) == ["web01", "web02", "web03", "10.0.0.1", "10.0.0.2"]
    assert names("@all!@web", inventory=inventory) == ["db1"]
    assert names("@web^web[03-04]", inventory=inventory) == ["web01", "web02", "10.0.0.1", "10.0.0.2", "web04"]


def test_each_group_is_resolved_once_per_pattern(inventory: Inventory) -> None:
    asked: list[str] = []

    class Counting(Inventory):
        def group_patterns(self, name: str) -> list[str]:
            asked.append(name)
            return super().group_patterns(name)

    counting = Counting(inventory.path, inventory.defaults, inventory.group_table, inventory.host_table)
    got = names("@web,@db!@web,@web^@db", exclude="@db,@web", inventory=counting)
    assert got == []
    assert sorted(asked) == ["db", "web"]


@pytest.mark.parametrize(("spec", "message"), [
    ("web[9-1]", 'bad host pattern "web[9-1]": range end before start'),
    ("web1!", 'bad host pattern "web1!": empty element after \'!\''),
    ("&web1", 'bad host pattern "&web1": empty element before \'&\''),
    ("web[1-9/0]", 'bad host pattern "web[1-9/0]": step 0 in range \'1-9/0\'; a step is 1 or more'),
])
def test_bad_expression_names_itself(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_targets(spec)
    assert str(caught.value) == message
