"""Start three local agents, run a command across them, show the output, clean up.

    shoal demo [--agents N] [COMMAND...]

The first word that is not an option starts COMMAND (default: a short script), and
every word from there on is its own, as with `shoal run`. Needs no configuration:
the agents listen on 127.0.0.1 on ports the kernel picks, inside this process, and
are stopped when the demo ends.
"""

from __future__ import annotations

import argparse
import asyncio

from shoal.controller.remote import Command
from shoal.controller.term.display import Display
from shoal.controller.fleet import ConnectOptions, Fleet
from shoal.controller.term.output import StreamHandler
from shoal.controller.term.summary import summary_line
from shoal.controller.targets import Target

# The words after shoal's options are the command's (controller/cli/words.py).
TAKES_COMMAND = True

DEMO_COMMAND = (
    'echo "hello from $(hostname), shell pid $$"; '
    'for i in 1 2 3; do echo "tick $i"; sleep 0.2; done; '
    'echo "this line went to stderr" >&2; uname -sr'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=3, metavar="N", help="how many local agents (default 3)")
    parser.add_argument("--command", default=DEMO_COMMAND, help="shell command to run on them")


def run(args: argparse.Namespace, words: list[str], display: Display) -> int:
    return asyncio.run(_demo(max(1, args.agents), " ".join(words) or args.command, display))


async def _demo(count: int, command: str, display: Display) -> int:
    from shoal.agent.config import AgentConfig
    from shoal.agent.server import Agent

    agents = [Agent(AgentConfig.default().replace_from_cli(listen=("127.0.0.1:0",))) for _ in range(count)]
    try:
        for agent in agents:
            await agent.start()
        targets = [_target(f"demo{i + 1}", a.addresses[0]) for i, a in enumerate(agents)]
        display.message(f"shoal demo: {count} agents on {', '.join(a.addresses[0] for a in agents)}")
        display.message(f"shoal demo: running: {command}")
        fleet = Fleet(targets, ConnectOptions(timeout=5.0))
        handler = StreamHandler(display, [t.name for t in targets])
        result = await fleet.run(Command(shell=command), handler)
        display.message(summary_line(result.results) + f" in {result.elapsed:.2f}s")
        return result.status
    finally:
        for agent in agents:
            await agent.close()


def _target(name: str, address: str) -> Target:
    host, _, port = address.rpartition(":")
    return Target(name=name, host=host.strip("[]"), port=int(port))
