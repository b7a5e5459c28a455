"""Gateways that misbehave: the real agent's relay with one stream method overridden.

    python -m tests.gatewayfaults --listen ADDR --key-file PATH --flip-port PORT

runs, as its own process (in a network namespace, say), an agent whose relayed
streams to PORT flip one bit of the third chunk the controller sends through them;
streams to other ports are relayed faithfully. It prints `listening` once it listens
and stops at SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from shoal.agent.relay import RelayStream, Relays, relay_handlers
from shoal.agent.server import Agent
from shoal.hostio.keyfile import load_key_file
from shoal.protocol.messages import RelayOpen
from tests.agents import make_agents

__all__ = ["Flipping", "Recording", "misbehaving", "install"]


class Flipping(RelayStream):
    """Flips the last bit of the third chunk it forwards to its destination: the HELLO and
    AUTH went through untouched, so that chunk is a frame under a MAC."""

    def __init__(self, relays: Relays, msg: RelayOpen) -> None:
        super().__init__(relays, msg)
        self.chunks = 0

    def from_controller(self, data: bytes) -> None:
        self.chunks += 1
        if self.chunks == 3:
            data = data[:-1] + bytes([data[-1] ^ 1])
        super().from_controller(data)


class Recording(RelayStream):
    """Keeps a copy of every byte it forwards, both ways, in `seen` (one for all streams)."""

    seen = bytearray()

    def from_controller(self, data: bytes) -> None:
        Recording.seen.extend(data)
        super().from_controller(data)

    def buffer_updated(self, nbytes: int) -> None:
        Recording.seen.extend(memoryview(self.relays.read_buffer)[:nbytes])
        super().buffer_updated(nbytes)


def misbehaving(stream: type[RelayStream], port: int | None = None) -> type[Relays]:
    """Relays whose streams (those to `port` only, when given) are of class `stream`."""

    class Misbehaving(Relays):
        def new_stream(self, msg: RelayOpen) -> RelayStream:
            return (stream if port in (None, msg.port) else RelayStream)(self, msg)

    return Misbehaving


def install(agent: Agent, relays: type[Relays]) -> None:
    """Make `agent` relay with `relays` (a later handler factory wins its types)."""
    agent.handlers.add(lambda session: relay_handlers(session, relays))


async def _serve(args: argparse.Namespace) -> None:
    (agent,) = make_agents(keys=[load_key_file(args.key_file)], listen=(args.listen,), state_dir=args.state_dir,
                           log_level="error")
    install(agent, misbehaving(Flipping, args.flip_port))
    await agent.start()
    print("listening", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await agent.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--flip-port", type=int, required=True)
    parser.add_argument("--state-dir", required=True)
    asyncio.run(_serve(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
