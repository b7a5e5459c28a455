"""Make remote-supplied text harmless on the operator's terminal.

Output, host names and error messages come from machines we do not control. Sent
raw, `ESC ] 52` sets the clipboard, `ESC [ 2J` clears the screen and a bare CR
followed by `web99: forged` overwrites the real host prefix. Every mode but the
byte-exact ones (`--raw`, single-host passthrough) shows such characters escaped
and visible (`\\x1b`), through the functions here and nowhere else.

Escaped: the C0 controls except TAB (so also LF inside one message, and a CR not
ending a line), DEL, and the C1 controls U+0080-U+009F (which some terminals obey
as CSI, OSC... when they arrive UTF-8 encoded). Backslash is left alone, so
`C:\\dir` stays readable; a remote can print text that *looks* escaped, never a
control.
"""

from __future__ import annotations

__all__ = ["escape_text", "escape_line", "json_safe", "quote_peer_bytes"]

_CONTROLS = [c for c in range(0x20) if c != 0x09] + [0x7F] + list(range(0x80, 0xA0))
_TEXT_TABLE = {c: f"\\x{c:02x}" for c in _CONTROLS}
# JSON already escapes C0 (`\u001b`); DEL and C1 pass through `ensure_ascii=False`.
_JSON_TABLE = {c: f"\\u{c:04x}" for c in [0x7F, *range(0x80, 0xA0)]}
# A peer's first bytes shown in an error: one banner line's worth.
_QUOTE_CHARS = 40


def escape_text(text: str) -> str:
    """`text` with every terminal control character shown as `\\xNN`."""
    return text.translate(_TEXT_TABLE)


def escape_line(line: bytes) -> bytes:
    """One output line (without its LF), decoded, escaped and ended.

    A CR right before the LF is a CRLF line end and stays one; any other CR is
    escaped, so it can never return the cursor over the host prefix.
    """
    end = b"\n"
    if line.endswith(b"\r"):
        line, end = line[:-1], b"\r\n"
    return escape_text(line.decode("utf-8", "replace")).encode() + end


def json_safe(text: str) -> str:
    """A JSON document with DEL and C1 controls written as `\\uNNNN` (still the same JSON)."""
    return text.translate(_JSON_TABLE)


def quote_peer_bytes(data: bytes) -> str:
    """A peer's first line, escaped and quoted, to say what answered instead of an agent."""
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    text = escape_text(first.decode("utf-8", "replace"))
    if len(text) > _QUOTE_CHARS or len(first) < len(data.rstrip(b"\r\n")):
        text = text[:_QUOTE_CHARS] + "…"
    return f'"{text}"'
