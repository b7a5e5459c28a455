"""Enrol hosts over the ssh access they already have: push shoal, run deploy/install.sh.

Each host costs one ssh session. Its standard input carries a gzipped tar of the
shoal source (what pip needs plus deploy/; from a shoal installed without its tree,
a wheel rebuilt from the installed files plus shoal.deploy) and, optionally, the
fleet's key file;
the remote command unpacks it into a private `mktemp -d` directory, removed on
exit whatever happens, and runs install.sh from it. One session instead of an
upload followed by an install means a host that drops mid-way leaves nothing
behind in /tmp, and a fleet pays one ssh handshake per host.

The remote command is POSIX shell for the login shell of the ssh user, as with
ssh itself; `sudo=True` wraps it in `sudo -n sh -c` for a non-root login.
Without a key file each host keeps (or generates) its own /etc/shoal/admin.key,
which the controller then does not hold: enrolling a fleet means giving one.

With a CA (`shoal certs init`), each host also gets a certificate of its own,
issued here for the name it is reached by, and install.sh --tls-dir puts it in
/etc/shoal with the CA certificate and names them in agent.toml's [tls]. The CA's
private key is never in a bundle. Since the source part is the same for every
host, it is compressed once; a host's certificate follows it as a second gzip
member (RFC 1952 allows several; gunzip and tar -z read them as one stream).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import os
import shlex
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from shoal.protocol.errors import ConfigError

from shoal.controller.fanout import fan_out
from shoal.controller.outcome import Outcome
from shoal.controller.pki import CertificateAuthority, issue_agent_certificate
from shoal.controller.result import UNREACHABLE, Result

__all__ = [
    "BUNDLE_NAME",
    "Bundle",
    "DEFAULT_SSH_OPTIONS",
    "Bootstrap",
    "HostReport",
    "Source",
    "bootstrap_host",
    "bootstrap_hosts",
    "build_bundle",
    "bundle_head",
    "bundle_tail",
    "find_source",
    "key_file_checked",
    "ssh_host",
    "tls_files",
]

# What the remote side calls the stream on its stdin (shown by --dry-run).
BUNDLE_NAME = "shoal-bundle.tar.gz"
# Never stop to ask for a password or a host key with many sessions in flight, and
# give up on a dead host instead of waiting for TCP's own timeout. The user's -o
# options come first, and ssh keeps the first value it sees, so they win.
DEFAULT_SSH_OPTIONS = ("BatchMode=yes", "ConnectTimeout=10")
# ssh exits 255 when it could not connect or authenticate (remote commands rarely do).
SSH_FAILED = 255
# A host whose bundle could not be made (no ssh session was started): usage's status.
_CONFIG_STATUS = 2
# The source directory's name inside the bundle, and the key's.
_SOURCE_DIR = "shoal"
_KEY_NAME = "admin.key"
_TOP_FILES = ("pyproject.toml", "README.md", "LICENSE")
# The directory of a host's TLS files inside the bundle, and their names and modes
# there (install.sh --tls-dir installs them under the same names in /etc/shoal).
_TLS_DIR = "tls"
_TLS_MODES = {"agent.pem": 0o644, "agent.key": 0o600, "ca.pem": 0o644}

# What a host reads on its stdin; raising ConfigError makes that host's failure.
Bundle = Callable[[str], bytes]


@dataclass(frozen=True, slots=True)
class Source:
    """What a bundle carries under `shoal/`, and what install.sh installs from.

    Attributes:
        where: what --dry-run names (a directory, or the installed shoal).
        files: name under `shoal/` -> a local file or directory.
        wheel: a wheel rebuilt from the installed packages (file name, bytes), which
            install.sh then installs; None for a source tree, installed as it is.
    """

    where: str
    files: tuple[tuple[str, Path], ...]
    wheel: tuple[str, bytes] | None = None

    @property
    def install_from(self) -> str:
        """What install.sh --source gets, relative to the bundle's `shoal/` ("" for the tree)."""
        return self.wheel[0] if self.wheel else ""


