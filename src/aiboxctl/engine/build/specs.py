"""Which llama.cpp build a box needs, and the CMake flags that produce it.

Pure functions over probe results: no subprocess, no llama_cpp import. ``engine install``
turns the accelerators ``probe`` found into a :class:`BuildSpec` (backend, architectures,
CMake arguments) whose :attr:`BuildSpec.key` names the wheel in the cache.

Every build keeps a *portable* CPU part (``GGML_NATIVE=OFF``, ``GGML_BACKEND_DL=ON``,
``GGML_CPU_ALL_VARIANTS=ON``): ggml picks the best CPU variant at run time, so a wheel built on
one machine (or bundled by ``pack``) runs on another. The accelerator backend is added on top,
compiled for the architectures probe saw (smaller and faster to build than "all").

Accelerators come either as :class:`aiboxctl.hardware.model.Accelerator` objects or as the
dicts of a recorded ``probe --json`` report; both are read through :func:`_get`. Which backend
drives which vendor, and the names a backend registers under, are the hardware layer's one
table (:mod:`aiboxctl.hardware.backends`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.errors import UsageError
from aiboxctl.hardware.backends import backend_key, vendor_backend

# The backends a wheel can be built for (keys of aiboxctl.hardware.backends.GGML_BACKENDS).
BACKENDS: tuple[str, ...] = ("cpu", "cuda", "hip", "musa", "cann", "vulkan", "sycl")

PORTABLE_CPU_ARGS: tuple[str, ...] = (
    "-DGGML_NATIVE=OFF",
    "-DGGML_BACKEND_DL=ON",
    "-DGGML_CPU_ALL_VARIANTS=ON",
)

# Hygon DCU product → gfx target (DTK). Z100/Z100L are gfx906, K100 gfx926, K100_AI gfx928,
# BW1000 gfx936 (the targets gpustack/llama-box's DTK job builds).
HYGON_GFX: tuple[tuple[str, str], ...] = (
    ("K100_AI", "gfx928"), ("K100-AI", "gfx928"), ("K1XX_AI", "gfx928"),
    ("BW", "gfx936"), ("K100", "gfx926"), ("Z100", "gfx906"),
)
HYGON_DEFAULT_TARGETS: tuple[str, ...] = ("gfx906", "gfx926", "gfx928", "gfx936")

# Moore Threads product → MUSA architecture (ggml-cuda/common.cuh: QY1 mp_21 = S80/S3000,
# QY2 mp_22 = S4000, PH1 mp_31 = S5000).
MUSA_ARCH: tuple[tuple[str, str], ...] = (
    ("S5000", "31"), ("S4000", "22"), ("S3000", "21"), ("S80", "21"), ("S70", "21"), ("S90", "21"),
)
MUSA_DEFAULT_ARCHS: tuple[str, ...] = ("21", "22", "31")

# NVIDIA product name → compute capability, for a recorded probe or a hardware profile that names
# the GPU but not its capability (nvidia-smi's compute_cap is preferred when present). First
# match wins, so the more specific names come first. (NVIDIA's CUDA GPUs list; CUDA 13 builds
# 75 and newer only.)
NVIDIA_CC: tuple[tuple[str, str], ...] = (
    (r"\bGB10\b|DGX SPARK", "12.1"),
    (r"RTX PRO \d+ BLACKWELL|RTX 50\d0|\bB40\b", "12.0"),
    (r"\bG?B300\b", "10.3"),
    (r"\bG?B[12]00\b", "10.0"),
    (r"\bG?H[12]00\b|\bH800\b|\bH20\b", "9.0"),
    (r"\bL40S?\b|\bL4\b|\bL20\b|RTX 40\d0|RTX \d+ ADA|RTX 6000 ADA", "8.9"),
    (r"\bA100\b|\bA800\b|\bA30\b", "8.0"),
    (r"\bA10G?\b|\bA40\b|\bA16\b|\bA2\b|RTX 30\d0|RTX A\d+", "8.6"),
    (r"\bT4\b|RTX 20\d0|QUADRO RTX", "7.5"),
    (r"\bV100\b|TITAN V\b", "7.0"),
)


@dataclass(frozen=True)
class BuildSpec:
    """One llama.cpp build: what to compile and how."""

    backend: str  # one of BACKENDS
    architectures: tuple[str, ...]  # CUDA "86", HIP "gfx928", MUSA "22", CANN "ascend910b"; () = default
    cmake_args: tuple[str, ...]
    reason: str  # why this build (which devices asked for it)
    hygon_dtk: bool = False  # HIP through Hygon's DTK rather than ROCm

    @property
    def key(self) -> str:
        """Wheel-cache key part: backend + architectures (the version is added by the cache)."""
        if not self.architectures:
            return "cpu-portable" if self.backend == "cpu" else self.backend
        return f"{self.backend}-{'.'.join(self.architectures)}"

    @property
    def cmake_args_string(self) -> str:
        """The value of CMAKE_ARGS (scikit-build-core splits it with shlex)."""
        return shlex.join(self.cmake_args)

    @property
    def offload(self) -> bool:
        return self.backend != "cpu"


# --- reading probe results -----------------------------------------------------------------

def _get(acc: Any, *names: str) -> Any:
    for name in names:
        value = acc.get(name) if isinstance(acc, Mapping) else getattr(acc, name, None)
        if value not in (None, "", ()):
            return value
    return None


def _notes(acc: Any) -> list[str]:
    notes = _get(acc, "notes") or ()
    return [str(n) for n in notes]


def accelerator_backend(acc: Any) -> str | None:
    """The ggml backend (our lower-case name) that drives this accelerator, or None."""
    named = _get(acc, "ggml_backend", "backend")
    if named:
        key = backend_key(str(named))
        return key if key in BACKENDS else None
    return vendor_backend(str(_get(acc, "vendor_key", "vendor") or ""))


def _is_hygon(acc: Any) -> bool:
    vendor = str(_get(acc, "vendor_key", "vendor") or "").lower()
    return "hygon" in vendor or str(_get(acc, "pci_vendor_id") or "").lower() == "0x1d94"


def cuda_architecture(acc: Any) -> str | None:
    """Compute capability "8.9" → CMAKE_CUDA_ARCHITECTURES entry "89" (ggml itself turns
    12x into the arch-specific 12xa)."""
    cap = _get(acc, "compute_capability", "compute_cap")
    if cap is None:
        for note in _notes(acc):
            m = re.search(r"compute capability\s*(\d+)\.(\d+)", note, re.I)
            if m:
                cap = f"{m.group(1)}.{m.group(2)}"
                break
    if cap is None:
        model = str(_get(acc, "model", "name") or "").upper()
        cap = next((cc for pattern, cc in NVIDIA_CC if re.search(pattern, model)), None)
    if cap is None:
        return None
    m = re.fullmatch(r"\s*(?:sm_?)?(\d+)\.?(\d)?\s*", str(cap))
    if not m:
        return None
    return m.group(1) + (m.group(2) or "")


_GFX = re.compile(r"\bgfx([0-9]{3,4}[0-9a-f]?)\b", re.I)


def hip_target(acc: Any) -> str | None:
    """The gfx target (rocminfo ``Name: gfx1100``; Hygon DTK gfx906/926/928/936)."""
    for value in (_get(acc, "gfx_target", "gpu_target", "architecture", "arch"), *_notes(acc)):
        if value:
            m = _GFX.search(str(value))
            if m:
                return f"gfx{m.group(1).lower()}"
    model = str(_get(acc, "model", "name") or "").upper()
    if _is_hygon(acc):
        for needle, gfx in HYGON_GFX:
            if needle in model:
                return gfx
    return None


def musa_architecture(acc: Any) -> str | None:
    arch = _get(acc, "musa_architecture", "architecture")
    if arch:
        m = re.search(r"(\d)\.?(\d)", str(arch))
        if m:
            return m.group(1) + m.group(2)
    model = str(_get(acc, "model", "name") or "").upper()
    for needle, value in MUSA_ARCH:
        if needle in model:
            return value
    return None


def cann_soc(acc: Any) -> str | None:
    """Ascend chip name ("910B3", "Ascend310P3") → SOC_TYPE family (ascend910b / ascend310p).
    ggml-cann only distinguishes 310P from the rest (``ASCEND_310P``)."""
    for value in (_get(acc, "soc_type", "chip_name", "model", "name"), *_notes(acc)):
        if not value:
            continue
        m = re.search(r"(910[BC]?|310[PB]?)", str(value).upper())
        if m:
            chip = m.group(1)
            if chip.startswith("310"):
                return "ascend310p" if chip == "310P" else f"ascend{chip.lower()}"
            return "ascend910b" if chip in ("910B", "910C") else "ascend910"
    return None


def needed_backend(accelerators: Iterable[Any]) -> str:
    """The backend this box needs: the one driving the most accelerator memory; "cpu" when
    no accelerator has a ggml backend."""
    weight: dict[str, int] = {}
    for acc in accelerators:
        backend = accelerator_backend(acc)
        if backend and backend != "cpu":
            weight[backend] = weight.get(backend, 0) + int(_get(acc, "memory_total_bytes") or 1)
    if not weight:
        return "cpu"
    return max(weight, key=lambda b: (weight[b], -BACKENDS.index(b)))


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v and v not in out:
            out.append(v)
    return tuple(out)


def _sort_numeric(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(values, key=lambda v: (int(re.sub(r"\D", "", v) or 0), v)))


def build_spec(backend: str, accelerators: Sequence[Any] = (), *,
               architectures: Sequence[str] | None = None) -> BuildSpec:
    """The build for ``backend`` ("auto" = :func:`needed_backend`) on a box with these
    accelerators. ``architectures`` overrides what probe saw (e.g. to build for another box)."""
    backend = backend.lower()
    if backend == "auto":
        backend = needed_backend(accelerators)
    if backend not in BACKENDS:
        raise UsageError(f"Unknown backend {backend!r}: choose one of auto, {', '.join(BACKENDS)}",
                         hint="aiboxctl engine install --help")
    mine = [a for a in accelerators if accelerator_backend(a) == backend]
    names = _unique(str(_get(a, "model", "name") or "?") for a in mine)
    devices = sum(int(_get(a, "count") or 1) for a in mine)  # a hardware profile's entry has a count
    seen = f"{devices} × {', '.join(names)}" if mine else "no matching device in the probe"
    args = list(PORTABLE_CPU_ARGS)
    archs: tuple[str, ...] = tuple(architectures or ())
    hygon = False

    if backend == "cpu":
        return BuildSpec("cpu", (), tuple(args), "portable CPU build (runtime-selected CPU variants)")

    if backend == "cuda":
        archs = archs or _sort_numeric(_unique(cuda_architecture(a) for a in mine))
        args.append("-DGGML_CUDA=ON")
        if archs:
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}")
        why = f"CUDA for {seen}" + (f" (CUDA architectures {', '.join(archs)})" if archs else
                                     " (architectures unknown: ggml's default list)")
    elif backend == "hip":
        hygon = any(_is_hygon(a) for a in mine)
        archs = archs or tuple(sorted(_unique(hip_target(a) for a in mine)))
        if not archs and hygon:
            archs = HYGON_DEFAULT_TARGETS
        args.append("-DGGML_HIP=ON")
        if archs:
            joined = ";".join(archs)
            args += [f"-DGPU_TARGETS={joined}", f"-DCMAKE_HIP_ARCHITECTURES={joined}"]
        why = f"HIP{' (Hygon DTK)' if hygon else ''} for {seen}" + (
            f" ({', '.join(archs)})" if archs else " (gfx targets unknown: every GPU in this system)")
    elif backend == "musa":
        archs = archs or _sort_numeric(_unique(musa_architecture(a) for a in mine))
        args.append("-DGGML_MUSA=ON")
        if archs:
            args.append(f"-DMUSA_ARCHITECTURES={';'.join(archs)}")
        why = f"MUSA for {seen}" + (f" (mp_{', mp_'.join(archs)})" if archs else
                                     f" (generation unknown: {';'.join(MUSA_DEFAULT_ARCHS)})")
    elif backend == "cann":
        socs = archs or _unique(cann_soc(a) for a in mine)
        if len(socs) > 1:
            raise UsageError(f"Ascend chips of different SoC types in one box ({', '.join(socs)}): "
                             "one CANN build serves one SoC type",
                             hint="aiboxctl engine install --backend cann --arch ascend910b")
        if not socs:
            raise UsageError("Cannot tell the Ascend SoC type (ascend910b or ascend310p) from the probe",
                             hint="aiboxctl engine install --backend cann --arch ascend910b")
        archs = tuple(socs)
        args += ["-DGGML_CANN=ON", f"-DSOC_TYPE={archs[0]}"]
        why = f"CANN for {seen} (SOC_TYPE {archs[0]})"
    elif backend == "vulkan":
        args.append("-DGGML_VULKAN=ON")
        why = f"Vulkan for {seen}"
    else:  # sycl
        args += ["-DGGML_SYCL=ON", "-DCMAKE_C_COMPILER=icx", "-DCMAKE_CXX_COMPILER=icpx"]
        why = f"SYCL (oneAPI) for {seen}"
    return BuildSpec(backend, archs, tuple(args), why, hygon_dtk=hygon)


def load_accelerators(path: str | Path) -> list[dict[str, Any]]:
    """The accelerators of a recorded probe: ``aiboxctl probe --json`` output (the envelope or its
    ``data``), or a hardware profile (YAML of the same shape)."""
    import json

    text = Path(path).read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml

        doc = yaml.safe_load(text)
    if isinstance(doc, dict) and isinstance(doc.get("data"), dict):
        doc = doc["data"]
    if isinstance(doc, dict) and isinstance(doc.get("hardware"), dict):
        doc = doc["hardware"]
    if not isinstance(doc, dict) or not isinstance(doc.get("accelerators", []), list):
        raise UsageError(f"{path}: not a probe report (no 'accelerators' list)",
                         hint="record one with: aiboxctl probe --json > box.json")
    return [a for a in doc.get("accelerators") or [] if isinstance(a, dict)]
