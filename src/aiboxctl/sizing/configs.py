"""The engine configurations the planner tries for one model, best first: fewest accelerators
with full offload, then a q8_0 KV cache, then partial offload; on the CPU, repack on (with and
without mmap) before repack off."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import Box, BoxDevice
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.sizing.profiles import UseCaseProfile

KV_LADDER = ("f16", "q8_0")


@dataclass(frozen=True)
class Config:
    params: EngineParams
    accelerators: tuple[str, ...]
    label: str
    placement: str = "cpu"  # "full" (all layers on k accelerators), "partial" or "cpu"
    k: int = 0  # accelerators holding layers


def engine_configs(facts: ModelFacts, box: Box, profile: UseCaseProfile,
                   devices: tuple[BoxDevice, ...]) -> Iterator[Config]:
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
                split = tensor_split(devices, k)
                p = replace(base, n_gpu_layers=facts.n_layer + 1, tensor_split=split, cache_type_k=kv,
                            cache_type_v=kv, flash_attn="on" if kv != "f16" else "auto")
                yield Config(p, all_names, f"all layers on {k} x {devices[0].model}, KV {kv}", "full", k)
        # Partial offload: the last layers on the accelerators, the rest on the host.
        for kv in KV_LADDER:
            for ngl in _partial_layer_counts(facts, box, devices, base, kv):
                p = replace(base, n_gpu_layers=ngl, cache_type_k=kv, cache_type_v=kv,
                            tensor_split=tensor_split(devices, len(devices)),
                            flash_attn="on" if kv != "f16" else "auto")
                yield Config(p, all_names, f"{ngl} of {facts.n_layer + 1} layers on accelerators, KV {kv}",
                              "partial", len(devices))
        return
    for kv in KV_LADDER:
        p = replace(base, n_gpu_layers=0, cache_type_k=kv, cache_type_v=kv,
                    flash_attn="on" if kv != "f16" else "auto")
        if box.repack_ok and box.cpu_buffers.names:
            extra = box.cpu_buffers.describe()
            yield Config(p, (), f"CPU, KV {kv}, repack on ({extra})")
            yield Config(replace(p, mmap=False), (),
                          f"CPU, KV {kv}, repack on ({extra}) without mmap (no duplicate of repacked weights)")
        yield Config(replace(p, repack=False), (), f"CPU, KV {kv}, repack off")


def tensor_split(devices: tuple[BoxDevice, ...], k: int) -> tuple[float, ...]:
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
                tensor_split=tensor_split(devices, len(devices)))

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