# What a tree needs for install.sh; the same names under the installed shoal.deploy.
_TREE_NEEDS = ("pyproject.toml", "deploy/install.sh")
_DEPLOY_FILES = ("install.sh", "shoal-agent.service", "agent.toml", "inventory.toml")
# Files of the installed distribution's metadata a wheel keeps (RECORD is made anew;
# INSTALLER, REQUESTED and direct_url.json describe this installation, not the wheel).
_WHEEL_INFO = frozenset({"METADATA", "WHEEL", "entry_points.txt", "top_level.txt"})


def find_source(path: str | None) -> Source:
    """What to push: the tree at `path`; else the checkout we run from; else the installed shoal.

    A shoal installed with `pip install .` has no tree next to it: then its own
    packages are zipped back into a wheel, and its `shoal.deploy` files ride along.

    Raises ConfigError when `path` lacks pyproject.toml or deploy/install.sh, or an
    installed shoal lacks its deploy files or metadata.
    """
    if path:
        for needed in _TREE_NEEDS:
            if not (Path(path) / needed).is_file():
                raise ConfigError(f"{path} is not a shoal source tree: no {needed}", "--source")
        return _tree(Path(path))
    checkout = Path(__file__).resolve().parent.parent
    if all((checkout / needed).is_file() for needed in _TREE_NEEDS):
        return _tree(checkout)
    return _installed(checkout)


def _tree(tree: Path) -> Source:
    return Source(str(tree), tuple((name, tree / name) for name in _bundle_members(tree)))


def _installed(package_root: Path) -> Source:
    """The installed shoal (`package_root` is its `shoal/` folder) as a wheel plus deploy/."""
    deploy = package_root / "deploy"
    missing = [name for name in _DEPLOY_FILES if not (deploy / name).is_file()]
    if missing:
        raise ConfigError(f"this shoal was installed without its deploy files ({deploy / missing[0]}); "
                          "give --source DIR (a shoal source tree)", "--source")
    name, wheel = _installed_wheel(package_root.parent)
    return Source(f"the installed shoal ({name})", tuple((f"deploy/{n}", deploy / n) for n in _DEPLOY_FILES),
                  (name, wheel))


def _installed_wheel(site: Path) -> tuple[str, bytes]:
    """A wheel of the installed shoal distribution, from the files its RECORD lists.

    The metadata is looked up in `site`, the directory that holds the running `shoal`
    package: the first `shoal` on sys.path could be another one (a source tree's
    shoal.egg-info when run from inside it).
    """
    from importlib.metadata import distributions

    dist = next((d for d in distributions(path=[str(site)]) if d.metadata["Name"] == "shoal"), None)
    if dist is None:
        raise ConfigError("shoal is not installed as a distribution; give --source DIR", "--source")
    buffer = io.BytesIO()
    record = []
    info_dir = ""
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for file in dist.files or ():
            parts = file.parts
            if parts[0].endswith(".dist-info"):
                info_dir = parts[0]
                if file.name not in _WHEEL_INFO:
                    continue
            elif parts[0] != "shoal" or "__pycache__" in parts or file.suffix == ".pyc":
                continue  # console scripts (../../bin/shoal) are made by the installer again
            data = file.read_binary()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            wheel.writestr(file.as_posix(), data)
            record.append(f"{file.as_posix()},sha256={digest},{len(data)}")
        if not info_dir:
            raise ConfigError("the installed shoal has no metadata to rebuild a wheel from; "
                              "give --source DIR", "--source")
        record.append(f"{info_dir}/RECORD,,")
        wheel.writestr(f"{info_dir}/RECORD", "\n".join(record) + "\n")
    return f"{dist.metadata['Name']}-{dist.version}-py3-none-any.whl", buffer.getvalue()


def build_bundle(source: Source, key_file: str | None = None,
                 files: Mapping[str, tuple[bytes, int]] | None = None) -> bytes:
    """A tar.gz of what install.sh needs from `source`, the key file as admin.key, and `files`."""
    return bundle_head(source, key_file) + bundle_tail(files or {})


