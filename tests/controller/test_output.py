"""Output handlers fed a run's events directly, asserting the exact bytes a user sees.

End-to-end runs through agents are in test_gather.py and test_run_cli.py; here each
mode's formatting rules are pinned down, including the progress line on a real pty.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pty
import urllib.parse
from pathlib import Path

import pytest

from shoal.controller.term.display import Display
from shoal.controller.term.outdir import OutdirTee, host_file_stem, prepare_outdir
from shoal.controller.term.output import (
    LINE_CAP,
    FailedOnlyHandler,
    GatherHandler,
    JsonHandler,
    RawHandler,
    StreamHandler,
    choose_output,
    exit_record,
)
from shoal.controller.term.outputcap import GATHER_MAX_OUTPUT, TAIL_SHARE, OutputCap, gap_line
from shoal.controller.term.progress import PROGRESS_MIN_HOSTS, ProgressHandler
from shoal.controller.nodeset import natural_key
from shoal.controller.outcome import HOST_OUTCOMES
from shoal.controller.result import UNREACHABLE, Result
from shoal.controller.term.summary import folded, summary_line
from shoal.protocol.errors import ConfigError
from tests.waiting import wait_for, wait_for_async


def display() -> tuple[Display, io.BytesIO, io.BytesIO]:
    out, err = io.BytesIO(), io.BytesIO()
    return Display(out, err, color=False), out, err


def ok(host: str) -> Result:
    return Result(host, 0, code=0, duration=0.5)


def test_stream_aligns_prefixes_and_joins_partial_lines() -> None:
    d, out, err = display()
    h = StreamHandler(d, ["a", "web10"])
    h.on_output("a", "stdout", b"one\ntw")
    h.on_output("web10", "stderr", b"oops\n")
    h.on_output("a", "stdout", b"o\nlast")
    h.on_result(ok("a"))
    assert out.getvalue() == b"a:     one\na:     two\na:     last\n"
    assert err.getvalue() == b"web10: oops\n"


def test_stream_cuts_an_endless_line_at_the_cap() -> None:
    d, out, _ = display()
    h = StreamHandler(d, ["h"])
    h.on_output("h", "stdout", b"x" * (LINE_CAP + 10))
    assert out.getvalue() == b"h: " + b"x" * LINE_CAP + b"\n"
    h.on_result(ok("h"))
    assert out.getvalue().endswith(b"h: " + b"x" * 10 + b"\n")


def test_raw_passes_bytes_through() -> None:
    d, out, err = display()
    h = RawHandler(d)
    h.on_output("h", "stdout", b"\x00\xff no newline")
    h.on_output("h", "stderr", b"e")
    assert (out.getvalue(), err.getvalue()) == (b"\x00\xff no newline", b"e")


def test_gather_prints_each_distinct_output_once_under_its_folded_hosts() -> None:
    d, out, err = display()
    h = GatherHandler(d)
    hosts = [f"web{i:02d}" for i in range(1, 9)]
    for host in hosts:  # chunks split mid-line, in an order unlike the hosts'
        odd = host in ("web03", "web06")
        h.on_output(host, "stdout", b"Linux 6." + (b"2" if odd else b"1"))
        h.on_output(host, "stdout", b"\nup\n")
    h.on_output("web08", "stderr", b"warning: disk")
    for host in reversed(hosts):
        h.on_result(Result(host, 3, code=3) if host == "web06" else ok(host))
    h.close()
    rule = b"---------------\n"
    assert out.getvalue() == (
        rule + b"web[01-02,04-05,07-08] (6)\n" + rule + b"Linux 6.1\nup\n"
        + rule + b"web[03,06] (2)\n" + rule + b"Linux 6.2\nup\n")
    assert err.getvalue() == (rule + b"web08 (1) (stderr)\n" + rule + b"warning: disk\n"
                              + b"shoal: web06: failed (code 3)\n")


def test_gather_lists_failures_by_reason_and_prints_nothing_for_silent_hosts() -> None:
    d, out, err = display()
    h = GatherHandler(d)
    h.on_result(Result("db2", UNREACHABLE, error="connection refused", error_code="unreachable"))
    h.on_result(Result("db1", UNREACHABLE, error="connection refused", error_code="unreachable"))
    h.on_result(Result("app", 137, signal=9))
    h.on_result(ok("web1"))
    h.close()
    assert out.getvalue() == b""
    assert err.getvalue() == b"shoal: app: signal (KILL)\nshoal: db[1-2]: unreachable: connection refused\n"


def json_lines(data: bytes) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in data.decode().splitlines()]


def test_json_events_follow_the_schema() -> None:
    d, out, _ = display()
    clock = iter([100.0, 100.5, 101.0, 101.25, 102.0, 102.5, 103.0])
    h = JsonHandler(d, clock=lambda: next(clock))
    h.on_start("h1")
    h.on_output("h1", "stdout", b"caf\xc3")   # a UTF-8 character split across chunks
    h.on_output("h1", "stdout", b"\xa9\nta")
    h.on_result(Result("h1", 0, code=0, duration=0.25))
    h.on_result(Result("h2", UNREACHABLE, error="cannot resolve host: x", error_code="unreachable"))
    h.close()
    events = json_lines(out.getvalue())
    assert events == [
        {"event": "start", "host": "h1", "t": 0.5},
        {"event": "output", "host": "h1", "stream": "stdout", "data": "café\n", "t": 1.0},
        {"event": "output", "host": "h1", "stream": "stdout", "data": "ta", "t": 1.25},
        {"event": "exit", "host": "h1", "status": 0, "code": 0, "signal": None, "timed_out": False,
         "cancelled": False, "duration": 0.25, "error": None, "error_code": None, "ok": True,
         "unreachable": False, "leftovers_ended": None, "outcome": "ok", "t": 1.25 + 0.75},
        {"event": "exit", "host": "h2", "status": 255, "code": None, "signal": None, "timed_out": False,
         "cancelled": False, "duration": 0.0, "error": "cannot resolve host: x",
         "error_code": "unreachable", "ok": False, "unreachable": True, "leftovers_ended": None,
         "outcome": "unreachable", "t": 2.5},
        {"event": "summary", "status": 255, "ok": ["h1"], "failed": [], "unreachable": ["h2"], "skipped": [],
         "t": 3.0},
    ]


def test_output_cap_keeps_whole_lines_of_head_and_tail_around_one_gap_line() -> None:
    d, out, _ = display()
    limit = 10 * TAIL_SHARE  # 10 bytes of tail, the rest head
    h = OutputCap(GatherHandler(d), limit)
    data = b"".join(b"line %03d\n" % i for i in range(100))  # 9 bytes a line
    for host in ("a", "b"):
        for i in range(0, len(data), 7):
            h.on_output(host, "stdout", data[i:i + 7])
    h.on_output("c", "stdout", b"short\n")
    for host in ("a", "b", "c"):
        h.on_result(ok(host))
    h.close()
    rule = b"---------------\n"
    kept_head, kept_tail = data[:(limit - 10) // 9 * 9], data[-9:]  # whole lines only
    gap = gap_line(len(data) - len(kept_head) - len(kept_tail))
    assert gap == f"[... {len(data) - len(kept_head) - 9} B not shown ...]\n".encode()
    assert out.getvalue() == (rule + b"a[-b] (2)\n".replace(b"a[-b]", b"a,b") + rule + kept_head + gap + kept_tail
                              + rule + b"c (1)\n" + rule + b"short\n")


def test_output_cap_cuts_one_endless_line_by_bytes() -> None:
    d, out, _ = display()
    limit = 10 * TAIL_SHARE
    h = OutputCap(RawHandler(d), limit)
    h.on_output("a", "stdout", b"x" * (limit + 100))
    h.on_result(ok("a"))
    assert out.getvalue() == b"x" * (limit - 10) + b"\n" + gap_line(100) + b"x" * 10


def test_stream_cuts_an_endless_line_between_characters() -> None:
    d, out, _ = display()
    h = StreamHandler(d, ["h"])
    text = "€" * LINE_CAP  # three bytes a character: the cap falls inside one
    h.on_output("h", "stdout", text.encode())  # no newline yet: printed in pieces of about LINE_CAP
    h.on_output("h", "stdout", b"\n")
    h.on_result(ok("h"))
    shown = out.getvalue().decode()
    assert "\ufffd" not in shown and shown.replace("h: ", "").replace("\n", "") == text


def _joined(events: list[dict]) -> bytes:  # type: ignore[type-arg]
    return b"".join(base64.b64decode(e["data_b64"]) if "data_b64" in e else e["data"].encode() for e in events)


def test_json_keeps_valid_lines_as_text_next_to_an_invalid_one() -> None:
    d, out, _ = display()
    h = JsonHandler(d)
    h.on_output("h", "stdout", b"hi\nthere\n\xff bad\nbye\r\n")
    h.on_result(ok("h"))
    pieces = [{k: e[k] for k in e if k.startswith("data")} for e in json_lines(out.getvalue()) if e["event"] == "output"]
    assert pieces == [{"data": "hi\nthere\n"}, {"data_b64": base64.b64encode(b"\xff bad\n").decode()},
                      {"data": "bye\r\n"}]


def test_json_long_line_cut_at_the_cap_never_splits_a_character() -> None:
    d, out, _ = display()
    h = JsonHandler(d)
    text = "€" * (LINE_CAP // 3 * 4) + "\n"  # one line over the cap, three bytes a character
    data = text.encode()
    for i in range(0, len(data), 4096):  # 4096 is no multiple of 3: chunks end mid-character
        h.on_output("h", "stdout", data[i:i + 4096])
    h.on_result(ok("h"))
    pieces = [e for e in json_lines(out.getvalue()) if e["event"] == "output"]
    assert len(pieces) > 1 and all("data" in e for e in pieces)
    assert "".join(e["data"] for e in pieces) == text


def test_json_binary_output_is_base64_and_concatenates_to_the_exact_bytes() -> None:
    d, out, _ = display()
    h = JsonHandler(d)
    payload = bytes(range(256)) * 3
    for i in range(0, len(payload), 100):
        h.on_output("h", "stderr", payload[i:i + 100])
    h.on_result(ok("h"))
    pieces = [e for e in json_lines(out.getvalue()) if e["event"] == "output"]
    assert all(e["stream"] == "stderr" for e in pieces)
    assert any("data_b64" in e for e in pieces)
    joined = b"".join(base64.b64decode(e["data_b64"]) if "data_b64" in e else e["data"].encode()
                      for e in pieces)
    assert joined == payload


def test_failed_only_lists_failed_hosts_with_reasons() -> None:
    d, out, _ = display()
    h = FailedOnlyHandler(d)
    h.on_output("web2", "stdout", b"not shown\n")
    for r in (ok("web1"), Result("web10", 1, code=1), Result("web2", UNREACHABLE, error="connection refused",
                                                             error_code="unreachable")):
        h.on_result(r)
    h.close()
    assert out.getvalue() == b"web2: unreachable: connection refused\nweb10: failed (code 1)\n"


def test_failed_only_json_prints_exit_records() -> None:
    d, out, _ = display()
    h = FailedOnlyHandler(d, as_json=True)
    h.on_result(ok("a"))
    h.on_result(Result("b", 2, code=2))
    h.close()
    [record] = json_lines(out.getvalue())
    assert (record["event"], record["host"], record["status"], record["ok"]) == ("exit", "b", 2, False)


def test_summary_line_counts_and_folds() -> None:
    results = [ok("web1"), ok("web2"), Result("web3", 1, code=1),
               Result("db1", UNREACHABLE, error="connection refused", error_code="unreachable"),
               Result("db2", UNREACHABLE, error="connection lost", error_code="connection_lost")]
    assert summary_line(results, 1.234) == "shoal: 2 ok, 1 failed (web3), 1 unreachable (db1), 1 lost (db2) in 1.23s"
    assert summary_line([ok("a")]) == "shoal: 1 ok, 0 failed, 0 unreachable"
    assert summary_line([ok("a"), Result("b", 143, signal=15)]) == "shoal: 1 ok, 0 failed, 1 signal (b), 0 unreachable"


def every_outcome() -> list[Result]:
    """One host per outcome of the vocabulary, built as the library builds them."""
    return [
        ok("ok1"),
        Result("failed1", 3, code=3),
        Result("failed2", 127, error="nosuch: command not found", error_code="not_found"),
        Result("signal1", 137, signal=9),
        Result("timed1", UNREACHABLE, signal=15, timed_out=True, error="timed out after 10s",
               error_code="timeout", limit=10.0),
        Result("idle1", UNREACHABLE, signal=15, error="idle timeout: no output for 2.5s",
               error_code="idle_timeout", limit=2.5),
        Result("cancelled1", 130, signal=2, cancelled=True),
        Result("down1", UNREACHABLE, error="connection refused", error_code="unreachable"),
        Result("auth1", UNREACHABLE, error="authentication failed", error_code="auth_failed"),
        Result("denied1", 126, error="permission denied for key k1: command not allowed",
               error_code="permission_denied"),
        Result("lost1", UNREACHABLE, error="connection lost", error_code="connection_lost"),
        Result("skipped1", 1, error="skipped", error_code="skipped"),
    ]


def test_every_text_output_names_the_outcome_json_gives() -> None:
    results = every_outcome()
    assert {str(r.outcome) for r in results} == {str(o) for o in HOST_OUTCOMES}
    d, out, _ = display()
    listing = FailedOnlyHandler(d)
    d2, _, err = display()
    gather = GatherHandler(d2)
    for r in results:
        listing.on_result(r)
        gather.on_result(r)
    listing.close()
    gather.close()
    lines = dict(line.split(": ", 1) for line in out.getvalue().decode().splitlines())
    assert lines == {
        "failed1": "failed (code 3)", "failed2": "failed: nosuch: command not found",
        "signal1": "signal (KILL)", "timed1": "timed_out (after 10s)", "idle1": "idle_timeout (no output for 2.5s)",
        "cancelled1": "cancelled", "down1": "unreachable: connection refused",
        "auth1": "auth_failed: authentication failed",
        "denied1": "denied: permission denied for key k1: command not allowed",
        "lost1": "lost: connection lost", "skipped1": "skipped",
    }
    for r in results[1:]:  # the word each line starts with is the JSON record's outcome
        assert lines[r.host].split(" ")[0].rstrip(":") == exit_record(r)["outcome"]
    assert err.getvalue().decode().splitlines() == [f"shoal: {h}: {t}" for h, t in sorted(
        lines.items(), key=lambda item: natural_key(item[0]))]
    assert summary_line(results, 2.0) == (
        "shoal: 1 ok, 2 failed (failed[1-2]), 1 signal (signal1), 1 timed_out (timed1), 1 idle_timeout (idle1), "
        "1 cancelled (cancelled1), 1 unreachable (down1), 1 auth_failed (auth1), 1 denied (denied1), "
        "1 lost (lost1), 1 skipped (skipped1) in 2.00s")


def test_a_signal_without_a_name_and_a_timeout_without_its_limit() -> None:
    assert Result("h", 128 + 99, signal=99).outcome_text == "signal (99)"
    attach = Result("h", UNREACHABLE, timed_out=True, error="timed out", error_code="timeout")
    assert attach.outcome_text == "timed_out"


def test_summary_host_sets_are_capped_to_one_line() -> None:
    hosts = [f"web{i:03d}" for i in range(1, 500, 3)]
    text = folded(hosts, width=40)
    shown, _, more = text.partition(" +")
    assert len(shown) <= 40 and more.endswith(" more")
    assert len(shown.split(",")) + int(more.split()[0]) == len(hosts)
    assert folded(["a", "b"], width=40) == "a,b"


@pytest.mark.parametrize("host", ["web01", "web01:9000", "[::1]:8470", "unix:/run/a.sock", "a%b", ".x"])
def test_host_file_names_are_safe_and_reversible(host: str) -> None:
    stem = host_file_stem(host)
    assert "/" not in stem and not stem.startswith(".")
    assert urllib.parse.unquote(stem) == host


def test_host_file_names_of_long_names_stay_short_and_distinct() -> None:
    a, b = host_file_stem("unix:/" + "a" * 300), host_file_stem("unix:/" + "a" * 299 + "b")
    assert a != b and len(a) <= 200 and len(b) <= 200


def test_outdir_tee_writes_files_and_passes_events_on(tmp_path: Path) -> None:
    d, out, _ = display()
    h = OutdirTee(StreamHandler(d, ["[::1]:8470"]), prepare_outdir(str(tmp_path / "new" / "dir")))
    h.on_start("[::1]:8470")
    h.on_output("[::1]:8470", "stdout", b"\x00bin\n")
    h.on_result(ok("[::1]:8470"))
    h.on_result(Result("gone", UNREACHABLE, error="connection refused", error_code="unreachable"))
    h.close()
    files = sorted(p.name for p in (tmp_path / "new" / "dir").iterdir())
    assert files == ["%5B::1%5D:8470.err", "%5B::1%5D:8470.out"]
    assert (tmp_path / "new" / "dir" / "%5B::1%5D:8470.out").read_bytes() == b"\x00bin\n"
    assert (tmp_path / "new" / "dir" / "%5B::1%5D:8470.err").read_bytes() == b""
    assert out.getvalue() == b"[::1]:8470: \\x00bin\n"  # the file keeps the NUL, the terminal sees it escaped


def test_outdir_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create output directory"):
        prepare_outdir(str(tmp_path / "file" / "sub"))


async def test_choose_output_picks_one_handler_per_mode(tmp_path: Path) -> None:
    d, _, _ = display()  # not a TTY: no progress, raw for one host
    assert isinstance(choose_output(d, ["a"], None), RawHandler)
    assert isinstance(choose_output(d, ["a", "b"], None), StreamHandler)
    assert isinstance(choose_output(d, ["a"], "stream"), StreamHandler)
    capped = choose_output(d, ["a", "b"], "gather")  # gather holds output: capped by default
    assert isinstance(capped, OutputCap) and isinstance(capped.inner, GatherHandler)
    assert capped.head_limit + capped.tail_limit == GATHER_MAX_OUTPUT
    assert isinstance(choose_output(d, ["a", "b"], "gather", max_output=0), GatherHandler)
    assert isinstance(choose_output(d, ["a", "b"], "json"), JsonHandler)
    assert isinstance(choose_output(d, ["a", "b"], "gather", failed_only=True), FailedOnlyHandler)
    tee = choose_output(d, ["a", "b"], "gather", outdir=str(tmp_path))
    assert isinstance(tee, OutdirTee) and isinstance(tee.inner, OutputCap)  # the files get every byte
    many = [f"h{i}" for i in range(PROGRESS_MIN_HOSTS)]
    assert isinstance(choose_output(d, many, "json"), JsonHandler)


def read_some(fd: int, seen: bytearray) -> bytearray:
    """Add what the pty master holds now to `seen`; return it."""
    os.set_blocking(fd, False)
    with contextlib.suppress(BlockingIOError):
        seen += os.read(fd, 4096)
    return seen


async def test_progress_line_on_a_tty_is_wiped_before_output_and_at_close() -> None:
    master, slave = pty.openpty()
    out = io.BytesIO()
    with open(slave, "wb", buffering=0) as err:
        d = Display(out, err, color=False)  # type: ignore[arg-type]
        hosts = [f"n{i:02d}" for i in range(PROGRESS_MIN_HOSTS)]
        h = choose_output(d, hosts, "stream")
        assert isinstance(h, ProgressHandler)
        h.on_start("n00")
        h.on_result(Result("n01", UNREACHABLE, error="connection refused", error_code="unreachable"))
        seen = bytearray()
        # the loop drives the redraws, so it runs between reads
        await wait_for_async(lambda: b"running" in read_some(master, seen), what="the progress line")
        assert b"\r\x1b[Kshoal: 1/10 done, 1 running, 1 failed, " in seen
        h.on_output("n00", "stdout", b"line\n")
        h.on_result(ok("n00"))
        h.close()
        d.err(b"END\n")
        wait_for(lambda: b"END" in read_some(master, seen), what="END after the progress line")
        assert seen.partition(b"END")[0].endswith(b"\r\x1b[K")  # nothing left drawn
    os.close(master)
    assert out.getvalue() == b"n00: line\n"


async def test_no_progress_line_when_stderr_is_not_a_tty() -> None:
    d, _, err = display()
    h = choose_output(d, [f"n{i:02d}" for i in range(50)], "gather")
    assert not isinstance(h, ProgressHandler)
    h.close()
    assert err.getvalue() == b""
