#!/usr/bin/env python3
"""What fencing costs on the publish path of the Redis engine: BEFORE against this tree.

    .venv/bin/python benchmarks/redis_fencing.py                 # BEFORE = main, ~1 minute
    .venv/bin/python benchmarks/redis_fencing.py --before 2cb86ea --rounds 5

BEFORE is exported with ``git archive`` into a temporary directory. One ``redis-server`` of
its own (``--port``, no persistence) serves both arms; each round runs each arm once, in
alternating order, as a subprocess with ``PYTHONPATH`` set to its tree's ``src``: a
``RedisEngine`` publishes ``--count`` history publications one at a time (latency per
publish) and then ``--count`` with 32 in flight (publications/s). Redis's own time per script
call comes from ``INFO commandstats`` (``evalsha``, µs per call), reset before each arm.
Prints the median per arm over the rounds and AFTER/BEFORE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ARM = r"""
import asyncio, json, sys, time
import redis
from pulsewire.hub.engines.redis import RedisEngine
from pulsewire.hub.types import Publication, PublishOptions

url, count = sys.argv[1], int(sys.argv[2])
options = PublishOptions(history_size=100, history_ttl=60.0)

async def main():
    engine = RedisEngine(url, "bench")
    await engine.start()
    admin = redis.Redis.from_url(url)
    try:
        for i in range(200):  # warm-up (connections, script cache)
            await engine.publish(f"w{i % 10}", Publication(i), options)
        admin.config_resetstat()
        started = time.perf_counter()
        for i in range(count):
            await engine.publish(f"s{i % 100}", Publication({"i": i}), options)
        sequential = (time.perf_counter() - started) / count * 1e6
        script_us = float(admin.info("commandstats")["cmdstat_evalsha"]["usec_per_call"])
        queue = asyncio.Queue()
        for i in range(count):
            queue.put_nowait(i)

        async def worker():
            while not queue.empty():
                i = queue.get_nowait()
                await engine.publish(f"c{i % 100}", Publication({"i": i}), options)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(32)))
        rate = count / (time.perf_counter() - started)
    finally:
        await engine.close()
        for key in admin.scan_iter(match="bench:*", count=1000):
            admin.delete(key)
        admin.close()
    print(json.dumps({"us_per_publish": sequential, "script_us": script_us, "per_s": rate}))

asyncio.run(main())
"""


def export(commit: str, into: Path) -> Path:
    archive = into / "tree.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), commit, "src"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree" / "src"


def run_arm(src: Path, url: str, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", ARM, url, str(count)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--port", type=int, default=7190)
    args = parser.parse_args()
    url = f"redis://127.0.0.1:{args.port}/0"
    with tempfile.TemporaryDirectory(prefix="pw-fencing-bench-") as tmp:
        arms = {"before": export(args.before, Path(tmp)), "after": ROOT / "src"}
        server = subprocess.Popen(
            [
                *("redis-server", "--port", str(args.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", tmp),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
            for round_ in range(args.rounds):
                order = list(arms) if round_ % 2 == 0 else list(reversed(arms))
                for name in order:
                    results[name].append(run_arm(arms[name], url, args.count))
        finally:
            server.kill()
            server.wait()
    print(f"{args.rounds} rounds x {args.count} publications, median per arm (after/before)")
    for metric in ("us_per_publish", "script_us", "per_s"):
        medians = {n: statistics.median(r[metric] for r in results[n]) for n in arms}
        ratio = medians["after"] / medians["before"]
        print(
            f"{metric:>15}: before {medians['before']:9.1f}  after {medians['after']:9.1f}"
            f"  ratio {ratio:.3f}"
        )


if __name__ == "__main__":
    main()
