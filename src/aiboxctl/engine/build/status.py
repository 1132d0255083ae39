"""``engine status``: the installed llama-cpp-python against what this box's accelerators need,
the last install's record, the cached wheels, and the next command when they differ."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiboxctl.engine.build.cache import WheelCache
from aiboxctl.engine.build.record import read_record
from aiboxctl.engine.build.specs import build_spec
from aiboxctl.engine.build.verify import inspect_engine
from aiboxctl.hardware.backends import registry_names


@dataclass(frozen=True)
class EngineStatus:
    version: str | None
    available: bool
    backends: tuple[str, ...]
    devices: tuple[dict[str, Any], ...]
    cpu_variants: tuple[str, ...]
    cpu_variant_loaded: str | None
    gpu_offload: bool
    system_info: str
    needed_backend: str  # what probe says the box needs
    needed_reason: str
    matches: bool
    next_command: str | None
    record: dict[str, Any] | None  # the last engine install
    cached_wheels: tuple[dict[str, Any], ...]
    error: str | None = None
    differences: tuple[str, ...] = ()  # what differs from what the box needs, one line each


def engine_status(*, accelerators: Sequence[Any], python: str = sys.executable,
                  cache: WheelCache | None = None) -> EngineStatus:
    """``accelerators``: the caller's probe (this box's, or a recorded one)."""
    cache = cache or WheelCache()
    engine = inspect_engine(python).get("engine") or {}
    spec = build_spec("auto", accelerators)
    backends = tuple(engine.get("backends") or ())
    names = registry_names(spec.backend)
    has_backend = any(b in names for b in backends)
    sees_device = spec.backend == "cpu" or any(d.get("backend") in names for d in engine.get("devices", ()))
    differences: list[str] = []
    next_command = None
    if not engine.get("available"):
        differences.append("llama-cpp-python is not installed (or does not load)")
        next_command = f"aiboxctl engine install --backend {spec.backend}"
    elif not has_backend:
        differences.append(f"the installed build has no {spec.backend.upper()} backend "
                           f"(it has {', '.join(backends) or 'none'})")
        next_command = f"aiboxctl engine install --backend {spec.backend}"
    elif not sees_device:
        differences.append(f"the {spec.backend.upper()} backend sees none of the box's accelerators")
        next_command = "aiboxctl probe"
    elif not engine.get("cpu_variants"):
        # Every build spec keeps a portable CPU part; a native build is tuned to the machine that
        # compiled it (it may use instructions another CPU lacks, or that fault here).
        differences.append("the installed build is native (one CPU build for the machine that compiled it); "
                           f"the box needs a {spec.reason}")
        next_command = f"aiboxctl engine install --backend {spec.backend}"
    matches = not differences
    return EngineStatus(
        version=engine.get("version"), available=bool(engine.get("available")), backends=backends,
        devices=tuple(engine.get("devices") or ()), cpu_variants=tuple(engine.get("cpu_variants") or ()),
        cpu_variant_loaded=engine.get("cpu_variant_loaded"), gpu_offload=bool(engine.get("gpu_offload")),
        system_info=engine.get("system_info") or "", needed_backend=spec.backend, needed_reason=spec.reason,
        matches=matches, next_command=next_command, record=read_record(),
        cached_wheels=tuple(e.meta() | {"path": str(e.path)} for e in cache.entries()),
        error=engine.get("error"), differences=tuple(differences))

