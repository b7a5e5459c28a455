"""Remote bytes cannot drive the operator's terminal (controller/escape.py).

Real agents print OSC 52 (set the clipboard), ESC[2J (clear the screen), a bare CR
that would overwrite the host prefix, C1 controls and DEL; through the CLI, every
mode but --raw shows them escaped, CRLF stays a line end, and --raw stays exact.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from shoal.controller.escape import escape_line, escape_text, json_safe, quote_peer_bytes
from tests.agents import AgentThread, shoal

# printf arguments and the bytes they make
OSC52 = r"\033]52;c;Zm9yZ2Vk\007copied"
CLEAR = r"\033[2Jcleared"
FORGE = r"real\rweb99: forged"
C1_DEL = r"csi\302\233x del\177"
CRLF = r"dos\r\nline"
ALL_OF_THEM = "\\n".join([OSC52, CLEAR, FORGE, C1_DEL, CRLF]) + "\\n"
RAW_BYTES = (b"\x1b]52;c;Zm9yZ2Vk\x07copied\n\x1b[2Jcleared\nreal\rweb99: forged\n"
             b"csi\xc2\x9bx del\x7f\ndos\r\nline\n")
SHOWN = [b"\\x1b]52;c;Zm9yZ2Vk\\x07copied", b"\\x1b[2Jcleared", b"real\\x0dweb99: forged",
         b"csi\\x9bx del\\x7f", b"dos\r", b"line"]
# What may reach a terminal: printable text, TAB, and LF (CR only right before LF).
CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)|\xc2[\x80-\x9f]")


@pytest.fixture(scope="module")
def agent_settings() -> dict[str, object]:
    return {"count": 2}


def run(capsysbinary: pytest.CaptureFixture[bytes], agents: AgentThread,
        *options: str) -> tuple[int, bytes, bytes]:
    return shoal(capsysbinary, "run", *options, "-n", "--", f"printf '{ALL_OF_THEM}'")


# -- the module ------------------------------------------------------------------


def test_controls_are_shown_escaped_and_text_is_kept() -> None:
    assert escape_text("a\tb\x1b[2J\x00\x7f\x9b\n\r é\\x") == "a\tb\\x1b[2J\\x00\\x7f\\x9b\\x0a\\x0d é\\x"


def test_crlf_stays_a_line_end_and_a_bare_cr_does_not() -> None:
    assert escape_line(b"dos\r") == b"dos\r\n"
    assert escape_line(b"a\rb") == b"a\\x0db\n"
    assert escape_line(b"bad \xff utf8") == "bad \ufffd utf8\n".encode()


def test_json_safe_escapes_what_json_leaves_raw() -> None:
    text = json.dumps("del\x7f csi\x9b", ensure_ascii=False)
    assert json.loads(json_safe(text)) == "del\x7f csi\x9b"
    assert json_safe(text) == '"del\\u007f csi\\u009b"'


def test_peer_bytes_are_quoted_on_one_line() -> None:
    assert quote_peer_bytes(b"SSH-2.0-OpenSSH_9.6\r\n") == '"SSH-2.0-OpenSSH_9.6"'
    assert quote_peer_bytes(b"HTTP/1.1 400 Bad\r\n\r\nbody") == '"HTTP/1.1 400 Bad…"'
    assert quote_peer_bytes(b"\x1b]52;c;x\x07" + b"y" * 60) == '"\\x1b]52;c;x\\x07' + "y" * 25 + '…"'


# -- through agents and the CLI --------------------------------------------------


def test_stream_mode_escapes_remote_controls(agents: AgentThread,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, agents, agents.targets_spec(), "-o", "stream")
    assert status == 0, err
    assert CONTROL.search(out) is None, out
    for host in agents.addresses:
        prefix = f"{host}: ".encode()
        assert [line[len(prefix):] for line in out.split(b"\n") if line.startswith(prefix)] == SHOWN
    assert out.count(b"\r\n") == 2  # the CRLF line end, once per host


def test_gather_mode_escapes_remote_controls(agents: AgentThread,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, agents, agents.targets_spec(), "-o", "gather")
    assert status == 0, err
    assert CONTROL.search(out) is None, out
    assert out.split(b"\n")[3:-1] == SHOWN


def test_single_host_stream_mode_escapes_too(agents: AgentThread,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, _ = run(capsysbinary, agents, agents.addresses[0], "-o", "stream")
    assert status == 0 and CONTROL.search(out) is None, out


def test_raw_stays_byte_exact(agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, agents, agents.addresses[0], "--raw")
    assert (status, out, err) == (0, RAW_BYTES, b"")


def test_json_output_cannot_drive_a_terminal(agents: AgentThread,
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, agents, agents.targets_spec(), "-o", "json")
    assert status == 0, err
    assert CONTROL.search(out) is None, out
    events = [json.loads(line) for line in out.splitlines()]
    for host in agents.addresses:
        data = "".join(e.get("data", "") + base64.b64decode(e.get("data_b64", "")).decode()
                       for e in events if e["event"] == "output" and e["host"] == host)
        assert data.encode() == RAW_BYTES


def test_agent_error_text_is_escaped(agents: AgentThread, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "--cwd", "/no\x1b[2Jsuch\rx",
                             "--", "true")
    assert status != 0 and out == b""
    assert CONTROL.search(err) is None, err
    assert all(b"/no\\x1b[2Jsuch\\x0dx" in line for line in err.splitlines()[:-1])


def test_discovered_names_are_escaped() -> None:
    from shoal.controller.cli.discover import format_found
    from shoal.controller.probe import FoundAgent

    table = format_found([FoundAgent("web\x1b[2J\rweb99", "127.0.0.1", 8470, "1.0\x9b", None)])
    assert table.splitlines()[1].split() == ["web\\x1b[2J\\x0dweb99", "127.0.0.1", "8470", "1.0\\x9b", "-"]


def test_failed_only_reasons_stay_on_their_hosts_line(agents: AgentThread,
                                                     capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "run", agents.targets_spec(), "-n", "--failed-only",
                             "--cwd", "/no\nweb99: ok", "--", "true")
    assert status != 0
    assert len(out.splitlines()) == 2 and all(b"/no\\x0aweb99: ok" in line for line in out.splitlines())
