#!/usr/bin/env python3
"""Pull throughput: ``aiboxctl pull`` against huggingface_hub's own ``hf_hub_download`` (the
anchor), same file, same loopback hub server, same run.

The server (tests/hubserver.py) runs in its own process so it does not share the client's GIL.
Each tool downloads the file ``--repeat`` times into a fresh folder, alternating order; the best
run of each is compared. hf_hub_download does not hash plain-HTTP downloads at all, so the ratio
is the price of aiboxctl's verification (sha256 streamed in a thread while writing) plus its
store bookkeeping. Goal: ratio >= 0.9.

    .venv/bin/python bench/pull_throughput.py               # 1 GiB
    .venv/bin/python bench/pull_throughput.py --size-mib 256 --repeat 1
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _serve(path: str, ready, stop) -> None:
    from hubserver import HubServer

    hub = HubServer()
    hub.add_file("bench/big-GGUF", "big.gguf", path=Path(path))
    hub.start()
    ready.send(hub.url)
    stop.wait()
    hub.stop()


def _write_file(path: Path, size: int) -> None:
    block = hashlib.sha256(b"bench").digest() * (1 << 15)  # 1 MiB
    with path.open("wb") as fh:
        fh.write(b"GGUF")
        left = size - 4
        while left > 0:
            n = min(left, len(block))
            fh.write(block[:n])
            left -= n


def _hf_once(url: str, work: Path) -> tuple[float, float]:
    from huggingface_hub import hf_hub_download

    cache = work / "hf-cache"
    os.sync()  # the previous run's dirty pages must not be written back during this one
    t0, c0 = time.perf_counter(), time.process_time()
    hf_hub_download("bench/big-GGUF", "big.gguf", cache_dir=cache, endpoint=url)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(cache)
    return dt, cpu


def _aibox_once(url: str, work: Path) -> tuple[float, float, float]:
    from aiboxctl.hub.pull import pull
    from aiboxctl.hub.store import ModelStore

    store = ModelStore(work / "store")
    os.sync()
    t0, c0 = time.perf_counter(), time.process_time()
    result = pull("bench/big-GGUF:big.gguf", source="hf", endpoints=(url,), store=store)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert result.files[0].status == "downloaded" and result.files[0].expected_sha256_from == "hub-lfs"
    shutil.rmtree(store.root)
    return dt, cpu, result.hash_cpu_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the served file and both downloads live (default: a temp dir; /dev/shm takes the disk out)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    size = args.size_mib << 20

    with tempfile.TemporaryDirectory(prefix="pull-bench-", dir=args.dir) as tmp:
        work = Path(tmp)
        src = work / "big.gguf"
        _write_file(src, size)
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        stop = ctx.Event()
        server = ctx.Process(target=_serve, args=(str(src), child, stop), daemon=True)
        server.start()
        url = parent.recv()
        try:
            hf_times, ai_times, hf_cpu, ai_cpu, hash_cpu = [], [], [], [], []
            for i in range(args.repeat):
                order = ("hf", "aibox") if i % 2 == 0 else ("aibox", "hf")
                for tool in order:
                    if tool == "hf":
                        dt, cpu = _hf_once(url, work)
                        hf_times.append(dt)
                        hf_cpu.append(cpu)
                    else:
                        dt, cpu, hcpu = _aibox_once(url, work)
                        ai_times.append(dt)
                        ai_cpu.append(cpu)
                        hash_cpu.append(hcpu)
        finally:
            stop.set()
            server.join(10)

    mib = size / 2**20
    hf_best, ai_best = min(hf_times), min(ai_times)
    print(f"file: {mib:.0f} MiB over loopback (server in its own process), {args.repeat} run(s) each, best shown")
    print(f"anchor  huggingface_hub.hf_hub_download : {mib / hf_best:8.1f} MiB/s  ({hf_best:.2f} s; runs {', '.join(f'{t:.2f}' for t in hf_times)})")
    print(f"aiboxctl pull (sha256 verified)         : {mib / ai_best:8.1f} MiB/s  ({ai_best:.2f} s; runs {', '.join(f'{t:.2f}' for t in ai_times)})")
    print(f"ratio aiboxctl / huggingface_hub        : {hf_best / ai_best:8.2f}   (goal >= 0.90)")
    print(f"client CPU s (user+sys, all threads)    : hf {min(hf_cpu):.2f} s, aiboxctl {min(ai_cpu):.2f} s "
          f"(ratio {min(hf_cpu) / min(ai_cpu):.2f}; less sensitive than wall time to a busy machine)")
    print(f"load average during the run            : {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    cpu = min(hash_cpu)
    print(f"CPU seconds hashing (sha256 thread)     : {cpu:8.2f} s   ({mib / cpu if cpu else float('inf'):.0f} MiB per CPU second)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
