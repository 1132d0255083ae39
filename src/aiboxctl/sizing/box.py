"""The machine a plan is for: RAM, CPU and the accelerators llama.cpp can use, from a hardware
profile (a box you do not have) or a probe of this box, with the memory each may give the plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiboxctl.hardware.backends import ACCELERATOR_BACKENDS, backend_key, device_chip, device_prefix
from aiboxctl.hardware.cpu import parse_cpulist
from aiboxctl.sizing.cpu_buffers import CpuBuffers
from aiboxctl.sizing.hardware_profiles import HardwareProfile
from aiboxctl.sizing.throughput import DeviceSpeed

GiB = 1024**3

# Accelerator backends the engine can drive; "none" and unknown ones are left idle.
USABLE_BACKENDS = ACCELERATOR_BACKENDS
# Device classes whose default η comes from published llama.cpp scoreboards (throughput.py).
MEASURED_ETA_BACKENDS = frozenset({"cuda", "metal"})


def _eta_assumed(backend: str, eta: float | None, source: str) -> bool:
    if eta is None:
        return backend not in MEASURED_ETA_BACKENDS
    return source.strip().lower().startswith("assum") or not source.strip()


@dataclass(frozen=True)
class Idle:
    """Accelerators no engine instance uses, and why."""

    device: str  # "CANN6", or a label for devices no backend drives ("MetaX C500")
    why: str
    count: int = 1  # devices this entry stands for

    def describe(self) -> str:
        return f"{self.count} x {self.device}: {self.why}" if self.count > 1 else f"{self.device}: {self.why}"

    def to_dict(self) -> dict:
        return {"device": self.device, "why": self.why, "count": self.count}


@dataclass(frozen=True)
class BoxDevice:
    name: str  # "CUDA0", "CANN3", ...
    model: str
    backend: str
    memory: int
    bandwidth_gbps: float
    tflops: float
    eta: float | None = None
    soc: str | None = None
    # The decode efficiency η is an assumption (no published llama.cpp figures for this class):
    # speed predictions on this device are estimates with a wide range.
    eta_assumed: bool = False
    numa_node: int | None = None  # the probe's (sysfs numa_node); None: unknown or one node
    stream_tflops: tuple[float, float] | None = None  # measured batched-step cost (throughput.py)

    @property
    def chip(self) -> str | None:
        """The chip generation the backend's per-chip facts name ("ascend310p", "mp_22")."""
        return device_chip(self.backend, self.model, self.soc)

    @property
    def margin(self) -> int:
        return max(GiB, int(self.memory * 0.04))

    @property
    def budget(self) -> int:
        return self.memory - self.margin

    @property
    def speed(self) -> DeviceSpeed:
        """This device as the throughput model sees it."""
        return DeviceSpeed(self.name, self.backend, self.bandwidth_gbps, self.tflops, self.eta, self.stream_tflops)


@dataclass(frozen=True)
class Box:
    """What the planner needs to know about a machine."""

    name: str
    source: str  # "hardware profile <name>" or "probe of this box"
    ram: int
    ram_bandwidth_gbps: float
    cpu_cores: int
    cpu_tflops: float
    accelerators: tuple[BoxDevice, ...] = ()
    idle_accelerators: tuple[Idle, ...] = ()  # present but not usable by llama.cpp, and why
    is_this_box: bool = False
    notes: tuple[str, ...] = ()
    repack_ok: bool = True  # False: the probe's self-test saw AMX/repacked kernels fault here
    cpu_buffers: CpuBuffers = CpuBuffers.from_flags(("avx2",))  # llama.cpp's extra buffer types here
    # The CPUs of each NUMA node (node order), from the probe; () when unknown (hardware profiles)
    # or one node. An instance on several-node boxes is pinned to its devices' node (fill.py).
    numa_cpus: tuple[tuple[int, ...], ...] = ()

    @property
    def os_reserve(self) -> int:
        """RAM left to the OS, the service's Python, page cache for logs: 10 %, 2–32 GiB."""
        return min(max(2 * GiB, int(self.ram * 0.10)), 32 * GiB)

    @property
    def ram_budget(self) -> int:
        return self.ram - self.os_reserve

    @property
    def host_speed(self) -> DeviceSpeed:
        return DeviceSpeed("host", "cpu", self.ram_bandwidth_gbps, self.cpu_tflops)

    def speeds(self, devices: tuple[BoxDevice, ...] | None = None) -> list[DeviceSpeed]:
        """The host and ``devices`` (default: every accelerator) as the throughput model sees them."""
        return [self.host_speed, *(d.speed for d in (self.accelerators if devices is None else devices))]


