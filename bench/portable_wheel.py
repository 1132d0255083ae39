#!/usr/bin/env python3
"""The portable CPU wheel (GGML_NATIVE=OFF, GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS) against the
anchor: the native llama-cpp-python build of the running environment, same model, same
settings, measured in the same run.

Prints the portable wheel's build time and size (from the wheel cache's build.json), the CPU
variant ggml picked, and prefill / decode tokens per second of both builds with their ratio.
The portable wheel is installed into a throwaway virtualenv; the running environment is
never changed. A missing wheel is built first (minutes: see build.json's build_seconds).

    .venv/bin/python bench/portable_wheel.py [--tokens 64] [--repeats 3] [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from engineenv import engine_wheel_cache_root, make_env  # noqa: E402 - the throwaway venvs the engine tests use
PROMPT = ("The history of the printing press begins in the fifteenth century, when Johannes "
          "Gutenberg combined movable metal type, oil-based ink and a screw press. ") * 4


def child(cfg_json: str) -> None:
    """Run in the environment under test: load, prefill the prompt, greedy-decode N tokens."""
    from aiboxctl.engine.config import engine_config_from_mapping
    from aiboxctl.engine.llama import LlamaRuntime, system_info

    args = json.loads(cfg_json)
    n_tokens = args.pop("tokens")
    rt = LlamaRuntime(engine_config_from_mapping(args, source="bench"))
    L = rt.lib
    prompt = rt.tokenize(PROMPT, add_special=True)
    batch = L.llama_batch_init(max(len(prompt), 1), 0, 1)
    sampler = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(sampler, L.llama_sampler_init_greedy())

    def decode(tokens: list[int], pos: int) -> None:
        batch.n_tokens = len(tokens)
        for i, tok in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos + i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        if L.llama_decode(rt.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    t0 = time.perf_counter()
    decode(prompt, 0)
    t1 = time.perf_counter()
    pos, out = len(prompt), []
    for _ in range(n_tokens):
        tok = int(L.llama_sampler_sample(sampler, rt.ctx, batch.n_tokens - 1))
        out.append(tok)
        decode([tok], pos)
        pos += 1
    t2 = time.perf_counter()
    maps = Path("/proc/self/maps").read_text()
    variant = next((ln.rsplit("libggml-cpu-", 1)[1].split(".so")[0] for ln in maps.splitlines()
                    if "libggml-cpu-" in ln), "native")
    print(json.dumps({"prefill_tok_s": len(prompt) / (t1 - t0), "decode_tok_s": n_tokens / (t2 - t1),
                      "prompt_tokens": len(prompt), "tokens": out, "variant": variant,
                      "system_info": system_info()}))


def run_once(python: str, cfg: dict) -> dict:
    proc = subprocess.run([python, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{python}: child failed ({proc.returncode}): {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict]) -> dict:
    return {"prefill": statistics.median(r["prefill_tok_s"] for r in runs),
            "decode": statistics.median(r["decode_tok_s"] for r in runs),
            "variant": runs[0]["variant"], "tokens": runs[0]["tokens"], "prompt_tokens": runs[0]["prompt_tokens"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--repack", action="store_true",
                    help="allow weight repacking (off by default: some VMs advertise AMX but fault on it)")
    ap.add_argument("--cache", type=Path, default=engine_wheel_cache_root() / "llama-cpp-python")
    a = ap.parse_args()
    if a.child:
        child(a.child)
        return

    from aiboxctl.engine.build.cache import WheelCache
    from aiboxctl.engine.build.compile import build_wheel
    from aiboxctl.engine.build.install import pip_install
    from aiboxctl.engine.build.specs import build_spec
    from aiboxctl.engine.build.verify import selftest_model

    cache = WheelCache(a.cache)
    wheel = build_wheel(build_spec("cpu", []), cache=cache, progress=lambda m: print(m, file=sys.stderr))
    model = selftest_model(a.model)
    cfg = {"model": str(model), "n_ctx": 1024, "parallel": 1, "n_batch": 512, "n_ubatch": 512,
           "repack": a.repack, "threads": a.threads, "tokens": a.tokens}
    with tempfile.TemporaryDirectory(prefix="aibox-bench-") as tmp:
        env_py = make_env(Path(tmp) / "env")
        pip_install(str(env_py), wheel.path)
        # Interleaved, so a noisy neighbour on a shared machine hits both builds alike.
        native_runs, portable_runs = [], []
        for _ in range(a.repeats):
            native_runs.append(run_once(sys.executable, cfg))
            portable_runs.append(run_once(str(env_py), cfg))
        native, portable = summarize(native_runs), summarize(portable_runs)

    print(f"model: {model.name}; prompt {native['prompt_tokens']} tokens, decode {a.tokens} tokens, "
          f"median of {a.repeats}, repack {'on' if a.repack else 'off'}")
    print(f"portable wheel: {wheel.path.name}, {wheel.size_bytes / 2**20:.1f} MiB, "
          f"built in {wheel.build_seconds or float('nan'):.0f} s ({os.cpu_count()} cores), key {wheel.key}")
    print(f"{'build':<28}{'variant':<18}{'prefill tok/s':>14}{'decode tok/s':>14}")
    print(f"{'native (anchor)':<28}{native['variant']:<18}{native['prefill']:>14.1f}{native['decode']:>14.1f}")
    print(f"{'portable (GGML_BACKEND_DL)':<28}{portable['variant']:<18}{portable['prefill']:>14.1f}"
          f"{portable['decode']:>14.1f}")
    print(f"ratio portable/native: prefill {portable['prefill'] / native['prefill']:.2f}, "
          f"decode {portable['decode'] / native['decode']:.2f}; greedy tokens identical: "
          f"{native['tokens'] == portable['tokens']}")


if __name__ == "__main__":
    main()