def bundle_head(source: Source, key_file: str | None = None) -> bytes:
    """The shared start of every host's bundle: one gzip member, a tar without its end."""
    buffer = io.BytesIO()
    tar = tarfile.open(fileobj=buffer, mode="w")
    for name, path in source.files:
        tar.add(path, arcname=f"{_SOURCE_DIR}/{name}", filter=_without_litter)
    if source.wheel is not None:
        wheel_name, data = source.wheel
        info = tarfile.TarInfo(f"{_SOURCE_DIR}/{wheel_name}")
        info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
        tar.addfile(_without_litter(info) or info, io.BytesIO(data))
    if key_file is not None:
        info = tar.gettarinfo(key_file, arcname=_KEY_NAME)
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o600, 0, 0, "root", "root"
        with open(key_file, "rb") as stream:
            tar.addfile(info, stream)
    members = buffer.getvalue()  # before close() appends the end-of-archive blocks
    tar.close()
    return gzip.compress(members, compresslevel=6, mtime=0)


def bundle_tail(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    """The end of a bundle: `files` (name -> (data, mode)), owner root, and the tar's end."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), compresslevel=6, mtime=0)


def tls_files(ca: CertificateAuthority, names: list[str], days: int = 825) -> dict[str, tuple[bytes, int]]:
    """A new agent certificate for `names`, its key and the CA certificate, as bundle files.

    Raises ConfigError when a name cannot go in a certificate.
    """
    cert, key = issue_agent_certificate(ca, names, days)
    data = {"agent.pem": cert, "agent.key": key, "ca.pem": ca.cert_pem}
    return {f"{_TLS_DIR}/{name}": (data[name], mode) for name, mode in _TLS_MODES.items()}


def _bundle_members(source: Path) -> list[str]:
    """Top-level files pip reads, the top folders pyproject.toml maps packages to, and deploy/."""
    with open(source / "pyproject.toml", "rb") as stream:
        project = tomllib.load(stream)
    package_dirs = project.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    folders = sorted({str(folder).split("/")[0] for folder in package_dirs.values()} | {"deploy"})
    names = [name for name in _TOP_FILES if (source / name).is_file()]
    return names + folders


def _without_litter(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Leave out bytecode caches; owner root, so a root tar -x does not chown to us."""
    if "__pycache__" in info.name.split("/") or info.name.endswith(".pyc"):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """How to reach the hosts and what to ask install.sh for.

    Attributes:
        ssh_options: `-o` options for ssh (`Port=2222`), before DEFAULT_SSH_OPTIONS.
        ssh_user: login name (`-l`), or None for ssh's own choice.
        key_file: local key file to install as /etc/shoal/admin.key, or None.
        install_flags: extra install.sh flags (--prefix, --destdir, --no-systemd...).
        sudo: run the remote command through `sudo -n` (non-root login).
        ssh: the ssh program.
        tls: the bundles carry tls/ (see `tls_files`) for install.sh --tls-dir.
        install_from: `Source.install_from`: the wheel in the bundle, or "" for its tree.
    """

    ssh_options: tuple[str, ...] = ()
    ssh_user: str | None = None
    key_file: str | None = None
    install_flags: tuple[str, ...] = ()
    sudo: bool = False
    ssh: str = "ssh"
    tls: bool = False
    install_from: str = ""

    def remote_command(self) -> str:
        """The shell command run on every host, reading the bundle from stdin."""
        key = [f'--key-file "$d/{_KEY_NAME}"'] if self.key_file else []
        tls = [f'--tls-dir "$d/{_TLS_DIR}"'] if self.tls else []
        source = f"{_SOURCE_DIR}/{self.install_from}" if self.install_from else _SOURCE_DIR
        install = " ".join([f'sh "$d/{_SOURCE_DIR}/deploy/install.sh" --source "$d/{source}"',
                            *key, *tls, *(shlex.quote(flag) for flag in self.install_flags)])
        # $d comes from mktemp's template: no spaces, so the trap may expand it at once.
        script = ('umask 077 && d=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bootstrap.XXXXXX") && '
                  f'trap "rm -rf $d" EXIT && tar -xzf - -C "$d" && {install}')
        return f"sudo -n sh -c {shlex.quote(script)}" if self.sudo else script

    def ssh_argv(self, host: str) -> list[str]:
        """The full ssh command line for `host`."""
        argv = [self.ssh]
        for option in (*self.ssh_options, *DEFAULT_SSH_OPTIONS):
            argv += ["-o", option]
        if self.ssh_user:
            argv += ["-l", self.ssh_user]
        return [*argv, host, self.remote_command()]


@dataclass(frozen=True, slots=True)
class HostReport:
    """One host's outcome with what install.sh (or ssh) said."""

    result: Result
    stdout: str
    stderr: str

    @property
    def line(self) -> str:
        """`host: ok (...)`, `host: failed (exit N): ...`, `host: unreachable: ...` or `host: not enrolled: ...`."""
        result = self.result
        if result.ok:
            return f"{result.host}: ok ({_last_line(self.stdout, 'install.sh: ') or 'installed'})"
        if result.unreachable:
            return f"{result.host}: unreachable: {result.error}"
        if result.error_code == Outcome.NOT_SENT:
            return f"{result.host}: not enrolled: {result.error}"
        return f"{result.host}: failed (exit {result.status}): {result.error}"


def _last_line(text: str, prefix: str = "") -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1].removeprefix(prefix) if lines else ""


