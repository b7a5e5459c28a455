"""`shoal bootstrap`: the exact ssh commands, and the whole flow through a stand-in ssh.

There is no sshd here, so a small `ssh` script placed first on PATH plays the
remote side: it logs its options and runs the command with `sh -c` in a sandbox
directory per host (its "home"), with TMPDIR inside it. Everything else is real:
the bundle built from this tree, tar on the far side, deploy/install.sh making a
virtualenv under a relative --destdir, the key installed 0600, the cleanup. A
host name ending in `.unreachable` makes the stand-in fail the way ssh does (255).
"""

from __future__ import annotations

import io
import os
import shlex
import stat
import tarfile
from pathlib import Path

import pytest

from shoal.hostio.keyfile import write_key_file
from shoal.controller.bootstrap import build_bundle, find_source
from shoal.controller.cli.main import main

REPO = Path(__file__).resolve().parents[2]
PREFIX = "/opt/shoal-test"

FAKE_SSH = """\
#!/bin/sh
# Test double for ssh: record the options, run the command locally in a per-host home.
while [ $# -gt 0 ]; do
    case $1 in
        -o|-l|-p|-i|-F|-J) printf '%s %s\\n' "$1" "$2" >> "$FAKE_SSH_LOG"; shift 2 ;;
        -*) shift ;;
        *) break ;;
    esac
done
host=$1
shift
printf 'host %s\\n' "$host" >> "$FAKE_SSH_LOG"
case $host in
    *.unreachable) echo "ssh: connect to host $host port 22: Connection refused" >&2; exit 255 ;;
esac
mkdir -p "$FAKE_SSH_ROOT/$host/tmp"
cd "$FAKE_SSH_ROOT/$host" && TMPDIR="$FAKE_SSH_ROOT/$host/tmp" exec sh -c "$*"
"""

FAKE_SUDO = """\
#!/bin/sh
# Test double for sudo: note the call, drop -n, run the rest as we already are.
echo "sudo $1 $2 $3" >> "$FAKE_SSH_LOG"
[ "$1" = -n ] && shift
exec "$@"
"""

REMOTE = ('umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bootstrap.XXXXXX") && trap "rm -rf $d" EXIT '
          '&& tar -xzf - -C "$d" && sh "$d/shoal/deploy/install.sh" --source "$d/shoal"')


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Put the stand-in ssh and sudo first on PATH; return the sandbox of host homes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name, text in (("ssh", FAKE_SSH), ("sudo", FAKE_SUDO)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)
    root = tmp_path / "hosts"
    root.mkdir()
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_ROOT", str(root))
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    monkeypatch.delenv("PYTHON", raising=False)
    return root


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.key"
    write_key_file(path)
    return path


def with_source(argv: tuple[str, ...] | list[str]) -> list[str]:
    """`argv` with `--source` naming this checkout (before any `--`), unless it has its own."""
    words = list(argv)
    if "--source" in words:
        return words
    at = words.index("--") if "--" in words else len(words)
    return [*words[:at], "--source", str(REPO), *words[at:]]


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    """`shoal bootstrap ARGV` pushing this checkout (an installed shoal, as CI tests
    with `pip install .`, would push itself: its own tests are below)."""
    status = main(["bootstrap", *with_source(argv)])
    out, err = capsysbinary.readouterr()
    return status, out.decode(), err.decode()


# -- --dry-run -------------------------------------------------------------------------

def test_dry_run_prints_one_ssh_command_per_host(capsysbinary: pytest.CaptureFixture[bytes],
                                                 key_file: Path) -> None:
    status, out, err = run(capsysbinary, "web[1-2],10.0.0.7:9000", "--key-file", str(key_file),
                           "--ssh-user", "admin", "--ssh-option", "Port=2222", "--ssh-option", "ConnectTimeout=3",
                           "--prefix", "/opt/shoal", "--no-systemd", "--dry-run")
    assert status == 0
    remote = f'{REMOTE} --key-file "$d/admin.key" --prefix /opt/shoal --no-systemd'
    assert out == "".join(
        f"ssh -o Port=2222 -o ConnectTimeout=3 -o BatchMode=yes -o ConnectTimeout=10 -l admin {host} "
        f"'{remote}' < shoal-bundle.tar.gz\n" for host in ("web1", "web2", "10.0.0.7"))
    assert err == (f"shoal: dry run: each command reads shoal-bundle.tar.gz (the source in {REPO} "
                   f"and {key_file} as admin.key) on stdin\n")


