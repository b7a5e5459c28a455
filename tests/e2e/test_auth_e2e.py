"""The authenticated channel through real sockets, attacked the way issue 3 lists.

Every attack uses a command that would create a file, so "the agent did not run
it" is checked on the file system, and the audit log says what the agent saw.
The attacker is `tests.rawpeer.RawController`: our own protocol code on a blocking
socket, with full control over which bytes go out.
"""

from __future__ import annotations

import logging
import os
import re
import select
import subprocess
from pathlib import Path
from typing import Callable, Iterator

import pytest

from shoal.agent.config import KeyPolicy
from shoal.hostio.keyfile import write_key_file
from shoal.controller.cli.main import main as shoal_main
from shoal.protocol.connection import Connection, Role
from shoal.protocol import handshake
from shoal.protocol.frames import frame_head
from shoal.protocol.handshake import SharedKey
from shoal.protocol.codec import encode_body
from shoal.protocol.messages import Auth, Exec, Exit, Hello, Message, MessageType, Ping, Pong, Stdin, StdinEof, Stdout
from tests.agents import AgentThread
from tests.rawpeer import DEADLINE, RawController, audit_events, connect, split_frames, untagged_frames
from tests.programs import SHOAL, SHOAL_AGENT

KEY_HEX_LEN = 64


@pytest.fixture(autouse=True)
def close_peers() -> Iterator[None]:
    yield
    RawController.close_all()


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, tuple[SharedKey, Path]]:
    out = {}
    for name in ("admin", "other", "monitor"):
        path = tmp_path / f"{name}.key"
        out[name] = (write_key_file(path), path)
    return out


@pytest.fixture
def agent(start_agents: Callable[..., AgentThread], tmp_path: Path,
          keys: dict[str, tuple[SharedKey, Path]]) -> AgentThread:
    """An agent that accepts the admin key only, audits to tmp_path/audit.jsonl."""
    return start_agents(keys=[keys["admin"][0]], audit_log=str(tmp_path / "audit.jsonl"),
                        **{"limits.handshake_timeout": 1.0})


def audit(tmp_path: Path, **match: object) -> list[dict[str, object]]:
    return audit_events(tmp_path / "audit.jsonl", **match)


def touch(path: Path, rid: int = 1) -> Exec:
    return Exec(rid, shell=f"touch {path}")


@pytest.fixture(params=handshake.SUPPORTED_MACS)
def mac(request: pytest.FixtureRequest) -> str:
    """A frame MAC to force: the raw controller offers only this one."""
    return str(request.param)


def open_session(agent: AgentThread, key: SharedKey, mac: str = handshake.MAC_AES256_GMAC) -> RawController:
    peer = RawController(agent.addresses[0], key)
    peer.conn.macs = [mac]
    assert peer.handshake().mac == mac
    return peer


def assert_not_run(tmp_path: Path, peer: RawController, *files: Path) -> None:
    """The agent ran nothing for this peer: no exec audited, no file created."""
    assert audit(tmp_path, event="exec", peer=peer.peer) == []
    for f in files:
        assert not f.exists(), f"{f} was created: the agent ran the command"


# -- keys: wrong, missing on one side ---------------------------------------


