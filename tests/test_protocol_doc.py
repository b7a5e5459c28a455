"""protocol/PROTOCOL.md lists every message type, code and field the code has, and its
worked example frames decode to what the text says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from shoal.protocol.frames import FrameDecoder
from shoal.protocol.messages import MESSAGE_CLASSES, Exec, Stdout, decode_body

DOC = Path(__file__).resolve().parent.parent.joinpath("protocol", "PROTOCOL.md").read_text()
ROWS = {m.group(1).lower(): m.group(0) for m in re.finditer(r"^\| (0x[0-9a-f]{2}) \|.*$", DOC, re.M | re.I)}


@pytest.mark.parametrize("cls", list(MESSAGE_CLASSES.values()), ids=lambda c: c.TYPE.name)
def test_every_message_has_a_row_naming_its_code_and_fields(cls: type) -> None:
    row = ROWS.get(f"0x{cls.TYPE:02x}")
    assert row is not None, f"PROTOCOL.md has no row for {cls.TYPE.name}"
    assert f"| {cls.TYPE.name} |" in row
    for f in dataclasses.fields(cls):
        if f.name not in ("request_id", "data"):
            assert f"`{f.name}`" in row, f"{cls.TYPE.name}.{f.name} is not documented"


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
