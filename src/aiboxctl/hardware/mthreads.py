"""Moore Threads GPUs through mthreads-gmi's table (memory is printed ``used(total)``)."""

from __future__ import annotations

import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, find_tool, free_from, mib, run_and_parse

DIRS = ("/usr/local/musa/bin", "/opt/musa/bin")
_ROW = re.compile(r"^(\d+)\s+(.+?)\s*\|\s*([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\s*\|(.*)$")
_MEM = re.compile(r"(\d+)\s*MiB\s*\(\s*(\d+)\s*MiB\s*\)")


def parse_mthreads_gmi(text: str) -> tuple[ToolDevice, ...]:
    m = re.search(r"Driver Version:\s*(\S+)", text)
    driver = m.group(1) if m else None
    out = []
    for line in text.splitlines():
        row = _ROW.match(line.strip())
        if not row:
            continue
        mem = _MEM.search(row.group(4))
        used, total = (mib(mem.group(1)), mib(mem.group(2))) if mem else (None, None)
        out.append(ToolDevice(index=int(row.group(1)), model=row.group(2).strip(),
                              bus_id=normalize_bus_id(row.group(3)), memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used), driver_version=driver))
    if not out:
        raise ParseError("no GPU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("mthreads-gmi", DIRS)
    if tool is None:
        return ToolReport("", (), ("mthreads-gmi not found",))
    found, reason = run_and_parse("mthreads-gmi", [tool], parse_mthreads_gmi, timeout)
    return ToolReport("mthreads-gmi", found) if found is not None else ToolReport("", (), (reason,))
