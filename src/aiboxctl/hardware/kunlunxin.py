"""Kunlunxin XPUs through Kunlunxin's ``xpu-smi -m`` (one 32-field line per device).

Intel's XPU Manager is also called ``xpu-smi``. This module only runs when sysfs shows a
Kunlunxin PCI device (0x1d22), and still refuses output with Intel's header. No real recorded
sample was available (accelerators.md §10): field positions follow vendor CI scripts —
[1] device id, [17] used MiB, [18] total MiB, [21]+[22] model name in parentheses.
"""

from __future__ import annotations

import os
import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, free_from, mib, run_and_parse
from aiboxctl.system import which

DIRS = ("/opt/xre/bin", "/usr/local/xpu/bin")
FIELDS = 32


def parse_xpu_smi_machine(text: str) -> tuple[ToolDevice, ...]:
    if "intel" in text.lower():
        raise ParseError("this xpu-smi is Intel's XPU Manager, not Kunlunxin's")
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != FIELDS or not fields[1].isdigit():
            raise ParseError(f"expected {FIELDS} fields with a device id second, got {len(fields)}")
        used, total = mib(fields[17]), mib(fields[18])
        name = " ".join(fields[21:23]).strip("()").strip() or None
        bus = normalize_bus_id(fields[0]) if re.search(r":\w\w\.\d", fields[0]) else None
        out.append(ToolDevice(index=int(fields[1]), model=name, bus_id=bus, memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used)))
    if not out:
        raise ParseError("no device lines")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    # Kunlunxin's install dirs first: on a box that also has an Intel GPU, the xpu-smi on PATH
    # may well be Intel's.
    candidates = [p for p in (os.path.join(d, "xpu-smi") for d in DIRS) if os.access(p, os.X_OK)]
    on_path = which("xpu-smi")
    if on_path and on_path not in candidates:
        candidates.append(on_path)
    if not candidates:
        return ToolReport("", (), ("xpu-smi (Kunlunxin) not found",))
    reasons = []
    for tool in candidates:
        found, reason = run_and_parse("xpu-smi", [tool, "-m"], parse_xpu_smi_machine, timeout)
        if found is not None:
            return ToolReport("xpu-smi", found)
        reasons.append(reason if len(candidates) == 1 else f"{tool}: {reason}")
    return ToolReport("", (), tuple(reasons))