def box_from_profile(hw: HardwareProfile) -> Box:
    devices: list[BoxDevice] = []
    idle: list[Idle] = []
    counters: dict[str, int] = {}
    for acc in hw.accelerators:
        if acc.backend not in USABLE_BACKENDS:
            idle.append(Idle(acc.model, f"no llama.cpp backend ({acc.sources.get('backend', acc.backend)})", acc.count))
            continue
        prefix = device_prefix(acc.backend)
        for _ in range(acc.count):
            i = counters.get(prefix, 0)
            counters[prefix] = i + 1
            assumed = _eta_assumed(acc.backend, acc.decode_efficiency, acc.sources.get("decode_efficiency", ""))
            devices.append(BoxDevice(f"{prefix}{i}", acc.model, acc.backend, acc.memory, acc.bandwidth_gbps,
                                     acc.fp16_tflops, acc.decode_efficiency, acc.soc, assumed,
                                     stream_tflops=known_stream_tflops(acc.model, acc.backend)))
    cpu_tflops = (hw.cpu.fp32_gflops or hw.cpu.cores * 2.5 * 32) / 1000
    return Box(hw.name, f"hardware profile {hw.name}", hw.memory.total, hw.memory.bandwidth_gbps, hw.cpu.cores,
               cpu_tflops, tuple(devices), tuple(idle), False, hw.notes,
               cpu_buffers=CpuBuffers.from_flags(hw.cpu.flags))


# Bandwidth and compute of accelerators a probe can name but not measure (per device).
_KNOWN_ACCELERATORS: tuple[tuple[str, float, float, float | None], ...] = (
    # (substring of the model name, GB/s, FP16 TFLOPS dense, η)
    ("4090", 1008, 165.2, 0.70), ("A100", 2039, 312, 0.38), ("H800", 3350, 989.5, 0.45),
    # H200: η measured (below); H100/H800 keep the scoreboard's 0.45 (memory-model.md §6.3: 0.31–0.53)
    ("H100", 3350, 989.5, 0.45), ("H200", 4800, 989.5, 0.333), ("L40", 864, 181, 0.65),
    ("910B", 1600, 376, 0.30), ("310P", 204, 70, 0.30), ("K100", 896, 192, 0.40), ("S4000", 768, 100, 0.40),
)
# Measured batched decode (throughput.DeviceSpeed.stream_tflops): effective TFLOPS of each stream
# after the first, up to 8 streams and beyond. Source: bench/device_check.py on an NVIDIA H200
# (132 SMs), CUDA 13.0, driver 580.159.04, llama-cpp-python 0.3.36, 2026-11-30 (docs/gpu.md "First
# device run"): Qwen2.5-7B-shaped Q4_K_M (7.62 B params), full offload, flash attention, depth
# ~75, per-stream decode steps 3.73 / 9.01 / 11.25 / 16.98 ms at 1 / 8 / 32 / 64 streams. With
# T0_ACCEL = 1 ms, batch 1 gives η = 0.333 of 4800 GB/s; 1→8 streams 0.751 ms per stream
# (2·7.62e9 FLOP / 0.751 ms = 20.3 TFLOPS); 8→64 a least-squares line through 8 (anchored), 32
# and 64: 0.132 ms per stream = 115 TFLOPS. H100 and H800 are the same GH100 die (132 SMs on
# SXM): the matmul rates are taken to carry over, η is not (different memory).
_KNOWN_STREAM_TFLOPS: tuple[tuple[str, tuple[float, float]], ...] = (
    ("H200", (20.3, 115.0)), ("H100", (20.3, 115.0)), ("H800", (20.3, 115.0)),
)


def known_stream_tflops(label: str, backend: str) -> tuple[float, float] | None:
    """The measured batched-step cost of an accelerator named ``label`` (its model name), for a
    probed box and a hardware profile alike; None for one never measured. The cost is ggml-cuda's
    kernels': only a ``cuda`` device gets it."""
    if backend != "cuda":
        return None
    return next((t for k, t in _KNOWN_STREAM_TFLOPS if k.lower() in label.lower()), None)


