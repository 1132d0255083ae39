"""Hygon DCU: hy-smi (``/opt/hyhal/bin``), else DTK's rocm-smi (``/opt/dtk/bin``), whose JSON
uses Hygon's own keys (``vram Total Memory (MiB)``, ``DCU use (%)``/``HCU use (%)``)."""

from __future__ import annotations

from pathlib import Path

from aiboxctl.hardware.amd import parse_rocm_smi_json
from aiboxctl.hardware.pci import PciDevice
from aiboxctl.hardware.tools import ToolDevice, ToolReport, find_tool, run_and_parse

ARGS = ("--showid", "--showmeminfo", "vram", "--showproductname", "--showuniqueid", "--json")


def driver_version() -> str | None:
    for module in ("hycu", "hydcu"):
        try:
            return Path(f"/sys/module/{module}/version").read_text().strip() or None
        except OSError:
            continue
    return None


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    warnings = []
    for name, dirs in (("hy-smi", ("/opt/hyhal/bin",)), ("rocm-smi", ("/opt/dtk/bin",))):
        tool = find_tool(name, dirs)
        if tool is None:
            continue
        found, reason = run_and_parse(name, [tool, *ARGS], parse_rocm_smi_json, timeout)
        if found is not None:
            driver = driver_version()
            if driver:
                found = tuple(ToolDevice(d.index, d.model, d.bus_id, d.memory_total_bytes, d.memory_free_bytes,
                                         d.driver_version or driver, d.runtime_version, d.notes) for d in found)
            return ToolReport(name, found, tuple(warnings))
        warnings.append(reason)
    if not warnings:
        warnings.append("neither hy-smi nor DTK rocm-smi found")
    return ToolReport("", (), tuple(warnings))