def test_dry_run_with_sudo_and_without_a_key_warns(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    status, out, err = run(capsysbinary, "db1", "--sudo", "--destdir", "/srv/stage dir", "--dry-run")
    assert status == 0
    # Quoting nests three deep (local shell, ssh's login shell, sudo's sh): read it back
    # the way each shell would instead of spelling out the quotes.
    command, redirect = out.split(" < ")
    assert redirect == "shoal-bundle.tar.gz\n"
    *ssh, remote = shlex.split(command)
    assert ssh == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "db1"]
    assert shlex.split(remote)[:4] == ["sudo", "-n", "sh", "-c"]
    assert shlex.split(remote)[4] == f"{REMOTE} --destdir '/srv/stage dir'"
    assert err.splitlines() == [
        "shoal: warning: no --key-file: a host without /etc/shoal/admin.key gets a new key of its own, "
        "which this controller does not hold",
        f"shoal: dry run: each command reads shoal-bundle.tar.gz (the source in {REPO}) on stdin"]


# -- mistakes stop the run before any host is touched --------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["unix:/run/shoal.sock"], "shoal: bootstrap: unix:/run/shoal.sock is a local socket, not a host to reach over ssh"),
    (["h1", "--fanout", "0"], "shoal: --fanout: fanout must be at least 1, got 0"),
    (["h1", "--source", "/nonexistent"], "shoal: --source: /nonexistent is not a shoal source tree: no pyproject.toml"),
    (["h1", "--", "uptime"], "shoal: bootstrap: unexpected arguments: uptime"),
])
def test_bad_usage_exits_2_with_one_line(capsysbinary: pytest.CaptureFixture[bytes], fake_ssh: Path,
                                         argv: list[str], message: str) -> None:
    status, out, err = run(capsysbinary, *argv)
    assert (status, out, err) == (2, "", message + "\n")
    assert not (fake_ssh.parent / "ssh.log").exists()


def test_key_file_others_can_read_is_refused_before_ssh(capsysbinary: pytest.CaptureFixture[bytes],
                                                        fake_ssh: Path, key_file: Path) -> None:
    key_file.chmod(0o644)
    status, out, err = run(capsysbinary, "h1", "--key-file", str(key_file))
    assert status == 2 and out == ""
    assert err == f"shoal: {key_file}: key file is accessible by others (mode 0644); run chmod 600 {key_file}\n"
    assert not (fake_ssh.parent / "ssh.log").exists()


