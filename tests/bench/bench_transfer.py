"""Transfer benchmark: `put` of a large file to one agent (and to ten), next to same-run baselines.

    python -m tests.bench.bench_transfer [--size 2G] [--dir /tmp] [--hosts 10] [--fleet-size 2G]

The source file is made once from /dev/urandom (incompressible) and kept for the
next run. Every copy lands on the same filesystem and is fsynced before its time
stops; scp is shown both with its fsync (put's guarantee) and without:

1. raw: a Python process reads the file and sends it over a loopback socket to
   another process that writes it and fsyncs it (no hashing, no framing);
2. raw + sha256: the same with a sha256 on each side, what any checked copy costs;
3. shoal put (library): a controller in this process, the agent in its own process;
4. shoal put (CLI): the whole `shoal put` process, startup included;
5. scp to a loopback sshd the benchmark starts (tests/bench/sshd.py), with and
   without an fsync of its copy, when the machine has an sshd;
6. the same put with a shared key (frames MACed), to one agent and to `--hosts`
   agents at once: the controller reads and hashes each chunk once for every
   host, so its CPU per GiB should grow with the hosts only by what each
   connection costs on its own (its MAC, and the kernel's copy into its socket).

A sha256 of one stream over the source, timed in this process, gives the ceiling
of any copy checked end to end: the agent hashes everything it writes in one
stream (SHA-256 cannot be split over cores), and the two ends together hash every
byte twice on this machine's cores. Without SHA CPU extensions that ceiling sits
far below a raw copy; the report prints it and put's share of it.

While (3) runs, a second connection pings the agent every 20 ms and this process
times its own event loop, to show that file I/O does not stall either loop, and
both ends' RSS is sampled, to show memory stays flat whatever the file size.
Each end's CPU seconds per GiB are printed apart.
Each row is the best of `--repeat` runs, interleaved, since the machine is shared.
`--dir /dev/shm` takes the disk out and leaves the CPU cost of each path.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import psutil

from shoal.controller.client import AgentClient
from shoal.controller.fleet import ConnectOptions
from shoal.controller.targets import Target
from shoal.controller.put import put_file, put_fleet
from shoal.controller.transferplan import plan_put
from shoal.hostio.keyfile import load_key_file, write_key_file
from shoal.protocol.handshake import MAC_AES256_GMAC, frame_mac
from tests.bench.bench_core import ROOT, SHOAL, size_arg
from tests.bench.common import free_port, start_agent
from tests.bench.sshd import Sshd, loopback_sshd

RAW_RECEIVER = """
import os, socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); view = memoryview(buf)
hashing = sys.argv[2] == "1"; h = __import__("hashlib").sha256()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
while True:
    k = c.recv_into(buf)
    if not k: break
    if hashing: h.update(view[:k])
    os.write(fd, view[:k])
os.fsync(fd); os.close(fd)
print(h.hexdigest(), flush=True)
"""

RAW_SENDER = """
import hashlib, os, socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
fd = os.open(sys.argv[2], os.O_RDONLY); h = hashlib.sha256(); hashing = sys.argv[3] == "1"
while True:
    b = os.read(fd, 1 << 20)
    if not b: break
    if hashing: h.update(b)
    s.sendall(b)
