"""The files an agent configuration names, loaded as a start would load them.

`load_config` checks the text, but whether a key file or TLS file can be used is
only known by opening it, so a configuration could pass `shoal-agent
--check-config` and still stop the agent at start. A deploy tool runs the check
before restarting the service; this module lets it see what the start would see,
by calling the very functions the agent loads them with (`load_key_file`,
`server_context`), and reports every file that fails, not just the first.

Each problem names where the file was named (`path:line` of the option, or the
flag), the option, the file and the reason; never the file's content.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from shoal.protocol.errors import ConfigError

from shoal.agent.config import AgentConfig, TlsConfig, locate_option
from shoal.hostio.keyfile import load_key_file
from shoal.hostio.tls import server_context_problems

__all__ = ["FileProblem", "file_problems"]


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A named file the agent could not use.

    Attributes:
        where: `path:line` of the configuration line naming the file, or None when
            a flag named it.
        option: the option naming it (`keys.monitor.file`, `tls.cert`, `--key-file`).
        error: what the loader raised; it names the file and the reason.
    """

    where: str | None
    option: str
    error: ConfigError

    def __str__(self) -> str:
        return ": ".join(part for part in (self.where, self.option, str(self.error)) if part)


def file_problems(config: AgentConfig, config_path: str | None, *, key_files: Sequence[str] = (),
                  tls_flags: Collection[str] = ()) -> list[FileProblem]:
    """Load every key file and the TLS files as `shoal-agent` would at start.

    Args:
        config: the effective configuration (file plus flags).
        config_path: the file it was read from, for line numbers; None for the
            built-in settings.
        key_files: `--key-file` paths.
        tls_flags: which of "cert", "key", "ca" were given as `--tls-*` flags.

    Returns:
        One problem per file that would stop the agent; empty when none would.
    """
    problems: list[FileProblem] = []
    for index, policy in enumerate(config.keys):
        where = _where(config_path, f"keys[{index}].file")
        problems += [FileProblem(where, f"keys.{policy.name}.file", error) for error in _key_errors(policy.file)]
    for path in key_files:
        problems += [FileProblem(None, "--key-file", error) for error in _key_errors(path)]
    if config.tls is not None:
        problems += _tls_problems(config.tls, config_path, tls_flags)
    return problems


def _key_errors(path: str) -> list[ConfigError]:
    try:
        load_key_file(path)  # the key itself is dropped here, unseen
    except ConfigError as exc:
        return [exc]
    return []


def _tls_problems(tls: TlsConfig, config_path: str | None, flags: Collection[str]) -> list[FileProblem]:
    problems = []
    for name, error in server_context_problems(tls.cert, tls.key, tls.ca):
        if name in flags:
            problems.append(FileProblem(None, f"--tls-{name}", error))
        else:
            problems.append(FileProblem(_where(config_path, f"tls.{name}"), f"tls.{name}", error))
    return problems


def _where(config_path: str | None, option: str) -> str | None:
    return locate_option(config_path, option) if config_path else None
