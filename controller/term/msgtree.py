"""Gather identical output from many hosts: a trie of lines keyed by host.

Each host's output is a path from the root; a host sits on the node of its last line.
Hosts that printed the same lines share one path, so 500 hosts answering the same 100
lines cost 100 nodes, not 50,000 copies, and walking the trie yields each distinct
output once with the hosts that produced it (clush -b style gathering).
"""

from __future__ import annotations

from collections.abc import Iterator

from shoal.controller.nodeset import natural_key

__all__ = ["MsgTree"]


class _Node:
    """One line of output, reached from the root by the lines before it."""

    __slots__ = ("line", "parent", "children", "keys")

    def __init__(self, line: bytes, parent: _Node | None) -> None:
        self.line = line
        self.parent = parent
        # Memory per line is what gather costs, so both are lean: most nodes have one
        # child (held as the node itself, a dict only from the second) and no key (the
        # set is dropped when it empties, since a set keeps its grown table).
        self.children: _Node | dict[bytes, _Node] | None = None
        self.keys: set[str] | None = None  # keys whose output ends exactly here

    def child(self, line: bytes) -> _Node | None:
        """The child for `line`, if there is one."""
        if isinstance(self.children, _Node):
            return self.children if self.children.line == line else None
        return self.children.get(line) if self.children else None

    def add_child(self, line: bytes) -> _Node:
        child = _Node(line, self)
        if self.children is None:
            self.children = child
        elif isinstance(self.children, _Node):
            self.children = {self.children.line: self.children, line: child}
        else:
            self.children[line] = child
        return child

    def path(self) -> list[bytes]:
        """Return the lines from the root down to this node."""
        lines: list[bytes] = []
        node: _Node | None = self
        while node is not None and node.parent is not None:
            lines.append(node.line)
            node = node.parent
        lines.reverse()
        return lines


class MsgTree:
    """Output lines per key (host), stored once per distinct prefix."""

    __slots__ = ("_root", "_ends", "_node_count")

    def __init__(self) -> None:
        self._root = _Node(b"", None)
        self._ends: dict[str, _Node] = {}
        self._node_count = 0

    @property
    def node_count(self) -> int:
        """Lines stored in the trie: grows with distinct output, not with keys."""
        return self._node_count

    def __len__(self) -> int:
        """Number of keys that have at least one line."""
        return len(self._ends)

    def __contains__(self, key: object) -> bool:
        return key in self._ends

    def add(self, key: str, line: bytes) -> None:
        """Append `line` to the output of `key`."""
        node = self._ends.get(key, self._root)
        child = node.child(line)
        if child is None:
            child = node.add_child(line)
            self._node_count += 1
        if node.keys is not None:
            node.keys.discard(key)
            if not node.keys:
                node.keys = None
        if child.keys is None:
            child.keys = set()
        child.keys.add(key)
        self._ends[key] = child

    def lines(self, key: str) -> list[bytes]:
        """Return the lines of `key` so far (empty for a key never added)."""
        node = self._ends.get(key)
        return node.path() if node else []

    def keys(self) -> list[str]:
        """Return the keys with output, in natural order (`web2` before `web10`)."""
        return sorted(self._ends, key=natural_key)

    def walk(self) -> Iterator[tuple[list[bytes], list[str]]]:
        """Yield (lines, keys) for each distinct complete output.

        Keys come in natural order; outputs are ordered by their first key, so the
        listing is stable however the hosts' lines interleaved on arrival.
        """
        ends = {id(node): node for node in self._ends.values()}.values()
        groups = [sorted(node.keys or (), key=natural_key) for node in ends]
        order = sorted(zip(ends, groups), key=lambda pair: natural_key(pair[1][0]))
        for node, keys in order:
            yield node.path(), keys
