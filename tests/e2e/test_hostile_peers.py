"""The installed `shoal` against peers that are not agents (tests/hostile.py).

Whatever answers on a target's port, each bad host costs one clear line and status
255; the good host's results are intact; no traceback, and no asyncio report, ever
reaches stderr.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from shoal.controller.nodeset import NodeSet
from tests.agents import AgentThread
from tests.hostile import HostilePeers
from tests.programs import SHOAL

pytestmark = pytest.mark.slow  # a shared fixture or each test takes over 5 s

# Long enough for the real agent on a loaded 2-core box; the silent peers wait it out.
CONNECT_TIMEOUT = "5"

EXPECTED = {
    "silent": "connect timed out after 5s",
    "ssh": 'not a shoal agent (it sent "SSH-2.0-OpenSSH_9.6p1 Debian-4")',
    "http": 'not a shoal agent (it sent "HTTP/1.1 400 Bad Request…")',
    "close": "connection closed",
    "halfclose": "connection closed by agent before its HELLO",
    "truncated": "connect timed out after 5s",
    "truncated_close": "connection closed by the peer in the middle of its HELLO",
    "lying_agent": "agent error refused: no\\x1b[2J\\x0dweb99: ok",
}
NOISE = (b"Traceback", b"Exception in callback", b"never retrieved", b"CancelledError", b"\x1b", b"\r")


@pytest.fixture(scope="module")
def peers(agents: AgentThread) -> Iterator[tuple[str, HostilePeers]]:
    with HostilePeers() as hostile:
        yield agents.addresses[0], hostile


def shoal_cli(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*SHOAL, *argv], stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def spec(peers: tuple[str, HostilePeers]) -> str:
    good, hostile = peers
    return ",".join([good, *hostile.address.values()])


def assert_one_line_each(lines: list[str], hostile: HostilePeers, prefix: str) -> None:
    """Each hostile peer is named on exactly one of `lines`, with its expected reason."""
    for name, address in hostile.address.items():
        named = [line for line in lines if address in line]
        assert len(named) == 1, (name, named)
        assert named[0].startswith(f"{prefix}{address}"), named
        assert EXPECTED[name] in named[0], (name, named[0])


def assert_summary(summary: str, hostile: HostilePeers) -> None:
    """Every peer counted once by its outcome: the lying agent's error came after the connection was up."""
    lying = hostile.address["lying_agent"]
    assert summary.startswith("shoal: 1 ok, 0 failed, 7 unreachable (")
    assert f"), 1 lost ({lying}) in " in summary


def test_run_reports_each_hostile_peer_in_one_line(peers: tuple[str, HostilePeers]) -> None:
    good, hostile = peers
    done = shoal_cli("run", spec(peers), "-n", "-o", "stream", "--connect-timeout", CONNECT_TIMEOUT,
                     "--", "echo hello")
    assert not any(word in done.stderr for word in NOISE), done.stderr.decode()
    assert done.returncode == 255
    width = max(len(host) for host in spec(peers).split(","))
    assert done.stdout == f"{good}:{' ' * (width - len(good))} hello\n".encode()
    *failures, summary = done.stderr.decode().splitlines()
    assert_one_line_each(failures, hostile, "shoal: ")
    assert_summary(summary, hostile)


def test_gather_folds_hostile_peers_by_reason(peers: tuple[str, HostilePeers]) -> None:
    good, hostile = peers
    done = shoal_cli("run", spec(peers), "-n", "-o", "gather", "--connect-timeout", CONNECT_TIMEOUT,
                     "--", "echo hello")
    assert not any(word in done.stderr for word in NOISE), done.stderr.decode()
    assert done.returncode == 255
    assert done.stdout.splitlines()[1:] == [f"{good} (1)".encode(), b"-" * 15, b"hello"]
    *failures, summary = done.stderr.decode().splitlines()
    reason_of = {}
    for line in failures:
        hosts, reason = line.removeprefix("shoal: ").split(": ", 1)
        for host in NodeSet(hosts):
            assert host not in reason_of, f"{host} reported twice"
            reason_of[host] = reason
    assert set(reason_of) == set(hostile.address.values())
    for name, address in hostile.address.items():
        assert EXPECTED[name] in reason_of[address], (name, reason_of[address])
    assert_summary(summary, hostile)


@pytest.mark.parametrize("command", [["ping", "-c", "1"], ["metrics"]])
def test_tables_report_each_hostile_peer_in_one_row(peers: tuple[str, HostilePeers], command: list[str]) -> None:
    good, hostile = peers
    done = shoal_cli(command[0], spec(peers), *command[1:], "--connect-timeout", CONNECT_TIMEOUT)
    assert done.stderr == b""
    assert done.returncode == 255
    rows = done.stdout.decode().splitlines()
    assert_one_line_each([row.replace("unreachable: ", "") for row in rows], hostile, "")
    assert [row.split()[0] for row in rows if "unreachable" not in row] == ["HOST", good]


def test_check_and_shell_show_a_lying_agent_escaped(peers: tuple[str, HostilePeers]) -> None:
    liar = peers[1].address["lying_agent"]
    check = shoal_cli("check", liar, "--warn", "cpu>90", "--connect-timeout", CONNECT_TIMEOUT)
    assert check.returncode == 2 and check.stderr == b""
    assert b"\x1b" not in check.stdout and b"agent error refused: no\\x1b[2J" in check.stdout
    shell = subprocess.run([*SHOAL, "shell", liar, "--connect-timeout", CONNECT_TIMEOUT], input=b":hosts\n",
                           capture_output=True, timeout=120)
    assert shell.returncode == 0 and b"Traceback" not in shell.stderr
    assert b"\x1b" not in shell.stdout and b"agent shoal-agent/\\x1b]52;c;Zm9yZ2Vk\\x07" in shell.stdout