async def bootstrap_host(plan: Bootstrap, host: str, bundle: Bundle) -> HostReport:
    """Run the install on one host; its failure is its own report, never an exception."""
    started = time.monotonic()
    try:
        stdin = bundle(host)
    except ConfigError as exc:
        # Nothing was sent: this host's name (say) cannot be in a certificate.
        return HostReport(Result(host, _CONFIG_STATUS, duration=time.monotonic() - started, error=str(exc),
                                 error_code=Outcome.NOT_SENT), "", "")
    try:
        proc = await asyncio.create_subprocess_exec(
            *plan.ssh_argv(host), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise ConfigError(f"cannot run {plan.ssh}: {exc.strerror or exc}", "ssh") from None
    try:
        out, err = await proc.communicate(stdin)
    except asyncio.CancelledError:
        # Ctrl-C or a failing sibling: do not leave an ssh session installing unattended.
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    return HostReport(_result(host, proc.returncode or 0, stderr or stdout, time.monotonic() - started),
                      stdout, stderr)


def _result(host: str, status: int, output: str, duration: float) -> Result:
    if status == 0:
        return Result(host, 0, code=0, duration=duration)
    reason = _last_line(output) or f"exit {status}"
    if status == SSH_FAILED:
        return Result(host, UNREACHABLE, code=status, duration=duration, error=reason, error_code=Outcome.UNREACHABLE)
    return Result(host, status, code=status, duration=duration, error=reason, error_code=Outcome.FAILED)


async def bootstrap_hosts(plan: Bootstrap, hosts: list[str], bundle: Bundle, fanout: int,
                          on_report: Callable[[HostReport], None]) -> list[HostReport]:
    """Install on every host, at most `fanout` at once; `on_report` sees each as it ends."""
    return await fan_out(hosts, lambda host: bootstrap_host(plan, host, bundle), limit=fanout,
                         on_done=on_report)


def ssh_host(name: str, host: str | None) -> str:
    """The address ssh gets for a target; unix-socket targets have none."""
    if host is None:
        raise ConfigError(f"{name} is a local socket, not a host to reach over ssh", "bootstrap")
    return host


def key_file_checked(path: str | None) -> str | None:
    """The key file, loaded once here so a bad one stops the run before any host is touched."""
    if path is None:
        return None
    from shoal.hostio.keyfile import load_key_file

    expanded = os.path.expanduser(path)
    load_key_file(expanded)
    return expanded
