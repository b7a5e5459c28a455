"""`shoal run --hub PATH HOST -- COMMAND`: one host through a hub, in a few imports.

Through a hub a run needs no handshake of its own, yet importing the whole program
(argparse, asyncio, the library) takes several times what the command does. So the
plainest such run is done here with a blocking Unix socket and the C half of the
standard library's json (`_json`; the `json` package compiles regular expressions
as it is imported, a tenth of this run): one host by its plain name, raw output (stdout is not a terminal),
no stdin (`-n`, or stdin is a terminal), no option but `--hub` and `-n`, and no
config, inventory or debug-log setting that could change what the words mean.
HELLO, LINK_OPEN and the EXEC inside its LINKED frame go out in one write (the hub
takes them in order, PROTOCOL.md section 7), and output is copied as it comes.

Anything else is left to the full program, as is a hub that cannot take the request
(nothing listening, a hub or socket of another uid, no such agent, not a hub): nothing has run then,
since a hub drops the frames of a link it did not open, and the full program says
why. What the user sees is the full program's: a command that does not simply exit
0 gets its outcome line from the same code (`report_failure`), imported only then.
"""

from __future__ import annotations

import _json
import os
import sys

TYPE_CHECKING = False  # typing itself costs this path a tenth of its imports
if TYPE_CHECKING:
    from typing import Any

    from shoal.controller.result import Result

__all__ = ["plain_hub_run", "run_through_hub"]

# Wire constants (PROTOCOL.md sections 1 and 3), spelled here so that this path
# imports no part of the protocol package; tests/e2e/test_hubrun.py checks
# them against shoal.protocol.
_HEAD = 9
_HELLO, _ERROR, _EXEC, _SIGNAL, _CANCEL, _WINDOW = 0x01, 0x03, 0x10, 0x13, 0x14, 0x15
_STARTED, _STDOUT, _STDERR, _EXIT = 0x20, 0x21, 0x22, 0x23
_LINK_OPEN, _LINK_OPENED, _LINKED, _LINK_CLOSE = 0x70, 0x71, 0x72, 0x73
_PROTOCOL_VERSION = 1
_MAX_FRAME = 4 * 1024 * 1024  # what we accept (DEFAULT_MAX_FRAME_SIZE)
_OUTPUT_WINDOW = 4 * 1024 * 1024  # the EXEC's window (OUTPUT_WINDOW), granted back at half
_SIGKILL = 9
_LINK_ID = 1
_REQUEST_ID = 1
_READ_SIZE = 256 * 1024
# A host the hub may know by name: no node-set syntax, port, path or group.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def plain_hub_run(argv: list[str]) -> tuple[str, str, list[str], bool] | None:
    """(hub socket, host, command words, -n given) when `argv` is the plain one-host
    run this module does, else None."""
    if not argv or argv[0] != "run":
        return None
    hub = host = None
    no_stdin = False
    i = 1
    while i < len(argv):
        word = argv[i]
        if word in ("-n", "--no-stdin"):
            no_stdin = True
        elif word == "--hub" and i + 1 < len(argv):
            i += 1
            hub = argv[i]
        elif word.startswith("--hub="):
            hub = word[len("--hub="):]
        elif word == "--" and host is not None:
            i += 1
            break
        elif word.startswith("-"):
            return None
        elif host is None:
            host = word
        else:
            break
        i += 1
    words = argv[i:]
    if not hub or host is None or not words or host[0] == "-" or not _NAME_CHARS.issuperset(host):
        return None
    return hub, host, words, no_stdin


def run_through_hub(argv: list[str]) -> int | None:
    """Do `argv` here when it is the plain one-host hub run and the hub takes it:
    its exit status. None: not done, nothing ran; the full program must run it."""
    try:
        plain = plain_hub_run(argv)
        if plain is None or not _nothing_else_applies(plain[3]):
            return None
    except Exception:  # a bug in reading the words: nothing has run, and the full program will
        return None
    hub, host, words, _ = plain
    import _socket  # `socket` itself builds enums of every constant: more than this whole run

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(os.path.expanduser(hub))
            if _served_by(sock) != os.geteuid():
                return None  # another user's socket gets nothing; the full program says why
            sock.sendall(_opening(host, " ".join(words)))
        except KeyboardInterrupt:
            return 130
        except Exception:  # OSError: the hub cannot take it; anything else a bug. Nothing ran either way
            return None
        try:
            return _Run(sock, host).serve()
        except BrokenPipeError:
            from shoal.controller.cli.main import EXIT_BROKEN_PIPE, quiet_broken_pipe

            quiet_broken_pipe()
            return EXIT_BROKEN_PIPE
        except Exception as exc:  # a bug, once the command went out: one line, as the full program says one
            return _internal_error(exc)
    finally:
        sock.close()


