"""`shoal-agent`'s command line: every option has a flag, flags and file agree, and
the real process tells a stand-in systemd it is ready only once it can be reached.

Bad configuration files go through the installed `shoal-agent --check-config`, as an
admin (and `systemctl reload`) runs it; processes talk to the test over a real
AF_UNIX datagram socket in place of systemd's notification socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.agent.cli import build_parser, config_from_args, main
from shoal.agent.config import AgentConfig, DiscoveryConfig, Limits, TlsConfig, load_config
from shoal.controller.cli.main import main as controller_main
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.pki import init_pki
from shoal.controller.targets import Target
from tests.programs import SHOAL_AGENT

# Deadline against a hung child, never a timing assertion.
DEADLINE = 60


def effective(*argv: str) -> AgentConfig:
    """The configuration `shoal-agent ARGV` would run with."""
    return config_from_args(build_parser().parse_args(list(argv)))


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


# -- every option has a flag, and each flag lands in the configuration ----------------

# Every option that makes sense on a command line, away from its default. [[keys]] are
# file-only: a policy is a table, and --key-file grants full rights for quick setups.
FLAGS = ["--listen", "0.0.0.0:9000", "--listen", "unix:/run/shoal/a.sock", "--insecure",
         "--log-level", "debug", "--audit-log", "audit.jsonl", "--audit-required", "--state-dir", "state",
         "--tls-cert", "/etc/shoal/a.pem", "--tls-key", "/etc/shoal/a.key", "--tls-ca", "/etc/shoal/ca.pem",
         "--max-connections", "7", "--max-startups", "5", "--max-startups-per-source", "2",
         "--max-commands", "9", "--max-commands-per-connection", "3",
         "--max-frame-size", "65536", "--stdin-window", "4096", "--output-window", "65536",
         "--handshake-timeout", "0.25", "--idle-timeout", "12.5", "--kill-grace", "0", "--output-linger", "0.5",
         "--job-output-size", "4096", "--job-retention", "60", "--keepalive", "1",
         "--max-relays", "5", "--relay-window", "8192",
         "--discovery", "--discovery-port", "9999", "--discovery-name", "web-01",
         "--discovery-group", "239.1.2.3", "--discovery-group6", "ff05::1:3",
         "--connect", "hub.example.net", "--name", "web-01", "--reconnect-min", "0.5", "--reconnect-max", "5"]


def expected_from_flags(cwd: Path) -> AgentConfig:
    return AgentConfig(
        listen=("0.0.0.0:9000", "unix:/run/shoal/a.sock"), insecure=True, log_level="debug",
        audit_log=str(cwd / "audit.jsonl"), audit_required=True, state_dir=str(cwd / "state"),
        tls=TlsConfig(cert="/etc/shoal/a.pem", key="/etc/shoal/a.key", ca="/etc/shoal/ca.pem"),
        limits=Limits(max_connections=7, max_startups=5, max_startups_per_source=2, max_commands=9, max_commands_per_connection=3,
                      max_frame_size=65536, stdin_window=4096, output_window=65536,
                      handshake_timeout=0.25, idle_timeout=12.5, kill_grace=0.0, output_linger=0.5,
                      job_output_size=4096, job_retention=60.0, keepalive=1.0, reconnect_min=0.5, reconnect_max=5.0,
                      max_relays=5, relay_window=8192),
        discovery=DiscoveryConfig(enabled=True, port=9999, name="web-01", group="239.1.2.3", group6="ff05::1:3"),
        connect=("hub.example.net",), name="web-01")


def test_every_limit_has_a_flag_of_the_same_name() -> None:
    options = build_parser()._option_string_actions
    for option in dataclasses.fields(Limits):
        assert flag(option.name) in options, option.name
    for option in ("listen", "insecure", "log_level", "audit_log", "audit_required", "state_dir"):
        assert flag(option) in options, option
    assert {"--tls-cert", "--tls-key", "--tls-ca"} <= set(options)
    assert {"--discovery", "--discovery-port", "--discovery-name", "--discovery-group",
            "--discovery-group6"} <= set(options)
    assert [option.name for option in dataclasses.fields(DiscoveryConfig)] == ["enabled", "port", "name", "group",
                                                                               "group6"]


def test_flags_set_every_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths are taken from where the agent starts
    assert effective(*FLAGS) == expected_from_flags(tmp_path)


def test_flag_values_differ_from_the_defaults(tmp_path: Path) -> None:
    # Guards the test above: a flag left at its default would prove nothing.
    ours, default = expected_from_flags(tmp_path), AgentConfig.default()
    for option in dataclasses.fields(Limits):
        assert getattr(ours.limits, option.name) != getattr(default.limits, option.name), option.name
    for option in dataclasses.fields(DiscoveryConfig):
        assert getattr(ours.discovery, option.name) != getattr(default.discovery, option.name), option.name
    for option in dataclasses.fields(AgentConfig):
        if option.name != "keys":  # file-only: see FLAGS
            assert getattr(ours, option.name) != getattr(default, option.name), option.name


def test_flags_override_the_file_and_leave_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent("""\
        listen = ["127.0.0.1:9100"]
        log_level = "warning"
        [limits]
        max_commands = 5
        output_window = 131072
        keepalive = 30
        """))
    config = effective("--config", str(path), "--output-window", "262144", "--keepalive", "2.5")
    assert config == dataclasses.replace(
        load_config(path), limits=Limits(max_commands=5, output_window=262144, keepalive=2.5))
    assert config.listen == ("127.0.0.1:9100",) and config.log_level == "warning"


@pytest.mark.parametrize("argv, line", [
    (["--max-frame-size", "10"], "shoal-agent: --max-frame-size: 10 is out of range (65536 to 16777216)"),
    (["--handshake-timeout", "0"],
     "shoal-agent: --handshake-timeout: 0.0 is out of range (more than 0 and at most 300)"),
    (["--listen", "127.0.0.1"], "shoal-agent: --listen: bad listen address '127.0.0.1': no port "
                                "(expected HOST:PORT, [IPv6]:PORT or unix:/path)"),
    (["--tls-cert", "/a.pem"], "shoal-agent: tls: --tls-cert, --tls-key and --tls-ca go together"),
    (["--discovery-port", "0"], "shoal-agent: --discovery-port: 0 is out of range (1 to 65535)"),
    (["--discovery-group6", "fe80::1"], "shoal-agent: --discovery-group6: 'fe80::1' is not an IPv6 multicast group"),
])
def test_bad_flag_value_names_the_flag(argv: list[str], line: str,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--check-config"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", line + "\n")


# -- --check-config, the real command -------------------------------------------------

def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL_AGENT, "--config", str(path), "--check-config"],
                          capture_output=True, text=True, timeout=DEADLINE)


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('listen = ["127.0.0.1:8470"]\n[limits]\nmax_frame_size = 65536\n')
    result = check_config(path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"configuration ok: {path}\n", "")


@pytest.mark.parametrize("text, line, reason", [
    ('log_level = "info"\ncolour = "red"\n', 2, "unknown key 'colour'"),
    ('[limits]\nmax_commands = 5\nmax_comands = 6\n', 3, "unknown key 'max_comands'"),
    ('[discovery]\nenabled = true\nprot = 9\n', 3, "unknown key 'prot'"),
    ('\n[[keys]]\nname = "a"\nfile = "/k"\nallow = "all"\ncommand = ["ls"]\n', 6, "unknown key 'command'"),
    ('[limits]\n\nkill_grace = "5s"\n', 3, "expected a number of seconds, got a string"),
    ('[limits]\nmax_frame_size = 100\n', 2, "100 is out of range (65536 to 16777216)"),
    ('log_level = "info"\nlisten = ["127.0.0.1:8470"\n', 2, "TOML syntax error: Unclosed array at end of file"),
    ('log_level = "info"\nlisten = 127.0.0.1:1\n', 2, None),  # TOML syntax: tomllib's own words
    ('state_dir = "var/lib/shoal"\n', 1, "path 'var/lib/shoal' must be absolute"),
])
def test_check_config_gives_one_line_with_path_and_line(tmp_path: Path, text: str, line: int,
                                                        reason: str | None) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    result = check_config(path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.endswith("\n") and "\n" not in result.stderr[:-1], result.stderr
    assert result.stderr.startswith(f"shoal-agent: {path}:{line}: "), result.stderr
    if reason is not None:
        assert result.stderr == f"shoal-agent: {path}:{line}: {reason}\n"


def test_check_config_on_a_missing_file_names_it(tmp_path: Path) -> None:
    result = check_config(tmp_path / "nope.toml")
    assert result.returncode == 2
    assert result.stderr == f"shoal-agent: {tmp_path / 'nope.toml'}: cannot read: No such file or directory\n"


# -- --check-config opens the files the configuration names ---------------------------

# Line numbers below refer to this text.
NAMED_FILES = """\
listen = ["127.0.0.1:0"]

