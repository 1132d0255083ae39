#!/usr/bin/env python3
"""Host overhead of the decode loop, in process (issue 18): the real Scheduler over a tiny
random-weight qwen2 with the real 152k Qwen2 tokenizer (tests/r1tiny.py), 64 slots, N streams of
T tokens each (greedy, ``ignore_eos``), events handed to a second thread once per step as the
server does. It prints the engine's own step counters (``Scheduler.timing``, what /metrics
exports): µs per step of step time, decode, samplers and host, and host µs per generated token
(goal ≤ 25 at 64 streams), and host ÷ decode: the decode's own time in the same steps is the
anchor.

``--cpu-time`` runs the same counters on the loop thread's CPU clock instead of the wall clock:
on a shared, loaded machine the wall clock mostly measures how long the thread waited for a core
(every wake-up of another thread is a chance to lose it), the CPU clock what the host's work
costs. ``bench/serve_throughput.py --host-overhead`` measures the same counters through a real
``aiboxctl serve`` beside llama-server.

    .venv/bin/python bench/host_overhead.py [--clients 1,16,64] [--tokens 64] [--cpu-time]
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serve_throughput import load_average, tiny_model  # noqa: E402  (bench/serve_throughput.py)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF (default: tests/r1tiny.py's tiny qwen2, written once into the bench cache)")
    ap.add_argument("--slots", type=int, default=64)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--cpu-time", action="store_true", help="the loop thread's CPU clock instead of wall time")
    args = ap.parse_args()
    from aiboxctl.engine import scheduler as sched_module
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime
    from aiboxctl.engine.metrics import EngineMetrics
    from aiboxctl.engine.request import Request, SamplingParams

    if args.cpu_time:
        sched_module.perf_counter_ns = time.thread_time_ns  # the loop's clock, for this process only
    if args.model:
        model = Path(args.model)
    else:  # the same file serve_throughput --host-overhead serves
        model = tiny_model()
    slot_ctx = 256
    rt = LlamaRuntime(EngineConfig(model=model, n_ctx=args.slots * slot_ctx, parallel=args.slots, threads=1,
                                   flash_attn="off", repack=False, kv_unified=True))
    handed: queue.SimpleQueue = queue.SimpleQueue()

    def consume() -> None:  # the server's event-loop side: one hand-over per step
        while (batch := handed.get()) is not None:
            for emit, event in batch:
                emit(event)

    threading.Thread(target=consume, daemon=True).start()
    metrics = EngineMetrics()
    sched = sched_module.Scheduler(rt, parallel=args.slots, n_batch=512, slot_ctx=slot_ctx, queue_size=256,
                                   metrics=metrics, deliver=handed.put)
    metrics.bind(sched, rt.n_ctx)
    sched.start()

    def level(n: int) -> dict[str, float]:
        done = threading.Semaphore(0)

        def emit(event: tuple) -> None:
            if event[0] in ("done", "error"):
                done.release()

        reqs = [Request(f"r{i}", rt.tokenize(f"Essay {i}: The history of the Roman Empire", add_special=True),
                        SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True), emit)
                for i in range(n)]
        t0 = sched.timing
        for r in reqs:
            sched.submit(r)
        for _ in reqs:
            done.acquire()
        t1 = sched.timing
        steps = t1.steps - t0.steps
        per = {k: (getattr(t1, f"{k}_ns") - getattr(t0, f"{k}_ns")) / steps / 1e3
               for k in ("step", "decode", "sample", "host")}
        return {"steps": steps, **per, "host_per_token": per["host"] * steps / (t1.sampled - t0.sampled)}

    level(1)  # warm-up
    clock = "thread CPU" if args.cpu_time else "wall"
    print(f"model {model.name}, vocabulary {rt.n_vocab}, {args.slots} slots, {args.tokens} tokens per stream, "
          f"{clock} clock, load average {load_average()}")
    print(f"{'streams':>7} | {'steps':>5} | {'step µs':>9} | {'decode µs':>9} | {'sample µs':>9} | {'host µs/step':>12} | "
          f"{'host µs/token':>13} | {'host/decode':>11}")
    results = {}
    for n in [int(x) for x in args.clients.split(",")]:
        r = results[n] = level(n)
        print(f"{n:>7} | {r['steps']:>5} | {r['step']:9.0f} | {r['decode']:9.0f} | {r['sample']:9.0f} | "
              f"{r['host']:12.1f} | {r['host_per_token']:13.1f} | {r['host'] / r['decode']:11.3f}", flush=True)
    top = max(results)
    print(f"goal: host {results[top]['host_per_token']:.1f} µs per generated token at {top} streams (≤ 25), "
          f"{results[top]['host'] / results[top]['decode']:.3f}× the decode's own time (the anchor, same steps); "
          f"load average now {load_average()}")
    sched.stop()
    handed.put(None)
    sched.close()
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