def _internal_error(exc: Exception) -> int:
    """One line and EXIT_SOFTWARE. Running the command again the long way (the full
    program, which SHOAL_DEBUG_LOG selects) gets round the bug and logs its own."""
    from shoal.controller.cli.main import EXIT_SOFTWARE
    from shoal.controller.debuglog import DEBUG_LOG_ENV

    try:
        sys.stderr.write(f"shoal: internal error: {type(exc).__name__}: {exc} (a bug in shoal's one-host "
                         f"hub run; with {DEBUG_LOG_ENV}=FILE set the full program runs it)\n")
    except (OSError, ValueError):
        pass
    return EXIT_SOFTWARE


def _served_by(sock: Any) -> int:
    """The uid of the process serving the socket (SO_PEERCRED: pid, uid, gid as C ints)."""
    import _socket

    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder)


def _nothing_else_applies(no_stdin: bool) -> bool:
    """No setting outside argv could change the run, and its output is raw with no stdin."""
    env = os.environ
    if env.get("SHOAL_DEBUG_LOG") or env.get("SHOAL_INVENTORY"):
        return False
    xdg = env.get("XDG_CONFIG_HOME", "")
    home = os.path.join(xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".config"), "shoal")
    if os.path.exists(os.path.join(home, "config.toml")) or os.path.exists(os.path.join(home, "inventory.toml")):
        return False
    if sys.stdout is None or sys.stderr is None:
        return False  # fd 1 or 2 closed: the full program says so
    return not _isatty(sys.stdout) and (no_stdin or _isatty(sys.stdin))


def _isatty(stream: Any) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def _frame(type_: int, request_id: int, body: bytes) -> bytes:
    return ((len(body) + 5).to_bytes(4, "big") + bytes((type_,)) + request_id.to_bytes(4, "big") + body)


