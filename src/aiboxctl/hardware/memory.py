"""RAM, hugepages and memory bandwidth.

Bandwidth has three honest answers: the DIMMs' theoretical peak from ``dmidecode -t 17``
(root only: configured speed × data width × populated channels), a short measured copy
(``--measure``; a single-thread lower bound), or unknown.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from aiboxctl.hardware.model import Bandwidth, MemoryInfo
from aiboxctl.system import run_command


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo → values in bytes (kB lines) or counts (HugePages_*)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\w+(?:\(\w+\))?):\s+(\d+)(?:\s+kB)?\s*$", line)
        if m:
            value = int(m.group(2))
            out[m.group(1)] = value * 1024 if line.rstrip().endswith("kB") else value
    return out


def read_memory(proc_root: Path, warnings: list[str], bandwidth: Bandwidth) -> MemoryInfo:
    try:
        info = parse_meminfo((proc_root / "meminfo").read_text())
    except OSError as exc:
        warnings.append(f"cannot read {proc_root / 'meminfo'}: {exc.strerror or exc}")
        info = {}
    if info and "MemTotal" not in info:
        warnings.append(f"{proc_root / 'meminfo'} has no MemTotal line")
    return MemoryInfo(
        total_bytes=info.get("MemTotal"),
        available_bytes=info.get("MemAvailable", info.get("MemFree")),
        hugepages_total=info.get("HugePages_Total"),
        hugepages_free=info.get("HugePages_Free"),
        hugepage_size_bytes=info.get("Hugepagesize"),
        bandwidth=bandwidth,
    )


def _mts(value: str) -> float | None:
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*(MT/s|MHz)", value)
    return float(m.group(1)) if m else None


def _channel(dev: dict[str, str], position: int) -> str:
    bank, loc = dev.get("Bank Locator", ""), dev.get("Locator", "")
    m = re.search(r"(P\d+|CPU\s*\d+|NODE\s*\d+)?.*?CHANNEL\s*([A-Z0-9]+)", f"{bank} {loc}", re.I)
    if m:
        return f"{(m.group(1) or '').upper()}/{m.group(2).upper()}"
    # Server boards: "CPU0_DIMM_A1", "DIMM_B2", "P1-DIMMC1": letter = channel, digit = slot in it.
    m = re.search(r"(?:(CPU|P)\s*_?(\d+)\S*?)?DIMM[\s_-]*([A-Z])\d+\s*$", loc, re.I)
    if m:
        return f"{m.group(2) or ''}/{m.group(3).upper()}"
    return f"#{position}"  # unknown layout: count each module as its own channel


def parse_dmidecode_memory(text: str) -> tuple[float | None, str]:
    """``dmidecode -t 17`` → (peak GB/s, how it was computed)."""
    devices, cur = [], None
    for line in text.splitlines():
        if line.strip() == "Memory Device":
            cur = {}
            devices.append(cur)
        elif cur is not None and ":" in line and line.startswith(("\t", " ")):
            key, _, value = line.strip().partition(":")
            cur[key.strip()] = value.strip()
        elif cur is not None and not line.strip():
            cur = None
    populated = [d for d in devices if d.get("Size") and not d["Size"].lower().startswith(("no module", "0", "unknown"))]
    if not populated:
        return None, "dmidecode lists no populated memory device"
    channels: dict[str, float] = {}
    speeds = set()
    for i, dev in enumerate(populated):
        speed = _mts(dev.get("Configured Memory Speed") or dev.get("Configured Clock Speed") or "") or _mts(
            dev.get("Speed", ""))
        width = re.match(r"^(\d+)\s*bits", dev.get("Data Width", ""))
        if speed is None:
            continue
        bytes_per_transfer = int(width.group(1)) / 8 if width else 8
        speeds.add(f"{dev.get('Type', 'DRAM')}-{speed:g}")
        key = _channel(dev, i)
        # Two DIMMs in one channel share it: keep the channel's fastest figure, don't add.
        channels[key] = max(channels.get(key, 0.0), speed * 1e6 * bytes_per_transfer)
    if not channels:
        return None, "dmidecode gives no memory speed"
    gbps = sum(channels.values()) / 1e9
    return round(gbps, 1), (f"{len(populated)} modules in {len(channels)} channels, "
                            f"{'/'.join(sorted(speeds))} (configured speed); theoretical peak")


def dmidecode_bandwidth(timeout: float) -> Bandwidth:
    result = run_command(["dmidecode", "-t", "17"], timeout=timeout)
    if not result.ok:
        return Bandwidth(None, "unknown", f"dmidecode: {result.failure_reason()}")
    gbps, detail = parse_dmidecode_memory(result.stdout)
    return Bandwidth(gbps, "dmidecode" if gbps else "unknown", detail)


def measure_bandwidth(size_bytes: int = 128 * 1024 * 1024, repeats: int = 5) -> Bandwidth:
    """A short numpy copy: bytes read + bytes written per second, best of ``repeats``.

    One thread, so it is a lower bound of what llama.cpp's threads get on a many-channel box."""
    import numpy as np

    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    gbps = 2 * src.nbytes / best / 1e9
    return Bandwidth(round(gbps, 1), "measured",
                     f"single-thread copy of {size_bytes // 2**20} MiB, read+write counted, best of {repeats}; "
                     "a lower bound")
