"""Host sets: range expansion, set algebra, folding, and the round trip between them."""

from __future__ import annotations

import random

import pytest

from shoal.controller.nodeset import MAX_NAMES, NodeSet, expand, natural_key, split_expression, split_patterns
from shoal.protocol.errors import ConfigError


@pytest.mark.parametrize(("pattern", "names"), [
    ("web01", ["web01"]),
    ("web[1-3]", ["web1", "web2", "web3"]),
    ("web[01-03]", ["web01", "web02", "web03"]),
    ("web[1,3,5-7]", ["web1", "web3", "web5", "web6", "web7"]),
    ("web[08-11]", ["web08", "web09", "web10", "web11"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("n[9-11]", ["n9", "n10", "n11"]),
    ("rack[1-2]-node[1-3]", ["rack1-node1", "rack1-node2", "rack1-node3",
                             "rack2-node1", "rack2-node2", "rack2-node3"]),
    ("[1-3]", ["1", "2", "3"]),
    ("10.0.0.[1-3]", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
    ("127.0.0.1:[8471-8472]", ["127.0.0.1:8471", "127.0.0.1:8472"]),
    ("web[ 1 , 3 ]", ["web1", "web3"]),
    ("web[1,1,2]", ["web1", "web2"]),
    ("[::1]:8471", ["[::1]:8471"]),
    ("[fe80::1%eth0]", ["[fe80::1%eth0]"]),
    ("unix:/run/a.sock", ["unix:/run/a.sock"]),
    (r"a\,b", ["a,b"]),
    (r"x\[1\]", ["x[1]"]),
])
def test_expand(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


def test_expand_node_001_to_100_keeps_padding() -> None:
    names = expand("node[001-100]")
    assert len(names) == 100
    assert names[0] == "node001" and names[9] == "node010" and names[-1] == "node100"


@pytest.mark.parametrize(("pattern", "why"), [
    ("web[01-20", "unclosed"),
    ("web[5-1]", "range end before start"),
    ("web[1-9/0]", "step 0"),
    ("web[1-9/]", "bad range"),
    ("", "empty"),
    ("   ", "empty"),
    ("web[]", "empty range"),
    ("web]", "without"),
    ("web[a-c]", "bad range"),
    ("web[1-2-3]", "bad range"),
    ("web[1[2]]", "bad range"),
    ("web[1-010]", "padded"),
    ("web1,web2", "several"),
    ("web\\", "dangling"),
    (f"x[1-{MAX_NAMES + 1}]", "more than"),
    ("a[1-300]b[1-300]", "more than"),
])
def test_expand_rejects_bad_syntax_naming_the_pattern(pattern: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        expand(pattern)
    assert f'"{pattern}"' in str(caught.value)
    assert why in str(caught.value)


def test_split_patterns_keeps_commas_inside_brackets_and_escaped() -> None:
    assert split_patterns("web[1,3], db1 ,a\\,b,[::1]:1") == ["web[1,3]", "db1", "a\\,b", "[::1]:1"]


def test_nodeset_parses_comma_separated_patterns() -> None:
    nodes = NodeSet("web[1,3], db[1-2],web3")
    assert list(nodes) == ["db1", "db2", "web1", "web3"]
    assert len(nodes) == 4


@pytest.mark.parametrize("pattern", ["web1,,web2", "web1,", ",web1", "web[1-"])
def test_nodeset_rejects_empty_elements_and_bad_ranges(pattern: str) -> None:
    with pytest.raises(ConfigError):
        NodeSet(pattern)


@pytest.mark.parametrize("name", ["", " web1", "web1 "])
def test_nodeset_rejects_names_that_cannot_round_trip(name: str) -> None:
    with pytest.raises(ConfigError):
        NodeSet([name])


def test_empty_set() -> None:
    assert len(NodeSet()) == 0
    assert str(NodeSet([])) == ""
    assert NodeSet("") == NodeSet([])
    assert not NodeSet("")


def test_iteration_is_natural_order() -> None:
    assert list(NodeSet(["web10", "web2", "web1", "db", "web02"])) == ["db", "web1", "web02", "web2", "web10"]
    assert sorted(["a10b2", "a2b10", "a2b9"], key=natural_key) == ["a2b9", "a2b10", "a10b2"]


def test_set_algebra() -> None:
    a = NodeSet("web[1-5]")
    b = NodeSet("web[4-8]")
    assert a | b == NodeSet("web[1-8]")
    assert a - b == NodeSet("web[1-3]")
    assert a & b == NodeSet("web[4-5]")
    assert a ^ b == NodeSet("web[1-3,6-8]")
    assert "web3" in a and "web9" not in a
    assert NodeSet("web[2-3]") <= a
    assert len({a, NodeSet(list(a))}) == 1


@pytest.mark.parametrize(("names", "folded"), [
    ("web[01-05],web07", "web[01-05,07]"),
    ("web1,web2,web3", "web[1-3]"),
    ("web1", "web1"),
    ("web08,web09,web10", "web[08-10]"),
    ("web9,web10", "web[9-10]"),
    ("web1,web01", "web[1,01]"),
    ("rack[1-3]-node[1-8]", "rack[1-3]-node[1-8]"),
    ("rack[1-3]-node[1-8],rack4-node[1-2]", "rack[1-3]-node[1-8],rack4-node[1-2]"),
    ("db,web[1-2]", "db,web[1-2]"),
    ("web10,web2,db1", "db1,web[2,10]"),
    ("node[001-100]", "node[001-100]"),
    ("10.0.0.[1-4]", "10.0.0.[1-4]"),
    ("127.0.0.1:8471,127.0.0.1:8472", "127.0.0.1:[8471-8472]"),
])
def test_fold(names: str, folded: str) -> None:
    assert NodeSet(names).fold() == folded
    assert str(NodeSet(names)) == folded


def test_multidimensional_fold_with_a_hole_stays_exact() -> None:
    nodes = NodeSet("rack[1-3]-node[1-8]") - NodeSet("rack2-node5")
    assert str(nodes) == "rack[1,3]-node[1-8],rack2-node[1-4,6-8]"
    assert NodeSet(str(nodes)) == nodes


@pytest.mark.parametrize("names", [
    ["[::1]:8471", "[::2]:8471"],
    ["unix:/run/a1.sock", "unix:/run/a2.sock"],
    ["fe80::1", "fe80::2"],
    ["a,b", "a,c"],
    ["x[1]", "x[2]"],
    ["back\\slash1", "back\\slash2"],
    ["dir/f1", "dir/f2"],
])
def test_ambiguous_names_stay_atomic_and_round_trip(names: list[str]) -> None:
    nodes = NodeSet(names)
    assert str(nodes).count(",") >= 1 and "-" not in str(nodes)
    assert NodeSet(str(nodes)) == nodes


def test_bracketed_ipv6_is_written_as_typed() -> None:
    assert str(NodeSet(["[::1]:8471", "[fe80::1%eth0]:1"])) == "[::1]:8471,[fe80::1%eth0]:1"


def _random_name(rng: random.Random) -> str:
    """Draw a name from the shapes hosts really have, plus hostile ones."""
    shape = rng.randrange(9)
    n = rng.randrange(1, 40)
    if shape == 0:
        return f"web{n}"
    if shape == 1:
        return f"web{n:03d}"
    if shape == 2:
        return f"rack{rng.randrange(1, 4)}-node{n:02d}"
    if shape == 3:
        return f"10.0.{rng.randrange(3)}.{n}"
    if shape == 4:
        return f"127.0.0.1:{8470 + n}"
    if shape == 5:
        return f"[::{n:x}]:{8400 + n}"
    if shape == 6:
        return f"unix:/run/shoal/a{n}.sock"
    if shape == 7:
        return rng.choice(["db", "a,b", "x[1]", "y]", "z\\", "0", "00", "007", "a0b", "::1", "w 1"])
    return f"n{rng.choice(['0', '00', ''])}{n}x{rng.randrange(3)}"


@pytest.mark.parametrize("seed", range(40))
def test_round_trip_random_sets(seed: int) -> None:
    rng = random.Random(seed)
    names = {_random_name(rng) for _ in range(rng.randrange(1, 120))}
    folded = str(NodeSet(names))
    assert NodeSet(folded) == NodeSet(names)
    expanded = [name for piece in split_patterns(folded) for name in expand(piece)]
    assert sorted(expanded) == sorted(names)


def test_ten_thousand_names_fold_and_round_trip() -> None:
    names = [f"node{i:05d}" for i in range(1, 10001)]
    nodes = NodeSet(names)
    assert str(nodes) == "node[00001-10000]"
    sparse = NodeSet(names[::3] + [f"r{i % 50}-c{i // 50}" for i in range(10000)])
    assert NodeSet(str(sparse)) == sparse
    assert str(NodeSet("r[0-49]-c[0-199]")) == "r[0-49]-c[0-199]"


@pytest.mark.parametrize(("pattern", "names"), [
    ("web[1-9/2]", ["web1", "web3", "web5", "web7", "web9"]),
    ("web[01-09/2]", ["web01", "web03", "web05", "web07", "web09"]),
    ("web[1-10/3]", ["web1", "web4", "web7", "web10"]),
    ("web[08-12/2]", ["web08", "web10", "web12"]),
    ("web[0-4/2,7]", ["web0", "web2", "web4", "web7"]),
    ("web[1-2/5]", ["web1"]),
])
def test_step_ranges_keep_padding(pattern: str, names: list[str]) -> None:
    assert expand(pattern) == names


@pytest.mark.parametrize(("pattern", "folded"), [
    ("web[1-10]!web[3-5]", "web[1-2,6-10]"),
    ("web[1-4]&web[3-6]", "web[3-4]"),
    ("web[1-4]^web[3-6]", "web[1-2,5-6]"),
    # One precedence, left to right: (web[1-5] - web[2-3]) | web2, then & web[1-2].
    ("web[1-5]!web[2-3],web2&web[1-2]", "web[1-2]"),
    ("web[1-3],db1!db1", "web[1-3]"),
    ("web[1-9/2]!web[1-3]", "web[5,7,9]"),
])
def test_operators_apply_left_to_right(pattern: str, folded: str) -> None:
    assert str(NodeSet(pattern)) == folded


@pytest.mark.parametrize(("pattern", "why"), [
    ("!web1", "empty element before '!'"),
    ("web1&", "empty element after '&'"),
    ("web1^^web2", "empty element before '^'"),
    ("web1,!web2", "empty element before '!'"),
    ("x[1!2]", "bad range '1!2'"),
])
def test_operator_without_an_operand_names_the_pattern(pattern: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        NodeSet(pattern)
    assert str(caught.value).startswith(f'bad host pattern "{pattern}": {why}')


def test_split_expression_keeps_operators_inside_brackets_and_escaped() -> None:
    assert split_expression("a[1-4]!a2,b&c\\^d^e") == [
        (",", "a[1-4]"), ("!", "a2"), (",", "b"), ("&", "c\\^d"), ("^", "e")]


def test_names_holding_operator_characters_round_trip() -> None:
    nodes = NodeSet(["a!b", "c&d", "e^f"])
    assert str(nodes) == "a\\!b,c\\&d,e\\^f"
    assert NodeSet(str(nodes)) == nodes
