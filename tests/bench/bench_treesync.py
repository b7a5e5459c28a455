"""Tree sync benchmark: `put -r` of many small files, first copy against reruns and scp -r.

    python -m tests.bench.bench_treesync [--files 2000] [--size 2048] [--dir /tmp]

One agent on loopback, the whole `shoal put` process timed (startup included).
Rows, each the best of `--repeat` interleaved runs on this machine, this run:

1. cp -r: the same tree copied locally (baseline: the filesystem's own cost);
2. scp -r to a loopback sshd the benchmark starts (tests/bench/sshd.py), when
   the machine has one: the goal is a first copy no slower than this (scp
   fsyncs nothing; put fsyncs every file before it counts it as done);
3. put -r -p, first copy: every file sent (small files in batches);
4. put -r -p, rerun: nothing changed, so only a listing crosses the wire;
5. put -r --checksum, rerun: the agent hashes every file, nothing is sent;
6. put -r (no -p), rerun: every file sent again over the existing copies.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

from tests.bench.bench_core import ROOT, SHOAL
from tests.bench.common import free_port, start_agent
from tests.bench.sshd import loopback_sshd


def make_tree(top: str, files: int, size: int) -> None:
    for i in range(files):
        directory = os.path.join(top, f"d{i // 100:03d}")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"f{i:05d}"), "wb") as f:
            f.write(os.urandom(size))


def timed(command: str | list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(command, shell=isinstance(command, str), check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="shoal-bench-tree-", dir=args.dir)
    source = os.path.join(work, "site")
    make_tree(source, args.files, args.size)
    port = free_port()
    agent = start_agent(port, "--state-dir", os.path.join(work, "state"))
    put = f"{SHOAL} put -q 127.0.0.1:{port} -r"
    best: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(seconds, best.get(name, float("inf")))

    try:
        with loopback_sshd() as (sshd, why):
            for n in range(max(1, args.repeat)):
                dest = os.path.join(work, f"copy{n}")
                keep("cp", timed(f"cp -r {source}/ {dest}-cp"))
                if sshd is not None:
                    keep("scp", timed(sshd.scp("-r", source, f"remote:{dest}-scp")))
                keep("first", timed(f"{put} -p {source}/ {dest}"))
                keep("rerun -p", timed(f"{put} -p {source}/ {dest}"))
                keep("rerun --checksum", timed(f"{put} --checksum {source}/ {dest}"))
                keep("rerun, no -p", timed(f"{put} {source}/ {dest}"))
    finally:
        agent.terminate()
        agent.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.files} files of {args.size} B in {args.dir}, best of {args.repeat}, rows interleaved:")
    base = best["first"]
    for name, label in (("cp", "cp -r (local baseline)"), ("scp", "scp -r 127.0.0.1 (no fsync)"),
                        ("first", "put -r -p, first copy"), ("rerun -p", "put -r -p, rerun"),
                        ("rerun --checksum", "put -r --checksum, rerun"), ("rerun, no -p", "put -r, rerun (sends all)")):
        if name in best:
            print(f"{label:<30} {best[name]:7.2f} s   vs first copy {best[name] / base:5.2f}")
        else:
            print(f"{label:<30} not measured ({why})")
    if "scp" in best:
        print(f"{'':<30} scp -r time / put -r time: {best['scp'] / base:.2f} (goal >= 1)")


if __name__ == "__main__":
    main()
