"""Enflame GCUs through efsmi's table. It prints total memory and a used percentage
(``DUsed``), and short bus ids without a PCI domain."""

from __future__ import annotations

import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import MIB, ParseError, ToolDevice, ToolReport, find_tool, run_and_parse, split_row

DIRS = ("/usr/bin", "/usr/local/bin")
_BUS = re.compile(r"\b([0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7])\b")


def parse_efsmi(text: str) -> tuple[ToolDevice, ...]:
    m = re.search(r"Driver Ver:\s*(\S+)", text)
    driver = m.group(1) if m else None
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("|")]
    out = []
    for i, line in enumerate(lines):
        cells = split_row(line)
        if len(cells) < 3 or not _BUS.search(cells[2]):
            continue
        tokens = cells[0].split()
        if not tokens or not tokens[0].isdigit():
            continue  # header rows
        total = free = None
        if i + 1 < len(lines):
            nxt = split_row(lines[i + 1])
            mem = re.search(r"(\d+)\s*MiB", nxt[1]) if len(nxt) > 1 else None
            pct = re.search(r"(\d+(?:\.\d+)?)\s*%", nxt[2]) if len(nxt) > 2 else None
            if mem:
                total = int(mem.group(1)) * MIB
                if pct:
                    free = int(total * (1 - float(pct.group(1)) / 100))
        out.append(ToolDevice(index=int(tokens[0]), model=" ".join(tokens[1:]) or None,
                              bus_id=normalize_bus_id(_BUS.search(cells[2]).group(1)), memory_total_bytes=total,
                              memory_free_bytes=free, driver_version=driver))
    if not out:
        raise ParseError("no GCU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("efsmi", DIRS)
    if tool is None:
        return ToolReport("", (), ("efsmi not found",))
    found, reason = run_and_parse("efsmi", [tool], parse_efsmi, timeout)
    return ToolReport("efsmi", found) if found is not None else ToolReport("", (), (reason,))
