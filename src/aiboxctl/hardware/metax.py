"""MetaX GPUs through mx-smi's table. MOFFETT's SPU tool is also called mx-smi: its header
says ``MOFFETT-SMI``, and then the output is not MetaX's."""

from __future__ import annotations

import re

from aiboxctl.hardware.pci import PciDevice
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, find_tool, parse_smi_table, run_and_parse

DIRS = ("/opt/mxdriver/bin", "/opt/maca/bin")


def parse_mx_smi(text: str) -> tuple[ToolDevice, ...]:
    if "MOFFETT" in text.upper():
        raise ParseError("this mx-smi is MOFFETT's, not MetaX's")
    # The KMD version, not the tool's own version on the "mx-smi version" line.
    m = re.search(r"Kernel Mode Driver Version:\s*(\S+)", text)
    driver = m.group(1) if m else None
    m = re.search(r"MACA Version:\s*(\S+)", text)
    runtime = f"MACA {m.group(1)}" if m else None
    out = parse_smi_table(text, driver=driver, runtime=runtime)
    if not out:
        raise ParseError("no GPU rows")
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("mx-smi", DIRS)
    if tool is None:
        return ToolReport("", (), ("mx-smi not found",))
    found, reason = run_and_parse("mx-smi", [tool], parse_mx_smi, timeout)
    return ToolReport("mx-smi", found) if found is not None else ToolReport("", (), (reason,))