[tls]
cert = "{cert}"
key = "{key}"
ca = "{ca}"

[[keys]]
name = "admin"
file = "{admin}"
allow = "all"

[[keys]]
name = "monitor"
file = "{monitor}"
metrics = true
"""


@pytest.fixture
def named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """A configuration whose key and TLS files all exist and fit, made as an admin would."""
    pki = init_pki(tmp_path / "pki", [])
    files = {"cert": pki["agent_cert"], "key": pki["agent_key"], "ca": pki["ca_cert"],
             "admin": tmp_path / "admin.key", "monitor": tmp_path / "monitor.key",
             "other_key": pki["controller_key"], "config": tmp_path / "agent.toml"}
    for name in ("admin", "monitor"):
        assert controller_main(["keygen", str(files[name])]) == 0
    capsys.readouterr()
    files["config"].write_text(NAMED_FILES.format(**{name: files[name] for name in ("cert", "key", "ca",
                                                                                   "admin", "monitor")}))
    return files


def check_config_module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SHOAL_AGENT, *argv, "--check-config"],
                          capture_output=True, text=True, timeout=DEADLINE)


def test_check_config_loads_good_key_and_tls_files(named: dict[str, Path]) -> None:
    result = check_config_module("--config", str(named["config"]))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"configuration ok: {named['config']}\n", "")


def break_named(files: dict[str, Path], how: str) -> str:
    """Spoil one named file; the line --check-config must print for it, after the config path."""
    monitor, cert, ca = files["monitor"], files["cert"], files["ca"]
    if how == "missing key file":
        monitor.unlink()
        return f"15: keys.monitor.file: {monitor}: no such key file"
    if how == "key file 0644":
        monitor.chmod(0o644)
        return (f"15: keys.monitor.file: {monitor}: key file is accessible by others (mode 0644); "
                f"run chmod 600 {monitor}")
    if how == "garbage key file":
        monitor.write_text("ssh-ed25519 AAAAC3Nza not-a-shoal-key\n")
        return (f"15: keys.monitor.file: {monitor}:1: not a shoal key file "
                "(expected one line 'shoal-key-v1 <64 hex digits>')")
    if how == "cert and key mismatch":
        files["key"].write_bytes(files["other_key"].read_bytes())
        return f"4: tls.cert: {cert}: private key {files['key']} does not match this certificate ("
    assert how == "CA not PEM"
    ca.write_text("this is not a certificate\n")
    return f"6: tls.ca: {ca}: not a PEM CA certificate file"


@pytest.mark.parametrize("how", ["missing key file", "key file 0644", "garbage key file",
                                 "cert and key mismatch", "CA not PEM"])
def test_check_config_names_a_file_that_would_stop_the_start(named: dict[str, Path], how: str) -> None:
    secret = named["monitor"].read_text().split()[1]
    expected = f"shoal-agent: {named['config']}:" + break_named(named, how)
    result = check_config_module("--config", str(named["config"]))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith("\n") and "\n" not in result.stderr[:-1], result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert secret not in result.stderr


def test_check_config_reports_every_bad_file_not_just_the_first(named: dict[str, Path]) -> None:
    config = named["config"]
    lines = [f"shoal-agent: {config}:" + break_named(named, how) + "\n"
             for how in ("key file 0644", "CA not PEM")]
    named["admin"].unlink()
    lines.insert(0, f"shoal-agent: {config}:10: keys.admin.file: {named['admin']}: no such key file\n")
    result = check_config_module("--config", str(config))
    assert (result.returncode, result.stdout, result.stderr) == (2, "", "".join(lines))


def test_check_config_names_the_flag_that_named_a_bad_file(named: dict[str, Path], tmp_path: Path) -> None:
    not_a_ca = tmp_path / "ca.txt"
    not_a_ca.write_text("nothing\n")
    result = check_config_module("--config", str(named["config"]), "--key-file", str(tmp_path / "gone.key"),
                                 "--tls-ca", str(not_a_ca))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"shoal-agent: --key-file: {tmp_path / 'gone.key'}: no such key file\n"
                             f"shoal-agent: --tls-ca: {not_a_ca}: not a PEM CA certificate file\n")


# -- the running agent, under a stand-in systemd ---------------------------------------

@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """What systemd listens on for Type=notify services."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(DEADLINE)
        yield sock


