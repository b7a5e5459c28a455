"""Interactive shell on many hosts at once.

    shoal shell TARGETS [options]

Connects once to every target and keeps the connections open; each line typed
runs on all current targets through /bin/sh, streamed with host prefixes (or
gathered with `:mode gather`). Lines starting with `:` control the session;
`:help` lists them. A host that drops is reported once and reconnected in the
background. Ctrl-C cancels the running command on every host; Ctrl-D or `:quit`
leaves. History: $XDG_STATE_HOME/shoal/history (~/.local/state/shoal/history).

Exit status: 0 when the session ends, 2 for bad options or targets, 255 when the
hub (--hub) is not running.
"""

from __future__ import annotations

import argparse

from shoal.protocol.errors import ConfigError

from shoal.controller.term.display import Display
from shoal.controller.cli.options import (
    add_connect_options,
    add_target_options,
    add_user_option,
    connect_options_from_args,
    parse_env,
    targets_from_args,
)
from shoal.controller.term.repl import Repl, ReplSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_options(parser)
    add_connect_options(parser)
    g = parser.add_argument_group("session")
    g.add_argument("-o", "--output", choices=("stream", "gather"), default="stream",
                   help="initial output mode (change with :mode)")
    g.add_argument("-t", "--timeout", type=float, metavar="SECS", help="initial per-command timeout (:timeout)")
    g.add_argument("--cwd", metavar="DIR", help="initial working directory on the hosts (:cd)")
    g.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="environment variable for every command (repeatable; :env)")
    g.add_argument("--kill-grace", type=float, metavar="SECS",
                   help="on Ctrl-C, seconds between SIGINT, SIGTERM and SIGKILL (default: the agent's)")
    g.add_argument("-q", "--quiet", action="store_true", help="errors only on stderr")
    add_user_option(g)


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    from shoal.controller.inventory import load_inventory

    if words:
        raise ConfigError(f"shell takes no command ({' '.join(words)!r}); type lines at its prompt", "command")
    targets = targets_from_args(args)
    settings = ReplSettings(mode=args.output, timeout=args.timeout, cwd=args.cwd, env=parse_env(args.env),
                            kill_grace=args.kill_grace, user=args.user)
    repl = Repl(targets, connect_options_from_args(args), display, inventory=load_inventory(args.inventory),
                fanout=args.fanout, settings=settings, via=args.via)
    return repl.run()
