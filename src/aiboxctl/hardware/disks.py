"""Free space where models go and on /."""

from __future__ import annotations

import shutil
from pathlib import Path

from aiboxctl.hardware.model import DiskInfo


def _existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def read_disks(model_store: Path, warnings: list[str]) -> tuple[DiskInfo, ...]:
    out = []
    for purpose, path in (("models", model_store), ("root", Path("/"))):
        checked = _existing(path)
        try:
            usage = shutil.disk_usage(checked)
            total, free = usage.total, usage.free
        except OSError as exc:
            warnings.append(f"cannot read free space of {checked}: {exc.strerror or exc}")
            total = free = None
        out.append(DiskInfo(purpose, str(path), str(checked), total, free))
    return tuple(out)
