"""`shoal hosts`: what a pattern expands to, checked before anything runs; and the same
pattern errors through `shoal run`, which must fail before connecting anywhere."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.agents import shoal
from tests.programs import SHOAL



INVENTORY = """\
[defaults]
port = 9000

[groups.web]
hosts = ["web[01-04]"]
key_file = "keys/web.key"

[groups.db]
hosts = ["db[1-2]"]
port = 9100

[groups.all]
groups = ["web", "db"]
hosts = ["lb1"]
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(INVENTORY)
    return path


def test_names_one_per_line_in_run_order(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "hosts", "web[01-03],10.0.0.0/30,[::1]:9000,unix:/run/a.sock",
                             "-x", "web02")
    assert (status, err) == (0, b"")
    assert out == b"web01\nweb03\n10.0.0.1\n10.0.0.2\n[::1]:9000\nunix:/run/a.sock\n"


def test_groups_nest_and_exclusion_applies(capsysbinary: pytest.CaptureFixture[bytes], inventory: Path) -> None:
    status, out, _ = shoal(capsysbinary, "hosts", "--inventory", str(inventory), "@all", "-x", "web[02-03]")
    assert status == 0
    assert sorted(out.split()) == [b"db1", b"db2", b"lb1", b"web01", b"web04"]


def test_json_shows_the_settings_each_host_would_use(capsysbinary: pytest.CaptureFixture[bytes],
                                                     inventory: Path) -> None:
    status, out, _ = shoal(capsysbinary, "hosts", "--inventory", str(inventory), "web01,db2:9200,unix:/s", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert records == [
        {"name": "web01", "host": "web01", "port": 9000, "path": None,
         "key_file": str(inventory.parent / "keys" / "web.key"), "tls_cert": None, "tls_key": None, "tls_ca": None,
         "via": []},
        {"name": "db2:9200", "host": "db2", "port": 9200, "path": None,
         "key_file": None, "tls_cert": None, "tls_key": None, "tls_ca": None, "via": []},
        {"name": "unix:/s", "host": None, "port": 9000, "path": "/s",
         "key_file": None, "tls_cert": None, "tls_key": None, "tls_ca": None, "via": []},
    ]


def test_count_and_fold(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert shoal(capsysbinary, "hosts", "rack[1-3]-node[01-08]", "--count") == (0, b"24\n", b"")
    assert shoal(capsysbinary, "hosts", "web[01-20],db1", "-x", "web07", "--fold") == (
        0, b"db1,web[01-06,08-20]\n", b"")


def test_large_block_needs_yes(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = shoal(capsysbinary, "hosts", "10.1.0.0/19")
    assert (status, out) == (2, b"")
    assert err == b"shoal: 10.1.0.0/19 holds 8190 addresses, more than 4096; pass --yes to target them all\n"
    assert shoal(capsysbinary, "hosts", "10.1.0.0/19", "--yes", "--count") == (0, b"8190\n", b"")


@pytest.mark.parametrize("command", ["hosts", "run"])
@pytest.mark.parametrize(("pattern", "needle"), [
    ("web[1-", b"unclosed '['"),
    ("@nope", b"unknown group 'nope'"),
    ("10.0.0.0/8", b"10.0.0.0/8 holds"),
    ("web[5-1]", b"web[5-1]"),
    ("host:99999", b"bad port"),
])
def test_bad_patterns_exit_2_with_one_line(capsysbinary: pytest.CaptureFixture[bytes], command: str,
                                           pattern: str, needle: bytes) -> None:
    tail = ["-n", "--", "true"] if command == "run" else []
    status, out, err = shoal(capsysbinary, command, pattern, *tail)
    assert (status, out) == (2, b"")
    assert err.startswith(b"shoal: ") and err.count(b"\n") == 1 and needle in err


@pytest.mark.parametrize(("pattern", "folded"), [
    ("web[1-10]!web[3-5]", b"web[1-2,6-10]"),
    ("web[1-4]&web[3-6]", b"web[3-4]"),
    ("web[1-4]^web[3-6]", b"web[1-2,5-6]"),
    ("web[01-09/2]", b"web[01,03,05,07,09]"),
    ("@all&@db,lb1", b"db[1-2],lb1"),
    ("@all!@web!lb1", b"db[1-2]"),
])
def test_set_operators_and_steps(capsysbinary: pytest.CaptureFixture[bytes], inventory: Path,
                                 pattern: str, folded: bytes) -> None:
    assert shoal(capsysbinary, "hosts", "--inventory", str(inventory), pattern, "--fold") == (
        0, folded + b"\n", b"")


def test_case_insensitive_dedup_keeps_first_spelling(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert shoal(capsysbinary, "hosts", "Web1,web1,WEB2,web2") == (0, b"Web1\nWEB2\n", b"")


@pytest.mark.parametrize(("pattern", "line"), [
    ("web[9-1]", b'shoal: bad host pattern "web[9-1]": range end before start\n'),
    ("web[1-9]!", b'shoal: bad host pattern "web[1-9]!": empty element after \'!\'\n'),
])
def test_bad_pattern_line_names_the_pattern(capsysbinary: pytest.CaptureFixture[bytes],
                                            pattern: str, line: bytes) -> None:
    assert shoal(capsysbinary, "hosts", pattern) == (2, b"", line)


def test_everything_excluded_is_an_error(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, _, err = shoal(capsysbinary, "hosts", "web[1-3]", "-x", "web[1-3]")
    assert (status, err) == (2, b"shoal: web[1-3]: no hosts match\n")


def test_installed_command(tmp_path: Path) -> None:
    inventory = tmp_path / "inv.toml"
    inventory.write_text(INVENTORY)
    done = subprocess.run([*SHOAL, "hosts", "@db", "--fold"], capture_output=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "SHOAL_INVENTORY": str(inventory)})
    assert (done.returncode, done.stdout, done.stderr) == (0, b"db[1-2]\n", b"")