def known_accelerator_speed(name: str, label: str, backend: str = "cuda") -> DeviceSpeed | None:
    """The throughput model's view of an accelerator this table knows by ``label`` (its model
    name), as ``name`` ("CUDA0"); None for one it does not know."""
    known = next((k for k in _KNOWN_ACCELERATORS if k[0].lower() in label.lower()), None)
    if known is None:
        return None
    return DeviceSpeed(name, backend, known[1], known[2], known[3], known_stream_tflops(label, backend))


def box_from_report(report: Any) -> Box:
    """A :class:`~aiboxctl.hardware.model.HardwareReport` as the planner's box."""
    notes: list[str] = []
    cpu = report.cpu
    cores = cpu.cores or cpu.threads
    flags = set(cpu.flags)
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16
    cpu_tflops = cores * 2.5 * per_cycle / 1000
    notes.append(f"CPU peak taken as {cores} cores x 2.5 GHz x {per_cycle} FLOP/cycle (assumed clock)")
    bw = report.memory.bandwidth.gbps
    if not bw:
        # Two DDR channels' worth per socket, but no more than the cores can pull: one core
        # streams ~10 GB/s (this 2-core VM: 16-18 GB/s single-thread copy, so 2 cores ≈ 20 GB/s
        # usable by decode; bench/throughput_model.py). Small VMs were over-predicted 2x before.
        bw = min(20.0 * max(1, (cpu.sockets or 1)) * 2, 10.0 * max(1, cores or 1))
        notes.append(f"memory bandwidth unknown ({report.memory.bandwidth.detail}); assumed {bw:.0f} GB/s: "
                     "run `aiboxctl probe --measure` for a measured figure")
    else:
        notes.append(f"memory bandwidth {bw:.1f} GB/s ({report.memory.bandwidth.source})")
    ram = report.memory.total_bytes or 0
    available = report.memory.available_bytes
    if available is not None and ram and available < ram - max(2 * GiB, ram // 10):
        notes.append(f"only {available / GiB:.1f} GiB of {ram / GiB:.1f} GiB RAM is free now: the plan assumes "
                     "the box is dedicated to the service")
    devices: list[BoxDevice] = []
    idle: list[Idle] = []
    counters: dict[str, int] = {}
    for acc in report.accelerators:
        label = acc.model or acc.vendor
        backend = backend_key(acc.ggml_backend) or (acc.ggml_backend or "none").lower()
        if backend not in USABLE_BACKENDS or not acc.backend_in_build:
            why = "no llama.cpp backend" if backend not in USABLE_BACKENDS else \
                f"the installed engine lacks the {acc.ggml_backend} backend (aiboxctl engine install builds it)"
            idle.append(Idle(label, why))
            continue
        if not acc.memory_total_bytes:
            idle.append(Idle(label, "memory size unknown"))
            continue
        prefix = device_prefix(backend)
        i = counters.get(prefix, 0)
        counters[prefix] = i + 1
        known = known_accelerator_speed(f"{prefix}{i}", label, backend)
        bw_dev, tf, eta = (known.bandwidth_gbps, known.tflops, known.eta) if known else (500.0, 50.0, None)
        if not known:
            notes.append(f"{label}: bandwidth/compute unknown, assumed 500 GB/s and 50 TFLOPS")
        assumed = not known or backend not in MEASURED_ETA_BACKENDS
        devices.append(BoxDevice(f"{prefix}{i}", label, backend, acc.memory_total_bytes, bw_dev, tf, eta, None,
                                 assumed, acc.numa_node, known.stream_tflops if known else None))
    amx_failed = any(p.name == "amx" and p.verified == "failed" for p in cpu.isa_paths)
    if amx_failed:
        notes.append("the probe's self-test saw AMX fault on this CPU: weight repacking is planned off")
    return Box("this box", "probe of this box", ram, float(bw), cores, cpu_tflops, tuple(devices), tuple(idle),
               True, tuple(notes), repack_ok=not amx_failed,
               cpu_buffers=CpuBuffers.from_flags(cpu.flags, cpu.arch).in_build(report.engine.system_info or ""),
               numa_cpus=tuple(parse_cpulist(c) for c in cpu.numa_cpus) if len(cpu.numa_cpus) > 1 else ())


def as_box(hardware: Box | HardwareProfile | Any) -> Box:
    """A Box, a HardwareProfile or a probe's HardwareReport as the planner's box."""
    if isinstance(hardware, Box):
        return hardware
    return box_from_profile(hardware) if isinstance(hardware, HardwareProfile) else box_from_report(hardware)
