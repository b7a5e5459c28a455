"""An sshd on loopback for the ssh and scp baselines the benchmarks print beside shoal.

The figures a user compares shoal against are `ssh host true` and `scp -r`, so a
benchmark starts its own sshd on 127.0.0.1 with a throwaway host key and client key
(key login only, no PAM, nothing read from ~/.ssh or /etc/ssh). Where there is no
sshd binary, or we cannot log in as ourselves, `loopback_sshd()` yields None and the
reason, and the benchmark prints that reason instead of the baseline.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.bench.common import free_port

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


@dataclass(frozen=True)
class Sshd:
    """A running loopback sshd and the client options that reach it."""

    port: int
    client_key: Path

    def client_options(self) -> list[str]:
        """Options shared by ssh and scp: our key only, no known_hosts, no prompts."""
        return ["-F", "/dev/null", "-i", str(self.client_key), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]

    def ssh(self, *command: str) -> list[str]:
        """argv of `ssh 127.0.0.1 COMMAND`."""
        return ["ssh", *self.client_options(), "-p", str(self.port), "127.0.0.1", *command]

    def scp(self, *paths: str) -> list[str]:
        """argv of `scp` with remote paths written as `remote:PATH`."""
        fixed = [f"127.0.0.1:{p[len('remote:'):]}" if p.startswith("remote:") else p for p in paths]
        return ["scp", *self.client_options(), "-q", "-P", str(self.port), *fixed]


def _sshd_binary() -> str | None:
    return next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), shutil.which("sshd"))


@contextlib.contextmanager
def loopback_sshd() -> Iterator[tuple[Sshd | None, str]]:
    """Yield (sshd, "") while one runs on loopback, or (None, why not)."""
    binary = _sshd_binary()
    if binary is None:
        yield None, "no sshd binary (apt install openssh-server)"
        return
    if shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        yield None, "no ssh client or ssh-keygen"
        return
    with tempfile.TemporaryDirectory(prefix="shoal-bench-sshd-") as tmp:
        base = Path(tmp)
        for name in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
        (base / "authorized_keys").write_bytes((base / "client_key.pub").read_bytes())
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        port = free_port()
        config = base / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {base / 'host_key'}",
            f"AuthorizedKeysFile {base / 'authorized_keys'}", f"PidFile {base / 'sshd.pid'}",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
            "PermitRootLogin prohibit-password", "StrictModes no", "PrintMotd no",
            "Subsystem sftp internal-sftp",  # scp speaks SFTP by default (OpenSSH 9.0 on)
            "",
        ]))
        proc = subprocess.Popen([binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
        try:
            sshd = Sshd(port, base / "client_key")
            why = _wait_until_login_works(proc, sshd)
            yield (sshd, "") if not why else (None, why)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _wait_until_login_works(proc: subprocess.Popen[bytes], sshd: Sshd) -> str:
    """"" once `ssh true` succeeds, else why it did not within 15 s."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            return f"sshd exited: {err.splitlines()[-1] if err else proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", sshd.port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
            continue
        done = subprocess.run(sshd.ssh("true"), capture_output=True, timeout=30)
        return "" if done.returncode == 0 else f"ssh login failed: {done.stderr.decode(errors='replace').strip()}"
    return "sshd did not start listening within 15 s"
