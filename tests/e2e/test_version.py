"""`--version` on both programs: package, protocol and Python versions, exit 0."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

import pytest

from shoal.hostio.version import UNKNOWN_VERSION, software_version
from shoal.protocol.messages import PROTOCOL_VERSION
from tests.programs import installed


def _expected(program: str) -> bytes:
    return (f"{program} {metadata.version('shoal')} (protocol {PROTOCOL_VERSION}, "
            f"Python {platform.python_version()})\n").encode()


@pytest.mark.parametrize("program", ["shoal", "shoal-agent"])
def test_installed_program_prints_its_versions(program: str) -> None:
    done = subprocess.run([installed(program), "--version"], capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, _expected(program), b"")


def test_shoal_main_in_process(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from shoal.controller.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsysbinary.readouterr().out == _expected("shoal")


def test_agent_main_in_process(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    from shoal.agent.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsysbinary.readouterr().out == _expected("shoal-agent")


def test_missing_package_metadata_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert software_version() == UNKNOWN_VERSION
