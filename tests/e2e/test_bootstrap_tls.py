"""`shoal bootstrap --tls-ca-dir`: each host enrolled with a certificate of its own.

The stand-in ssh of test_bootstrap.py plays the hosts, with one addition: it keeps
a copy of everything it was sent (command line and stdin), so the tests can show
that the CA's private key never left the controller. One real bootstrap (module
fixture, run as the `shoal` CLI in a subprocess) installs three hosts:

- 127.0.0.1: fresh, so install.sh writes agent.toml with [tls];
- localhost: already has an agent.toml without TLS, which gets [tls] appended;
- bad..name: a name no certificate can hold, refused before ssh is started.

The end-to-end check starts an agent from what was installed on 127.0.0.1 (the
staged files, its /etc/shoal paths pointed into the stage, listening on
127.0.0.1 port 0) and connects with the controller certificate of the same CA.
"""

from __future__ import annotations

import gzip
import io
import ipaddress
import os
import stat
import subprocess
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from shoal.agent.config import load_config
from shoal.hostio.keyfile import load_key_file, write_key_file
from shoal.hostio.tls import client_context
from shoal.controller.cli.main import main
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.pki import init_pki, issue_agent_certificate, load_ca
from shoal.controller.targets import parse_targets
from shoal.protocol.errors import ConfigError, ShoalConnectionError
from tests.controller.test_bootstrap import FAKE_SSH, FAKE_SUDO, PREFIX, REMOTE, with_source
from tests.agents import running_agents
from tests.programs import SHOAL

pytestmark = pytest.mark.slow  # a shared fixture or each test takes over 5 s

REPO = Path(__file__).resolve().parents[2]

# The stand-in ssh, keeping what it receives: the command line and the whole stdin.
RECORDING_SSH = FAKE_SSH.replace("host=$1\nshift\n", """host=$1
shift
mkdir -p "$FAKE_SSH_ROOT"
printf '%s\\n' "$*" > "$FAKE_SSH_ROOT/$host.command"
cat > "$FAKE_SSH_ROOT/$host.stdin"
exec < "$FAKE_SSH_ROOT/$host.stdin"
""")

# A configuration the admin wrote before TLS: kept, with [tls] added at the end
# (no newline after its last line, which the addition must not run into).
OLD_CONFIG = 'listen = ["0.0.0.0:8470"]\n\n[[keys]]\nname = "admin"\nfile = "/etc/shoal/admin.key"\nallow = "all"'


@dataclass
class Enrolled:
    """What the one bootstrap run left behind."""

    status: int
    out: str
    err: str
    hosts: Path
    pki: dict[str, Path]
    key_file: Path
    log: str

    def etc(self, host: str) -> Path:
        return self.hosts / host / "stage" / "etc" / "shoal"


def write_fake_bin(bindir: Path) -> None:
    bindir.mkdir()
    for name, text in (("ssh", RECORDING_SSH), ("sudo", FAKE_SUDO)):
        (bindir / name).write_text(text)
        (bindir / name).chmod(0o755)


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory) -> Enrolled:
    base = tmp_path_factory.mktemp("enrol")
    assert RECORDING_SSH != FAKE_SSH  # the recording lines went in
    write_fake_bin(base / "bin")
    hosts = base / "hosts"
    (hosts / "localhost" / "stage" / "etc" / "shoal").mkdir(parents=True)
    (hosts / "localhost" / "stage" / "etc" / "shoal" / "agent.toml").write_text(OLD_CONFIG)
    pki = init_pki(base / "pki", [])
    key_file = base / "fleet.key"
    write_key_file(key_file)
    env = {**os.environ, "PATH": f"{base / 'bin'}{os.pathsep}{os.environ['PATH']}", "FAKE_SSH_ROOT": str(hosts),
           "FAKE_SSH_LOG": str(base / "ssh.log"), "PYTHONPATH": str(REPO)}
    env.pop("PYTHON", None)
    done = subprocess.run(
        [*SHOAL, "bootstrap", "127.0.0.1,localhost,bad..name",
         "--key-file", str(key_file), "--tls-ca-dir", str(base / "pki"), "--tls-name", "agent.test",
         "--destdir", "stage", "--prefix", PREFIX, "--no-systemd", "--system-site-packages",
         "--source", str(REPO)],
        env=env, cwd=base, capture_output=True, text=True, timeout=300)
    return Enrolled(done.returncode, done.stdout, done.stderr, hosts, pki, key_file,
                    (base / "ssh.log").read_text())


# -- the run as the user sees it ------------------------------------------------------------

