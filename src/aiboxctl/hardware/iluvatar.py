"""Iluvatar CoreX GPUs through ixsmi, an nvidia-smi look-alike (its "CUDA Version" is CoreX's
CUDA compatibility level, not NVIDIA CUDA)."""

from __future__ import annotations

import os
import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import (USED_TOTAL, ParseError, ToolDevice, ToolReport, find_tool, free_from, mib,
                                     run_and_parse, split_row)

DIRS = ("/usr/local/corex/bin",)
_BDF = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def parse_ixsmi(text: str) -> tuple[ToolDevice, ...]:
    m = re.search(r"Driver Version:\s*(\S+)", text)
    driver = m.group(1) if m else None
    m = re.search(r"IX-ML:\s*(\S+)", text)
    runtime = f"IX-ML {m.group(1)}" if m else None
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    out = []
    for i, line in enumerate(lines):
        cells = split_row(line)
        if len(cells) < 2 or not _BDF.fullmatch(cells[1]):
            continue
        tokens = cells[0].split()
        if not tokens or not tokens[0].isdigit():
            raise ParseError(f"GPU row without an index: {cells[0]!r}")
        used = total = None
        if i + 1 < len(lines):
            nxt = split_row(lines[i + 1])
            mem = USED_TOTAL.search(nxt[1]) if len(nxt) > 1 else None
            if mem:
                used, total = mib(mem.group(1)), mib(mem.group(2))
        out.append(ToolDevice(index=int(tokens[0]), model=" ".join(tokens[1:]) or None,
                              bus_id=normalize_bus_id(cells[1]), memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used), driver_version=driver,
                              runtime_version=runtime))
    if not out:
        if "no devices" in text.lower():
            return ()
        raise ParseError("no GPU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("ixsmi", DIRS)
    if tool is None:
        return ToolReport("", (), ("ixsmi not found",))
    env = None
    if tool.startswith("/usr/local/corex/"):  # the vendor's install needs its libraries on the path
        env = {**os.environ, "LD_LIBRARY_PATH": ":".join(
            p for p in ("/usr/local/corex/lib", "/usr/local/corex/lib64", os.environ.get("LD_LIBRARY_PATH")) if p)}
    found, reason = run_and_parse("ixsmi", [tool], parse_ixsmi, timeout, env=env)
    return ToolReport("ixsmi", found) if found is not None else ToolReport("", (), (reason,))
