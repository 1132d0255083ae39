"""Cambricon MLUs through cnmon's default table.

No real recorded cnmon output was available (shared/reference/accelerators.md §9): this follows
what vendor CI scripts rely on — memory as ``NNN MiB/ NNNNN MiB`` and a ``CNMON`` header — and
takes the bus id from the table when present, else matches devices to sysfs by order.
"""

from __future__ import annotations

import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, find_tool, free_from, mib, run_and_parse, \
    split_row

DIRS = ("/usr/local/neuware/bin",)
_MEM = re.compile(r"(\d+)\s*MiB\s*/\s*(\d+)\s*MiB")
_BDF = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def parse_cnmon(text: str) -> tuple[ToolDevice, ...]:
    if "CNMON" not in text.upper():
        raise ParseError("no CNMON header")
    m = re.search(r"Driver\s+v?(\d[\w.\-]*)", text)
    if not m:
        m = re.search(r"CNMON\s+v?(\d[\w.\-]*)", text)
    driver = m.group(1) if m else None
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    out = []
    for i, line in enumerate(lines):
        mem = _MEM.search(line)
        if not mem or i == 0:
            continue
        head = split_row(lines[i - 1])
        tokens = head[0].split()
        if not tokens or not tokens[0].isdigit():
            raise ParseError(f"memory row without a card row above it: {lines[i - 1]!r}")
        # "0  /  MLU370-S4  v1.1.4": card, VF, name, firmware
        name_tokens = [t for t in tokens[1:] if t not in ("/", "-") and not re.fullmatch(r"v\d[\w.]*", t)]
        bus = next((_BDF.search(c).group(0) for c in head if _BDF.search(c)), None)
        used, total = mib(mem.group(1)), mib(mem.group(2))
        out.append(ToolDevice(index=int(tokens[0]), model=" ".join(name_tokens) or None,
                              bus_id=normalize_bus_id(bus), memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used), driver_version=driver))
    if not out:
        raise ParseError("no 'MiB/ MiB' memory rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("cnmon", DIRS)
    if tool is None:
        return ToolReport("", (), ("cnmon not found",))
    found, reason = run_and_parse("cnmon", [tool], parse_cnmon, timeout)
    return ToolReport("cnmon", found) if found is not None else ToolReport("", (), (reason,))
