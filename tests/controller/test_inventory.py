"""The TOML inventory: groups, nesting, settings precedence, and errors with path:line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shoal.controller.inventory import Inventory, default_inventory_path, load_inventory
from shoal.protocol.errors import ConfigError

EXAMPLE = """\
[defaults]
port = 8470
key_file = "keys/shared.key"

[groups.web]
hosts = ["web[01-20]", "10.0.0.0/30"]
port = 8471
tls_ca = "/etc/shoal/ca.pem"

[groups.db]
hosts = ["db[1-2]"]

[groups.all]
groups = ["web", "db"]
hosts = ["extra1"]
port = 8000

[hosts."web01"]
port = 9000

[hosts."db[1-2]"]
tls_ca = "/etc/shoal/db-ca.pem"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    return caught.value


def test_groups_listed_in_file_order(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, EXAMPLE))
    assert inventory.groups == ("web", "db", "all")


def test_nested_group_patterns(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, EXAMPLE))
    assert inventory.group_patterns("web") == ["web[01-20]", "10.0.0.0/30"]
    assert inventory.group_patterns("all") == ["extra1", "web[01-20]", "10.0.0.0/30", "db[1-2]"]


def test_unknown_group_names_the_known_ones(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, EXAMPLE))
    with pytest.raises(ConfigError, match="unknown group 'mail'.*web, db, all"):
        inventory.group_patterns("mail")


def test_settings_precedence_defaults_groups_hosts(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, EXAMPLE))
    key = str(tmp_path / "keys" / "shared.key")
    assert inventory.settings_for("web01") == {"port": 9000, "key_file": key, "tls_ca": "/etc/shoal/ca.pem"}
    # web is nested in all: the more specific group's port wins over all's.
    assert inventory.settings_for("web02")["port"] == 8471
    assert inventory.settings_for("10.0.0.2")["port"] == 8471
    assert inventory.settings_for("db2") == {"port": 8000, "key_file": key, "tls_ca": "/etc/shoal/db-ca.pem"}
    assert inventory.settings_for("extra1")["port"] == 8000
    assert inventory.settings_for("elsewhere") == {"port": 8470, "key_file": key}


def test_later_unrelated_group_wins(tmp_path: Path) -> None:
    text = '[groups.a]\nhosts = ["h1"]\nport = 1001\n[groups.b]\nhosts = ["h[1-2]"]\nport = 1002\n'
    inventory = load_inventory(write(tmp_path, text))
    assert inventory.settings_for("h1")["port"] == 1002


def test_empty_inventory_has_nothing(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, ""))
    assert inventory.groups == ()
    assert inventory.settings_for("web01") == {}


def test_missing_default_file_is_an_empty_inventory() -> None:
    assert not default_inventory_path().exists()
    assert load_inventory() == Inventory()


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_inventory(missing)
    assert caught.value.where == str(missing)


def test_missing_file_named_by_environment_is_an_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_INVENTORY", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="not found"):
        load_inventory()


def test_default_path_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_inventory_path() == tmp_path / "cfg" / "shoal" / "inventory.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert default_inventory_path() == Path(os.environ["HOME"]) / ".config" / "shoal" / "inventory.toml"
    monkeypatch.setenv("SHOAL_INVENTORY", str(tmp_path / "mine.toml"))
    assert default_inventory_path() == tmp_path / "mine.toml"


def test_default_path_is_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "shoal").mkdir()
    (tmp_path / "shoal" / "inventory.toml").write_text('[groups.g]\nhosts = ["h1"]\n')
    assert load_inventory().group_patterns("g") == ["h1"]


