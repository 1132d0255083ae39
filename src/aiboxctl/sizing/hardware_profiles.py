"""Hardware profiles (profiles/hardware/*.yaml): boxes you do not have, for pre-sales sizing.

A profile has the shape of what ``aiboxctl probe`` reports — CPU, memory, accelerators and the
llama.cpp backend that drives them — plus the two figures the throughput model needs and a
probe cannot always measure: memory bandwidth and compute throughput. Every number carries its
source in the ``sources`` mapping of its block (checked: a fact without a source is an error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, with_config

from aiboxctl.datafile import FieldProblem, SizeBytes, raise_problems, read_document, validate
from aiboxctl.resources import data_dir
from aiboxctl.sizing.profile_files import profile_text, shipped_names

_STRICT = ConfigDict(extra="forbid")

# ggml backends by name; "none" = no llama.cpp backend drives this accelerator (CPU fallback).
Backend = Literal["cpu", "cuda", "hip", "cann", "musa", "sycl", "vulkan", "metal", "none"]


@with_config(_STRICT)
@dataclass(frozen=True)
class CpuSpec:
    model: str
    cores: Annotated[int, Field(ge=1)]  # physical cores, all sockets
    threads: Annotated[int, Field(ge=1)]
    sockets: Annotated[int, Field(ge=1)] = 1
    flags: tuple[str, ...] = ()
    fp32_gflops: Optional[Annotated[float, Field(gt=0)]] = None  # peak, all cores
    # The CPU's instruction set architecture: what a bundle's wheels are built for (Kunpeng: aarch64).
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    sources: dict[str, str] = field(default_factory=dict)


@with_config(_STRICT)
@dataclass(frozen=True)
class MemorySpec:
    total: SizeBytes
    bandwidth_gbps: Annotated[float, Field(gt=0)]  # GB/s (10^9), peak
    type: Optional[str] = None
    sources: dict[str, str] = field(default_factory=dict)


@with_config(_STRICT)
@dataclass(frozen=True)
class AcceleratorSpec:
    vendor: str
    model: str
    memory: SizeBytes  # per device
    bandwidth_gbps: Annotated[float, Field(gt=0)]  # per device, GB/s
    fp16_tflops: Annotated[float, Field(gt=0)]  # dense, per device
    backend: Backend
    count: Annotated[int, Field(ge=1, le=64)] = 1
    soc: Optional[str] = None  # e.g. ascend910b / ascend310p (CANN build target)
    decode_efficiency: Optional[Annotated[float, Field(gt=0, le=1)]] = None  # η override
    sources: dict[str, str] = field(default_factory=dict)


@with_config(_STRICT)
@dataclass(frozen=True)
class HardwareProfile:
    name: str
    description: str
    cpu: CpuSpec
    memory: MemorySpec
    accelerators: tuple[AcceleratorSpec, ...] = ()
    notes: tuple[str, ...] = ()


# Facts that must say where they come from, per block.
_SOURCED = {
    "cpu": ("fp32_gflops",),
    "memory": ("total", "bandwidth_gbps"),
    "accelerator": ("memory", "bandwidth_gbps", "fp16_tflops", "backend"),
}


def hardware_profile_names() -> list[str]:
    return shipped_names(data_dir("profiles") / "hardware")


def load_hardware_profile(name_or_path: str | Path) -> HardwareProfile:
    return _load(*profile_text(name_or_path, data_dir("profiles") / "hardware", "profiles/hardware",
                               kind="hardware profile", hint="aiboxctl plan --profile demo --hardware cpu-32g"))


def _load(text: str, shown: str) -> HardwareProfile:
    doc = read_document(text, shown)
    profile = validate(doc, HardwareProfile)
    problems: list[FieldProblem] = []

    def check(block, loc: tuple, kind: str) -> None:
        for fact in _SOURCED[kind]:
            if getattr(block, fact) is not None and not block.sources.get(fact, "").strip():
                problems.append(doc.problem((*loc, fact), "no source given (add it under sources:)"))
        for key in block.sources:
            if not hasattr(block, key) or key == "sources":
                problems.append(doc.problem((*loc, "sources", key), "source for an unknown field"))

    check(profile.cpu, ("cpu",), "cpu")
    check(profile.memory, ("memory",), "memory")
    for i, acc in enumerate(profile.accelerators):
        check(acc, ("accelerators", i), "accelerator")
        if acc.backend == "cann" and acc.soc not in ("ascend910b", "ascend310p"):
            problems.append(doc.problem(("accelerators", i, "soc"),
                                        "CANN accelerators need soc: ascend910b or ascend310p"))
    raise_problems(problems)
    return profile
