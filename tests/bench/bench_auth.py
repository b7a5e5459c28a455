"""What authentication and encryption cost: each figure as a ratio to the same run without.

    python -m tests.bench.bench_auth [--bytes 1G] [--rounds 300] [--repeat 3]

`shoal-agent` processes run side by side: plain, shared key, mutual TLS, and key
plus TLS. A keyed session negotiates its frame MAC; "gmac" is what a controller
gets by default (aes256-gmac), "hmac" a controller that offers only hmac-sha256
(what an older controller offers; forced here by changing the offer's default in
the controller process, since no option selects it). For each we measure
1. stdout throughput: `shoal run --raw -- head -c N /dev/zero | wc -c` (best of
   --repeat runs, whole processes, as a user would run it; modes interleaved), with
   the CPU seconds the agent and the controller spent per GiB, which show where the
   time goes even when other load makes wall times noisy;
2. round-trip latency of `true` over an open connection (median and p99);
3. connect + handshake time of a new connection (median).
Every figure is printed next to the plain agent's figure from the same run.
The goal for the default keyed mode: at least half the plain throughput and
above 600 MB/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shoal.hostio.keyfile import load_key_file, write_key_file
from shoal.hostio.tls import client_context
from shoal.controller.client import AgentClient
from shoal.controller.remote import Command
from shoal.controller.pki import init_pki
from shoal.controller.targets import Target
from shoal.protocol.connection import Connection
from shoal.protocol.handshake import MAC_HMAC_SHA256, GmacFrameMac, SharedKey
from tests.bench.bench_core import SHOAL, pct, size_arg
from tests.programs import installed

AGENT = installed("shoal-agent")


@dataclass
class Mode:
    """One way of securing the channel, with the agent started for it."""

    name: str
    key: Path | None
    tls: dict[str, Path] | None
    macs: tuple[str, ...] | None = None  # the controller's offer; None: its default
    address: str = ""
    proc: subprocess.Popen[str] | None = None

    def agent_args(self) -> list[str]:
        args = []
        if self.key:
            args += ["--key-file", str(self.key)]
        if self.tls:
            args += ["--tls-cert", str(self.tls["agent_cert"]), "--tls-key", str(self.tls["agent_key"]),
                     "--tls-ca", str(self.tls["ca_cert"])]
        return args

    def controller_args(self) -> list[str]:
        args = []
        if self.key:
            args += ["--key-file", str(self.key)]
        if self.tls:
            args += ["--tls-cert", str(self.tls["controller_cert"]), "--tls-key",
                     str(self.tls["controller_key"]), "--tls-ca", str(self.tls["ca_cert"])]
        return args

    def shared_key(self) -> SharedKey | None:
        return load_key_file(self.key) if self.key else None

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return client_context(self.tls["controller_cert"], self.tls["controller_key"], self.tls["ca_cert"])

    def target(self) -> Target:
        host, _, port = self.address.rpartition(":")
        return Target(self.name, host, int(port))

    def shoal_command(self) -> list[str]:
        """The controller CLI, made to offer only `macs` when set."""
        if self.macs is None:
            return SHOAL.split()
        force = (f"import sys, shoal.protocol.connection as c; c.Connection.__init__.__kwdefaults__['macs'] = {self.macs!r}; "
                 "from shoal.controller.cli.main import main; sys.exit(main(sys.argv[1:]))")
        return [sys.executable, "-c", force]


@contextlib.contextmanager
def offering(macs: tuple[str, ...] | None) -> Iterator[None]:
    """In this process, make new controller connections offer only `macs`."""
    defaults = Connection.__init__.__kwdefaults__
    assert defaults is not None
    saved = defaults["macs"]
    if macs is not None:
        defaults["macs"] = macs
    try:
        yield
    finally:
        defaults["macs"] = saved


def start(mode: Mode, state_dir: Path) -> None:
    mode.proc = subprocess.Popen(
        [AGENT, "--listen", "127.0.0.1:0", "--log-level", "info", "--state-dir", str(state_dir),
         *mode.agent_args()], stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    assert mode.proc.stderr is not None
    while not mode.address:
        line = mode.proc.stderr.readline()
        if not line:
            raise SystemExit(f"agent for {mode.name} did not start")
        match = re.search(r"listening on (\S+)", line)
        mode.address = match.group(1) if match else ""
    # Drain its log in the background so a chatty agent never blocks on a full pipe.
    subprocess.Popen(["cat"], stdin=mode.proc.stderr, stdout=subprocess.DEVNULL)


def stop(mode: Mode) -> None:
    if mode.proc is not None:
        mode.proc.terminate()
        mode.proc.wait()


# -- 1. throughput ---------------------------------------------------------------


@dataclass
class Transfer:
    """One measured transfer: wall time and the CPU seconds each end spent."""

    rate: float
    agent_cpu: float
    controller_cpu: float


def transfer(mode: Mode, nbytes: int) -> Transfer:
    """One whole `shoal run` process moving `nbytes` of stdout into `wc -c`."""
    import psutil

    cmd = [*mode.shoal_command(), "run", "-n", "--raw", mode.address, *mode.controller_args(),
           "--", "head", "-c", str(nbytes), "/dev/zero"]
    assert mode.proc is not None
    agent = psutil.Process(mode.proc.pid)
    before = agent.cpu_times()
    t = time.perf_counter()
    shoal = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    count = subprocess.run(["wc", "-c"], stdin=shoal.stdout, capture_output=True, text=True, check=True)
    _, status, usage = os.wait4(shoal.pid, 0)
    elapsed = time.perf_counter() - t
    after = agent.cpu_times()
    assert os.waitstatus_to_exitcode(status) == 0 and int(count.stdout) == nbytes, count.stdout
    return Transfer(nbytes / elapsed, after.user + after.system - before.user - before.system,
                    usage.ru_utime + usage.ru_stime)


def throughputs(modes: list[Mode], nbytes: int, repeat: int) -> dict[str, Transfer]:
    """Best of `repeat` per mode, modes interleaved so load from elsewhere hits all alike."""
    best: dict[str, Transfer] = {}
    for _ in range(repeat):
        for mode in modes:
            run = transfer(mode, nbytes)
            if mode.name not in best or run.rate > best[mode.name].rate:
                best[mode.name] = run
    return best


def hmac_ceiling() -> float:
    """HMAC-SHA256 bytes/second of this CPU on 1 MiB buffers, one core."""
    import hmac

    mac, data = hmac.new(bytes(32), digestmod="sha256"), bytes(1 << 20)
    t = time.perf_counter()
    for _ in range(128):
        h = mac.copy()
        h.update(data)
        h.digest()
    return 128 * len(data) / (time.perf_counter() - t)


def gmac_ceiling() -> float:
    """Frame tags per second with AES-256-GMAC on 1 MiB bodies, one core, as the
    connection computes them (head and body joined, then tagged)."""
    mac, data = GmacFrameMac(bytes(32)), bytes(1 << 20)
    t = time.perf_counter()
    for seq in range(512):
        mac.tag(seq, bytes(9), data)
    return 512 * len(data) / (time.perf_counter() - t)


# -- 2 and 3. latency --------------------------------------------------------------


async def negotiated(mode: Mode) -> str:
    """The frame MAC a session in this mode uses ("none" without a key)."""
    with offering(mode.macs):
        client = await AgentClient.connect(mode.target(), key=mode.shared_key(), ssl=mode.ssl_context(), timeout=10)
    await client.close()
    return client.conn.mac or "none"


async def round_trips(mode: Mode, rounds: int) -> list[float]:
    with offering(mode.macs):
        client = await AgentClient.connect(mode.target(), key=mode.shared_key(), ssl=mode.ssl_context(), timeout=10)
    times = []
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            await (await client.exec(Command(argv=["true"]))).wait()
            times.append(time.perf_counter() - t)
    finally:
        await client.close()
    return times


async def connects(mode: Mode, rounds: int) -> list[float]:
    key, ctx = mode.shared_key(), mode.ssl_context()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        with offering(mode.macs):
            client = await AgentClient.connect(mode.target(), key=key, ssl=ctx, timeout=10)
        times.append(time.perf_counter() - t)
        await client.close()
    return times


# -- report --------------------------------------------------------------------------


MODES = ("gmac", "hmac", "tls", "gmac+tls")


def row(name: str, figures: dict[str, float], fmt: str, base: str = "plain") -> None:
    cells = [f"{fmt.format(figures[base]):>12}"]
    for mode in MODES:
        value = figures[mode]
        cells.append(f"{fmt.format(value):>12} ({value / figures[base]:4.2f}x)")
    print(f"{name:<28}" + "".join(f"{c:>22}" for c in cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bytes", type=size_arg, default=size_arg("1G"))
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="throughput runs per mode; the best counts")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        key = base / "bench.key"
        write_key_file(key)
        pki = init_pki(base / "pki", [])
        modes = [Mode("plain", None, None), Mode("gmac", key, None), Mode("hmac", key, None, (MAC_HMAC_SHA256,)),
                 Mode("tls", None, pki), Mode("gmac+tls", key, pki)]
        try:
            for mode in modes:
                start(mode, base)
            report(modes, args)
        finally:
            for mode in modes:
                stop(mode)


def report(modes: list[Mode], args: argparse.Namespace) -> None:
    macs = {m.name: asyncio.run(negotiated(m)) for m in modes}
    print("frame MAC negotiated: " + ", ".join(f"{name} {mac}" for name, mac in macs.items()))
    assert macs["gmac"] == macs["gmac+tls"] == "aes256-gmac" and macs["hmac"] == MAC_HMAC_SHA256, macs
    print(f"{'':<28}{'plain (baseline)':>22}" + "".join(f"{m.name + ' (ratio)':>22}" for m in modes[1:]))
    runs = throughputs(modes, args.bytes, args.repeat)
    mbps = {name: run.rate / 1e6 for name, run in runs.items()}
    gib = args.bytes / (1 << 30)
    row(f"throughput, {args.bytes >> 20} MiB", mbps, "{:.0f} MB/s")
    row("  agent CPU per GiB", {k: r.agent_cpu / gib for k, r in runs.items()}, "{:.2f} s")
    row("  controller CPU per GiB", {k: r.controller_cpu / gib for k, r in runs.items()}, "{:.2f} s")
    trips = {m.name: asyncio.run(round_trips(m, args.rounds)) for m in modes}
    row("round trip `true`, median", {k: pct(v, 50) * 1e3 for k, v in trips.items()}, "{:.2f} ms")
    row("round trip `true`, p99", {k: pct(v, 99) * 1e3 for k, v in trips.items()}, "{:.2f} ms")
    conns = {m.name: asyncio.run(connects(m, max(20, args.rounds // 5))) for m in modes}
    row("connect + handshake, median", {k: pct(v, 50) * 1e3 for k, v in conns.items()}, "{:.2f} ms")
    ceiling = hmac_ceiling() / 1e6
    print(f"HMAC-SHA256 on this CPU, one core, 1 MiB buffers: {ceiling:.0f} MB/s "
          "(each end hashes every byte once)")
    print(f"AES-256-GMAC frame tags on this CPU, one core, 1 MiB bodies: {gmac_ceiling() / 1e6:.0f} MB/s")
    keyed = mbps["gmac"]
    verdict = "met" if keyed >= max(600.0, mbps["plain"] / 2) else "NOT met"
    print(f"goal for keyed throughput with the default MAC (>= half of plain and > 600 MB/s): {verdict} "
          f"({keyed:.0f} MB/s vs plain {mbps['plain']:.0f} MB/s)")


if __name__ == "__main__":
    main()