def notified(sock: socket.socket) -> dict[str, str]:
    """The next datagram's NAME=value lines."""
    return dict(line.split("=", 1) for line in sock.recv(4096).decode().splitlines())


@contextlib.contextmanager
def agent_process(notify_sock: socket.socket, *argv: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "NOTIFY_SOCKET": notify_sock.getsockname()}
    proc = subprocess.Popen([*SHOAL_AGENT, *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        assert proc.stderr is not None
        proc.stderr.close()


def tcp_address(status: str) -> tuple[str, int]:
    """The TCP address in `STATUS=listening on 127.0.0.1:40123, unix:/...`."""
    assert status.startswith("listening on "), status
    tcp = [a for a in status.removeprefix("listening on ").split(", ") if not a.startswith("unix:")]
    host, _, port = tcp[0].rpartition(":")
    return host, int(port)


def test_ready_only_once_listening_then_stopping_on_sigterm(tmp_path: Path,
                                                            notify_socket: socket.socket) -> None:
    unix_path = str(tmp_path / "agent.sock")
    with agent_process(notify_socket, "--listen", "127.0.0.1:0", "--listen", f"unix:{unix_path}",
                       "--state-dir", str(tmp_path)) as proc:
        state = notified(notify_socket)
        assert state["READY"] == "1"
        # Reachable the moment systemd hears READY, on every listener.
        with socket.create_connection(tcp_address(state["STATUS"]), timeout=DEADLINE):
            pass
        with socket.socket(socket.AF_UNIX) as unix:
            unix.connect(unix_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(DEADLINE) == 0
        assert notified(notify_socket) == {"STOPPING": "1"}


def test_no_ready_when_the_address_cannot_be_bound(tmp_path: Path, notify_socket: socket.socket) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with agent_process(notify_socket, "--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path)) as proc:
            assert proc.wait(DEADLINE) == 2
            assert proc.stderr is not None
            assert f"127.0.0.1:{port}" in proc.stderr.read().decode()
    notify_socket.setblocking(False)
    with pytest.raises(BlockingIOError):
        notify_socket.recv(4096)  # systemd would see a failed start, never a ready one


async def second_command_error(address: tuple[str, int]) -> str | None:
    """Start a command that waits on stdin, then another on the same connection."""
    client = await AgentClient.connect(Target(name="agent", host=address[0], port=address[1]))
    try:
        first = await client.exec(Command(shell="cat", stdin=True))  # runs until stdin closes
        second = await (await client.exec(Command(shell="true"))).wait()
        first.close_stdin()
        assert (await first.wait()).ok
        return second.error
    finally:
        await client.close()


@pytest.mark.parametrize("how", ["file", "flag"])
async def test_running_agent_honours_a_limit(tmp_path: Path, how: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(f'listen = ["127.0.0.1:0"]\nstate_dir = "{tmp_path}"\n'
                    + ("[limits]\nmax_commands_per_connection = 1\n" if how == "file" else ""))
    argv = ["--config", str(path)] + (["--max-commands-per-connection", "1"] if how == "flag" else [])
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify.sock"))
        sock.settimeout(DEADLINE)
        with agent_process(sock, *argv) as proc:
            address = tcp_address(notified(sock)["STATUS"])
            assert await second_command_error(address) == "too many commands on this connection (limit 1)"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(DEADLINE) == 0
