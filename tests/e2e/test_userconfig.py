"""The controller's config file (controller/userconfig.py) as `shoal` applies it: values
become option defaults, flags win, every error names `path:line`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from shoal.controller.userconfig import default_config_path, load_user_config
from shoal.hostio.keyfile import write_key_file
from shoal.protocol.errors import ConfigError
from tests.agents import AgentThread, shoal


@pytest.fixture(scope="module")
def key_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("key") / "admin.key"


@pytest.fixture(scope="module")
def agent_settings(key_path: Path) -> dict[str, object]:
    """An agent that accepts only the key in `key_path`."""
    return {"keys": [write_key_file(key_path)]}


@pytest.fixture
def keyed(agents: AgentThread, key_path: Path) -> tuple[AgentThread, Path]:
    return agents, key_path


def _config(directory: Path, text: str) -> Path:
    path = directory / "config.toml"
    path.write_text(text)
    return path


def test_default_file_supplies_key_output_and_timeouts(
        keyed: tuple[AgentThread, Path], capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    agent, key = keyed
    default_config_path().parent.mkdir(parents=True)
    default_config_path().write_text(f'key_file = "{key}"\noutput = "json"\nfanout = 2\n'
                                     'connect_timeout = 30\ntimeout = 60\n')
    status, out, err = shoal(capsysbinary, "run", "-n", agent.addresses[0], "echo", "hi")
    events = [json.loads(line) for line in out.splitlines()]
    assert status == 0, err
    assert [e["event"] for e in events] == ["start", "output", "exit", "summary"]


def test_a_relative_key_file_is_taken_from_the_config_directory(
        keyed: tuple[AgentThread, Path], capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    agent, key = keyed
    config = _config(key.parent, 'key_file = "admin.key"\n')
    status, out, err = shoal(capsysbinary, "run", "--config", str(config), "-n", agent.addresses[0], "echo", "hi")
    assert (status, out, err) == (0, b"hi\n", b"")


def test_a_flag_beats_the_config(keyed: tuple[AgentThread, Path], tmp_path: Path,
                                 capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    agent, key = keyed
    config = _config(tmp_path, f'key_file = "{key}"\noutput = "json"\n')
    status, out, _ = shoal(capsysbinary, "run", "--config", str(config), "-o", "gather", "-n",
                           agent.addresses[0], "echo", "hi")
    assert status == 0 and out.splitlines()[3:] == [b"hi"]
    wrong = tmp_path / "wrong.key"
    write_key_file(wrong)
    status, out, _ = shoal(capsysbinary, "run", "--config", str(config), "--key-file", str(wrong), "-n",
                           agent.addresses[0], "echo", "hi")
    assert status == 255 and json.loads(out.splitlines()[0])["unreachable"]


def test_without_a_config_the_key_is_missing(keyed: tuple[AgentThread, Path],
                                             capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, _, _ = shoal(capsysbinary, "run", "-n", keyed[0].addresses[0], "echo", "hi")
    assert status == 255  # so the passing runs above owe their key to the config file


def test_config_color_and_the_flag_over_it(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    config = _config(tmp_path, 'color = "always"\n')
    status, _, err = shoal(capsysbinary, "run", "--config", str(config), "127.0.0.1")
    assert status == 2 and err.startswith(b"\x1b[1;31mshoal:\x1b[0m ")
    status, _, err = shoal(capsysbinary, "run", "--config", str(config), "--color=never", "127.0.0.1")
    assert status == 2 and err.startswith(b"shoal: ")


@pytest.mark.parametrize("text, line, needle", [
    ('fanout = 8\n\ncolour = "never"\n', 3, "unknown key 'colour'"),
    ('# defaults\nfanout = 0\n', 2, "fanout must be"),
    ('fanout = 2.5\n', 1, "fanout must be"),
    ('timeout = 1\nconnect_timeout = "10"\n', 2, "connect_timeout must be a number"),
    ('timeout = true\n', 1, "timeout must be a number"),
    ('output = "xml"\n', 1, "output must be one of stream, gather, json"),
    ('color = true\n', 1, "color must be one of auto, always, never"),
    ('tls_cert = "c"\ntls_key = "k"\ntls_ca = ""\n', 3, "tls_ca must be a non-empty string"),
    ('fanout = 1\ntls_key = "k"\ntls_ca = "ca"\n', 2, "go together (only tls_key, tls_ca given)"),
    ('fanout = 8\nfanout = 9\n', 2, "bad TOML"),
])
def test_bad_config_is_one_line_with_file_and_line(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes],
                                                   text: str, line: int, needle: str) -> None:
    config = _config(tmp_path, text)
    status, out, err = shoal(capsysbinary, "hosts", "--config", str(config), "web1")
    assert (status, out) == (2, b"")
    assert err.startswith(f"shoal: {config}:{line}: ".encode()) and err.count(b"\n") == 1
    assert needle.encode() in err


def test_bad_default_file_is_reported_too(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    default_config_path().parent.mkdir(parents=True)
    default_config_path().write_text("fanout = -1\n")
    status, _, err = shoal(capsysbinary, "hosts", "web1")
    assert status == 2 and err.startswith(f"shoal: {default_config_path()}:1: fanout".encode())


def test_missing_explicit_config_is_an_error(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "hosts", "--config", str(tmp_path / "none.toml"), "web1")
    assert (status, out, err) == (2, b"", f"shoal: {tmp_path / 'none.toml'}: config file not found\n".encode())


def test_missing_default_config_is_fine(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert not default_config_path().exists()
    assert shoal(capsysbinary, "hosts", "web[1-2]") == (0, b"web1\nweb2\n", b"")


def test_default_path_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_config_path() == tmp_path / "shoal" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative")
    assert default_config_path() == Path.home() / ".config" / "shoal" / "config.toml"


def test_loaded_values_are_typed(tmp_path: Path) -> None:
    config = _config(tmp_path, 'fanout = 5\ntimeout = 2\noutput = "gather"\nkey_file = "~/k"\n')
    assert load_user_config(config).defaults == {"fanout": 5, "timeout": 2.0, "output": "gather",
                                                  "key_file": os.path.expanduser("~/k")}
    with pytest.raises(ConfigError, match="not found"):
        load_user_config(tmp_path / "absent.toml")
