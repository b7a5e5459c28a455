"""The hub under systemd: READY=1 once it serves, STOPPING=1 as it drains, SIGHUP re-reads the key.

The real `shoal hub` and `shoal-agent` programs on loopback. systemd's notification
socket is a datagram socket the test binds and names in NOTIFY_SOCKET, as systemd
does for a `Type=notify` unit.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shoal.protocol.handshake import SharedKey
from tests.agents import closed_port, shoal
from tests.programs import SHOAL, SHOAL_AGENT
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


def _write_key(path: Path, key: SharedKey, mode: int = 0o600) -> None:
    """Replace the key file in one step (a new file renamed over it), as an admin's rotation would."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(f"shoal-key-v1 {key.secret.hex()}\n")
    fresh.chmod(mode)
    fresh.replace(path)


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _line(log: Path, needle: str, count: int = 1) -> str:
    """The `count`th line of `log` holding `needle`, once there is one."""
    found = wait_for(lambda: [line for line in _lines(log) if needle in line][count - 1:],
                     timeout=30, what=f"{needle!r} in {log.name}")
    return found[0]


@contextlib.contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`argv` running with its stderr in `log`; SIGTERM (then SIGKILL) at the end."""
    with log.open("a") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=str(REPO), env=env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _hub(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> Any:
    return _process([*SHOAL, "hub", "--socket", str(tmp_path / "hub.sock"), "--listen", "127.0.0.1:0", *flags],
                    tmp_path / "hub.err", env)


def _agent(tmp_path: Path, address: str, name: str, key: SharedKey) -> Any:
    """A `shoal-agent` dialling the hub as `name` with `key`, retrying fast."""
    key_file = tmp_path / f"{name}.key"
    _write_key(key_file, key)
    state = tmp_path / f"{name}.state"
    return _process([*SHOAL_AGENT, "--connect", address, "--name", name, "--key-file", str(key_file),
                     "--reconnect-min", "0.05", "--reconnect-max", "0.2", "--state-dir", str(state)],
                    tmp_path / f"{name}.err")


def _hosts(capsysbinary: Any, sock: Path) -> str:
    code, out, err = shoal(capsysbinary, "hosts", "--hub", str(sock))
    assert (code, err) == (0, b"")
    return out.decode()


def _audit(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(path)]


# -- readiness -----------------------------------------------------------------------------

def test_ready_comes_once_the_socket_serves_and_stopping_when_it_drains(tmp_path: Path) -> None:
    notify_path = str(tmp_path / "notify.sock")
    sock = tmp_path / "hub.sock"
    target = f"127.0.0.1:{closed_port()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(notify_path)
        systemd.settimeout(30)
        with _hub(tmp_path, "--targets", target, env={**os.environ, "NOTIFY_SOCKET": notify_path}) as hub:
            ready = systemd.recv(4096).decode()
            # At the moment READY=1 arrives a client gets in at once, with no retry,
            # and the dial-in port it names takes agents.
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(sock))
            fields = dict(line.split("=", 1) for line in ready.splitlines())
            assert fields["READY"] == "1"
            dialin = fields["STATUS"].split("agents dial in at ")[1].split(";")[0]
            assert fields["STATUS"] == f"serving {sock}; agents dial in at {dialin}; 1 inventory target kept warm"
            host, _, port = dialin.rpartition(":")
            socket.create_connection((host, int(port)), timeout=10).close()
            hub.send_signal(signal.SIGTERM)
            assert systemd.recv(4096) == b"STOPPING=1"
            assert hub.wait(30) == 0
    assert not sock.exists()
    said = (tmp_path / "hub.err").read_text()
    assert "Traceback" not in said
    assert said.splitlines()[-1].endswith("INFO shoal.hub: stopped")  # the journal's last word


def test_without_notify_socket_the_hub_says_nothing_to_systemd(tmp_path: Path) -> None:
    # Started by hand (no NOTIFY_SOCKET): no warning about systemd in its log.
    with _hub(tmp_path) as hub:
        _line(tmp_path / "hub.err", "agents dial in at")
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
    assert "systemd" not in (tmp_path / "hub.err").read_text()


# -- SIGHUP --------------------------------------------------------------------------------

def test_sighup_rotates_the_key_for_agents_dialling_in_and_keeps_those_connected(
        capsysbinary: Any, tmp_path: Path) -> None:
    old, new = SharedKey.generate(), SharedKey.generate()
    key_file, audit, log = tmp_path / "hub.key", tmp_path / "audit.log", tmp_path / "hub.err"
    _write_key(key_file, old)
    sock = tmp_path / "hub.sock"
    with _hub(tmp_path, "--key-file", str(key_file), "--audit-log", str(audit)) as hub:
        address = _line(log, "agents dial in at").split("dial in at ")[1].split()[0]
        with _agent(tmp_path, address, "before", old):
            wait_for(lambda: "before" in _hosts(capsysbinary, sock), timeout=30, what="'before' connected")
            _write_key(key_file, new)
            hub.send_signal(signal.SIGHUP)
            _line(log, "reloaded the key and TLS files")
            with _agent(tmp_path, address, "newkey", new), _agent(tmp_path, address, "oldkey", old):
                wait_for(lambda: "newkey" in _hosts(capsysbinary, sock), timeout=30, what="'newkey' connected")
                # The old key is refused, again at each retry: never connected in between.
                wait_for(lambda: sum(r["event"] == "auth_failed" for r in _audit(audit)) >= 2, timeout=30,
                         what="the old key refused twice")
                assert "oldkey" not in _hosts(capsysbinary, sock)
                # The agent connected before the reload was never dropped (with only the
                # old key it could not have come back) and still runs commands.
                code, out, err = shoal(capsysbinary, "run", "-n", "--hub", str(sock), "before", "--", "echo", "still here")
                assert (code, out, err) == (0, b"still here\n", b"")
                events = _audit(audit)
        assert hub.poll() is None
    assert [r["name"] for r in events if r["event"] == "agent_connected"] == ["before", "newkey"]
    assert [r for r in events if r["event"] == "agent_disconnected"] == []
    assert "Traceback" not in log.read_text()


def test_a_key_file_the_hub_cannot_use_leaves_the_old_key_and_one_line_each(
        capsysbinary: Any, tmp_path: Path) -> None:
    key = SharedKey.generate()
    key_file, log, sock = tmp_path / "hub.key", tmp_path / "hub.err", tmp_path / "hub.sock"
    _write_key(key_file, key)
    breakages = [
        (lambda: key_file.write_text("not a key\n"), "expected one line 'shoal-key-v1"),
        (lambda: _write_key(key_file, SharedKey.generate(), mode=0o644), "accessible by others (mode 0644)"),
        (lambda: key_file.unlink(), "no such key file"),
    ]
    with _hub(tmp_path, "--key-file", str(key_file)) as hub:
        address = _line(log, "agents dial in at").split("dial in at ")[1].split()[0]
        for number, (breakage, reason) in enumerate(breakages, 1):
            breakage()
            hub.send_signal(signal.SIGHUP)
            said = _line(log, "reload failed", number)
            assert reason in said and str(key_file) in said and "ERROR" in said
            assert key.secret.hex() not in log.read_text()
        with _agent(tmp_path, address, "web1", key):  # the key the hub started with still opens it
            wait_for(lambda: "web1" in _hosts(capsysbinary, sock), timeout=30, what="'web1' connected")
            code, out, err = shoal(capsysbinary, "run", "-n", "--hub", str(sock), "web1", "--", "echo", "served")
            assert (code, out, err) == (0, b"served\n", b"")
        assert hub.poll() is None
    text = log.read_text()
    assert "Traceback" not in text
    assert sum("reload failed" in line for line in text.splitlines()) == len(breakages)
    assert "reloaded" not in text


def test_sighup_rotates_the_tls_files_and_a_key_open_to_others_keeps_the_old_ones(
        capsysbinary: Any, tmp_path: Path) -> None:
    from shoal.controller.pki import init_pki

    old, new = init_pki(tmp_path / "old", ["web1", "web2"]), init_pki(tmp_path / "new", ["web1", "web2"])
    key = SharedKey.generate()
    key_file, log, sock = tmp_path / "hub.key", tmp_path / "hub.err", tmp_path / "hub.sock"
    _write_key(key_file, key)
    files = {"cert": tmp_path / "hub.pem", "key": tmp_path / "hub-key.pem", "ca": tmp_path / "ca.pem"}

    def install(pki: dict[str, Path], mode: int = 0o600) -> None:
        for name, source in (("cert", "controller_cert"), ("key", "controller_key"), ("ca", "ca_cert")):
            fresh = files[name].with_name(files[name].name + ".new")
            fresh.write_bytes(pki[source].read_bytes())
            fresh.chmod(mode if name == "key" else 0o644)
            fresh.replace(files[name])

    def tls_agent(name: str, pki: dict[str, Path]) -> Any:
        _write_key(tmp_path / f"{name}.key", key)
        return _process([*SHOAL_AGENT, "--connect", address, "--name", name, "--key-file", str(tmp_path / f"{name}.key"),
                         "--tls-cert", str(pki["agent_cert"]), "--tls-key", str(pki["agent_key"]),
                         "--tls-ca", str(pki["ca_cert"]), "--reconnect-min", "0.05", "--reconnect-max", "0.2",
                         "--state-dir", str(tmp_path / f"{name}.state")], tmp_path / f"{name}.err")

    install(old)
    with _hub(tmp_path, "--key-file", str(key_file), "--tls-cert", str(files["cert"]), "--tls-key",
              str(files["key"]), "--tls-ca", str(files["ca"])) as hub:
        address = _line(log, "agents dial in at").split("dial in at ")[1].split()[0]
        install(new, mode=0o644)  # the new private key readable by all: refused, the old files kept
        hub.send_signal(signal.SIGHUP)
        assert "hub-key.pem: private key file is accessible by others (mode 0644)" in _line(log, "reload failed")
        with tls_agent("web1", old):
            wait_for(lambda: "web1" in _hosts(capsysbinary, sock), timeout=30, what="'web1' over the old TLS")
            install(new)
            hub.send_signal(signal.SIGHUP)
            _line(log, "reloaded the key and TLS files")
            with tls_agent("web2", old):  # an old-CA certificate: the hub, trusting the new CA, refuses it
                said = _line(tmp_path / "web2.err", "retrying with backoff")
                assert "TLS handshake failed" in said and "web2" not in _hosts(capsysbinary, sock)
            with tls_agent("web2", new):
                wait_for(lambda: "web2" in _hosts(capsysbinary, sock), timeout=30, what="'web2' over the new TLS")
                for name in ("web1", "web2"):  # web1 still on the session it made over the old files
                    code, out, err = shoal(capsysbinary, "run", "-n", "--hub", str(sock), name, "--", "echo", name)
                    assert (code, out, err) == (0, f"{name}\n".encode(), b"")
        assert hub.poll() is None
    assert "Traceback" not in log.read_text()


def test_an_inventory_targets_own_key_file_is_checked_by_the_reload_too(tmp_path: Path) -> None:
    key_file, own, log = tmp_path / "hub.key", tmp_path / "db.key", tmp_path / "hub.err"
    _write_key(key_file, SharedKey.generate())
    _write_key(own, SharedKey.generate())
    inventory = tmp_path / "inventory.toml"
    inventory.write_text(f'[hosts."127.0.0.1"]\nport = {closed_port()}\nkey_file = "db.key"\n')
    with _hub(tmp_path, "--key-file", str(key_file), "--targets", "127.0.0.1", "--inventory", str(inventory)) as hub:
        _line(log, "agents dial in at")
        own.chmod(0o644)
        hub.send_signal(signal.SIGHUP)
        said = _line(log, "reload failed")
        assert f"{own}: key file is accessible by others (mode 0644)" in said
        own.chmod(0o600)
        hub.send_signal(signal.SIGHUP)
        _line(log, "reloaded the key and TLS files")
        assert hub.poll() is None
    assert "Traceback" not in log.read_text()


async def test_a_reload_that_fails_on_a_bug_is_one_line_and_the_hub_serves_on(
        tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    """SIGHUP's handler runs in the loop: an exception other than a bad file would be
    asyncio's traceback in the hub's log. It is one line, and nothing changes."""
    import argparse
    import logging

    from shoal.controller.cli import hub as hub_command
    from tests.hubs import new_key, running_hub

    key, _ = new_key(tmp_path)

    def broken(args: object) -> object:
        raise RuntimeError("something impossible")

    monkeypatch.setattr(hub_command, "credentials_from_args", broken)
    async with running_hub(tmp_path / "hub.sock", key) as hub:
        with caplog.at_level(logging.INFO, logger="shoal.hub"):
            hub_command._reload(hub, argparse.Namespace())
        assert hub.settings.key is key
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert said == ["reload failed (internal error: RuntimeError: something impossible), "
                    "keeping the key and TLS files read before"]
