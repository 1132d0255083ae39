"""MetaX GPUs through mx-smi's table. MOFFETT's SPU tool is also called mx-smi: its header
says ``MOFFETT-SMI``, and then the output is not MetaX's."""

from __future__ import annotations

import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import (USED_TOTAL, ParseError, ToolDevice, ToolReport, find_tool, free_from, mib,
                                     run_and_parse, split_row)

DIRS = ("/opt/mxdriver/bin", "/opt/maca/bin")
_BDF = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


def parse_mx_smi(text: str) -> tuple[ToolDevice, ...]:
    if "MOFFETT" in text.upper():
        raise ParseError("this mx-smi is MOFFETT's, not MetaX's")
    # The KMD version, not the tool's own version on the "mx-smi version" line.
    m = re.search(r"Kernel Mode Driver Version:\s*(\S+)", text)
    driver = m.group(1) if m else None
    m = re.search(r"MACA Version:\s*(\S+)", text)
    runtime = f"MACA {m.group(1)}" if m else None
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
            mem = USED_TOTAL.search(split_row(lines[i + 1])[1] if len(split_row(lines[i + 1])) > 1 else "")
            if mem:
                used, total = mib(mem.group(1)), mib(mem.group(2))
        out.append(ToolDevice(index=int(tokens[0]), model=" ".join(tokens[1:]) or None,
                              bus_id=normalize_bus_id(cells[1]), memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used), driver_version=driver,
                              runtime_version=runtime))
    if not out:
        raise ParseError("no GPU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("mx-smi", DIRS)
    if tool is None:
        return ToolReport("", (), ("mx-smi not found",))
    found, reason = run_and_parse("mx-smi", [tool], parse_mx_smi, timeout)
    return ToolReport("mx-smi", found) if found is not None else ToolReport("", (), (reason,))
