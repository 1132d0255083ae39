"""Iluvatar CoreX GPUs through ixsmi, an nvidia-smi look-alike (its "CUDA Version" is CoreX's
CUDA compatibility level, not NVIDIA CUDA)."""

from __future__ import annotations

import os
import re

from aiboxctl.hardware.pci import PciDevice
from aiboxctl.hardware.tools import ParseError, ToolDevice, ToolReport, find_tool, parse_smi_table, run_and_parse

DIRS = ("/usr/local/corex/bin",)


def parse_ixsmi(text: str) -> tuple[ToolDevice, ...]:
    m = re.search(r"Driver Version:\s*(\S+)", text)
    driver = m.group(1) if m else None
    m = re.search(r"IX-ML:\s*(\S+)", text)
    runtime = f"IX-ML {m.group(1)}" if m else None
    out = parse_smi_table(text, driver=driver, runtime=runtime)
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
