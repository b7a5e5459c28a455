"""Gathering identical output: one trie path per distinct output, hosts grouped on it."""

from __future__ import annotations

from shoal.controller.term.msgtree import MsgTree


def test_identical_output_is_gathered() -> None:
    tree = MsgTree()
    for key in ("web2", "web10", "web1"):
        tree.add(key, b"hello")
        tree.add(key, b"world")
    assert list(tree.walk()) == [([b"hello", b"world"], ["web1", "web2", "web10"])]


def test_distinct_outputs_ordered_by_first_key() -> None:
    tree = MsgTree()
    tree.add("web3", b"b")
    tree.add("web10", b"a")
    tree.add("web1", b"a")
    tree.add("db1", b"c")
    assert list(tree.walk()) == [([b"c"], ["db1"]), ([b"a"], ["web1", "web10"]), ([b"b"], ["web3"])]


def test_prefix_is_not_the_same_output() -> None:
    tree = MsgTree()
    for line in (b"1", b"2", b"3"):
        tree.add("long", line)
    for line in (b"1", b"2"):
        tree.add("short", line)
    assert list(tree.walk()) == [([b"1", b"2", b"3"], ["long"]), ([b"1", b"2"], ["short"])]
    assert tree.node_count == 3


def test_interleaved_arrival_gives_the_same_result() -> None:
    tree = MsgTree()
    for number in range(5):
        for key in ("h2", "h1"):
            tree.add(key, b"line %d" % number)
    assert list(tree.walk()) == [([b"line %d" % n for n in range(5)], ["h1", "h2"])]


def test_lines_per_key() -> None:
    tree = MsgTree()
    tree.add("a", b"x")
    tree.add("a", b"")
    tree.add("b", b"x")
    assert tree.lines("a") == [b"x", b""]
    assert tree.lines("b") == [b"x"]
    assert tree.lines("never") == []


def test_keys_without_lines_do_not_appear() -> None:
    tree = MsgTree()
    assert list(tree.walk()) == []
    assert len(tree) == 0 and "a" not in tree
    tree.add("a", b"x")
    assert len(tree) == 1 and "a" in tree and tree.keys() == ["a"]


def test_500_hosts_with_identical_100_lines_share_one_path() -> None:
    tree = MsgTree()
    output = [b"line %03d of the same report" % n for n in range(100)]
    hosts = [f"web{n:03d}" for n in range(1, 501)]
    for line in output:
        for host in hosts:
            tree.add(host, line)
    assert tree.node_count == 100
    gathered = list(tree.walk())
    assert len(gathered) == 1
    assert gathered[0] == (output, hosts)


def test_one_host_differing_at_the_end_adds_one_node() -> None:
    tree = MsgTree()
    hosts = [f"n{n}" for n in range(1, 201)]
    for host in hosts:
        for n in range(50):
            tree.add(host, b"same %d" % n)
    tree.add("n7", b"extra")
    assert tree.node_count == 51
    assert [keys for _lines, keys in tree.walk()] == [[h for h in hosts if h != "n7"], ["n7"]]
