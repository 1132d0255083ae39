"""Decode and prefill speed from memory bandwidth and compute throughput.

Decode is memory-bound: each step reads every weight the token needs once (all weights but
``token_embd``, which is a row lookup, unless it doubles as the tied output matrix; for MoE only
the experts the step's tokens route to) plus the KV cache up to the current depth, on every
device that holds layers; layer-split devices work one after the other, so their times add
(memory-model.md §6.1)::

    t_step(B) = Σ_dev (W_read,dev(B) + B · KV_read,dev(depth)) / (η_dev · BW_dev) + t0
    per-user tok/s = 1 / max(t_step, t_compute)      aggregate = B · per-user

With B parallel streams dense weights are read once per step; MoE reads
``E · (1 − (1 − k/E)^B)`` distinct experts per layer. ``t_compute`` (2 FLOP per active
parameter per token) caps large batches. Prefill is compute-bound: ``η_c · FLOPS / (2 · P)``.

η (achieved / peak bandwidth) per device class comes from published llama.cpp scoreboards
(memory-model.md §6.3) unless a hardware profile gives its own; ``aiboxctl bench`` measures it.

Where a device's batched steps were measured (``DeviceSpeed.stream_tflops``: the H200 run of
2026-11-30, docs/gpu.md), every stream after the first adds its matmuls at the measured effective
rate — steeply up to :data:`STREAMS_VECTOR` streams, slowly beyond::

    t_step(B) += (min(B, 8) − 1) · 2P / F_vector + max(B − 8, 0) · 2P / F_tiled
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.cpu_buffers import AMX, CPU_REPACK, CpuBuffers
from aiboxctl.sizing.memory import MemoryEstimate, cache_row_bytes

# Decode bandwidth efficiency by device class, memory-model.md §6.3 (uncalibrated defaults).
ETA_DECODE: dict[str, float] = {
    "cpu": 0.55,  # 0.4–0.75 measured (EPYC 9175F 0.41→0.74, M1 CPU 0.78)
    "cuda": 0.70,  # consumer discrete GPUs 0.63–0.79; datacenter parts set their own (A100 0.38)
    "hip": 0.45,
    "musa": 0.40,
    "cann": 0.30,
    "sycl": 0.45,
    "vulkan": 0.55,
    "metal": 0.60,
}
# Fraction of peak compute reached by quantized matmuls (prefill, and batched decode when
# compute-bound); rough, ``aiboxctl bench`` calibrates. CPU: bench/throughput_model.py saw 4
# streams on one core reach ~1/4 of the FP32 peak (gemma-3-270m, smollm2), so 0.3, not 0.5.
ETA_COMPUTE: dict[str, float] = {"cpu": 0.3, "cuda": 0.6, "hip": 0.4, "musa": 0.3, "cann": 0.3,
                                 "sycl": 0.3, "vulkan": 0.3, "metal": 0.4}
# Per-step fixed cost: kernel launches, synchronisation, sampling (memory-model.md §6.1).
T0_ACCEL = 1.0e-3
T0_CPU = 0.3e-3
# ggml-cuda multiplies quantized weights by up to 8 token columns with its vector kernel (mmvq.cu,
# MMVQ_MAX_BATCH_SIZE), which works through every weight block once per column; beyond 8 with
# MMQ's tiles. A batched step therefore grows steeply up to 8 streams, then slowly
# (DeviceSpeed.stream_tflops; docs/gpu.md "First device run").
STREAMS_VECTOR = 8


@dataclass(frozen=True)
class RepackSpeed:
    """How much faster the weights a CPU extra buffer type holds (repack on) are worked through
    than the same weights in the plain CPU buffer: decode (reading them) and prefill (matmuls)."""

    decode: float
    prefill: float
    measured_on: str | None  # where and how; None: no measurement, the factors are 1 by assumption

    def describe(self) -> str:
        if self.measured_on is None:
            return "not measured (taken as no change)"
        return f"decode x{self.decode:g}, prefill x{self.prefill:g} on its weights ({self.measured_on})"


# Repack's speed effect per extra buffer type (docs/planning.md "Weight repacking and speed").
REPACK_SPEED: dict[str, RepackSpeed] = {
    # bench/repack_speed.py on the 2-core Xeon VM with the portable wheel's AVX2 (haswell) CPU
    # variant, gemma-3-270m Q4_K_M (12.66 MiB of Q4_K in CPU_REPACK), 5 rounds under load 2.8-3.7:
    # on/off decode x1.007 (1 stream) and x1.027 (4), prefill x1.15 with the spreads overlapping
    # (146-234 vs 149-219 tok/s): no difference the noise lets us tell, so none is modelled.
    CPU_REPACK: RepackSpeed(1.0, 1.0, "no difference beyond noise, Xeon VM AVX2 build, gemma-3-270m Q4_K_M"),
    AMX: RepackSpeed(1.0, 1.0, None),  # faults on the one AMX CPU measured (a VM): no figure
}


@dataclass(frozen=True)
class DeviceSpeed:
    """One device as the throughput model sees it."""

    name: str  # "host" or the accelerator name used in the MemoryEstimate ("CUDA0")
    kind: str  # "cpu" or a ggml backend name ("cuda", "cann", ...)
    bandwidth_gbps: float  # peak memory bandwidth, GB/s
    tflops: float  # peak compute (FP16 dense for accelerators, FP32 for CPUs)
    eta: float | None = None  # decode efficiency; None: the class default
    # Measured cost of each stream beyond the first in a batched decode step, as the effective
    # TFLOPS its matmuls run at: (up to STREAMS_VECTOR streams, beyond). None: not measured for
    # this device — the step then grows only by the KV reads and the compute bound (optimistic).
    stream_tflops: tuple[float, float] | None = None

    @property
    def eta_decode(self) -> float:
        return self.eta if self.eta is not None else ETA_DECODE.get(self.kind, 0.5)

    @property
    def eta_compute(self) -> float:
        return ETA_COMPUTE.get(self.kind, 0.3)


@dataclass(frozen=True)
class Throughput:
    streams: int  # parallel sequences decoding together
    depth: int  # tokens already in each sequence's context
    per_user_tok_s: float  # what each of the streams sees
    aggregate_tok_s: float
    single_stream_tok_s: float  # one user alone, same depth
    prefill_tok_s: float
    weights_read_per_step: int  # bytes, at this many streams
    kv_read_per_token: int  # bytes per stream at this depth
    bound: str  # "memory" or "compute"
    per_device: dict[str, float] = field(default_factory=dict)  # seconds per step by device
    notes: tuple[str, ...] = ()


def _moe_read_fraction(facts: ModelFacts, streams: int) -> float:
    """Share of expert weights one decode step reads with ``streams`` tokens routed."""
    if not facts.n_expert or not facts.n_expert_used:
        return 1.0
    p = facts.n_expert_used / facts.n_expert
    return 1.0 - (1.0 - p) ** max(streams, 1)


def _kv_read_bytes(facts: ModelFacts, layers: list[int], depth: int, cache_k: str, cache_v: str) -> int:
    total = 0
    for il in layers:
        if not facts.has_kv(il):
            continue
        cells = min(depth, facts.n_swa) if facts.is_swa(il) else depth
        k = cache_row_bytes(cache_k, facts.head_dim_k[il] * facts.n_head_kv[il])
        v = 0 if facts.is_mla else cache_row_bytes(cache_v, facts.head_dim_v[il] * facts.n_head_kv[il])
        total += (k + v) * cells
    return total


def _repack_scale(facts: ModelFacts, cpu: CpuBuffers, host_layers: set[int], out_on_host: bool) -> tuple[float, float]:
    """(decode, prefill) time factors for the host's weights with repack on: each weight an
    extra buffer type takes is worked through at that type's :data:`REPACK_SPEED`."""
    total = dec = pre = 0.0
    for w in facts.weight_matrices:
        if w.duplicate or not (w.slot in host_layers or (w.slot == facts.n_layer and out_on_host)):
            continue
        placed = cpu.buffer_for(w)
        speed = REPACK_SPEED.get(placed[0]) if placed else None
        total += w.n_bytes
        dec += w.n_bytes / (speed.decode if speed else 1.0)
        pre += w.n_bytes / (speed.prefill if speed else 1.0)
    return (dec / total, pre / total) if total else (1.0, 1.0)


