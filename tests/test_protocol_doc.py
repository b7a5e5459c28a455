"""protocol/PROTOCOL.md lists every message type, code and field the code has, and its
worked example frames decode to what the text says."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from shoal.protocol.errors import ERROR_CODES
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


def _documented_codes() -> dict[str, str]:
    table = DOC[DOC.index("### Error codes"):].split("\n\n")[2]
    rows = re.findall(r"^\| `([a-z_]+)` \| (\w+) \|", table, re.M)
    assert len(rows) == len(dict(rows)), "a code is listed twice"
    return dict(rows)


def test_error_code_table_matches_the_code() -> None:
    assert _documented_codes() == {code: scope for code, (scope, _) in ERROR_CODES.items()}


def test_every_code_the_sources_send_is_in_the_table() -> None:
    root = Path(__file__).resolve().parent.parent
    sent: set[str] = set()
    for path in [*root.joinpath("agent").glob("*.py"), *root.joinpath("protocol").glob("*.py"),
                 root / "controller" / "client.py"]:
        text = path.read_text()
        sent |= set(re.findall(r'(?<!\w)code="([a-z_]+)"', text))  # not Result's error_code
        sent |= set(re.findall(r'(?:fail|request_error|_protocol_error)\([^,()]*,?\s*"([a-z_]+)"', text))
        sent |= set(re.findall(r'(?:RemoteProtocolError|FileTransferError|RemoteCommandError)\([^"]*?"[^"]*",\s*"([a-z_]+)"', text))
    from shoal.hostio.fileerrors import CODES as TRANSFER_CODES
    sent |= set(TRANSFER_CODES) | {"bad_message", "bad_request", "empty_command"}
    assert "unsupported" in sent and "wrong_direction" in sent
    assert sent <= set(ERROR_CODES), sent - set(ERROR_CODES)
