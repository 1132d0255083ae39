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
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("aiboxctl"))
    env = {**os.environ, "NO_COLOR": "1"}
    cases = {
        "anchor: python -c 'import typer, rich.console'": [sys.executable, "-c", "import typer, rich.console"],
        "aiboxctl --help": [exe, "--help"],
        "aiboxctl probe --json": [exe, "probe", "--json"],
    }
    for argv in cases.values():  # warm the page cache and the engine-build cache
        wall(argv, env)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.runs):  # interleaved, so drift on a shared machine hits all alike
        for name, argv in cases.items():
            times[name].append(wall(argv, env))
    med = {name: statistics.median(t) for name, t in times.items()}
    width = max(map(len, med))
    for name, m in med.items():
        spread = f"(min {min(times[name]) * 1000:.0f}, max {max(times[name]) * 1000:.0f})"
        print(f"{name:<{width}}  median {m * 1000:7.1f} ms  {spread}")
    anchor = med["anchor: python -c 'import typer, rich.console'"]
    ratio = med["aiboxctl --help"] / anchor
    probe_ms = med["aiboxctl probe --json"] * 1000
    print(f"--help / anchor ratio: {ratio:.2f} (goal <= 1.3) {'OK' if ratio <= 1.3 else 'OVER'}")
    print(f"probe --json: {probe_ms:.0f} ms (goal <= 300 ms) {'OK' if probe_ms <= 300 else 'OVER'}")
    print(f"probe --json / anchor ratio: {med['aiboxctl probe --json'] / anchor:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