def estimate_throughput(facts: ModelFacts, estimate: MemoryEstimate, devices: list[DeviceSpeed], *,
                        active_params: float, streams: int, depth: int, cpu: CpuBuffers | None = None) -> Throughput:
    """Predicted speed for the placement in ``estimate`` (which layers sit on which device).

    ``active_params``: parameters used per token (MoE: the active count), for compute bounds.
    ``cpu``: the extra buffer types of the host CPU; with repack on (``estimate.params.repack``)
    the weights they take run at :data:`REPACK_SPEED` (without it: no repack term).
    """
    by_name = {d.name: d for d in devices}
    p = estimate.params
    n_dev = len(estimate.devices)
    # Which layers each device holds, following memory.py's placement rule.
    from aiboxctl.sizing.memory import layer_devices

    placement = layer_devices(facts.n_layer, p.n_gpu_layers, n_dev - 1, p.tensor_split)
    layers_on: dict[str, list[int]] = {d.device: [] for d in estimate.devices}
    names = [d.device for d in estimate.devices]
    for il in range(facts.n_layer):
        layers_on[names[placement[il] + 1]].append(il)
    out_dev = names[placement[facts.n_layer] + 1]

    layer_total = sum(facts.layer_bytes) or 1
    expert_share = min(facts.expert_bytes / layer_total, 1.0) if facts.expert_bytes else 0.0
    frac_b = _moe_read_fraction(facts, streams)
    frac_1 = _moe_read_fraction(facts, 1)

    def weights_read(dev: str, frac: float) -> float:
        lb = sum(facts.layer_bytes[il] for il in layers_on[dev])
        read = lb * (1 - expert_share) + lb * expert_share * frac
        if dev == out_dev:
            read += facts.output_bytes + (facts.output_matrix_bytes if facts.tied_embeddings else 0)
        return read

    per_device: dict[str, float] = {}
    t_step_b = t_step_1 = t_prefill = 0.0
    w_total_b = 0.0
    kv_total = 0
    compute_bound = False
    all_read = sum(weights_read(n, frac_1) for n in names if by_name.get(n)) or 1.0
    repack_dec = repack_pre = 1.0
    if p.repack and cpu is not None and cpu.names:
        repack_dec, repack_pre = _repack_scale(facts, cpu, set(layers_on[names[0]]), out_dev == names[0])
    for dev in names:
        spec = by_name.get(dev)
        if spec is None or (not layers_on[dev] and dev != out_dev):
            continue
        bw = spec.bandwidth_gbps * 1e9 * spec.eta_decode
        w_b, w_1 = weights_read(dev, frac_b), weights_read(dev, frac_1)
        kv_spec = spec if p.offload_kqv else by_name.get(names[0], spec)
        kv_bw = kv_spec.bandwidth_gbps * 1e9 * kv_spec.eta_decode
        kv = _kv_read_bytes(facts, layers_on[dev], depth, p.cache_type_k, p.cache_type_v)
        # This device's share of the active parameters, 2 FLOP each per token.
        flops = spec.tflops * 1e12 * spec.eta_compute
        t_cmp_1 = 2 * active_params * (w_1 / all_read) / flops
        w_total_b += w_b
        if dev == names[0]:  # the host: repacked weights are read and multiplied at their own speed
            w_b, w_1 = w_b * repack_dec, w_1 * repack_dec
            t_cmp_1 *= repack_pre
        mem_b, cmp_b = w_b / bw + streams * kv / kv_bw, t_cmp_1 * streams
        if spec.stream_tflops:  # the measured cost of every stream after the first
            flop = 2 * active_params * (w_1 / all_read)
            vec, tiled = spec.stream_tflops
            mem_b += (min(streams, STREAMS_VECTOR) - 1) * flop / (vec * 1e12) \
                + max(streams - STREAMS_VECTOR, 0) * flop / (tiled * 1e12)
        # Layer-split devices run one after another: per device the slower of memory and compute.
        per_device[dev] = max(mem_b, cmp_b)
        compute_bound |= cmp_b > mem_b
        t_step_b += per_device[dev]
        t_step_1 += max(w_1 / bw + kv / kv_bw, t_cmp_1)
        t_prefill += t_cmp_1
        kv_total += kv
    accel = any(by_name[n].kind != "cpu" for n in per_device if n in by_name)
    t0 = T0_ACCEL if accel else T0_CPU
    step_b = t_step_b + t0
    step_1 = t_step_1 + t0
    per_user = 1.0 / step_b if step_b > 0 else 0.0
    return Throughput(
        streams=streams, depth=depth, per_user_tok_s=per_user, aggregate_tok_s=per_user * streams,
        single_stream_tok_s=1.0 / step_1 if step_1 > 0 else 0.0,
        prefill_tok_s=1.0 / t_prefill if t_prefill > 0 else 0.0,
        weights_read_per_step=int(w_total_b), kv_read_per_token=int(kv_total),
        bound="compute" if compute_bound else "memory", per_device=per_device,
    )
