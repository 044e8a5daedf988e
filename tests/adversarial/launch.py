"""Run the ``pulsewire`` command with a live-object census, optionally with the GC disabled.

    python launch.py [--nogc] -- serve --config hub.toml --port 0

``--nogc`` calls ``gc.disable()`` before anything of pulsewire is imported, so objects caught in
reference cycles are never freed: what is still alive after a connection ended was either
still referenced or in a cycle, and both are bugs for the "freed when closed" proofs.

On SIGUSR1 the process writes a census to ``$PULSEWIRE_CENSUS_FILE`` (JSON, replaced
atomically): ``{"seq": n, "rss": bytes, "counts": {"module.Class": live instances}}`` for every
class defined in pulsewire and a few of asyncio's/uvloop's (transports, tasks, futures, timer
handles). Instances are found with ``gc.get_objects()``, which lists every container object the
collector tracks, reachable or not, and does not run a collection.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal
import sys
from types import FrameType

WATCHED = ("Transport", "Task", "Future", "TimerHandle", "Handle")
"""Class names outside pulsewire that are counted too (a leaked connection keeps them)."""


def census() -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        module = kind.__module__
        name = kind.__qualname__
        if not isinstance(module, str) or not isinstance(name, str):
            continue  # e.g. metaclass instances whose __module__ is a descriptor
        if module.startswith("pulsewire") or name.endswith(WATCHED):
            counts[f"{module}.{name}"] += 1
    return dict(counts)


def rss() -> int:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    args = sys.argv[1:]
    if args and args[0] == "--nogc":
        gc.disable()
        args = args[1:]
    if args and args[0] == "--":
        args = args[1:]
    path = os.environ.get("PULSEWIRE_CENSUS_FILE")
    seq = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal seq
        if path is None:
            return
        seq += 1
        data = {"seq": seq, "rss": rss(), "gc_enabled": gc.isenabled(), "counts": census()}
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)

    signal.signal(signal.SIGUSR1, dump)
    from pulsewire.cli import main as cli_main

    sys.argv = ["pulsewire", *args]
    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
