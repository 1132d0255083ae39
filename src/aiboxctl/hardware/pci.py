"""Step one of accelerator detection: the PCI devices in sysfs, no tools, no root.

Only display (0x03xxxx), processing-accelerator (0x12xxxx) and co-processor (0x0b40xx)
classes count: Huawei's and Hygon's vendor ids also cover NICs, SSDs and chipsets.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Vendor:
    key: str
    name: str
    display_only: bool = False  # count only display-class devices (Intel: QAT is a co-processor)


# Verified against pci.ids (shared/reference/accelerators.md §1).
VENDORS: dict[int, Vendor] = {
    0x10DE: Vendor("nvidia", "NVIDIA"),
    0x1002: Vendor("amd", "AMD"),
    0x8086: Vendor("intel", "Intel", display_only=True),
    0x19E5: Vendor("huawei", "Huawei Ascend"),
    0x1D94: Vendor("hygon", "Hygon DCU"),
    0x9999: Vendor("metax", "MetaX"),
    0x1ED5: Vendor("mthreads", "Moore Threads"),
    0x1E3E: Vendor("iluvatar", "Iluvatar CoreX"),
    0xCABC: Vendor("cambricon", "Cambricon"),
    0x1D22: Vendor("kunlunxin", "Kunlunxin"),
    0x1E36: Vendor("enflame", "Enflame"),
}
VENDOR_BY_KEY = {v.key: v for v in VENDORS.values()}
VENDOR_ID_BY_KEY = {v.key: vid for vid, v in VENDORS.items()}

_BDF = re.compile(r"([0-9a-fA-F]{4,8}:)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")


@dataclass(frozen=True)
class PciDevice:
    bus_id: str  # 0000:3b:00.0
    vendor_id: int
    device_id: int
    class_code: int
    vendor: Vendor
    numa_node: int | None
    driver: str | None
    path: Path


def normalize_bus_id(text: str | None) -> str | None:
    """"00000000:4F:00.0", "4f:00.0", "0000:4f:00.0" → "0000:4f:00.0"."""
    if not text:
        return None
    m = _BDF.search(text.strip())
    if not m:
        return None
    domain = (m.group(1) or "0000:")[:-1][-4:].rjust(4, "0")
    return f"{domain}:{m.group(2)}:{m.group(3)}.{m.group(4)}".lower()


def is_accelerator_class(class_code: int, vendor: Vendor) -> bool:
    if vendor.display_only:
        return class_code >> 16 == 0x03
    return class_code >> 16 in (0x03, 0x12) or class_code >> 8 == 0x0B40


def _hex(path: Path) -> int:
    return int(path.read_text().strip(), 16)


def scan_pci(sysfs_root: Path, warnings: list[str]) -> list[PciDevice] | None:
    """Accelerator-class devices of known vendors, sorted by bus id. ``None``: the PCI tree
    could not be read at all (a container without /sys): callers then ask the vendor tools."""
    base = sysfs_root / "bus" / "pci" / "devices"
    try:
        entries = sorted(os.listdir(base))
    except OSError as exc:
        warnings.append(f"cannot list {base}: {exc.strerror or exc}; accelerators only from vendor tools")
        return None
    found = []
    for name in entries:
        d = base / name
        try:
            vendor_id = _hex(d / "vendor")
        except (OSError, ValueError) as exc:
            warnings.append(f"cannot read {d / 'vendor'}: {getattr(exc, 'strerror', None) or exc}")
            continue
        vendor = VENDORS.get(vendor_id)
        if vendor is None:
            continue
        try:
            class_code = _hex(d / "class")
            device_id = _hex(d / "device")
        except (OSError, ValueError) as exc:
            warnings.append(f"cannot read the class/device of {vendor.name} PCI device {name}: "
                            f"{getattr(exc, 'strerror', None) or exc}; skipped")
            continue
        if not is_accelerator_class(class_code, vendor):
            continue
        try:
            numa = int((d / "numa_node").read_text().strip())
        except (OSError, ValueError):
            numa = None
        try:
            driver = os.path.basename(os.readlink(d / "driver"))
        except OSError:
            driver = None
        found.append(PciDevice(normalize_bus_id(name) or name, vendor_id, device_id, class_code, vendor,
                               numa if numa is not None and numa >= 0 else None, driver, d))
    return found
