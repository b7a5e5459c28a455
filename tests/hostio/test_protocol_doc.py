"""protocol/PROTOCOL.md lists every message type, code and field the code has, and its
worked example frames decode to what the text says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoal.protocol.errors import ERROR_CODES, ErrorCode
from shoal.protocol.frames import FrameDecoder
from shoal.protocol.codec import decode_body
from shoal.protocol.messageclass import message_fields
from shoal.protocol.messages import MESSAGE_CLASSES, Exec, Stdout

DOC = Path(__file__).resolve().parents[2].joinpath("protocol", "PROTOCOL.md").read_text()
ROWS = {m.group(1).lower(): m.group(0) for m in re.finditer(r"^\| (0x[0-9a-f]{2}) \|.*$", DOC, re.M | re.I)}


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.TYPE.name)
def test_every_message_has_a_row_naming_its_code_and_fields(cls: type) -> None:
    row = ROWS.get(f"0x{cls.TYPE:02x}")
    assert row is not None, f"PROTOCOL.md has no row for {cls.TYPE.name}"
    assert f"| {cls.TYPE.name} |" in row
    for name in message_fields(cls):
        if name not in ("request_id", "data"):
            assert f"`{name}`" in row, f"{cls.TYPE.name}.{name} is not documented"


def test_no_documented_type_is_missing_from_the_code() -> None:
    assert {int(code, 16) for code in ROWS} == set(MESSAGE_CLASSES)


def _example(after: str) -> bytes:
    block = DOC[DOC.index(after):].split("```")[1]
    return bytes.fromhex(block.strip().splitlines()[0])


def test_worked_examples_decode_as_described() -> None:
    dec = FrameDecoder()
    dec.feed(_example("The controller asks request 1") + _example("The agent answers with STDOUT"))
    first, second = dec.next_frame(), dec.next_frame()
    assert first is not None and second is not None
    assert decode_body(first.type, first.request_id, first.body) == Exec(1, shell="echo hi")
    assert decode_body(second.type, second.request_id, second.body) == Stdout(1, b"hi\n")


def _documented_codes() -> dict[str, str]:
    table = DOC[DOC.index("### Error codes"):].split("\n\n")[2]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|", table, re.M)
    assert len(rows) == len(dict(rows)), "a code is listed twice"
    return dict(rows)


def test_error_code_table_matches_the_code() -> None:
    assert _documented_codes() == {code: scope for code, (scope, _) in ERROR_CODES.items()}


def test_sources_spell_wire_codes_only_through_the_enum() -> None:
    """A code as a bare string escapes mypy; an ErrorCode member cannot be misspelt.

    Audit event names and JSON keys that happen to share a code's text are not codes."""
    root = Path(__file__).resolve().parents[2]
    quoted = re.compile(r'"(%s)"' % "|".join(ErrorCode))
    not_codes = ("audit.record(", '"version"')
    paths = [*root.joinpath("agent").rglob("*.py"), *root.joinpath("protocol").rglob("*.py"),
             *root.joinpath("controller").rglob("*.py")]
    for path in paths:
        if path.name in ("errors.py", "audit.py"):
            continue
        for line in path.read_text().splitlines():
            if not any(skip in line for skip in not_codes):
                assert not quoted.search(line), f"{path.name}: {line.strip()}"


def test_every_code_is_in_the_table() -> None:
    from shoal.hostio.fileerrors import FILE_ERRORS

    assert set(ERROR_CODES) == set(ErrorCode)
    assert set(FILE_ERRORS) <= set(ERROR_CODES)
