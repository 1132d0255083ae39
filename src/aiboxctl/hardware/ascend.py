"""Huawei Ascend NPUs through npu-smi.

* ``npu-smi info``: the table (NPU id, name, chip, bus id, memory). Three layouts: 310
  (``NPU Name`` / ``Chip Device``, DDR ``Memory-Usage``), 910 (adds ``HBM-Usage``) and 950
  (``NPU ID | Name`` in separate columns, no chip column).
* ``npu-smi info -m``: chip logic ids — the index ``ASCEND_RT_VISIBLE_DEVICES`` uses — and chip
  names. 950 prints ``NPU ID Slot ID Chip ID Chip Phy-ID Chip Name`` instead. ``Mcu`` rows and
  logic id ``-`` are not NPUs.
* ``npu-smi info -t usages -i N [-c C]``: HBM/DDR capacity and usage rate, asked only when the
  table gives no memory; 950 rejects ``-c``.

Each parser reads whole lines only: text after the last newline is output cut off (npu-smi
killed by a timeout) and may end in a number cut in half.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.hardware.pci import PciDevice, normalize_bus_id
from aiboxctl.hardware.tools import (USED_TOTAL, ParseError, ToolDevice, ToolReport, find_tool, free_from, mib,
                                     run_and_parse, split_row)

DIRS = ("/usr/local/bin", "/usr/local/sbin")
_BDF = re.compile(r"[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")


@dataclass(frozen=True)
class ChipRow:
    npu_id: int
    chip_id: int
    name: str | None
    bus_id: str | None
    used_mib: int | None
    total_mib: int | None
    version: str | None


@dataclass(frozen=True)
class ChipMap:
    npu_id: int
    chip_id: int
    logic_id: int
    name: str


def whole_lines(text: str) -> list[str]:
    """The lines of ``text`` that ended with a newline."""
    return text[:text.rfind("\n") + 1].splitlines()


def parse_npu_smi_info(text: str) -> tuple[ChipRow, ...]:
    lines = whole_lines(text)
    text = "\n".join(lines)
    version = None
    m = re.search(r"Version:\s*(\S+)", text)
    if m:
        version = m.group(1)
    rows: list[ChipRow] = []
    prev: list[str] | None = None
    hbm_header = "HBM-Usage" in text
    for line in lines:
        s = line.strip()
        if not s.startswith("|"):
            continue
        if "Process" in s and ("id" in s or "name" in s):
            break  # the process table that follows the devices
        cells = split_row(s)
        bus = next((_BDF.search(c).group(0) for c in cells if _BDF.search(c)), None)
        if bus is None:
            prev = cells
            continue
        if prev is None:
            raise ParseError("bus id row without a device row above it")
        first = prev[0].split()
        if not first or not first[0].isdigit():
            raise ParseError(f"device row does not start with an NPU id: {prev[0]!r}")
        npu_id = int(first[0])
        name = " ".join(first[1:]) or (prev[1].split()[0] if len(prev) > 1 and prev[1]
                                        and " " not in prev[1].strip() else None)
        chip_tokens = cells[0].split()
        chip_id = int(chip_tokens[0]) if chip_tokens and chip_tokens[0].isdigit() else 0
        pairs = [(int(u), int(t)) for u, t, _ in USED_TOTAL.findall(cells[-1])]
        used = total = None
        if pairs:
            # 910/950: "Memory-Usage  HBM-Usage": the HBM pair is the device memory.
            u, t = pairs[-1] if hbm_header and len(pairs) > 1 else pairs[0]
            if t > 0:
                used, total = u, t
        rows.append(ChipRow(npu_id, chip_id, name if name and name.lower() != "xxx" else None,
                            normalize_bus_id(bus), used, total, version))
        prev = None
    if not rows:
        raise ParseError("no NPU rows in the table")
    return tuple(rows)


def parse_npu_smi_mapping(text: str) -> tuple[ChipMap, ...]:
    lines = [line for line in whole_lines(text) if line.strip()]
    header = next((i for i, line in enumerate(lines) if line.strip().startswith("NPU ID")), None)
    if header is None:
        raise ParseError("no 'NPU ID' header")
    is_950 = "Phy-ID" in lines[header]
    out = []
    for line in lines[header + 1:]:
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit():
            continue
        if is_950:
            if len(parts) < 5:
                continue
            npu, chip, logic, name = parts[0], parts[2], parts[3], " ".join(parts[4:])  # [1] is the slot
        else:
            npu, chip, logic, name = parts[0], parts[1], parts[2], " ".join(parts[3:])
        if not logic.isdigit() or name.lower() == "mcu":
            continue
        out.append(ChipMap(int(npu), int(chip), int(logic), name))
    if not out:
        raise ParseError("no chip rows in the mapping")
    return tuple(out)


def parse_npu_smi_usages(text: str) -> tuple[int | None, int | None]:
    """``-t usages`` → (total MiB, used MiB) of the first memory block (HBM, else DDR)."""
    values: dict[str, str] = {}
    for line in whole_lines(text):
        key, sep, value = line.partition(":")
        if sep and key.strip() not in values:
            values[key.strip()] = value.strip()
    for kind in ("HBM", "DDR"):
        cap = values.get(f"{kind} Capacity(MB)")
        rate = values.get(f"{kind} Usage Rate(%)")
        if cap and cap.isdigit() and int(cap) > 0:
            used = int(int(cap) * float(rate) / 100) if rate and re.fullmatch(r"\d+(\.\d+)?", rate) else None
            return int(cap), used
    raise ParseError("no HBM/DDR Capacity(MB) line")


def cann_version() -> str | None:
    home = os.environ.get("ASCEND_TOOLKIT_HOME")
    candidates = [Path(home) / "version.info"] if home else []
    candidates += [Path("/usr/local/Ascend/cann/version.info"),
                   Path("/usr/local/Ascend/ascend-toolkit/latest/runtime/version.info")]
    for path in candidates:
        try:
            m = re.search(r"^\s*Version\s*=\s*(\S+)", path.read_text(), re.M)
        except OSError:
            continue
        if m:
            return f"CANN {m.group(1)}"
    return None


def query(devices: list[PciDevice], timeout: float) -> ToolReport:
    tool = find_tool("npu-smi", DIRS)
    if tool is None:
        return ToolReport("", (), ("npu-smi not found",))
    with ThreadPoolExecutor(max_workers=2) as pool:
        table_f = pool.submit(run_and_parse, "npu-smi", [tool, "info"], parse_npu_smi_info, timeout)
        map_f = pool.submit(run_and_parse, "npu-smi info -m", [tool, "info", "-m"], parse_npu_smi_mapping, timeout)
        rows, reason = table_f.result()
        mapping, map_reason = map_f.result()
    warnings = []
    if rows is None:
        return ToolReport("", (), (reason,))
    if mapping is None:
        warnings.append(f"{map_reason}; NPU indexes follow table order")
    is_950 = mapping is not None and any("950" in m.name for m in mapping)
    by_chip = {(m.npu_id, m.chip_id): m for m in mapping or ()}

    need_usage = [r for r in rows if r.total_mib is None]
    usages: dict[tuple[int, int], tuple[int | None, int | None] | str] = {}
    if need_usage:
        def ask(r: ChipRow):
            argv = [tool, "info", "-t", "usages", "-i", str(r.npu_id)]
            if not is_950:
                argv += ["-c", str(r.chip_id)]
            got, why = run_and_parse("npu-smi info -t usages", argv, lambda t: (parse_npu_smi_usages(t),), timeout)
            return (r.npu_id, r.chip_id), (got[0] if got else why)

        with ThreadPoolExecutor(max_workers=min(8, len(need_usage))) as pool:
            usages = dict(pool.map(ask, need_usage))

    runtime = cann_version()
    out = []
    for position, r in enumerate(rows):
        m = by_chip.get((r.npu_id, r.chip_id))
        total, used = r.total_mib, r.used_mib
        got = usages.get((r.npu_id, r.chip_id))
        if isinstance(got, tuple):
            total, used = got
        elif isinstance(got, str):
            warnings.append(f"NPU {r.npu_id} chip {r.chip_id}: memory unknown ({got})")
        model = _model_name(r.name, m.name if m else None)
        total_b, used_b = mib(total), mib(used)
        out.append(ToolDevice(
            index=m.logic_id if m else position, model=model, bus_id=r.bus_id, memory_total_bytes=total_b,
            memory_free_bytes=free_from(total_b, used_b), driver_version=r.version, runtime_version=runtime,
            notes=(f"npu-smi NPU {r.npu_id} chip {r.chip_id}",),
        ))
    return ToolReport("npu-smi", tuple(out), tuple(warnings))


def _model_name(table_name: str | None, chip_name: str | None) -> str | None:
    """Prefer the table's product name ("910B3", "310"), else the mapping's chip name."""
    for name in (table_name, chip_name):
        if name and name not in ("MiniD",):
            return name if name.lower().startswith("ascend") else f"Ascend {name}"
    return table_name or chip_name
