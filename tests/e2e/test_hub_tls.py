"""TLS on the hub's dial-in port: the roles and certificates of a direct connection, over a reversed TCP one.

Real sockets on loopback; agents in-process for the library tests, and the real
`shoal hub` and `shoal-agent` programs for what each prints on a mismatch.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from shoal.agent.config import TlsConfig
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.hub.client import HubAccess
from shoal.controller.pki import init_pki
from shoal.controller.remote import Command
from shoal.hostio.tls import dialin_context
from tests.e2e.test_hub import Collect, named
from tests.hubs import close_all, dial_in, dialers, new_key, running_hub
from tests.programs import SHOAL, SHOAL_AGENT
from tests.waiting import wait_for, wait_for_async


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("pki"), ["web1"])


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return init_pki(tmp_path_factory.mktemp("stranger"), ["web1"])


def agent_tls(pki: dict[str, Path]) -> TlsConfig:
    return TlsConfig(cert=str(pki["agent_cert"]), key=str(pki["agent_key"]), ca=str(pki["ca_cert"]))


def hub_tls(certs: dict[str, Path], ca: dict[str, Path]) -> Any:
    """The hub's dial-in context: its certificate from `certs`, trusting agents of `ca`."""
    return dialin_context(certs["controller_cert"], certs["controller_key"], ca["ca_cert"])


def audit_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_tls_dial_in_agent_runs_a_command_through_the_hub(tmp_path: Path, pki: dict[str, Path]) -> None:
    key, _ = new_key(tmp_path)
    async with running_hub(tmp_path / "hub.sock", key, tls=hub_tls(pki, pki)) as hub:
        agents = await dial_in(hub, ["web1"], key, tls=agent_tls(pki))
        try:
            async with ConnectOptions(hub=HubAccess(str(tmp_path / "hub.sock"))) as options:
                seen = Collect()
                result = await Fleet([named("web1")], options).run(Command(shell="echo over tls; exit 4"), seen)
            assert result.results[0].status == 4 and bytes(seen.out["web1"]) == b"over tls\n"
            held = hub.registry.get("web1")
            assert held is not None and held.client.transport is not None
            assert held.client.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
        finally:
            await close_all(agents)


async def test_a_tls_agent_takes_only_a_name_its_certificate_names(tmp_path: Path, pki: dict[str, Path]) -> None:
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    async with running_hub(tmp_path / "hub.sock", key, tls=hub_tls(pki, pki), audit_log=str(audit)) as hub:
        (agent,) = dialers(hub, ["db9"], key, tls=agent_tls(pki))
        await agent.start()
        try:
            refused = lambda: [e for e in audit_events(audit) if e["event"] == "refused"]  # noqa: E731
            await wait_for_async(lambda: refused(), timeout=15)
            assert "'db9' is not in the agent's TLS certificate (web1" in refused()[0]["reason"]
            assert hub.registry.get("db9") is None
        finally:
            await agent.close()


async def test_an_agent_refuses_a_hub_certificate_it_does_not_trust(
        tmp_path: Path, pki: dict[str, Path], stranger: dict[str, Path]) -> None:
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    # The hub trusts the agent's CA, but shows a certificate of another one.
    async with running_hub(tmp_path / "hub.sock", key, tls=hub_tls(stranger, pki), audit_log=str(audit)) as hub:
        (agent,) = dialers(hub, ["web1"], key, tls=agent_tls(pki), audit_log=str(tmp_path / "agent-audit.log"))
        await agent.start()
        try:
            failed = lambda: [e for e in audit_events(audit) if e["event"] == "refused"]  # noqa: E731
            await wait_for_async(lambda: failed(), timeout=15)
            assert "did it refuse the hub's TLS certificate?" in failed()[0]["reason"]
            assert hub.registry.get("web1") is None and not agent.dialers[0].connected.is_set()
            # Nothing was asked of the agent: no session ever authenticated there.
            assert not [e for e in audit_events(tmp_path / "agent-audit.log") if e["event"] == "authenticated"]
        finally:
            await agent.close()


