"""Device names from the system's pci.ids (pciutils/hwdata), for devices no tool described."""

from __future__ import annotations

from functools import lru_cache

PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


@lru_cache(maxsize=256)
def device_name(vendor_id: int, device_id: int) -> str | None:
    vendor_tag, device_tag = f"{vendor_id:04x}", f"\t{device_id:04x}"
    for path in PATHS:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                in_vendor = False
                for line in f:
                    if not line.startswith("\t"):
                        if in_vendor:
                            return None
                        in_vendor = line.startswith(vendor_tag + " ")
                    elif in_vendor and line.startswith(device_tag + " "):
                        return line[len(device_tag):].strip() or None
        except OSError:
            continue
    return None