@pytest.mark.parametrize(("text", "line", "words"), [
    ('[groups.web]\nhosts = ["a" "b"]\n', 2, "bad TOML"),
    ('[groups.web]\nhosts = ["a"]\nhosts = ["b"]\n', 3, "bad TOML"),
    ('[defaults]\nport = 8470\nprot = 1\n', 3, "unknown key 'prot' in defaults"),
    ('[defaults]\nport = 1\n\n[group.web]\nhosts = []\n', 4, "unknown key 'group' in top level"),
    ('[groups.web]\nhosts = ["a"]\ntls_crt = "x"\n', 3, "unknown key 'tls_crt' in groups.web"),
    ('[hosts."web01"]\nport = 1\nuser = "root"\n', 3, "unknown key 'user'"),
    ('[defaults]\n\nport = "8470"\n', 3, "port must be an integer"),
    ('[defaults]\nport = 70000\n', 2, "port must be an integer"),
    ('[defaults]\nport = true\n', 2, "port must be an integer"),
    ('[defaults]\nkey_file = 7\n', 2, "key_file must be a non-empty string"),
    ('defaults = 3\n', 1, "defaults must be a table"),
    ('[groups.web]\nhosts = "web1"\n', 2, "hosts must be a list"),
    ('[groups.web]\nhosts = [\n  "web1",\n  "web[3-1]",\n]\n', 4, "range end before start"),
    ('[groups.web]\nhosts = ["10.0.0.0/33"]\n', 2, "bad CIDR block"),
    ('[groups.web]\nhosts = ["@db"]\n', 2, "nest groups"),
    ('[groups.web]\nhosts = []\n\n[groups.all]\ngroups = ["web", "dbs"]\n', 5, "unknown group 'dbs'"),
    ('[groups."a,b"]\nhosts = []\n', 1, "bad group name"),
    ('[hosts."web[1-"]\nport = 1\n', 1, "unclosed"),
    ('[defaults]\nport = 1\n[groups]\nweb = 3\n', 4, "groups.web must be a table"),
])
def test_bad_files_name_path_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    error = load_error(tmp_path, text)
    assert error.where == f"{tmp_path / 'inventory.toml'}:{line}"
    assert words in error.reason


def test_dotted_keys_are_located(tmp_path: Path) -> None:
    error = load_error(tmp_path, 'groups.web.hosts = ["a"]\n\ngroups.web.colour = "red"\n')
    assert error.where.endswith(":3")


def test_not_utf8_is_located(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_bytes(b'[groups.web]\nhosts = ["\xff"]\n')
    with pytest.raises(ConfigError) as caught:
        load_inventory(path)
    assert caught.value.where == f"{path}:2"


def test_nesting_cycle_is_named_with_its_line(tmp_path: Path) -> None:
    text = ('[groups.a]\ngroups = ["b"]\n\n[groups.b]\ngroups = ["c"]\n\n'
            '[groups.c]\nhosts = ["h"]\ngroups = ["a"]\n')
    error = load_error(tmp_path, text)
    assert "a -> b -> c -> a" in error.reason
    assert error.where.endswith(":9")


def test_self_nesting_is_a_cycle(tmp_path: Path) -> None:
    error = load_error(tmp_path, '[groups.a]\ngroups = ["a"]\n')
    assert "a -> a" in error.reason and error.where.endswith(":2")


def test_cycle_in_a_built_inventory_is_refused_at_lookup() -> None:
    from shoal.controller.inventory import Group

    inventory = Inventory(group_table={"a": Group("a", children=("b",)), "b": Group("b", children=("a",))})
    with pytest.raises(ConfigError, match="a -> b -> a"):
        inventory.group_patterns("a")


def test_relative_paths_resolve_against_the_inventory(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, '[defaults]\ntls_cert = "certs/c.pem"\ntls_key = "~/k.pem"\n'))
    settings = inventory.settings_for("h")
    assert settings["tls_cert"] == str(tmp_path / "certs" / "c.pem")
    assert settings["tls_key"] == str(Path(os.environ["HOME"]) / "k.pem")


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_inventory(tmp_path)


def test_host_names_lists_group_members_and_host_tables_once(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text('[groups.web]\nhosts = ["web[1-2]", "10.0.0.0/30"]\n'
                    '[groups.all]\nhosts = ["web1", "db1"]\n[hosts."lb1"]\nport = 9000\n')
    assert load_inventory(path).host_names() == ["web1", "web2", "db1", "lb1"]


def test_group_hosts_take_step_ranges_and_operators(tmp_path: Path) -> None:
    path = tmp_path / "inventory.toml"
    path.write_text('[groups.odd]\nhosts = ["web[01-09/4]", "db[1-4]!db2", "10.0.0.0/31"]\nport = 9000\n')
    inventory = load_inventory(path)
    assert inventory.host_names() == ["db1", "db3", "db4", "web01", "web05", "web09"]
    assert inventory.settings_for("web05") == {"port": 9000}
    assert inventory.settings_for("10.0.0.1") == {"port": 9000}
