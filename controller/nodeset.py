"""Host sets as a type: bracket-range patterns, set algebra, and folding back.

A pattern is a set expression over names; each name may hold bracket ranges
(`web[01-20]`, `web[1,3,5-7]`, `rack[1-3]-node[1-8]`, every other one: `web[1-9/2]`).
As in ClusterShell, `,` is union, `!` difference, `&` intersection and `^` symmetric
difference, all of one precedence and applied left to right (`web[1-9]!web5,web20`
is `(web[1-9] - web5) | web20`). Operators and commas inside brackets belong to the
range. Folding is the inverse: a set of names becomes the shortest pattern we can
find cheaply, so a 500-host header reads `web[001-500]` rather than 500 names.

Round trip is the contract: ``NodeSet(str(s)) == s`` for every set of names. Names whose
characters would be read as syntax (brackets, commas, backslashes, paths, IPv6) are kept
atomic: never folded, and written so the parser reads them back unchanged. A bracketed
IPv6 literal such as ``[::1]:8471`` is recognised whole; anything else special is
escaped with a backslash (``a\\,b``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator

from shoal.protocol.errors import ConfigError

__all__ = ["MAX_NAMES", "OPERATORS", "NodeSet", "expand", "natural_key", "split_expression",
           "split_patterns"]

# A range is expanded into real strings, so a typo such as `web[1-10000000]` would eat
# memory before anything ran. Fleets here are hundreds to a few thousand hosts; 65536
# (a full /16) is generous and still cheap to hold.
MAX_NAMES = 65536

_DIGITS = re.compile(r"([0-9]+)")
_SPECIAL = re.compile(r"\\(.)?|\[|\]", re.S)
_SPLIT_MARKS = re.compile(r"\\.|[\[\],!&^]", re.S)
_RANGE_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?:/([0-9]+))?)?")
_ATOMIC_CHARS = re.compile(r"[\[\],!&^\\/]")
_ESCAPED_CHARS = re.compile(r"([\[\],!&^\\])")
# The set operators between patterns, in ClusterShell's spelling; `,` (union) first.
OPERATORS = (",", "!", "&", "^")
# A bracketed IPv6 literal, optional zone and port: read whole, never as a range.
_IPV6_BRACKETED = re.compile(r"\[[0-9A-Fa-f.]*:[0-9A-Fa-f.:]*(?:%[\w.-]+)?\](?::[0-9]+)?")

_Key = tuple[tuple[str | int, ...], str]
_Product = tuple[frozenset[str], ...]


def natural_key(name: str) -> _Key:
    """Sort key putting `web2` before `web10`; the name itself breaks ties (`1` vs `01`)."""
    parts: list[str | int] = _DIGITS.split(name)
    parts[1::2] = [int(digits) for digits in parts[1::2]]
    return tuple(parts), name


def split_patterns(text: str) -> list[str]:
    """Split `text` at commas outside brackets, leaving escapes (and operators) in the pieces.

    Pieces are stripped of surrounding whitespace, so ``"a, b"`` works as typed.
    Bracket balance is not judged here; `expand` reports it with the piece in hand.
    """
    return [piece for _op, piece in _split(text, ",")]


def split_expression(text: str) -> list[tuple[str, str]]:
    """Split a set expression into (operator, pattern) steps, the first operator `,`.

    `"a[1-4]!a2,b"` gives ``[(",", "a[1-4]"), ("!", "a2"), (",", "b")]``; the caller
    folds the steps left to right.

    Raises:
        ConfigError: a piece is empty (`"a,,b"`, `"!a"`, `"a&"`); the message names `text`.
    """
    steps = _split(text, "".join(OPERATORS))
    for index, (op, piece) in enumerate(steps):
        if not piece:
            where = f"before {steps[index + 1][0]!r}" if index + 1 < len(steps) else f"after {op!r}"
            raise _bad(text, f"empty element {where}")
    return steps


def _split(text: str, separators: str) -> list[tuple[str, str]]:
    """Cut `text` at the separators that stand outside brackets and escapes."""
    steps: list[tuple[str, str]] = []
    start = depth = 0
    op = ","
    for mark in _SPLIT_MARKS.finditer(text):
        char = mark.group()
        if char == "[":
            depth += 1
        elif char == "]":
            depth = max(depth - 1, 0)
        elif char in separators and depth == 0:
            steps.append((op, text[start:mark.start()].strip()))
            op, start = char, mark.end()
    steps.append((op, text[start:].strip()))
    return steps


def expand(pattern: str) -> list[str]:
    """Expand one pattern (no top-level commas) into names, in written order.

    Raises:
        ConfigError: unclosed or stray bracket, empty or reversed range, step 0, mixed padding,
            a top-level comma, or more than `MAX_NAMES` names; the message names `pattern`.
    """
    text = pattern.strip()
    if not text:
        raise _bad(pattern, "empty pattern")
    if len(_split(text, "".join(OPERATORS))) > 1:
        raise _bad(pattern, "holds several patterns; separate them before expanding")
    if _IPV6_BRACKETED.fullmatch(text):
        return [text]
    segments = _segments(text, pattern)
    total = 1
    for choices in segments:
        total *= len(choices)
    if total > MAX_NAMES:
        raise _bad(pattern, f"expands to {total} names, more than {MAX_NAMES}")
    return list(dict.fromkeys("".join(combo) for combo in itertools.product(*segments)))


def _bad(pattern: str, reason: str) -> ConfigError:
    """Build the error every pattern problem raises, naming the pattern."""
    return ConfigError(f'bad host pattern "{pattern}": {reason}')


def _segments(text: str, pattern: str) -> list[list[str]]:
    """Cut a pattern into literal pieces and range choices, honouring escapes."""
    segments: list[list[str]] = []
    literal: list[str] = []
    pos = 0
    for mark in _SPECIAL.finditer(text):
        if mark.start() < pos:
            continue
        literal.append(text[pos:mark.start()])
        pos = mark.end()
        char = mark.group()
        if char.startswith("\\"):
            if mark.group(1) is None:
                raise _bad(pattern, "dangling '\\' at the end")
            literal.append(mark.group(1))
        elif char == "]":
            raise _bad(pattern, "']' without '['")
        else:
            close = text.find("]", pos)
            if close < 0:
                raise _bad(pattern, "unclosed '['")
            segments.append(["".join(literal)])
            literal = []
            segments.append(_range_choices(text[pos:close], pattern))
            pos = close + 1
    literal.append(text[pos:])
    segments.append(["".join(literal)])
    return segments


def _range_choices(body: str, pattern: str) -> list[str]:
    """Expand the inside of one bracket, `1,3,05-07,1-9/2`, keeping zero padding."""
    if not body.strip():
        raise _bad(pattern, "empty range '[]'")
    choices: list[str] = []
    for item in body.split(","):
        match = _RANGE_ITEM.fullmatch(item.strip())
        if match is None:
            raise _bad(pattern, f"bad range {item.strip()!r}; use N, N-M, 0N-0M or N-M/STEP")
        first, last, step_text = match.groups()
        if last is None:
            choices.append(first)
            continue
        low, high = int(first), int(last)
        if high < low:
            raise _bad(pattern, "range end before start")
        step = int(step_text) if step_text is not None else 1
        if step == 0:
            raise _bad(pattern, f"step 0 in range {item.strip()!r}; a step is 1 or more")
        width = len(first) if _padded(first) else 0
        if _padded(last) and len(last) != width:
            raise _bad(pattern, f"range {first}-{last} mixes zero-padded widths")
        if len(choices) + (high - low) // step + 1 > MAX_NAMES:
            raise _bad(pattern, f"range {first}-{last} has more than {MAX_NAMES} values")
        choices.extend(str(value).zfill(width) for value in range(low, high + 1, step))
    return choices


def _padded(digits: str) -> bool:
    """Tell whether a number is written with leading zeros (`07`, not `7` or `0`)."""
    return len(digits) > 1 and digits[0] == "0"


def _is_atomic(name: str) -> bool:
    """Tell whether folding `name` on its digits could make an ambiguous pattern."""
    return bool(_ATOMIC_CHARS.search(name)) or name.count(":") > 1 or name.startswith("unix:")


def _quote(name: str) -> str:
    """Write an atomic name so that `expand` reads it back as exactly itself."""
    if _IPV6_BRACKETED.fullmatch(name):
        return name
    return _ESCAPED_CHARS.sub(r"\\\1", name)


def _check_name(name: object) -> str:
    """Reject what cannot be a host name, before it can break the round trip."""
    if not isinstance(name, str):
        raise ConfigError(f"host name must be a string, not {type(name).__name__}")
    if not name or name != name.strip():
        raise ConfigError(f"bad host name {name!r}: empty or surrounded by whitespace")
    return name


_SET_OPERATIONS: dict[str, Callable[[set[str], set[str]], set[str]]] = {
    ",": set.union, "!": set.difference, "&": set.intersection, "^": set.symmetric_difference}


def _parse(pattern: str) -> set[str]:
    """Evaluate a pattern expression left to right; the empty string is the empty set."""
    if not pattern.strip():
        return set()
    names: set[str] = set()
    for op, piece in split_expression(pattern):
        names = _SET_OPERATIONS[op](names, set(expand(piece)))
    return names


class NodeSet:
    """An immutable set of host names with set algebra and a compact folded form.

    Build it from a pattern string (``NodeSet("web[01-05],db1")``) or from any iterable
    of names. Iteration is in natural order (`web2` before `web10`); `str()` folds.
    """

    __slots__ = ("_names", "_ordered")

    _names: frozenset[str]
    _ordered: tuple[str, ...] | None

    def __init__(self, source: str | Iterable[str] = "") -> None:
        """Parse `source` if it is a string, else take it as names.

        Raises:
            ConfigError: bad pattern syntax, or a name that is empty or padded with spaces.
        """
        if isinstance(source, NodeSet):
            self._names = source._names
        elif isinstance(source, str):
            self._names = frozenset(_parse(source))
        else:
            self._names = frozenset(_check_name(name) for name in source)
        self._ordered = None

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        if self._ordered is None:
            self._ordered = tuple(sorted(self._names, key=natural_key))
        return iter(self._ordered)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NodeSet):
            return NotImplemented
        return self._names == other._names

    def __hash__(self) -> int:
        return hash(self._names)

    def __le__(self, other: NodeSet) -> bool:
        return self._names <= other._names

    def __or__(self, other: NodeSet) -> NodeSet:
        return _from_frozen(self._names | other._names)

    def __sub__(self, other: NodeSet) -> NodeSet:
        return _from_frozen(self._names - other._names)

    def __and__(self, other: NodeSet) -> NodeSet:
        return _from_frozen(self._names & other._names)

    def __xor__(self, other: NodeSet) -> NodeSet:
        return _from_frozen(self._names ^ other._names)

    def __str__(self) -> str:
        return self.fold()

    def __repr__(self) -> str:
        return f"NodeSet({self.fold()!r})"

    def fold(self) -> str:
        """Return the compact pattern, e.g. `web[01-05,07],db1`, that expands to this set."""
        return ",".join(text for _key, text in sorted(_fold_pieces(self._names)))


def _from_frozen(names: frozenset[str]) -> NodeSet:
    """Wrap names already known valid, skipping the per-name checks."""
    result = NodeSet.__new__(NodeSet)
    result._names = names
    result._ordered = None
    return result


def _fold_pieces(names: Iterable[str]) -> list[tuple[_Key, str]]:
    """Fold names into pattern pieces, each with the sort key of its smallest name.

    Names are grouped by their non-digit skeleton (`rack-node` for `rack1-node2`);
    within a group each name is a vector of digit strings, merged into boxes.
    """
    pieces: list[tuple[_Key, str]] = []
    skeletons: dict[tuple[str, ...], list[tuple[str, ...]]] = {}
    for name in names:
        if _is_atomic(name):
            pieces.append((natural_key(name), _quote(name)))
            continue
        parts = _DIGITS.split(name)
        skeletons.setdefault(tuple(parts[0::2]), []).append(tuple(parts[1::2]))
    for texts, vectors in skeletons.items():
        for box in _merge_boxes(vectors):
            pieces.append(_format_box(texts, box))
    return pieces


def _merge_boxes(vectors: list[tuple[str, ...]]) -> list[_Product]:
    """Cover the vectors with disjoint boxes (a set of numbers per dimension).

    Start from one box per vector; then, last dimension first, merge boxes that agree
    on every other dimension. Each merge unions disjoint boxes with equal sides, so the
    cover stays exact; hashing the other sides keeps every pass linear.
    """
    boxes: list[_Product] = [tuple(frozenset((digits,)) for digits in vec) for vec in vectors]
    dimensions = len(vectors[0]) if vectors else 0
    for axis in reversed(range(dimensions)):
        merged: dict[_Product, set[str]] = {}
        for box in boxes:
            merged.setdefault(box[:axis] + box[axis + 1:], set()).update(box[axis])
        boxes = [rest[:axis] + (frozenset(side),) + rest[axis:] for rest, side in merged.items()]
    return boxes


def _format_box(texts: tuple[str, ...], box: _Product) -> tuple[_Key, str]:
    """Interleave skeleton texts with folded number sides; key by the smallest name."""
    out = [texts[0]]
    smallest = [texts[0]]
    for text, side in zip(texts[1:], box):
        out += [_fold_numbers(side), text]
        smallest += [min(side, key=lambda digits: (int(digits), digits)), text]
    return natural_key("".join(smallest)), "".join(out)


def _fold_numbers(numbers: frozenset[str]) -> str:
    """Fold digit strings into `07` or `[01-05,07]`, keeping each string's padding.

    An unpadded number as wide as some padded one (`10` next to `09`) joins that
    padded run, since zero-filling leaves it unchanged.
    """
    if len(numbers) == 1:
        return next(iter(numbers))
    widths = {len(digits) for digits in numbers if _padded(digits)}
    by_width: dict[int, list[int]] = {}
    for digits in numbers:
        width = len(digits) if _padded(digits) or len(digits) in widths else 0
        by_width.setdefault(width, []).append(int(digits))
    runs = [run for width, values in by_width.items() for run in _runs(sorted(values), width)]
    runs.sort()
    return "[" + ",".join(_format_run(*run) for run in runs) + "]"


def _runs(values: list[int], width: int) -> Iterator[tuple[int, int, int]]:
    """Yield (first, last, width) for each stretch of consecutive sorted values."""
    first = previous = values[0]
    for value in values[1:]:
        if value != previous + 1:
            yield first, previous, width
            first = value
        previous = value
    yield first, previous, width


def _format_run(first: int, last: int, width: int) -> str:
    """Write one run as `N` or `N-M`, zero-filled to `width`."""
    if first == last:
        return str(first).zfill(width)
    return f"{str(first).zfill(width)}-{str(last).zfill(width)}"