class _Strict:
    """What `_json.make_scanner` reads from its context: json.loads' settings, NaN refused."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float, parse_int = float, int
    memo: dict[str, Any] = {}

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")


def _not_json(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


# typeshed types the context as a scanner; the C code reads the attributes above from it
_scan = _json.make_scanner(_Strict())  # type: ignore[arg-type]
_encode = _json.make_encoder(None, _not_json, _json.encode_basestring_ascii, None, ":", ",", False, False, False)


def _json_body(obj: dict[str, Any]) -> bytes:
    return "".join(_encode(obj, 0)).encode()


def _loads(body: bytes) -> Any:
    """The JSON value that is all of `body` (whitespace around it allowed); ValueError otherwise."""
    text = body.decode().strip(" \t\n\r")
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        raise ValueError("no JSON value") from None
    if end != len(text):
        raise ValueError("data after the JSON value")
    return value


def _linked(type_: int, body: bytes) -> bytes:
    return _frame(_LINKED, _LINK_ID, bytes((type_,)) + _REQUEST_ID.to_bytes(4, "big") + body)


def _opening(host: str, shell: str) -> bytes:
    """HELLO, LINK_OPEN and the linked EXEC, as the full program would send them."""
    hello = {"protocol": _PROTOCOL_VERSION, "role": "controller", "software": "shoal", "auth": "none",
             "key_id": "", "nonce": "", "max_frame": _MAX_FRAME, "macs": [], "mac": "", "features": [], "name": ""}
    node = {"SHOAL_HOST": host, "SHOAL_NODENUM": "0", "SHOAL_NUMNODES": "1"}
    return (_frame(_HELLO, 0, _json_body(hello)) + _frame(_LINK_OPEN, _LINK_ID, _json_body({"host": host}))
            + _linked(_EXEC, _json_body({"shell": shell, "env": node, "stdin": False, "window": _OUTPUT_WINDOW})))


class _Run:
    """The command's life on the hub connection, from the hub's HELLO to the EXIT."""

    def __init__(self, sock: Any, host: str) -> None:
        self.sock = sock
        self.host = host
        self.buf = bytearray()
        self.linked = False  # LINK_OPENED came: from here on, the command may have run
        self.consumed = 0
        self.interrupts = 0
        self.out = sys.stdout.buffer
        self.err = sys.stderr.buffer

    def serve(self) -> int | None:
        while True:
            try:
                outcome = self._next()
            except KeyboardInterrupt:
                outcome = self._interrupted()
            except BrokenPipeError:
                raise  # our stdout's reader went away: main's business (exit 141)
            except OSError:
                outcome = self._lost("hub connection lost: the hub closed the connection")
            except (ValueError, AttributeError):  # a body that is not the JSON object it must be
                outcome = self._lost("hub connection lost: protocol error: a malformed frame from the hub")
            if outcome != ():
                return outcome  # type: ignore[return-value]

    def _next(self) -> tuple[()] | int | None:
        """Handle one frame; () while the run goes on."""
        while len(self.buf) < _HEAD or len(self.buf) < min(4 + int.from_bytes(self.buf[:4], "big"), _HEAD + _MAX_FRAME):
            data = self.sock.recv(_READ_SIZE)
            if not data:
                return self._lost("hub connection lost: the hub closed the connection")
            self.buf += data
        end = 4 + int.from_bytes(self.buf[:4], "big")
        if end > _HEAD + _MAX_FRAME or end < _HEAD:
            raise ValueError("frame length out of range")
        type_, rid, body = self.buf[4], int.from_bytes(self.buf[5:9], "big"), bytes(self.buf[_HEAD:end])
        del self.buf[:end]
        if type_ == _LINKED and rid == _LINK_ID and len(body) >= 5:
            return self._inner(body[0], body[5:])
        if type_ == _HELLO:
            return () if "hub" in _loads(body).get("features", []) else None
        if type_ == _LINK_OPENED:
            self.linked = True
            return ()
        if not self.linked:
            return None  # refused before the link opened (uid, unknown host, not a hub): nothing ran
        if type_ == _LINK_CLOSE:
            return self._lost(_loads(body).get("reason") or "link closed by the hub")
        if type_ == _ERROR and rid == 0:
            error = _loads(body)
            return self._lost(f"hub connection lost: hub error {error.get('code')}: {error.get('message')}")
        return ()

    def _inner(self, type_: int, body: bytes) -> tuple[()] | int:
        if type_ == _STDOUT or type_ == _STDERR:
            stream = self.out if type_ == _STDOUT else self.err
            stream.write(body)
            stream.flush()
            self.consumed += len(body)
            if self.consumed >= _OUTPUT_WINDOW // 2:
                self._send(_WINDOW, {"bytes": self.consumed})
                self.consumed = 0
            return ()
        if type_ == _EXIT:
            return self._exited(body)
        if type_ == _ERROR:
            return self._report("error", body)
        return ()  # STARTED, WINDOW (stdin's, and we send none)

    def _exited(self, body: bytes) -> int:
        fields = _loads(body)
        simple = not (fields.get("timed_out") or fields.get("idle_timed_out") or fields.get("leftovers_ended"))
        if fields.get("status") == 0 and simple and not self.interrupts:
            return 0
        return self._report("exit", body)

    def _lost(self, reason: str) -> int | None:
        return self._report("lost", reason.encode()) if self.linked else None

    def _send(self, type_: int, fields: dict[str, Any]) -> None:
        try:
            self.sock.sendall(_linked(type_, _json_body(fields)))
        except OSError:
            pass  # the read that follows reports the lost connection

    def _interrupted(self) -> tuple[()] | int:
        """Ctrl-C as in a full run: the first cancels and keeps collecting, the second kills and stops."""
        self.interrupts += 1
        if self.interrupts > 1:
            self._send(_SIGNAL, {"signal": _SIGKILL})
            return 130
        from shoal.controller.term.display import Display

        Display().message("shoal: interrupted, cancelling on every host (Ctrl-C again to stop waiting)")
        self._send(_CANCEL, {"grace": None})
        return ()

    def _report(self, kind: str, payload: bytes) -> int:
        """Anything but a plain exit 0: the full program's Result, outcome line and status."""
        from shoal.controller.cli.run import report_leftovers
        from shoal.controller.term.display import Display
        from shoal.controller.term.output import report_failure
        from shoal.protocol.errors import ProtocolError

        try:
            result = self._result(kind, payload)
        except ProtocolError as exc:  # an EXIT or ERROR the full program refuses too: its hub connection fails
            result = self._result("lost", f"hub connection lost: protocol error: {exc}".encode())
        display = Display()
        report_failure(display, result)
        report_leftovers(display, [result])
        return 130 if self.interrupts else result.status

    def _result(self, kind: str, payload: bytes) -> Result:
        from shoal.controller.outcome import Outcome
        from shoal.controller.remote import result_from_exit
        from shoal.controller.result import UNREACHABLE, Result
        from shoal.protocol.codec import decode_body
        from shoal.protocol.messages import Error, Exit, MessageType

        if kind == "exit":
            exit_msg = decode_body(MessageType.EXIT, _REQUEST_ID, payload)
            assert isinstance(exit_msg, Exit)
            return result_from_exit(self.host, exit_msg, None, None)
        if kind == "error":
            error = decode_body(MessageType.ERROR, _REQUEST_ID, payload)
            assert isinstance(error, Error)
            return Result(self.host, error.status if error.status is not None else 1, error=error.message,
                          error_code=error.code)
        return Result(self.host, UNREACHABLE, error=payload.decode(), error_code=Outcome.CONNECTION_LOST)