s.close()
"""


def make_source(path: str, size: int) -> None:
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    print(f"writing {size >> 20} MiB of random data to {path} (once)", flush=True)
    with open("/dev/urandom", "rb") as src, open(path, "wb") as out:
        left = size
        while left:
            left -= out.write(src.read(min(left, 8 << 20)))


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def raw_copy(source: str, dest: str, hashing: bool) -> tuple[float, float]:
    """Seconds for the raw loopback copy, fsync included, and the CPU seconds it used."""
    cpu = children_cpu()
    flag = "1" if hashing else "0"
    recv = subprocess.Popen([sys.executable, "-c", RAW_RECEIVER, dest, flag], stdout=subprocess.PIPE, text=True)
    assert recv.stdout is not None
    port = recv.stdout.readline().strip()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", RAW_SENDER, port, source, flag], check=True)
    recv.stdout.readline()
    elapsed = time.perf_counter() - t
    recv.wait()
    return elapsed, children_cpu() - cpu


def sha256_rate(path: str, limit: int = 512 << 20) -> float:
    """Bytes per second of one sha256 stream over (the start of) `path`, read in this process.

    SHA-256 cannot be split over cores for one stream, so the agent, which must
    hash everything it writes, can never copy faster than this.
    """
    h = hashlib.sha256()
    done = 0
    t = time.perf_counter()
    with open(path, "rb") as f:
        while done < limit and (chunk := f.read(1 << 20)):
            h.update(chunk)
            done += len(chunk)
    return done / (time.perf_counter() - t)


async def library_put(source: str, dest: str, agent_pid: int, port: int) -> tuple[float, float, float, dict[str, float]]:
    """Seconds for put_file, CPU seconds of the agent and of the controller, and the worst
    seen while it ran: agent ping, local loop lag, and how far each end's RSS rose."""
    target = Target("bench", "127.0.0.1", port)
    client = await AgentClient.connect(target)
    pinger = await AgentClient.connect(target)
    agent, me = psutil.Process(agent_pid), psutil.Process()
    rss0 = {"agent_rss": agent.memory_info().rss, "ctl_rss": me.memory_info().rss}
    worst = {"ping": 0.0, "lag": 0.0, "agent_rss": 0.0, "ctl_rss": 0.0}
    stop = asyncio.Event()

    async def ping() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await pinger.ping()
            worst["ping"] = max(worst["ping"], time.perf_counter() - t)
            for key, proc in (("agent_rss", agent), ("ctl_rss", me)):
                worst[key] = max(worst[key], proc.memory_info().rss - rss0[key])
            await asyncio.sleep(0.02)

    async def lag() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            worst["lag"] = max(worst["lag"], time.perf_counter() - t - 0.01)

    watchers = [asyncio.create_task(ping()), asyncio.create_task(lag())]
    agent_cpu, ctl_cpu = sum(agent.cpu_times()[:2]), time.process_time()
    t = time.perf_counter()
    result = await put_file(client, plan_put([source], dest, False), dest)
    elapsed = time.perf_counter() - t
    agent_cpu, ctl_cpu = sum(agent.cpu_times()[:2]) - agent_cpu, time.process_time() - ctl_cpu
    stop.set()
    await asyncio.gather(*watchers)
    await client.close()
    await pinger.close()
    assert result.ok, result
    return elapsed, agent_cpu, ctl_cpu, worst


async def fleet_put(source: str, work: str, ports: list[int], key: str) -> tuple[float, float]:
    """Seconds and controller CPU seconds for one keyed put of `source` to every agent."""
    targets = [Target(f"a{i}", "127.0.0.1", port) for i, port in enumerate(ports)]
    dest = os.path.join(work, "fleet.bin")
    cpu, t = time.process_time(), time.perf_counter()
    result = await put_fleet(targets, ConnectOptions(key=load_key_file(key)), plan_put([source], dest, False), dest)
    elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
    assert result.status == 0, [r.error for r in result.results]
    return elapsed, cpu


SINK = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(1)
print(s.getsockname()[1], flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20)
while c.recv_into(buf):
    pass
"""


def send_seconds_per_gib() -> float:
    """CPU seconds this process spends sending a GiB over loopback TCP to a reader that drops it:
    what any connection costs its sender, whatever it carries."""
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    port = int(sink.stdout.readline())
    chunk = os.urandom(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t = time.process_time()
        for _ in range(1024):
            s.sendall(chunk)
        spent = time.process_time() - t
    sink.wait()
    return spent


def mac_seconds_per_gib() -> float:
    """CPU seconds one connection's frame MAC (the default, AES-256-GMAC) takes per GiB of 1 MiB frames."""
    mac, body, head = frame_mac(MAC_AES256_GMAC, os.urandom(32)), os.urandom(1 << 20), bytes(9)
    t = time.process_time()
    for seq in range(256):
        mac.tag(seq, head, body)
    return (time.process_time() - t) * 4


