"""The data a probe returns (frozen dataclasses; ``--json`` prints them field by field).

Units are in the field names: bytes are ``*_bytes``, bandwidth ``*_gbps`` (10^9 bytes/s).
``None`` means unknown; the reason is in ``HardwareReport.warnings`` or a ``*_source`` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Values of IsaPath.verified
NOT_RUN = "not run"
PASSED = "passed"
FAILED = "failed"


@dataclass(frozen=True)
class IsaPath:
    """A risky instruction-set path that llama.cpp would use on this CPU (AVX-512, AMX).

    ``advertised``: the CPU flags list it. ``verified``: whether code using it was seen to
    execute (``probe --selftest``): "not run", "passed" or "failed"; ``detail`` says why.
    Some VMs advertise AMX but fault on it, so advertised is not enough to rely on.
    """

    name: str
    flags: tuple[str, ...]
    advertised: bool
    verified: str = NOT_RUN
    detail: str | None = None


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    arch: str
    sockets: int | None
    cores: int | None  # physical cores over all sockets
    threads: int  # logical CPUs
    numa_nodes: int | None
    flags: tuple[str, ...]  # the ISA flags that matter to ggml, as /proc/cpuinfo spells them
    ggml_variant: str  # the GGML_CPU_ALL_VARIANTS backend ggml would pick for these flags
    isa_paths: tuple[IsaPath, ...] = ()
    # Per NUMA node (node0, node1, …), its CPUs as sysfs lists them ("0-15,32-47"): what a
    # plan pins an instance to (docs/planning.md "NUMA").
    numa_cpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth. ``source``: "dmidecode" (theoretical peak from the DIMMs),
    "measured" (a short copy loop: a lower bound) or "unknown"."""

    gbps: float | None
    source: str
    detail: str


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int | None
    available_bytes: int | None
    hugepages_total: int | None
    hugepages_free: int | None
    hugepage_size_bytes: int | None
    bandwidth: Bandwidth


@dataclass(frozen=True)
class DiskInfo:
    purpose: str  # "models" (the model store) or "root"
    path: str  # the path asked about
    checked_path: str  # the nearest existing ancestor (the store may not exist yet)
    total_bytes: int | None
    free_bytes: int | None


@dataclass(frozen=True)
class Accelerator:
    vendor: str  # "NVIDIA", "Huawei Ascend", ...
    vendor_key: str  # "nvidia", "huawei", ... (stable, for scripts)
    model: str | None
    index: int | None  # the index the vendor runtime uses (CUDA/ASCEND_RT_VISIBLE_DEVICES order)
    pci_bus_id: str | None  # "0000:3b:00.0"
    pci_vendor_id: str | None  # "0x10de"
    pci_device_id: str | None
    memory_total_bytes: int | None
    memory_free_bytes: int | None
    driver_version: str | None
    runtime_version: str | None  # CUDA / CANN / MACA / MUSA / DTK version where the tool says
    numa_node: int | None
    detected_by: tuple[str, ...]  # "sysfs", "nvml", "nvidia-smi", "npu-smi", ...
    ggml_backend: str | None  # the ggml backend that can drive it (None: none exists)
    backend_in_build: bool  # the installed llama-cpp-python has that backend
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineBuild:
    """What the installed llama-cpp-python can drive, read from the library itself."""

    available: bool  # llama_cpp imports and its library loads
    llama_cpp_python_version: str | None
    backends: tuple[str, ...]  # registered ggml backends ("CPU", "CUDA", "ROCm", "CANN", ...)
    devices: tuple[str, ...]  # "CPU: AMD EPYC", "CUDA0: NVIDIA H100 ..."
    backend_libraries: tuple[str, ...]  # dynamically loadable libggml-*.so files found
    cpu_variants: tuple[str, ...]  # GGML_CPU_ALL_VARIANTS libraries shipped (empty: one native CPU build)
    cpu_variant_loaded: str | None  # the variant ggml picked ("native" for a single build)
    cpu_features: tuple[str, ...]  # what the CPU backend reports as compiled in and enabled
    gpu_offload: bool
    system_info: str
    source: str  # "live" (read now) or "cache" (same library files and CPU as last read)
    read_seconds: float | None  # cost of the live read (import + queries), from the live read
    error: str | None = None


@dataclass(frozen=True)
class ServingDecision:
    """Where the box will serve from, and why, in one sentence a person can act on."""

    backend: str  # "CPU" or a ggml backend name
    accelerator_indices: tuple[int, ...]
    reason: str


@dataclass(frozen=True)
class SelfTestSummary:
    """``probe --selftest``: the engine self-test (contract 5) run on a small embedded model."""

    ok: bool
    model: str
    fallback: str | None  # "repack-off", ... when the configured engine options crashed
    reason: str | None  # why the attempts before the passing one failed
    attempts: tuple[str, ...]  # "configured: killed by SIGSEGV", "repack-off: ok"


@dataclass(frozen=True)
class HardwareReport:
    cpu: CpuInfo
    memory: MemoryInfo
    disks: tuple[DiskInfo, ...]
    accelerators: tuple[Accelerator, ...]
    engine: EngineBuild
    serving: ServingDecision
    warnings: tuple[str, ...] = field(default_factory=tuple)
    selftest: SelfTestSummary | None = None  # only with probe --selftest
