#!/usr/bin/env python3
"""CLI start-up: median wall time of `aiboxctl --help` against its anchor, the bare
`python -c "import typer, rich.console"` (the least any Typer+Rich CLI can cost), measured in
the same run, and of `aiboxctl probe --json` (with its engine-build cache warm, as on a box
that has been probed once).

Goals (issue 2): --help / anchor <= 1.3; probe --json <= 300 ms on the 2-core build VM.

    bench/cli_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds user+sys). CPU time barely moves when other work shares the
    machine, so it is the figure to trust when the wall times are noisy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("aiboxctl"))
    env = {**os.environ, "NO_COLOR": "1"}
    load0 = f"{os.getloadavg()[0]:.2f}"
    cases = {
        "anchor: python -c 'import typer, rich.console'": [sys.executable, "-c", "import typer, rich.console"],
        "aiboxctl --help": [exe, "--help"],
        "aiboxctl probe --json": [exe, "probe", "--json"],
    }
    for argv in cases.values():  # warm the page cache and the engine-build cache
        run(argv, env)
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all alike
        for name, argv in cases.items():
            w, c = run(argv, env)
            walls[name].append(w)
            cpus[name].append(c)
    med = {name: statistics.median(t) for name, t in walls.items()}
    cpu = {name: statistics.median(t) for name, t in cpus.items()}
    width = max(map(len, med))
    print(f"load average before/after: {load0} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name in cases:
        print(f"{name:<{width}}  wall median {med[name] * 1000:6.1f} ms (min {min(walls[name]) * 1000:.0f})"
              f"   CPU median {cpu[name] * 1000:6.1f} ms")
    anchor_name = next(iter(cases))
    help_ratio = med["aiboxctl --help"] / med[anchor_name]
    probe_ms = med["aiboxctl probe --json"] * 1000
    print(f"--help / anchor: wall {help_ratio:.2f}, CPU {cpu['aiboxctl --help'] / cpu[anchor_name]:.2f} "
          f"(goal <= 1.3) {'OK' if help_ratio <= 1.3 else 'OVER'}")
    print(f"probe --json: wall {probe_ms:.0f} ms, CPU {cpu['aiboxctl probe --json'] * 1000:.0f} ms "
          f"(goal <= 300 ms) {'OK' if probe_ms <= 300 else 'OVER'}; "
          f"/ anchor: wall {med['aiboxctl probe --json'] / med[anchor_name]:.2f}, "
          f"CPU {cpu['aiboxctl probe --json'] / cpu[anchor_name]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
