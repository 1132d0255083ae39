"""CPU: model, topology, the ISA flags ggml cares about and the CPU variant they map to.

The variant table mirrors llama.cpp's ``GGML_CPU_ALL_VARIANTS`` (ggml/src/CMakeLists.txt) and
the scoring in ggml-cpu/arch/{x86,arm}/cpu-feats.cpp: a variant is usable when every feature
it was compiled with is present; the usable variant with the highest score wins.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from aiboxctl.hardware.model import CpuInfo, IsaPath

# ggml feature → /proc/cpuinfo flags that must all be present, and its score bit (x86).
_X86_FEATURES: dict[str, tuple[tuple[str, ...], int]] = {
    "FMA": (("fma",), 1),
    "F16C": (("f16c",), 1 << 1),
    "SSE42": (("sse4_2",), 1 << 2),
    "BMI2": (("bmi2",), 1 << 3),
    "AVX": (("avx",), 1 << 4),
    "AVX2": (("avx2",), 1 << 5),
    "AVX_VNNI": (("avx_vnni",), 1 << 6),
    "AVX512": (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), 1 << 7),
    "AVX512_VBMI": (("avx512vbmi",), 1 << 8),
    "AVX512_BF16": (("avx512_bf16",), 1 << 9),
    "AVX512_VNNI": (("avx512_vnni",), 1 << 10),
    "AMX_INT8": (("amx_int8",), 1 << 11),
    "AMX_TILE": (("amx_tile",), 0),  # required by the variant, not scored by ggml
}

_X86_VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"),
    "skylakex": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512"),
    "cannonlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI"),
    "cascadelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI"),
    "icelake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI", "AVX512_VNNI",
             "AVX512_BF16"),
    "alderlake": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX_VNNI"),
    "sapphirerapids": ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2", "AVX512", "AVX512_VBMI",
                       "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}

_ARM_FEATURES: dict[str, tuple[tuple[str, ...], int]] = {
    "DOTPROD": (("asimddp",), 1 << 1),
    "FP16_VECTOR_ARITHMETIC": (("asimdhp",), 1 << 2),
    "SVE": (("sve",), 1 << 3),
    "MATMUL_INT8": (("i8mm",), 1 << 4),
    "SVE2": (("sve2",), 1 << 5),
    "SME": (("sme",), 1 << 6),
}

_ARM_VARIANTS: dict[str, tuple[str, ...]] = {
    "armv8.0_1": (),
    "armv8.2_1": ("DOTPROD",),
    "armv8.2_2": ("DOTPROD", "FP16_VECTOR_ARITHMETIC"),
    "armv8.2_3": ("DOTPROD", "FP16_VECTOR_ARITHMETIC", "SVE"),
    "armv8.6_1": ("DOTPROD", "FP16_VECTOR_ARITHMETIC", "SVE", "MATMUL_INT8"),
    "armv8.6_2": ("DOTPROD", "FP16_VECTOR_ARITHMETIC", "SVE", "MATMUL_INT8", "SVE2"),
    "armv9.2_1": ("DOTPROD", "FP16_VECTOR_ARITHMETIC", "SVE", "MATMUL_INT8", "SME"),
    "armv9.2_2": ("DOTPROD", "FP16_VECTOR_ARITHMETIC", "SVE", "MATMUL_INT8", "SVE2", "SME"),
}

X86_RELEVANT_FLAGS = ("sse4_2", "avx", "f16c", "fma", "bmi2", "avx2", "avx_vnni", "avx512f", "avx512cd",
                      "avx512vl", "avx512dq", "avx512bw", "avx512vbmi", "avx512_vnni", "avx512_bf16",
                      "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16", "amx_fp16")
ARM_RELEVANT_FLAGS = ("asimd", "asimddp", "fphp", "asimdhp", "sve", "sve2", "i8mm", "bf16", "sme")

# Paths that a CPU may advertise but a VM or firmware may not let execute.
_RISKY = (("avx512", ("avx512f",)), ("amx", ("amx_tile", "amx_int8")))

_ARM_IMPLEMENTERS = {"0x41": "Arm", "0x48": "HiSilicon", "0x70": "Phytium", "0xc0": "Ampere",
                     "0x61": "Apple", "0x51": "Qualcomm", "0x4e": "NVIDIA"}


def _pick(flags: set[str], features: dict, variants: dict) -> str:
    best, best_score = next(iter(variants)), -1
    for name, needs in variants.items():
        if all(all(f in flags for f in features[n][0]) for n in needs):
            score = 1 + sum(features[n][1] for n in needs)
            if score > best_score:
                best, best_score = name, score
    return best


def ggml_cpu_variant(flags: set[str] | frozenset[str], arch: str) -> str:
    """The ggml CPU variant that would be loaded for a CPU with these /proc/cpuinfo flags."""
    if arch in ("aarch64", "arm64"):
        return _pick(set(flags), _ARM_FEATURES, _ARM_VARIANTS)
    if arch in ("x86_64", "amd64", "i686"):
        return _pick(set(flags), _X86_FEATURES, _X86_VARIANTS)
    return arch


def _parse_cpuinfo(text: str) -> list[dict[str, str]]:
    blocks, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            cur[key.strip().lower()] = value.strip()
    if cur:
        blocks.append(cur)
    return blocks


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_cpu(proc_root: Path, sysfs_root: Path, warnings: list[str]) -> CpuInfo:
    arch = os.uname().machine
    text = _read(proc_root / "cpuinfo")
    if text is None:
        warnings.append(f"cannot read {proc_root / 'cpuinfo'}: CPU model and flags unknown")
        text = ""
    blocks = [b for b in _parse_cpuinfo(text) if "processor" in b] or _parse_cpuinfo(text)
    first = blocks[0] if blocks else {}
    flag_text = first.get("flags") or first.get("features") or ""
    all_flags = set(flag_text.split())
    # The flags say which ISA this is (and keep a fake /proc honest on any host).
    if "asimd" in all_flags:
        arch = "aarch64"
    elif "sse2" in all_flags:
        arch = "x86_64"
    relevant = ARM_RELEVANT_FLAGS if arch in ("aarch64", "arm64") else X86_RELEVANT_FLAGS

    vendor = first.get("vendor_id") or _ARM_IMPLEMENTERS.get(first.get("cpu implementer", "").lower(), "")
    model = first.get("model name") or ""
    if not model and first.get("cpu part"):
        model = f"{vendor or 'ARM'} CPU part {first['cpu part']}".strip()
    threads = sum(1 for b in blocks if "processor" in b) or os.cpu_count() or 1

    sockets, cores = _topology(blocks, sysfs_root)
    nodes_dir = sysfs_root / "devices" / "system" / "node"
    try:
        nodes = sorted((p for p in nodes_dir.iterdir() if re.fullmatch(r"node\d+", p.name)),
                       key=lambda p: int(p.name[4:]))
    except OSError:
        nodes = []
    numa = len(nodes) or None
    numa_cpus = tuple((_read(n / "cpulist") or "").strip() for n in nodes)

    isa = tuple(IsaPath(name, needs, all(f in all_flags for f in needs))
                for name, needs in _RISKY if arch.startswith(("x86", "amd64")))
    return CpuInfo(
        model=model or "unknown", vendor=vendor or "unknown", arch=arch, sockets=sockets, cores=cores,
        threads=threads, numa_nodes=numa, numa_cpus=numa_cpus if all(numa_cpus) else (),
        flags=tuple(f for f in relevant if f in all_flags),
        ggml_variant=ggml_cpu_variant(all_flags, arch), isa_paths=isa,
    )


def _topology(blocks: list[dict[str, str]], sysfs_root: Path) -> tuple[int | None, int | None]:
    pairs = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    if pairs:
        return len({p for p, _ in pairs}), len(pairs)
    # aarch64 /proc/cpuinfo has no topology: ask sysfs.
    base = sysfs_root / "devices" / "system" / "cpu"
    try:
        cpus = [p for p in base.iterdir() if re.fullmatch(r"cpu\d+", p.name)]
    except OSError:
        return None, None
    seen = set()
    for cpu in cpus:
        pkg = _read(cpu / "topology" / "physical_package_id")
        core = _read(cpu / "topology" / "core_id")
        if pkg is not None and core is not None:
            seen.add((pkg.strip(), core.strip()))
    if not seen:
        return None, None
    return len({p for p, _ in seen}), len(seen)


def parse_cpulist(text: str) -> tuple[int, ...]:
    """The kernel's CPU list format ("0-3,8,10-11", sysfs cpulist, cpuset) → sorted CPU ids."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(out))


def format_cpulist(cpus: tuple[int, ...] | list[int]) -> str:
    """CPU ids → the kernel's list format, ranges collapsed ("0-3,8")."""
    ids = sorted(set(cpus))
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)