def test_wrong_key_is_authentication_failed_for_that_host(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    other, other_path = keys["other"]
    caplog.set_level(logging.WARNING, logger="shoal.audit")
    status = shoal_main(["run", "-n", agent.targets_spec(), "--key-file", str(other_path), "--", "touch", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert status == 255
    assert err == f"shoal: {agent.addresses[0]}: auth_failed: authentication failed\n"
    assert not (tmp_path / "f").exists()
    [event] = audit(tmp_path, event="auth_failed")
    assert event["key_id"] == other.key_id and event["peer"].startswith("127.0.0.1:")
    logged = caplog.text
    assert other.key_id in logged and event["peer"] in logged
    for secret in (other.secret.hex(), keys["admin"][0].secret.hex()):
        assert secret not in logged and secret not in (tmp_path / "audit.jsonl").read_text()


def test_key_on_agent_only_is_named_on_both_sides(
        agent: AgentThread, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.audit")
    status = shoal_main(["run", "-n", agent.targets_spec(), "--", "touch", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert status == 255
    assert err == (f"shoal: {agent.addresses[0]}: auth_failed: this agent requires a key but the controller "
                   "offered none\n")
    assert "requires a key but the controller offered none" in caplog.text
    assert not (tmp_path / "f").exists()


def test_key_on_controller_only_is_named_on_both_sides(
        keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shoal.audit")
    with AgentThread(1) as plain:
        status = shoal_main(["run", "-n", plain.targets_spec(), "--key-file", str(keys["admin"][1]),
                             "--", "touch", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert status == 255
    assert err == (f"shoal: {plain.addresses[0]}: auth_failed: the controller offered a key but this agent has "
                   "none configured\n")
    assert "offered a key but this agent has none configured" in caplog.text
    assert not (tmp_path / "f").exists()


def test_each_frame_mac_carries_a_whole_command_both_ways(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], mac: str) -> None:
    """A real agent speaks both MACs: stdin in, 1 MiB of output out, under each."""
    peer = open_session(agent, keys["admin"][0], mac)
    peer.conn.send(Exec(1, shell="cat; head -c 1048576 /dev/zero", stdin=True))
    peer.conn.send(Stdin(1, b"typed\n"))
    peer.conn.send(StdinEof(1))
    peer.flush()
    exit_, seen = collect(peer, 1)
    out = b"".join(m.data for m in seen if isinstance(m, Stdout))
    assert exit_.code == 0 and out == b"typed\n" + bytes(1 << 20)
    last = split_frames(peer.received)[-1]  # the EXIT, sealed: 9-byte head, body, 16-byte tag
    assert len(last) == 9 + len(encode_body(exit_)) + 16


def collect(peer: RawController, rid: int) -> tuple[Exit, list[Message]]:
    """This request's frames up to its EXIT."""
    seen: list[Message] = []
    while True:
        event = peer.next_event()
        assert event is not None, f"agent closed the connection; got {seen}"
        if isinstance(event, Exit) and event.request_id == rid:
            return event, seen
        if isinstance(event, Message) and event.request_id == rid:
            seen.append(event)


def test_default_controller_negotiates_gmac_with_a_real_agent(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]]) -> None:
    peer = RawController(agent.addresses[0], keys["admin"][0])
    assert peer.handshake().mac == handshake.MAC_AES256_GMAC
    assert peer.conn.peer_hello is not None and peer.conn.peer_hello.mac == handshake.MAC_AES256_GMAC


def test_right_key_runs_the_command(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = shoal_main(["run", "-n", agent.targets_spec(), "--key-file", str(keys["admin"][1]),
                         "--", "touch", str(tmp_path / "f")])
    assert status == 0, capsys.readouterr().err
    assert (tmp_path / "f").exists()


# -- replay, reorder, reflection -------------------------------------------


def test_frames_captured_from_one_session_do_nothing_in_another(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path) -> None:
    target = tmp_path / "replayed"
    first = open_session(agent, keys["admin"][0])
    first.run(touch(target))
    first.close()
    assert target.exists()  # the captured EXEC really creates the file
    target.unlink()
    exec_frame = first.sent[2]  # HELLO, AUTH, then the sealed EXEC

    # The whole session replayed on a new socket: the stale proof fails.
    replay = RawController(agent.addresses[0])
    replay.send_raw(b"".join(first.sent))
    assert replay.wait_closed()
    kinds = [msg for _, msg in untagged_frames(replay.received)]
    assert isinstance(kinds[0], Hello) and kinds[-1].code == "auth_failed"  # type: ignore[attr-defined]
    assert_not_run(tmp_path, replay, target)

    # The EXEC injected into a fresh, genuinely authenticated session: its MAC fails.
    fresh = open_session(agent, keys["admin"][0])
    fresh.send_raw(exec_frame)
    assert fresh.rejected().code == "bad_mac"
    assert_not_run(tmp_path, fresh, target)
    assert audit(tmp_path, event="protocol_error", peer=fresh.peer, code="bad_mac")


def test_frame_replayed_within_a_session_is_refused(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, mac: str) -> None:
    log = tmp_path / "runs"
    peer = open_session(agent, keys["admin"][0], mac)
    frame = peer.queue(Exec(1, shell=f"echo run >> {log}"))
    peer.send_raw(frame)
    while not audit(tmp_path, event="exit", peer=peer.peer):
        assert peer.next_event() is not None
    peer.send_raw(frame)
    assert peer.rejected().code == "bad_mac"
    assert log.read_text() == "run\n"
    assert len(audit(tmp_path, event="exec", peer=peer.peer)) == 1


def test_reordered_frames_are_refused(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                      tmp_path: Path, mac: str) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    peer = open_session(agent, keys["admin"][0], mac)
    frame1 = peer.queue(touch(first, 1))
    frame2 = peer.queue(touch(second, 2))
    peer.send_raw(frame2 + frame1)
    assert peer.rejected().code == "bad_mac"
    assert_not_run(tmp_path, peer, first, second)


def test_agent_frame_reflected_back_to_it_is_refused(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path, mac: str) -> None:
    peer = open_session(agent, keys["admin"][0], mac)
    peer.run(Exec(1, shell="echo out"))  # controller sent seq 0; agent sent STARTED, STDOUT, EXIT
    agent_frames = split_frames(peer.received)
    tagged = agent_frames[2:]  # after the agent's untagged HELLO and AUTH
    stdout = tagged[1]
    assert stdout[4] == MessageType.STDOUT
    # The agent's frame number 1 arrives as the controller's frame number 1: only
    # the direction differs, and the direction's own key catches it.
    peer.send_raw(stdout)
    assert peer.rejected().code == "bad_mac"
    assert audit(tmp_path, event="protocol_error", peer=peer.peer, code="bad_mac")


def test_pong_reflected_back_to_the_agent_is_refused(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]]) -> None:
    peer = open_session(agent, keys["admin"][0])
    peer.conn.send(Ping(0, t0=1.0))
    peer.flush()
    assert isinstance(peer.next_event(), Pong)
    peer.send_raw(split_frames(peer.received)[-1])
    assert peer.rejected().code == "bad_mac"


# -- tampering and truncation ------------------------------------------------


@pytest.mark.parametrize("where", ["body", "type", "request id", "length", "tag"])
def test_flipped_bit_is_refused(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                tmp_path: Path, where: str, mac: str) -> None:
    target = tmp_path / "flipped"
    peer = open_session(agent, keys["admin"][0], mac)
    frame = bytearray(peer.queue(touch(target)))
    offset = {"body": 20, "type": 4, "request id": 8, "length": 3, "tag": len(frame) - 1}[where]
    # A longer length would only leave the agent waiting for more bytes, so for
    # the length field clear its lowest set bit: the frame then ends too early.
    frame[offset] ^= frame[offset] & -frame[offset] if where == "length" else 0x01
    peer.send_raw(bytes(frame))
    assert peer.rejected().code == "bad_mac"
    assert_not_run(tmp_path, peer, target)


def test_truncated_frame_is_refused(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                    tmp_path: Path) -> None:
    target = tmp_path / "truncated"
    peer = open_session(agent, keys["admin"][0])
    frame = peer.queue(touch(target))
    peer.send_raw(frame[:-7])
    peer.sock.shutdown(1)
    assert peer.rejected().code == "truncated"
    assert_not_run(tmp_path, peer, target)


def test_frame_without_mac_is_refused(agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]],
                                      tmp_path: Path) -> None:
    target = tmp_path / "unsealed"
    peer = open_session(agent, keys["admin"][0])
    body = encode_body(touch(target))
    peer.send_raw(frame_head(MessageType.EXEC, 1, len(body), False) + body)
    assert peer.rejected().code in ("bad_mac", "bad_frame")
    assert_not_run(tmp_path, peer, target)


# -- nothing before the handshake completes ------------------------------------


def unsealed_exec(path: Path) -> bytes:
    body = encode_body(touch(path))
    return frame_head(MessageType.EXEC, 1, len(body), False) + body


def test_exec_as_the_first_frame_never_runs(agent: AgentThread, tmp_path: Path) -> None:
    target = tmp_path / "early"
    peer = RawController(agent.addresses[0])
    peer.send_raw(unsealed_exec(target))
    assert peer.rejected().code == "out_of_order"
    assert_not_run(tmp_path, peer, target)


def test_exec_between_hello_and_auth_never_runs(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path) -> None:
    target = tmp_path / "early"
    peer = RawController(agent.addresses[0], keys["admin"][0])
    peer.conn.start()
    peer.send_raw(peer.take() + unsealed_exec(target))  # HELLO and EXEC in one segment
    assert peer.rejected().code == "out_of_order"
    assert_not_run(tmp_path, peer, target)


def test_exec_behind_a_forged_proof_never_runs(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path) -> None:
    """An attacker knows the key id (it is public) but not the key."""
    target = tmp_path / "forged"
    admin = keys["admin"][0]
    peer = RawController(agent.addresses[0])
    hello = Hello(0, role="controller", software="x", auth="hmac-sha256", key_id=admin.key_id,
                  nonce=bytes(range(32)).hex(), max_frame=1 << 20)
    frames = b""
    for msg in (hello, Auth(0, proof="00" * 32)):
        body = encode_body(msg)
        frames += frame_head(msg.TYPE, 0, len(body), False) + body
    # Whatever MAC the attacker guesses, the EXEC sits behind a proof that fails.
    peer.send_raw(frames + unsealed_exec(target) + bytes(32))
    assert peer.wait_closed()
    assert untagged_frames(peer.received)[-1][1].code == "auth_failed"  # type: ignore[attr-defined]
    assert_not_run(tmp_path, peer, target)
    [event] = audit(tmp_path, event="auth_failed", peer=peer.peer)
    assert event["key_id"] == admin.key_id


# -- the handshake deadline ----------------------------------------------------


def test_silent_connection_is_dropped_at_the_handshake_deadline(agent: AgentThread, tmp_path: Path) -> None:
    peer = RawController(agent.addresses[0])
    assert peer.wait_closed(), "agent kept an unauthenticated socket open"
    assert audit(tmp_path, event="refused", peer=peer.peer, reason="handshake timeout")


def test_slowloris_hello_is_dropped_before_it_completes(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path) -> None:
    """One byte of HELLO every 50 ms never buys more time than the deadline (1 s here)."""
    sock = connect(agent.addresses[0])
    peer_name = "%s:%d" % sock.getsockname()[:2]
    hello_maker = Connection(Role.CONTROLLER, key=keys["admin"][0])
    hello_maker.start()
    hello = b"".join(hello_maker.data_to_send())
    sent, closed = 0, False
    while sent < len(hello) and not closed:
        try:
            sock.send(hello[sent:sent + 1])
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        sent += 1
        readable, _, _ = select.select([sock], [], [], 0.05)
        if readable:
            closed = sock.recv(4096) == b""
    sock.close()
    assert closed, f"agent still listening after all {len(hello)} bytes dripped in"
    assert sent < len(hello)
    assert audit(tmp_path, event="refused", peer=peer_name, reason="handshake timeout")


# -- authorization: a monitor key ---------------------------------------------


@pytest.fixture
def policy_agent(start_agents: Callable[..., AgentThread], tmp_path: Path,
                 keys: dict[str, tuple[SharedKey, Path]]) -> AgentThread:
    """An agent configured with an admin key and a monitor key that may run two commands."""
    policies = (
        KeyPolicy(name="admin", file=str(keys["admin"][1]), allow_all=True),
        KeyPolicy(name="monitor", file=str(keys["monitor"][1]), commands=("uptime", "echo ok", "echo status *"),
                  metrics=True),
    )
    return start_agents(policies=policies, audit_log=str(tmp_path / "audit.jsonl"))


def test_denied_command_under_monitor_key_runs_nothing_and_is_audited(
        policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "denied"
    spec = policy_agent.targets_spec()
    monitor_key, monitor_path = keys["monitor"]
    status = shoal_main(["run", "-n", spec, "--key-file", str(monitor_path), "--", "touch", str(target)])
    err = capsys.readouterr().err
    assert status == 126
    assert err == (f"shoal: {spec}: denied: permission denied for key {monitor_key.key_id}: command not allowed\n")
    assert not target.exists()
    [denied] = audit(tmp_path, event="denied")
    assert denied["key_id"] == monitor_key.key_id and denied["what"] == "exec"
    assert denied["argv"] == ["/bin/sh", "-c", f"touch {target}"]
    assert audit(tmp_path, event="exec") == []

    # The listed command runs under the monitor key; the admin key may run anything.
    assert shoal_main(["run", "-n", spec, "--key-file", str(monitor_path), "--", "echo", "ok"]) == 0
    assert capsys.readouterr().out == "ok\n"
    assert shoal_main(["run", "-n", spec, "--key-file", str(keys["admin"][1]), "--", "touch", str(target)]) == 0
    assert target.exists()
    names = {e["key_id"]: e["key_name"] for e in audit(tmp_path, event="authenticated")}
    assert names == {monitor_key.key_id: "monitor", keys["admin"][0].key_id: "admin"}


@pytest.mark.parametrize("smuggled", ["echo status x; touch {t}", "echo status $(touch {t})",
                                      "echo status `touch {t}`", "echo status x && touch {t}"])
def test_a_pattern_cannot_smuggle_a_second_command(
        policy_agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], smuggled: str) -> None:
    target = tmp_path / "smuggled"
    monitor_path = keys["monitor"][1]
    spec = policy_agent.targets_spec()
    assert shoal_main(["run", "-n", spec, "--key-file", str(monitor_path), "--", "echo status web1"]) == 0
    assert capsys.readouterr().out == "status web1\n"
    status = shoal_main(["run", "-n", spec, "--key-file", str(monitor_path), "--", smuggled.format(t=target)])
    assert status == 126 and "permission denied" in capsys.readouterr().err
    assert not target.exists()


# -- the audit record of one request -------------------------------------------


def test_audit_has_the_whole_request_and_no_secret(
        agent: AgentThread, keys: dict[str, tuple[SharedKey, Path]], tmp_path: Path) -> None:
    admin = keys["admin"][0]
    peer = open_session(agent, admin)
    payload = b"stdin-payload-that-must-not-be-logged"
    peer.conn.send(Exec(1, shell="cat > /dev/null; echo done", env={"TOKEN": "env-secret-value"},
                        cwd=str(tmp_path), stdin=True))
    peer.flush()
    peer.next_event()  # STARTED
    peer.conn.send(Stdin(1, payload))
    peer.conn.send(StdinEof(1))
    peer.flush()
    out = b""
    while not audit(tmp_path, event="exit", peer=peer.peer):
        event = peer.next_event()
        if isinstance(event, Stdout):
            out += event.data
    peer.close()
    events = [e["event"] for e in audit(tmp_path, peer=peer.peer)]
    assert events == ["accepted", "authenticated", "exec", "exit"]
    [done] = audit(tmp_path, event="exit", peer=peer.peer)
    assert done["key_id"] == admin.key_id and done["request"] == 1
    assert done["argv"] == ["/bin/sh", "-c", "cat > /dev/null; echo done"]
    assert done["cwd"] == str(tmp_path) and done["status"] == 0
    assert (done["stdout_bytes"], done["stderr_bytes"], done["stdin_bytes"]) == (5, 0, len(payload))
    assert done["start"] > 0 and done["duration"] >= 0
    text = (tmp_path / "audit.jsonl").read_text()
    for secret in (payload.decode(), "env-secret-value", admin.secret.hex()):
        assert secret not in text
    assert oct(os.stat(tmp_path / "audit.jsonl").st_mode & 0o777) == "0o600"


# -- key files others can read ---------------------------------------------------


@pytest.mark.parametrize("command", ["shoal-agent", "shoal"])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, command: str) -> None:
    path = tmp_path / "loose.key"
    write_key_file(path)
    path.chmod(0o644)
    args = {"shoal-agent": ["--listen", "127.0.0.1:0", "--key-file", str(path)],
            "shoal": ["run", "127.0.0.1:1", "--key-file", str(path), "--", "true"]}[command]
    proc = subprocess.run([*{"shoal-agent": SHOAL_AGENT, "shoal": SHOAL}[command], *args], capture_output=True, text=True, timeout=DEADLINE,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr == (f"{command}: {path}: key file is accessible by others (mode 0644); "
                           f"run chmod 600 {path}\n")
    assert path.read_text().split()[1] not in proc.stderr + proc.stdout


# -- the documented test vector -------------------------------------------------


def documented_vector() -> dict[str, str]:
    """The `| name | value |` rows and `name = hex` lines of PROTOCOL.md section 5.5."""
    text = (Path(__file__).parents[2] / "protocol" / "PROTOCOL.md").read_text()
    section = text.split("### 5.5 Test vector", 1)[1].split("\n### ", 1)[0]
    rows = dict(re.findall(r"^\| (\w+) \| (?:ASCII )?`([^`]+)`", section, re.M))
    rows.update(re.findall(r"^ {4}(head|body) = ([0-9a-f ]+)$", section, re.M))
    rows.update(re.findall(r"^ {4}([\w-]+) tag = .*\n +?= ([0-9a-f]{32})$", section, re.M))
    return rows


def test_protocol_md_test_vector_is_what_the_code_computes() -> None:
    v = documented_vector()
    key, nonce_c, nonce_a = (bytes.fromhex(v[n]) for n in ("key", "nonce_c", "nonce_a"))
    th = handshake.transcript_hash(v["hello_c"].encode(), v["hello_a"].encode())
    keys = handshake.derive_session_keys(key, nonce_c, nonce_a, th)
    head, body = bytes.fromhex(v["head"].replace(" ", "")), bytes.fromhex(v["body"])
    assert {
        "key_id": SharedKey(key).key_id, "th": th.hex(),
        "controller_proof": handshake.controller_proof(key, th).hex(),
        "agent_proof": handshake.agent_proof(key, th).hex(),
        "c2a": keys.c2a.hex(), "a2c": keys.a2c.hex(),
        "hmac-sha256": handshake.FrameMac(keys.c2a).tag(5, head, body).hex(),
        "aes256-gmac": handshake.GmacFrameMac(keys.c2a).tag(5, head, body).hex(),
    } == {name: v[name] for name in ("key_id", "th", "controller_proof", "agent_proof", "c2a", "a2c",
                                     "hmac-sha256", "aes256-gmac")}
    assert head == frame_head(MessageType.STDIN, 7, len(body), True)
    assert body == b"hello, shoal\n"
