"""What a restricted key's request may change about the command it runs: nothing that picks code.

A key that is not `allow = "all"` may run only the command lines its policy lists,
but a request also carries an environment and a working directory. Left alone,
those choose the code: `PATH=/tmp/x uptime` runs /tmp/x/uptime, `LD_PRELOAD`
loads a library into the allowed program, `BASH_ENV` or `PYTHONSTARTUP` make an
interpreter read a file of the caller's choosing. Like ssh's `command=` with
PermitUserEnvironment off, such keys therefore get:

- only the environment variables their policy names (`env = ["LANG", "TZ"]`), plus
  the controller's `NODE_ENV` (SHOAL_HOST...: which target this is, never code), and
  never a loader or interpreter variable, even if named (refused when the
  configuration is loaded, see `check_env_name`);
- a working directory only when the policy says `cwd = true`;
- programs looked up on `TRUSTED_PATH`, whatever the request says, and a program
  given as a relative path (`./x`, `bin/x`) refused, since it names a file in a
  directory the caller may choose.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from shoal.protocol.errors import ConfigError
from shoal.protocol.messages import NODE_ENV

__all__ = ["TRUSTED_PATH", "check_env_name", "refusal", "restricted_env"]

# The search path of a restricted key's commands: system directories only root can
# write, as sudo's secure_path. The request's PATH is never used (see module doc).
TRUSTED_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Variables that make the dynamic loader, libc or an interpreter load or run code
# or data files chosen by whoever sets them. Matched on the whole name.
_CODE_CHOOSING = re.compile(
    r"LD_.*|DYLD_.*|MALLOC_.*|GLIBC_TUNABLES|GCONV_PATH|LOCPATH|NLSPATH|HOSTALIASES|RESOLV_HOST_CONF|"
    r"LOCALDOMAIN|RES_OPTIONS|TMPDIR|TZDIR|PATH|IFS|ENV|BASH_ENV|BASH_FUNC_.*|SHELLOPTS|BASHOPTS|PS4|CDPATH|"
    r"GLOBIGNORE|PYTHON.*|PERL5.*|PERLLIB|PERLIO.*|RUBY.*|GEM_.*|NODE_.*|JAVA_TOOL_OPTIONS|_JAVA_OPTIONS|"
    r"CLASSPATH|LUA_.*|TCLLIBPATH|GIT_.*|EDITOR|VISUAL|PAGER|SYSTEMD_.*|OPENSSL_.*|SSL_CERT_.*")
# A variable name as shells accept it; anything else cannot be listed.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_env_name(name: str, value: object) -> str:
    """A variable name a restricted key may pass; ConfigError when it could choose code."""
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ConfigError(f"{value!r} is not an environment variable name", name)
    if _CODE_CHOOSING.fullmatch(value):
        raise ConfigError(f"{value} can make a command load or run other code; "
                          "restricted keys never pass it", name)
    return value


def refusal(allowed_env: Sequence[str], allow_cwd: bool, program: str | None,
            env: Mapping[str, str], cwd: str | None) -> str | None:
    """Why a restricted key's request may not run as given (one line), or None.

    `allowed_env` has passed `check_env_name`; the request's names are still
    checked against the code-choosing list, so a policy built any other way
    cannot let one through. `program` is the first word of the command line
    (argv[0], or the first word of a shell string).
    """
    for name in env:
        if name in NODE_ENV:
            continue
        if name not in allowed_env or _CODE_CHOOSING.fullmatch(name):
            return f"environment variable {name} not allowed"
    if cwd is not None and not allow_cwd:
        return "working directory not allowed"
    if program is not None and "/" in program and not program.startswith("/"):
        return "program must be a name or an absolute path"
    return None


def restricted_env(base: Mapping[str, str], request_env: Mapping[str, str]) -> dict[str, str]:
    """The child's environment: ours, with the trusted PATH and the request's allowed names."""
    return {**base, **request_env, "PATH": TRUSTED_PATH}