def test_bad_name_is_its_own_failure_and_the_others_install(enrolled: Enrolled) -> None:
    assert enrolled.status == 2, enrolled.err
    ok = "ok (start it with: systemctl daemon-reload && systemctl enable --now shoal-agent)"
    assert sorted(enrolled.out.splitlines()) == [
        f"127.0.0.1: {ok}",
        "bad..name: not enrolled: agent names: 'bad..name' is not a host name or IP address "
        "(non-ASCII names: use their xn-- form)",
        f"localhost: {ok}",
    ]
    assert enrolled.err.startswith("shoal: 2 ok, 1 failed (bad..name), 0 unreachable in "), enrolled.err
    assert "host bad..name" not in enrolled.log.splitlines()  # no ssh session for it


def test_files_land_next_to_the_key_with_their_modes(enrolled: Enrolled) -> None:
    for host in ("127.0.0.1", "localhost"):
        etc = enrolled.etc(host)
        modes = {name: stat.S_IMODE((etc / name).stat().st_mode) for name in ("agent.pem", "agent.key", "ca.pem")}
        assert modes == {"agent.pem": 0o644, "agent.key": 0o600, "ca.pem": 0o644}, host
        # Owned by whoever ran install.sh: root on a real host, the agent's user (the unit says root).
        assert {(etc / name).stat().st_uid for name in modes} == {os.getuid()}
        assert (etc / "ca.pem").read_bytes() == enrolled.pki["ca_cert"].read_bytes()
        assert not (etc / "ca.key").exists()
        assert list((enrolled.hosts / host / "tmp").iterdir()) == [], host  # bundle and all removed


def sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_each_certificate_names_its_host_and_is_signed_by_the_ca(enrolled: Enrolled) -> None:
    ca = x509.load_pem_x509_certificate(enrolled.pki["ca_cert"].read_bytes())
    first = x509.load_pem_x509_certificate((enrolled.etc("127.0.0.1") / "agent.pem").read_bytes())
    second = x509.load_pem_x509_certificate((enrolled.etc("localhost") / "agent.pem").read_bytes())
    assert sans(first) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("agent.test")]
    assert sans(second) == [x509.DNSName("localhost"), x509.DNSName("agent.test")]
    for cert in (first, second):
        cert.verify_directly_issued_by(ca)
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert first.public_key() != second.public_key()  # a key of its own each


def test_the_ca_key_is_never_sent(enrolled: Enrolled) -> None:
    ca_key = serialization.load_pem_private_key(enrolled.pki["ca_key"].read_bytes(), password=None)
    secret = ca_key.private_numbers().private_value.to_bytes(32, "big")  # type: ignore[union-attr]
    forms = [enrolled.pki["ca_key"].read_bytes(), secret,
             ca_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())]
    sent = sorted(enrolled.hosts.glob("*.stdin")) + sorted(enrolled.hosts.glob("*.command"))
    assert {path.name for path in sent} == {"127.0.0.1.stdin", "localhost.stdin",
                                            "127.0.0.1.command", "localhost.command"}
    for path in sent:
        raw = path.read_bytes()
        plain = gzip.decompress(raw) if path.suffix == ".stdin" else raw
        for form in forms:
            assert form not in raw and form not in plain, path.name
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((enrolled.hosts / "127.0.0.1.stdin").read_bytes()))) as tar:
        names = tar.getnames()
    assert [name for name in names if not name.startswith("shoal/")] == [
        "admin.key", "tls/agent.pem", "tls/agent.key", "tls/ca.pem"]


def test_installed_config_names_the_tls_files(enrolled: Enrolled) -> None:
    expected = {"cert": "/etc/shoal/agent.pem", "key": "/etc/shoal/agent.key", "ca": "/etc/shoal/ca.pem"}
    fresh = tomllib.loads((enrolled.etc("127.0.0.1") / "agent.toml").read_text())
    assert fresh["tls"] == expected
    assert fresh["keys"][0]["file"] == "/etc/shoal/admin.key"
    kept = (enrolled.etc("localhost") / "agent.toml").read_text()
    assert kept.startswith(OLD_CONFIG + "\n")
    assert tomllib.loads(kept)["tls"] == expected


# -- end to end: an agent from what bootstrap installed, a controller of the same CA --------

def staged_config(enrolled: Enrolled, host: str, tmp_path: Path) -> Path:
    """The installed agent.toml, its absolute paths moved into the stage, on 127.0.0.1 port 0."""
    stage = enrolled.hosts / host / "stage"
    text = (stage / "etc" / "shoal" / "agent.toml").read_text()
    assert 'listen = ["0.0.0.0:8470"]' in text
    text = text.replace('"/', f'"{stage}/').replace('"0.0.0.0:8470"', '"127.0.0.1:0"')
    (stage / "var" / "log" / "shoal").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