def test_no_ssh_on_path_is_a_usage_error(capsysbinary: pytest.CaptureFixture[bytes], key_file: Path,
                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing in it
    status, out, err = run(capsysbinary, "h1", "--key-file", str(key_file))
    assert (status, out, err) == (2, "", "shoal: ssh: no ssh program found on PATH\n")


# -- the bundle ------------------------------------------------------------------------------

def test_bundle_holds_what_install_needs_and_a_private_key(key_file: Path) -> None:
    bundle = build_bundle(find_source(str(REPO)), str(key_file))
    with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as tar:
        names = [info.name for info in tar.getmembers()]
        assert len(names) == len(set(names)), "a file is bundled twice"
        members = {info.name: info for info in tar.getmembers()}
        key = tar.extractfile(members["admin.key"])
        assert key is not None and key.read() == key_file.read_bytes()
    assert members["admin.key"].mode == 0o600
    for needed in ("pyproject.toml", "README.md", "deploy/install.sh", "deploy/shoal-agent.service",
                   "agent/cli.py", "controller/cli/main.py", "protocol/PROTOCOL.md"):
        assert f"shoal/{needed}" in members, needed
    assert not any("__pycache__" in name or name.startswith("shoal/tests") or "/.git" in name for name in members)


# -- the real flow through the stand-in ssh ----------------------------------------------------

@pytest.mark.slow
def test_bootstrap_installs_reports_each_host_and_cleans_up(capsysbinary: pytest.CaptureFixture[bytes],
                                                            fake_ssh: Path, key_file: Path) -> None:
    # h2 already has something that is not a virtualenv where the prefix goes: install.sh refuses.
    squatter = fake_ssh / "h2" / "stage" / PREFIX.lstrip("/")
    squatter.mkdir(parents=True)
    (squatter / "keep.txt").write_text("mine")
    status, out, err = run(capsysbinary, "h1,h2,down.unreachable", "--key-file", str(key_file),
                           "--ssh-user", "admin", "--ssh-option", "Port=2222", "--sudo",
                           "--destdir", "stage", "--prefix", PREFIX, "--no-systemd", "--system-site-packages")
    assert status == 255, err
    assert sorted(out.splitlines()) == [
        "down.unreachable: unreachable: ssh: connect to host down.unreachable port 22: Connection refused",
        "h1: ok (start it with: systemctl daemon-reload && systemctl enable --now shoal-agent)",
        f"h2: failed (exit 1): install.sh: error: {squatter} exists and is not a virtualenv; "
        "refusing to install over it",
    ]
    assert err.startswith("shoal: 1 ok, 1 failed (h2), 1 unreachable (down.unreachable) in "), err

    staged = fake_ssh / "h1" / "stage"
    installed_key = staged / "etc" / "shoal" / "admin.key"
    assert installed_key.read_bytes() == key_file.read_bytes()
    assert stat.S_IMODE(installed_key.stat().st_mode) == 0o600
    assert stat.S_IMODE((staged / "etc" / "shoal").stat().st_mode) == 0o700
    assert os.access(staged / PREFIX.lstrip("/") / "bin" / "shoal-agent", os.X_OK)
    assert (staged / "etc" / "systemd" / "system" / "shoal-agent.service").is_file()
    assert "admin.key" in (staged / "etc" / "shoal" / "agent.toml").read_text()
    assert (squatter / "keep.txt").read_text() == "mine"
    for host in ("h1", "h2"):  # the private temporary directory is gone, key and all
        assert list((fake_ssh / host / "tmp").iterdir()) == [], host

    log = (fake_ssh.parent / "ssh.log").read_text().splitlines()
    for host in ("h1", "h2", "down.unreachable"):
        assert f"host {host}" in log
    assert log.count("-o Port=2222") == 3 and log.count("-o BatchMode=yes") == 3 and log.count("-l admin") == 3
    assert log.count("sudo -n sh -c") == 2  # not on the host ssh never reached



# -- from a shoal installed with `pip install .` (no checkout next to it) ----------------------

@pytest.mark.slow
def test_bootstrap_works_from_an_installed_shoal(fake_ssh: Path, key_file: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys
    import sysconfig

    # A non-editable install, built from a copy so the checkout gets no build/ litter.
    copy = tmp_path / "src"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__",
                                                              ".mypy_cache", "tests"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                    str(copy)], check=True, capture_output=True)
    shutil.rmtree(copy)
    # -S: no .pth files, so this checkout's editable install stays out; the installed
    # shoal and the test venv's own packages (psutil, cryptography) go on the path
    # inside, not through PYTHONPATH, which the remote pip would inherit.
    paths = [str(site), sysconfig.get_paths()["purelib"]]
    launch = (f"import sys; sys.path[:0] = {paths!r}; from shoal.controller.cli.main import main; "
              "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-S", "-c", launch, "bootstrap", "h1",
                           "--key-file", str(key_file), "--destdir", "stage", "--prefix", PREFIX,
                           "--no-systemd", "--system-site-packages"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("h1: ok ")
    staged = fake_ssh / "h1" / "stage"
    agent = staged / PREFIX.lstrip("/") / "bin" / "shoal-agent"
    assert os.access(agent, os.X_OK)
    assert (staged / "etc" / "systemd" / "system" / "shoal-agent.service").is_file()
    assert (staged / "etc" / "shoal" / "admin.key").read_bytes() == key_file.read_bytes()
    check = subprocess.run([str(agent), "--help"], capture_output=True, text=True)
    assert check.returncode == 0 and "usage: shoal-agent" in check.stdout


def test_dry_run_from_an_installed_shoal_installs_the_wheel(tmp_path: Path) -> None:
    from shoal.controller.bootstrap import Bootstrap, Source

    source = Source("the installed shoal", (), ("shoal-0.1.0-py3-none-any.whl", b""))
    remote = Bootstrap(install_from=source.install_from).remote_command()
    assert remote.endswith('sh "$d/shoal/deploy/install.sh" --source "$d/shoal/shoal-0.1.0-py3-none-any.whl"')
