"""AMD GPUs: VRAM from sysfs (``mem_info_vram_*``, no tool needed), names and driver from
rocm-smi's JSON, or amd-smi (rocm-smi's successor) when rocm-smi is absent."""

from __future__ import annotations

import json
import re

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import (ParseError, ToolDevice, ToolReport, find_tool, free_from, mib,
                                     run_and_parse)

ROCM_DIRS = ("/opt/rocm/bin",)


def _lower_keys(d: dict) -> dict[str, str]:
    return {str(k).strip().lower(): str(v).strip() for k, v in d.items()}


def parse_rocm_smi_json(text: str) -> tuple[ToolDevice, ...]:
    """rocm-smi ``--json`` from AMD ROCm (VRAM in bytes) and from Hygon hy-smi / DTK rocm-smi
    (``vram Total Memory (MiB)``: MiB). Keys are matched case-insensitively because their
    spelling moves between versions ("Card Series" / "Card series")."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not JSON: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise ParseError("JSON is not an object")
    system = _lower_keys(doc.get("system", {})) if isinstance(doc.get("system"), dict) else {}
    driver = system.get("driver version")
    out = []
    for key, card in doc.items():
        m = re.fullmatch(r"card(\d+)", str(key))
        if not m or not isinstance(card, dict):
            continue
        c = _lower_keys(card)
        total = used = None
        for k, v in c.items():
            if "total memory" in k and "vram" in k and "used" not in k:
                total = int(float(v)) if k.endswith("(b)") else mib(v)
            elif "total used memory" in k and "vram" in k:
                used = int(float(v)) if k.endswith("(b)") else mib(v)
        name = c.get("card series") or c.get("device name") or c.get("card model")
        out.append(ToolDevice(
            index=int(m.group(1)), model=name or None, bus_id=normalize_bus_id(c.get("pci bus")),
            memory_total_bytes=total, memory_free_bytes=free_from(total, used),
            driver_version=c.get("driver version") or driver,
            notes=(f"GFX version {c['gfx version']}",) if c.get("gfx version") else (),
        ))
    if not out:
        raise ParseError("no cardN entries")
    return tuple(out)


def parse_amd_smi_static(text: str) -> tuple[ToolDevice, ...]:
    """``amd-smi static --asic --bus --driver --vram`` (indented ``KEY: value`` blocks per GPU)."""
    out, cur = [], None
    for line in text.splitlines():
        m = re.match(r"^GPU:\s*(\d+)", line)
        if m:
            cur = {"index": m.group(1)}
            out.append(cur)
            continue
        if cur is None or ":" not in line:
            continue
        key, _, value = line.strip().partition(":")
        key, value = key.strip().upper(), value.strip()
        if key == "VERSION" and "driver_version" not in cur and cur.get("_section") == "DRIVER":
            cur["driver_version"] = value
        elif key in ("DRIVER", "VRAM", "ASIC", "BUS") and not value:
            cur["_section"] = key
        elif key == "SIZE" and cur.get("_section") == "VRAM":
            cur["vram"] = value
        elif key in ("MARKET_NAME", "BDF", "TARGET_GRAPHICS_VERSION"):
            cur[key.lower()] = value
    if not out:
        raise ParseError("no 'GPU: N' blocks")
    devices = []
    for d in out:
        size = re.match(r"(\d+)\s*(MB|MiB|GB|GiB)?", d.get("vram", ""))
        total = None
        if size:
            total = int(size.group(1)) * (1024 if size.group(2) in ("GB", "GiB") else 1) * 1024 * 1024
        devices.append(ToolDevice(
            index=int(d["index"]), model=d.get("market_name"), bus_id=normalize_bus_id(d.get("bdf")),
            memory_total_bytes=total, driver_version=d.get("driver_version"),
            notes=(f"gfx target {d['target_graphics_version']}",) if d.get("target_graphics_version") else (),
        ))
    return tuple(devices)


def read_sysfs_vram(devices: list[PciDevice]) -> tuple[ToolDevice, ...]:
    out = []
    for i, dev in enumerate(devices):
        try:
            total = int((dev.path / "mem_info_vram_total").read_text().strip())
            used = int((dev.path / "mem_info_vram_used").read_text().strip())
        except (OSError, ValueError):
            continue
        out.append(ToolDevice(index=i, bus_id=dev.bus_id, memory_total_bytes=total,
                              memory_free_bytes=free_from(total, used)))
    return tuple(out)


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    warnings = []
    sysfs = read_sysfs_vram(devices)
    tool = find_tool("rocm-smi", ROCM_DIRS)
    if tool:
        found, reason = run_and_parse(
            "rocm-smi", [tool, "--showproductname", "--showmeminfo", "vram", "--showbus", "--showdriverversion",
                         "--json"], parse_rocm_smi_json, timeout)
        if found is not None:
            return ToolReport("rocm-smi", _with_sysfs(found, sysfs))
        warnings.append(reason)
    tool = find_tool("amd-smi", ROCM_DIRS)
    if tool:
        found, reason = run_and_parse("amd-smi", [tool, "static", "--asic", "--bus", "--driver", "--vram"],
                                      parse_amd_smi_static, timeout)
        if found is not None:
            return ToolReport("amd-smi", _with_sysfs(found, sysfs), tuple(warnings))
        warnings.append(reason)
    if not warnings:
        warnings.append("neither rocm-smi nor amd-smi found")
    return ToolReport("sysfs" if sysfs else "", sysfs, tuple(warnings))


def _with_sysfs(found: tuple[ToolDevice, ...], sysfs: tuple[ToolDevice, ...]) -> tuple[ToolDevice, ...]:
    """Free VRAM is fresher in sysfs; fill what the tool left out."""
    by_bus = {d.bus_id: d for d in sysfs}
    out = []
    for d in found:
        s = by_bus.get(d.bus_id)
        if s is not None and d.memory_total_bytes is None:
            d = ToolDevice(d.index, d.model, d.bus_id, s.memory_total_bytes, s.memory_free_bytes,
                           d.driver_version, d.runtime_version, d.notes)
        out.append(d)
    return tuple(out)