async def test_controller_with_the_ca_connects_over_tls_to_the_installed_agent(enrolled: Enrolled,
                                                                                  tmp_path: Path) -> None:
    cfg = load_config(staged_config(enrolled, "127.0.0.1", tmp_path))
    assert cfg.tls is not None and cfg.tls.cert.endswith("/stage/etc/shoal/agent.pem")
    async with running_agents(configure=lambda _: cfg) as (agent,):
        [address] = agent.addresses
        [target] = parse_targets(address)
        assert target.host == "127.0.0.1"
        ssl = client_context(enrolled.pki["controller_cert"], enrolled.pki["controller_key"],
                             enrolled.pki["ca_cert"])
        client = await AgentClient.connect(target, key=load_key_file(enrolled.key_file), ssl=ssl)
        try:
            assert client.transport is not None
            assert client.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
            proc = await client.exec(Command(argv=["echo", "enrolled"]))
            assert b"".join([event.data async for event in proc]) == b"enrolled\n"
            assert (await proc.wait()).status == 0
        finally:
            await client.close()
        with pytest.raises(ShoalConnectionError):  # and plain TCP is refused
            await AgentClient.connect(target, key=load_key_file(enrolled.key_file), timeout=5)


# -- before any host is touched ------------------------------------------------------------------

@pytest.fixture
def fake_hosts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_fake_bin(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_ROOT", str(tmp_path / "hosts"))
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    return tmp_path


def run(capsysbinary: pytest.CaptureFixture[bytes], *argv: str) -> tuple[int, str, str]:
    status = main(["bootstrap", *with_source(argv)])
    out, err = capsysbinary.readouterr()
    return status, out.decode(), err.decode()


def test_dry_run_installs_with_tls_dir(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path) -> None:
    init_pki(tmp_path / "pki", [])
    status, out, err = run(capsysbinary, "web1", "--tls-ca-dir", str(tmp_path / "pki"), "--dry-run")
    assert status == 0
    assert out == (f"ssh -o BatchMode=yes -o ConnectTimeout=10 web1 '{REMOTE} --tls-dir \"$d/tls\"' "
                   "< shoal-bundle.tar.gz\n")
    assert err.splitlines()[-1] == (f"shoal: dry run: each command reads shoal-bundle.tar.gz (the source in {REPO}, "
                                    f"a certificate for the host from {tmp_path / 'pki' / 'ca.pem'}) on stdin")


@pytest.mark.parametrize("damage, message", [
    ("missing", "shoal: {pki}/ca.key: cannot read: No such file or directory (is it a `shoal certs init` directory?)"),
    ("other", "shoal: {pki}/ca.key: this key does not belong to {pki}/ca.pem"),
    ("garbage", "shoal: {pki}/ca.pem: not a PEM certificate"),
])
def test_a_bad_ca_directory_stops_the_run_before_ssh(capsysbinary: pytest.CaptureFixture[bytes], fake_hosts: Path,
                                                     damage: str, message: str) -> None:
    pki = init_pki(fake_hosts / "pki", [])
    if damage == "missing":
        pki["ca_key"].unlink()
    elif damage == "other":
        pki["ca_key"].unlink()
        other = init_pki(fake_hosts / "other", [])
        pki["ca_key"].write_bytes(other["ca_key"].read_bytes())
    else:
        pki["ca_cert"].write_text("not a certificate\n")
    status, out, err = run(capsysbinary, "h1,h2", "--tls-ca-dir", str(fake_hosts / "pki"))
    assert (status, out, err.splitlines()[-1]) == (2, "", message.format(pki=fake_hosts / "pki"))
    assert not (fake_hosts / "ssh.log").exists()


def test_tls_name_without_a_ca_is_a_usage_error(capsysbinary: pytest.CaptureFixture[bytes], fake_hosts: Path) -> None:
    status, out, err = run(capsysbinary, "h1", "--tls-name", "h1.example")
    assert (status, out, err) == (2, "", "shoal: --tls-name: --tls-name needs --tls-ca-dir\n")


# -- pki: issuing one agent's certificate --------------------------------------------------------

def test_issued_certificate_ends_with_the_ca_and_needs_a_name(tmp_path: Path) -> None:
    ca = load_ca(init_pki(tmp_path / "pki", [], days=30)["ca_cert"].parent)
    assert "PrivateKey" not in repr(ca)  # the private key stays out of reprs and logs
    cert_pem, key_pem = issue_agent_certificate(ca, ["[::1]", "web1.example."], days=3650)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert sans(cert) == [x509.IPAddress(ipaddress.ip_address("::1")), x509.DNSName("web1.example")]
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key.public_key() == cert.public_key()
    with pytest.raises(ConfigError, match="at least one host name"):
        issue_agent_certificate(ca, [])

