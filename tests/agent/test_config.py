"""Agent configuration: every option round-trips, every mistake names path:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from shoal.agent.config import (
    AgentConfig,
    DiscoveryConfig,
    KeyPolicy,
    Limits,
    ListenAddress,
    TlsConfig,
    dump_config,
    load_config,
    parse_listen,
)
from shoal.protocol.errors import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

EVERYTHING = AgentConfig(
    listen=("0.0.0.0:9000", "[::1]:9001", "unix:/run/shoal/agent.sock"),
    insecure=True,
    log_level="debug",
    audit_log="/var/log/shoal/audit \"quoted\" \\ é.jsonl",
    audit_required=True,
    state_dir="/srv/state",
    tls=TlsConfig(cert="/etc/shoal/a.pem", key="/etc/shoal/a.key", ca="/etc/shoal/ca.pem"),
    limits=Limits(max_connections=7, max_startups=5, max_startups_per_source=2, max_commands=9, max_commands_per_connection=3,
                  max_frame_size=65536, stdin_window=4096, output_window=65536,
                  handshake_timeout=0.25, idle_timeout=12.5, kill_grace=0.0, output_linger=0.5,
                  job_output_size=4096, job_retention=60.0, keepalive=1.0, reconnect_min=0.5, reconnect_max=5.0,
                  max_relays=5, relay_window=8192),
    discovery=DiscoveryConfig(enabled=True, port=9999, name="web-01 (rack \"3\")", group="239.1.2.3",
                              group6="ff05::1:3"),
    keys=(
        KeyPolicy("admin", "/etc/shoal/admin.key", allow_all=True, relay=("192.168.0.0/16",)),
        KeyPolicy("monitor", "/etc/shoal/monitor.key", commands=("uptime", "printf 'a\tb\n\x7f'", "df *"),
                  metrics=True, files=True, file_roots=("/srv/shoal", "/tmp"), env=("LANG", "TZ"), cwd=True,
                  relay=("10.0.0.0/8:8470", "[fd00::/8]:8470-8479", "unix:/run/shoal.sock")),
        KeyPolicy("nofiles", "/etc/shoal/nofiles.key"),
    ),
    connect=("hub.example.net", "[::1]:9472"),
    name="web-01.example.net",
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(textwrap.dedent(text))
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


# -- round trip ----------------------------------------------------------------------

@pytest.mark.parametrize("config", [AgentConfig.default(), EVERYTHING], ids=["default", "everything"])
def test_dump_then_load_gives_the_same_config(tmp_path: Path, config: AgentConfig) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(dump_config(config))
    assert load_config(path) == config


def test_everything_config_sets_every_option_away_from_its_default() -> None:
    # Guards the round-trip test: an option left at its default would not prove much.
    default = AgentConfig.default()
    for section in ("limits", "discovery"):
        ours, theirs = getattr(EVERYTHING, section), getattr(default, section)
        for name in ours.__dataclass_fields__:
            assert getattr(ours, name) != getattr(theirs, name), f"{section}.{name}"
    for name in AgentConfig.__dataclass_fields__:
        assert getattr(EVERYTHING, name) != getattr(default, name), name


def test_brief_example_file_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """\
        listen = ["127.0.0.1:8470"]
        insecure = false
        log_level = "info"
        audit_log = "/var/log/shoal/audit.jsonl"
        state_dir = "/var/lib/shoal"

        [limits]
        max_frame_size = 4194304
        kill_grace = 5

        [[keys]]
        name = "monitor"
        file = "/etc/shoal/monitor.key"
        allow = "listed"
        commands = [
            "uptime",
            "df -h",
        ]
        metrics = true
    """))
    assert config.audit_log == "/var/log/shoal/audit.jsonl"
    assert config.limits.kill_grace == 5.0 and isinstance(config.limits.kill_grace, float)
    assert config.keys[0].commands == ("uptime", "df -h")
    assert config.keys[0].allows_metrics() and not config.keys[0].allows_files("/srv/x")
    assert config.tls is None and config.discovery == DiscoveryConfig()


def test_example_agent_toml_in_deploy_loads_cleanly() -> None:
    config = load_config(DEPLOY / "agent.toml")
    names = [key.name for key in config.keys]
    assert names == ["admin", "monitor"]
    admin, monitor = config.keys
    assert admin.allow_all and admin.allows_command(None, "reboot")
    assert monitor.allows_command(["uptime"], None)
    assert not monitor.allows_command(None, "reboot")


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.where == str(tmp_path / "nope.toml")
    assert "cannot read" in str(info.value)


# -- errors with path:line --------------------------------------------------------------

@pytest.mark.parametrize("text, line, reason", [
    ('listen = ["127.0.0.1:1"]\nbogus = 1\n', 2, "unknown key 'bogus'"),
    ('[limits]\nmax_connections = 5\nmax_conections = 5\n', 3, "unknown key 'max_conections'"),
    ('[discovery]\nenabled = true\n\n[surprise]\nx = 1\n', 4, "unknown key 'surprise'"),
    ('[[keys]]\nname = "a"\nfile = "/k"\nallow = "all"\ncolour = "red"\n', 5, "unknown key 'colour'"),
    ('[limits]\nmax_connections = "many"\n', 2, "expected an integer, got a string"),
    ('[limits]\nmax_commands = true\n', 2, "expected an integer, got a boolean"),
    ('insecure = "yes"\n', 1, "expected true or false"),
    ('[limits]\nidle_timeout = "10m"\n', 2, "expected a number of seconds"),
    ('[limits]\n\nmax_frame_size = 1024\n', 3, "out of range (65536 to 16777216)"),
    ('[limits]\nmax_frame_size = 16777217\n', 2, "out of range"),
    ('[limits]\nhandshake_timeout = 0\n', 2, "out of range"),
    ('[limits]\nkill_grace = nan\n', 2, "out of range"),
    ('log_level = "loud"\n', 1, "log_level must be one of"),
    ('state_dir = "var/lib/shoal"\n', 1, "must be absolute"),
    ('listen = [\n  "127.0.0.1:1",\n]\n[limits]\n', 1, None),
])
def test_bad_value_is_reported_at_its_line(tmp_path: Path, text: str, line: int, reason: str | None) -> None:
    path = write(tmp_path, text)
    if reason is None:  # a valid multi-line array must not confuse anything
        assert load_config(path).listen == ("127.0.0.1:1",)
        return
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.where == f"{path}:{line}"
    assert reason in info.value.reason
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("address, why", [
    ("8470", "no port"),
    ("localhost", "no port"),
    (":8470", "no host"),
    ("::1:8470", "IPv6 addresses need brackets"),
    ("[::1:8470", "unclosed"),
    ("[nothost]:8470", "is not an IPv6 address"),
    ("127.0.0.1:http", "is not a number"),
    ("127.0.0.1:65536", "is not a number from 0 to 65535"),
    ("unix:", "no socket path"),
    ("unix:@abstract", "abstract sockets"),
    ("unix:/" + "x" * 200, "longer than 107 bytes"),
])
def test_bad_listen_address_in_file(tmp_path: Path, address: str, why: str) -> None:
    error = load_error(tmp_path, f'log_level = "info"\nlisten = ["127.0.0.1:1", "{address}"]\n')
    assert error.where == f"{tmp_path / 'agent.toml'}:2"
    assert why in error.reason and repr(address) in error.reason


def test_partial_tls_names_the_missing_files_at_the_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, '''\
        listen = ["127.0.0.1:1"]

        [tls]
        cert = "/etc/shoal/agent.pem"
    ''')
    assert error.where == f"{tmp_path / 'agent.toml'}:3"
    assert "cert, key and ca together" in error.reason and "'key', 'ca'" in error.reason


def test_duplicate_key_name_points_at_the_second_one(tmp_path: Path) -> None:
    error = load_error(tmp_path, '''\
        [[keys]]
        name = "admin"
        file = "/etc/shoal/a.key"
        allow = "all"

        [[keys]]
        file = "/etc/shoal/b.key"
        name = "admin"
    ''')
    assert error.where == f"{tmp_path / 'agent.toml'}:8"
    assert error.reason == "duplicate key name 'admin'"


def test_same_key_file_twice_is_refused(tmp_path: Path) -> None:
    error = load_error(tmp_path, '''\
        [[keys]]
        name = "a"
        file = "/etc/shoal/a.key"
        [[keys]]
        name = "b"
        file = "/etc/shoal/a.key"
    ''')
    assert error.where.endswith(":6") and "already used by key 'a'" in error.reason


@pytest.mark.parametrize("body, line, reason", [
    ('name = "a"\nfile = "/k"\nallow = "some"\n', 4, 'allow must be "all" or "listed"'),
    ('name = "a"\nallow = "all"\n', 1, "key needs 'file'"),
    ('name = "a"\nfile = "/k"\nallow = "all"\nfiles = false\n', 5, "only applies to allow = \"listed\""),
    ('name = "a"\nfile = "/k"\ncommands = "uptime"\n', 4, "expected a list of strings"),
    ('name = "a"\nfile = "/k"\ncommands = ["uptime", ""]\n', 4, "empty command entry"),
    ('name = "a"\nfile = "/k"\nfile_roots = ["/srv"]\n', 4, "file_roots needs files = true"),
    ('name = "a b"\nfile = "/k"\n', 2, "key name must be"),
    ('name = "a"\nfile = "k"\n', 3, "must be absolute"),
])
def test_bad_key_policy(tmp_path: Path, body: str, line: int, reason: str) -> None:
    error = load_error(tmp_path, "[[keys]]\n" + body)
    assert error.where == f"{tmp_path / 'agent.toml'}:{line}"
    assert reason in error.reason


def test_toml_syntax_error_gives_its_line(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'listen = ["127.0.0.1:1"]\n\n[limits\nmax_connections = 1\n')
    assert error.where == f"{tmp_path / 'agent.toml'}:3"
    assert error.reason.startswith("TOML syntax error")


def test_inline_table_errors_point_at_the_inline_table(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'log_level = "info"\nlimits = { max_connections = 0 }\n')
    assert error.where == f"{tmp_path / 'agent.toml'}:2" and "out of range" in error.reason


def test_multiline_string_lines_are_not_taken_for_keys(tmp_path: Path) -> None:
    error = load_error(tmp_path, '''\
        [discovery]
        name = """
        port = 3
        """
        port = 0
    ''')
    assert error.where == f"{tmp_path / 'agent.toml'}:5"


# -- settings in code -----------------------------------------------------------------

def test_replace_from_cli_accepts_dotted_names() -> None:
    config = AgentConfig.default().replace_from_cli(
        listen=["0.0.0.0:1"], **{"limits.max_connections": 3, "discovery.enabled": True})
    assert config.listen == ("0.0.0.0:1",)
    assert config.limits.max_connections == 3 and config.limits.max_commands == Limits().max_commands
    assert config.discovery.enabled


@pytest.mark.parametrize("overrides, where", [
    ({"limits.max_frame_size": 10}, "limits.max_frame_size"),
    ({"limits.nope": 1}, "limits.nope"),
    ({"nope.x": 1}, "nope"),
    ({"colour": "red"}, "colour"),
    ({"tls.cert": "/x"}, "tls"),
    ({"listen": ["nowhere"]}, "listen[0]"),
    ({"listen": []}, "listen"),
])
def test_replace_from_cli_rejects_bad_options(overrides: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        AgentConfig.default().replace_from_cli(**overrides)
    assert info.value.where == where


def test_parse_listen_forms() -> None:
    assert parse_listen("127.0.0.1:8470") == ListenAddress("tcp", host="127.0.0.1", port=8470)
    assert parse_listen("[::1]:0") == ListenAddress("tcp", host="::1", port=0)
    assert parse_listen("agent.example.net:1") == ListenAddress("tcp", host="agent.example.net", port=1)
    assert parse_listen("unix:/run/a.sock") == ListenAddress("unix", path="/run/a.sock")
    assert str(parse_listen("[::]:8470")) == "[::]:8470"
    assert str(parse_listen("unix:/run/a.sock")) == "unix:/run/a.sock"


def test_duplicate_listen_address_is_refused() -> None:
    with pytest.raises(ConfigError, match="given twice"):
        AgentConfig(listen=("127.0.0.1:1", "127.0.0.1:1"))


def test_allow_all_key_permits_everything() -> None:
    admin = KeyPolicy("admin", "/k", allow_all=True)
    assert admin.metrics and admin.files and admin.file_roots is None
    assert admin.allows_command(["rm", "-rf", "/tmp/x"], None) and admin.allows_command(None, "reboot")
    assert admin.allows_metrics() and admin.allows_files("/etc/shadow")


def test_listed_key_matches_exact_lines_and_patterns() -> None:
    key = KeyPolicy("m", "/k", commands=("uptime", "df -h", "systemctl status *"))
    assert key.allows_command(["uptime"], None)
    assert key.allows_command(None, "df -h")
    assert key.allows_command(["systemctl", "status", "sshd"], None)
    assert not key.allows_command(["df", "-h", "/"], None)
    assert not key.allows_command(["uptime;", "reboot"], None)
    assert not key.allows_command(None, "Uptime")
    assert not key.allows_command(None, None) and not key.allows_command([], None)
    assert not key.allows_metrics() and not key.allows_files("/tmp/x")


@pytest.mark.parametrize("request_argv, request_shell", [
    (None, "systemctl status x; reboot"),
    (None, "systemctl status $(reboot)"),
    (None, "systemctl status `reboot`"),
    (None, "systemctl status x && reboot"),
    (None, "systemctl status x | sh"),
    (None, "systemctl status x > /etc/passwd"),
    (None, "systemctl status *"),
    (["systemctl", "status", "x; reboot"], None),
    (["systemctl", "status", "../../bin/sh"], None),
    (["systemctl", "status", "a", "b"], None),
])
def test_patterns_never_admit_shell_syntax_extra_words_or_dotdot(request_argv, request_shell) -> None:  # type: ignore[no-untyped-def]
    # An attacker holding the monitor key must not turn an allowed pattern into reboot.
    key = KeyPolicy("m", "/k", commands=("systemctl status *",))
    assert not key.allows_command(request_argv, request_shell)


def test_patterns_admit_plain_words_as_shell_or_argv() -> None:
    key = KeyPolicy("m", "/k", commands=("systemctl status *", "cat /var/log/app/*.log"))
    assert key.allows_command(None, "systemctl status sshd.service")
    assert key.allows_command(["systemctl", "status", "nginx"], None)
    assert key.allows_command(None, "cat /var/log/app/web-1.log")
    exact = KeyPolicy("m", "/k", commands=("systemctl status sshd",))
    assert not exact.allows_command(None, "systemctl status sshd; reboot")


def test_file_roots_confine_transfers_even_through_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    key = KeyPolicy("f", "/k", files=True, file_roots=(str(root),))
    assert key.allows_files(str(root / "new.txt"))
    assert key.allows_files(str(root))
    assert not key.allows_files(str(root / ".." / "elsewhere"))
    assert not key.allows_files(str(root) + "-sibling/x")
    assert not key.allows_files(str(root / "escape" / "passwd"))
    assert not key.allows_files("relative/path")
    anywhere = KeyPolicy("g", "/k", files=True)
    assert anywhere.allows_files("/etc/hosts")


def test_limits_accept_integers_for_seconds_and_store_floats() -> None:
    limits = Limits(kill_grace=2, idle_timeout=30)
    assert limits.kill_grace == 2.0 and isinstance(limits.kill_grace, float)
    assert isinstance(limits.idle_timeout, float)


def test_config_is_immutable() -> None:
    config = AgentConfig.default()
    with pytest.raises(AttributeError):
        config.insecure = True  # type: ignore[misc]
    assert not hasattr(config, "__dict__")