async def test_a_tls_agent_never_falls_back_to_a_plaintext_hub(tmp_path: Path, pki: dict[str, Path],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    key, _ = new_key(tmp_path)
    audit = tmp_path / "audit.log"
    async with running_hub(tmp_path / "hub.sock", key, audit_log=str(audit)) as hub:
        (agent,) = dialers(hub, ["web1"], key, tls=agent_tls(pki))
        with caplog.at_level("WARNING", logger="shoal.agent"):
            await agent.start()
            try:
                refused = lambda: [e for e in audit_events(audit) if e["event"] == "refused"]  # noqa: E731
                await wait_for_async(lambda: refused() and caplog.records, timeout=15)
                assert hub.registry.get("web1") is None
            finally:
                await agent.close()
    assert "does it want TLS? this port has none" in refused()[0]["reason"]
    assert "TLS handshake failed: the peer does not speak TLS" in caplog.records[0].getMessage()
    assert "the hub has no --tls-* on this port" in caplog.records[0].getMessage()


def test_a_plaintext_agent_against_a_tls_hub_port_gets_one_clear_line_on_each_side(
        tmp_path: Path, pki: dict[str, Path]) -> None:
    _, key_file = new_key(tmp_path)
    hub_log, agent_log = tmp_path / "hub.err", tmp_path / "agent.err"
    with hub_log.open("w") as err:
        hub = subprocess.Popen(
            [*SHOAL, "hub", "--socket", str(tmp_path / "hub.sock"), "--listen", "127.0.0.1:0",
             "--key-file", str(key_file), "--tls-cert", str(pki["controller_cert"]),
             "--tls-key", str(pki["controller_key"]), "--tls-ca", str(pki["ca_cert"])], stderr=err)
    procs = [hub]
    try:
        address = _line(hub_log, "agents dial in at").split("dial in at ")[1].split()[0]
        with agent_log.open("w") as err:
            procs.append(subprocess.Popen(
                [*SHOAL_AGENT, "--connect", address, "--name", "web1", "--key-file", str(key_file),
                 "--reconnect-min", "0.05", "--reconnect-max", "0.2", "--state-dir", str(tmp_path / "state")],
                stderr=err))  # its own state directory: another agent's there adds a line to its log
        agent_says = _line(agent_log, "retrying with backoff")
        hub_says = _line(hub_log, "refused")
    finally:
        statuses = [_stop(proc) for proc in reversed(procs)]
    assert statuses == [0] * len(procs)
    assert "the hub speaks TLS on this port; give this agent [tls] (--tls-cert, --tls-key, --tls-ca)" in agent_says
    assert "TLS handshake failed: the peer does not speak TLS" in hub_says
    complaints = [line for line in agent_log.read_text().splitlines() if "shutting down" not in line]
    assert complaints == [agent_says]  # once, not once per retry; no audit line beside it
    for text in (agent_log.read_text(), hub_log.read_text()):
        assert "Traceback" not in text


def _line(log: Path, needle: str) -> str:
    """The first line of `log` holding `needle`, once one does."""
    return wait_for(lambda: next((line for line in log.read_text().splitlines() if needle in line), ""),
                    timeout=30, what=f"{needle!r} in {log.name}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM; its exit status."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_hub_toml_tls_files_guard_the_dial_in_port_too(tmp_path: Path, pki: dict[str, Path]) -> None:
    from shoal.controller.cli.hub import _settled, settings_from_args
    from shoal.controller.cli.main import build_parser

    (tmp_path / "hub.toml").write_text(
        f'socket = "hub.sock"\nlisten = ["127.0.0.1:0"]\ntls_cert = "{pki["controller_cert"]}"\n'
        f'tls_key = "{pki["controller_key"]}"\ntls_ca = "{pki["ca_cert"]}"\n')
    args = build_parser("hub")[0].parse_args(["hub", "--hub-config", str(tmp_path / "hub.toml")])
    settings = settings_from_args(_settled(args))
    assert settings.tls is not None and settings.connect.ssl_of(named("web1")) is not None
    plain = settings_from_args(_settled(build_parser("hub")[0].parse_args(
        ["hub", "--socket", str(tmp_path / "plain.sock")])))
    assert plain.tls is None
