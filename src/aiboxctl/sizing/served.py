"""The plan's prediction re-estimated for the settings that actually run.

When the engine's self-test falls back (repack off after an AMX fault, or every risky option
off), it serves with other settings than the plan pinned. Memory and speed are estimated again
for those settings with the same models the planner used (:mod:`~aiboxctl.sizing.memory`,
:mod:`~aiboxctl.sizing.throughput`), on the same box, and the plan's figures are moved by the
difference: the plan's memory total may come from llama.cpp's dry run, which the estimate does
not repeat, and only what the changed settings change should move.

Repack off frees the extra-buffer copy (AMX, CPU_REPACK; :mod:`~aiboxctl.sizing.cpu_buffers`).
Its effect on speed is what :data:`~aiboxctl.sizing.throughput.REPACK_SPEED` says per buffer type,
measured where it could be (docs/planning.md, bench/repack_speed.py); a buffer type without a
measurement is said so in ``basis`` rather than left to look like a prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import Box
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.sizing.throughput import REPACK_SPEED, Throughput, estimate_throughput

# The plan's predicted figures (deploy/install.py ``_plan_facts``) and the Throughput field each is.
_SPEEDS = {"decode_tok_s": "single_stream_tok_s", "prefill_tok_s": "prefill_tok_s",
           "aggregate_tok_s": "aggregate_tok_s", "per_user_tok_s": "per_user_tok_s"}


@dataclass(frozen=True)
class ServedPrediction:
    """What the engine is predicted to do with the settings it serves (a self-test fallback)."""

    fallback: str  # the self-test step that runs: "repack-off", "safe", "cpu-only"
    changes: dict[str, Any]  # settings that differ from the plan's
    predicted: dict[str, Any]  # the plan's keys (decode_tok_s, prefill_tok_s, ..., memory_total_bytes)
    planned: dict[str, Any]  # the plan's figures, for comparison
    extra_buffers_freed_bytes: int  # the AMX / CPU_REPACK copy repack off does without
    basis: str  # one line: how it was re-estimated and how sure the speed part is
    factors: dict[str, float] = field(default_factory=dict)  # predicted / planned, per figure

    def to_dict(self) -> dict[str, Any]:
        return {"fallback": self.fallback, "changes": dict(self.changes), "predicted": dict(self.predicted),
                "planned": dict(self.planned), "extra_buffers_freed_bytes": self.extra_buffers_freed_bytes,
                "basis": self.basis, "factors": dict(self.factors)}


def _throughput(facts: ModelFacts, params: EngineParams, box: Box, accelerators: tuple[str, ...],
                active_params: float, streams: int, depth: int) -> tuple[Any, Throughput]:
    est = estimate_memory(facts, params, accelerators=accelerators, cpu=box.cpu_buffers)
    tp = estimate_throughput(facts, est, box.speeds(), active_params=active_params, streams=streams, depth=depth,
                             cpu=box.cpu_buffers)
    return est, tp


def served_prediction(facts: ModelFacts, planned: EngineSettings, changes: dict[str, Any],
                      planned_predicted: dict[str, Any], box: Box, *, fallback: str,
                      active_params: float | None = None) -> ServedPrediction:
    """The plan's ``planned_predicted`` figures for ``planned`` with ``changes`` applied.

    ``active_params``: parameters read per token (the catalog's; default: the file's weights at
    4.5 bits each, as bench/throughput_model.py takes them) — it only matters where the compute
    bound decides, and it is the same on both sides of the comparison."""
    served = type(planned).from_mapping({**planned.to_dict(), **changes}, source="the self-test fallback's settings")
    p_plan, p_served = EngineParams.of(planned), EngineParams.of(served)
    parallel = max(planned.parallel, 1)
    streams = int(planned_predicted.get("streams") or parallel)
    depth = (planned.n_ctx // parallel) // 2 if planned.n_ctx else 0  # as the planner: half a request's context
    accelerators = tuple(d.name for d in box.accelerators) if planned.n_gpu_layers else ()
    params = active_params or facts.weight_bytes * 8 / 4.5
    est_plan, tp_plan = _throughput(facts, p_plan, box, accelerators, params, streams, depth)
    est_served, tp_served = _throughput(facts, p_served, box, accelerators, params, streams, depth)

    predicted: dict[str, Any] = {"streams": streams}
    factors: dict[str, float] = {}
    for key, attr in _SPEEDS.items():
        before, after = getattr(tp_plan, attr), getattr(tp_served, attr)
        factor = after / before if before > 0 else 1.0
        factors[key] = round(factor, 4)
        value = planned_predicted.get(key)
        # The plan's figure moved by the model's change; the model's own figure when the plan has none.
        predicted[key] = round(value * factor, 2) if isinstance(value, (int, float)) and value > 0 else round(after, 2)
    mem_delta = est_served.total - est_plan.total
    total = planned_predicted.get("memory_total_bytes")
    predicted["memory_total_bytes"] = (int(total) + mem_delta) if isinstance(total, (int, float)) else est_served.total
    freed = sum(d.repack for d in est_plan.devices) - sum(d.repack for d in est_served.devices)
    return ServedPrediction(fallback=fallback, changes=dict(changes), predicted=predicted,
                            planned=dict(planned_predicted), extra_buffers_freed_bytes=max(freed, 0),
                            basis=_basis(box, p_plan, p_served, freed, factors), factors=factors)


def _basis(box: Box, before: EngineParams, after: EngineParams, freed: int, factors: dict[str, float]) -> str:
    changed = [k for k in ("repack", "flash_attn", "cache_type_k", "cache_type_v", "n_gpu_layers")
               if getattr(before, k) != getattr(after, k)]
    parts = [f"re-estimated for {', '.join(f'{k} {getattr(after, k)}' for k in changed) or 'the served settings'}"]
    if freed:
        parts.append(f"no extra-buffer copy ({freed / 2**20:,.0f} MiB less)")
    speed = ", ".join(f"{k.replace('_tok_s', '')} x{v:.2f}" for k, v in factors.items() if k != "per_user_tok_s")
    parts.append(f"speed {speed}")
    if before.repack and not after.repack:
        used = [b for b in box.cpu_buffers.names if b in REPACK_SPEED]
        unmeasured = [b for b in box.cpu_buffers.names if REPACK_SPEED.get(b) is None or REPACK_SPEED[b].measured_on is None]
        if used:
            parts.append("repack's speed effect " + "; ".join(f"{b}: {REPACK_SPEED[b].describe()}" for b in used))
        if unmeasured:
            parts.append(f"no measurement of repack's speed effect for {', '.join(unmeasured)}: taken as none")
    return "; ".join(parts)