def cli_put(source: str, dest: str, port: int) -> float:
    t = time.perf_counter()
    subprocess.run(f"{SHOAL} put -q 127.0.0.1:{port} {source} {dest}", shell=True, check=True, cwd=ROOT)
    return time.perf_counter() - t


def scp_put(sshd: Sshd, source: str, dest: str) -> tuple[float, float]:
    """Seconds for `scp`, and for `scp` plus fsyncing its copy (put's guarantee).

    The copy lands on this machine, so a local `sync FILE` is the remote fsync.
    """
    t = time.perf_counter()
    subprocess.run(sshd.scp(source, f"remote:{dest}"), check=True)
    copied = time.perf_counter() - t
    subprocess.run(["sync", dest], check=True)
    return copied, time.perf_counter() - t


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def row(name: str, seconds: float, size: int, raw: float, note: str = "") -> None:
    rate = size / seconds / 1e6
    print(f"{name:<30} {rate:8.0f} MB/s  {seconds:7.2f} s   vs raw {raw / seconds:5.2f}  {note}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=size_arg, default=size_arg("2G"))
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=10, help="agents for the fan-out rows (0: none)")
    parser.add_argument("--fleet-size", type=size_arg, default=None,
                        help="file size for the fan-out rows (default: --size; each agent writes its copy)")
    args = parser.parse_args()
    source = os.path.join(args.dir, f"shoal-bench-{args.size}.bin")
    make_source(source, args.size)
    work = tempfile.mkdtemp(prefix="shoal-bench-", dir=args.dir)
    dest = os.path.join(work, "copy.bin")
    port = free_port()
    agent = start_agent(port, "--state-dir", os.path.join(work, "state"))
    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    worst: dict[str, float] = {}
    hash_rate = 0.0

    def keep(name: str, measured: tuple[float, float]) -> None:
        if measured[0] < best.get(name, float("inf")):
            best[name], cpu[name] = measured

    try:
        with loopback_sshd() as (sshd, why_no_scp):
            for _ in range(max(1, args.repeat)):
                hash_rate = max(hash_rate, sha256_rate(source))
                keep("raw", raw_copy(source, dest, hashing=False))
                keep("hashed", raw_copy(source, dest, hashing=True))
                os.unlink(dest)
                ours, agent_cpu, ctl_cpu, seen = asyncio.run(library_put(source, dest, agent.pid, port))
                keep("ours", (ours, agent_cpu + ctl_cpu))
                if ours == best["ours"]:
                    cpu["ours agent"], cpu["ours controller"] = agent_cpu, ctl_cpu
                worst = {key: max(value, worst.get(key, 0.0)) for key, value in seen.items()}
                assert sha256_of(dest) == sha256_of(source), "copy differs"
                keep("cli", (cli_put(source, dest, port), 0.0))
                if sshd is not None:
                    copied, synced = scp_put(sshd, source, dest)
                    keep("scp", (copied, 0.0))
                    keep("scp+fsync", (synced, 0.0))
    finally:
        agent.terminate()
        agent.wait()
    try:
        report(args, best, cpu, worst, hash_rate, why_no_scp)
        if args.hosts > 0:
            fleet(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def fleet(args: argparse.Namespace, work: str) -> None:
    """Controller CPU per GiB for a keyed put to one agent and to `--hosts` agents, best of `--repeat`."""
    size = args.fleet_size or args.size
    source = os.path.join(args.dir, f"shoal-bench-{size}.bin")
    make_source(source, size)
    key = os.path.join(work, "bench.key")
    write_key_file(key)
    ports = [free_port() for _ in range(args.hosts)]
    agents = [start_agent(p, "--key-file", key, "--state-dir", os.path.join(work, f"state{i}"))
              for i, p in enumerate(ports)]
    gib = size / (1 << 30)
    seen: dict[int, tuple[float, float]] = {}
    try:
        for _ in range(max(1, args.repeat)):
            for count in (1, args.hosts):
                measured = asyncio.run(fleet_put(source, work, ports[:count], key))
                if measured[1] < seen.get(count, (0.0, float("inf")))[1]:
                    seen[count] = measured
    finally:
        for agent in agents:
            agent.terminate()
            agent.wait()
    one, many = seen[1][1] / gib, seen[args.hosts][1] / gib
    mac, send = mac_seconds_per_gib(), send_seconds_per_gib()
    print(f"keyed put of {size >> 20} MiB, controller CPU (best of {args.repeat}):")
    print(f"{'1 agent':<30} {one:7.2f} CPU s/GiB   {size / seen[1][0] / 1e6:8.0f} MB/s")
    print(f"{f'{args.hosts} agents':<30} {many:7.2f} CPU s/GiB   {size * args.hosts / seen[args.hosts][0] / 1e6:8.0f} "
          f"MB/s summed over the agents")
    if args.hosts > 1:
        extra = (many - one) / (args.hosts - 1)
        print(f"{'each host beyond the first':<30} {extra:7.2f} CPU s/GiB   vs what any connection costs: "
              f"MAC {mac:.2f} + a bare loopback send {send:.2f} = {mac + send:.2f} CPU s/GiB")


def report(args: argparse.Namespace, best: dict[str, float], cpu: dict[str, float],
           worst: dict[str, float], hash_rate: float, why_no_scp: str) -> None:
    raw, hashed, ours = best["raw"], best["hashed"], best["ours"]
    size, gib = args.size, args.size / (1 << 30)
    cores = len(os.sched_getaffinity(0))
    # The agent hashes every byte in one stream (<= hash_rate), and the two ends
    # together hash every byte twice on `cores` cores (<= cores * hash_rate / 2).
    ceiling = min(hash_rate, cores * hash_rate / 2)
    print(f"{size >> 20} MiB in {args.dir}, best of {args.repeat}, rows interleaved:")
    row("raw loopback copy", raw, size, raw, f"(baseline: read, send, write, fsync; "
        f"{cpu['raw'] / gib:.1f} CPU s/GiB)")
    row("raw copy + sha256 both ends", hashed, size, raw, f"(any checked copy; {cpu['hashed'] / gib:.1f} CPU s/GiB)")
    print(f"{'sha256, one stream':<30} {hash_rate / 1e6:8.0f} MB/s  ceiling of any copy hashed on both ends "
          f"with {cores} cores: {ceiling / 1e6:.0f} MB/s = {ceiling * raw / size:.2f} of raw")
    row("shoal put (library)", ours, size, raw, f"(vs raw+sha256 {hashed / ours:.2f}; of the sha256 rate "
        f"{size / ours / hash_rate:.2f}, goal >= 0.85)")
    print(f"{'':<30} CPU s/GiB: agent {cpu['ours agent'] / gib:.2f}, controller {cpu['ours controller'] / gib:.2f} "
          f"(two sha256 streams alone: {2 * (1 << 30) / hash_rate:.2f})")
    print(f"{'':<30} worst agent ping during put {worst['ping'] * 1e3:.1f} ms, "
          f"worst controller loop lag {worst['lag'] * 1e3:.1f} ms")
    print(f"{'':<30} RSS growth during put: agent {worst['agent_rss'] / (1 << 20):.1f} MiB, "
          f"controller {worst['ctl_rss'] / (1 << 20):.1f} MiB (flat: independent of --size)")
    row("shoal put (CLI process)", best["cli"], size, raw)
    if "scp" not in best:
        print(f"{'scp 127.0.0.1':<30} not measured ({why_no_scp})")
        return
    for name, label in (("scp+fsync", "scp 127.0.0.1 + fsync"), ("scp", "scp 127.0.0.1 (no fsync)")):
        scp = best[name]
        row(label, scp, size, raw, f"(scp time / put time: library {scp / ours:.2f}, "
            f"CLI {scp / best['cli']:.2f}; goal > 1)")


if __name__ == "__main__":
    main()
