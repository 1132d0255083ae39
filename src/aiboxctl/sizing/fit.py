"""Does one engine configuration fit the box (memory per device within its budget) and give
each of the profile's users the speed it asks for? An :class:`Outcome` says, with the figures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import Box, BoxDevice
from aiboxctl.sizing.configs import Config
from aiboxctl.sizing.fill import copies_that_fit
from aiboxctl.sizing.memory import MemoryEstimate, estimate_memory
from aiboxctl.sizing.profiles import UseCaseProfile
from aiboxctl.sizing.throughput import Throughput, estimate_throughput

GiB = 1024**3
MiB = 1024**2


@dataclass
class Outcome:
    ok: bool
    reason: str = ""
    kind: str = ""
    estimate: MemoryEstimate | None = None
    throughput: Throughput | None = None
    config: Config | None = None
    overshoot: float = 0.0  # worst device: needed / budget
    needed: dict = field(default_factory=dict)
    devices: tuple = ()  # the accelerators this outcome used
    near_miss: str = ""  # ok, but short of a target within the profile's tolerance: by how much
    first_token_s: float | None = None  # prefill time of the profile's typical document, alone

    @property
    def meets(self) -> bool:
        """Fits and reaches every target in full (not only within the tolerance)."""
        return self.ok and not self.near_miss


def cannot_fit(facts: ModelFacts, cfg: Config, box: Box, devices: tuple[BoxDevice, ...]) -> bool:
    """A quick lower bound: the weights alone exceed the memory the placement may use."""
    layers_and_output = facts.weight_bytes - facts.input_bytes
    if cfg.placement == "full":
        return layers_and_output > sum(d.budget for d in devices[:cfg.k])
    if cfg.placement == "cpu":
        return facts.weight_bytes > box.ram_budget
    return False


def check(facts: ModelFacts, cfg: Config, box: Box, profile: UseCaseProfile, active_params: float,
           devices: tuple[BoxDevice, ...]) -> Outcome:
    est = estimate_memory(facts, cfg.params, accelerators=cfg.accelerators, cpu=box.cpu_buffers)
    return judge(est, facts, cfg, box, profile, active_params, devices)


def judge(est: MemoryEstimate, facts: ModelFacts, cfg: Config, box: Box, profile: UseCaseProfile,
           active_params: float, devices: tuple[BoxDevice, ...]) -> Outcome:
    budgets = [box.ram_budget, *(d.budget for d in devices)]
    needed = {}
    worst = 0.0
    over = []
    for dm, budget in zip(est.devices, budgets):
        needed[dm.device] = {"needed": dm.total, "budget": budget}
        ratio = dm.total / max(budget, 1)
        worst = max(worst, ratio)
        if dm.total > budget:
            over.append(f"{dm.device} needs {gib(dm.total)} of {gib(budget)}")
    # Copies in the search: a configuration with all layers on k of N devices is judged with the
    # users spread over the copies the box holds (fill.py makes them), so a bigger model that
    # needs two copies to reach the target competes with a smaller one on one device.
    copies = copies_that_fit(est, devices, cfg.k, profile.users) if cfg.placement == "full" and devices else 1
    streams = math.ceil(max(profile.users, 1) / copies)
    # Speed too when memory fails: "more RAM would fit" must also say whether it would be fast enough.
    tp = estimate_throughput(facts, est, box.speeds(devices), active_params=active_params, streams=streams,
                             depth=profile.context_per_request // 2, cpu=box.cpu_buffers)
    if over:
        return Outcome(False, "does not fit: " + "; ".join(over), "memory", est, tp, cfg, worst, needed)
    tol = profile.speed_tolerance
    target = profile.target_tokens_per_s
    ttft = profile.document_tokens / tp.prefill_tok_s if profile.document_tokens and tp.prefill_tok_s > 0 else None
    if tp.per_user_tok_s < target * (1 - tol):
        return Outcome(False, f"too slow: {tp.per_user_tok_s:.1f} of {target:g} tok/s per user at {profile.users} "
                              f"users{_spread(copies, streams)} ({cfg.label})", "speed", est, tp, cfg, worst, needed,
                       first_token_s=ttft)
    if ttft is not None and ttft > profile.max_first_token_s * (1 + tol):
        return Outcome(False, f"first token too late: {ttft:.0f} s to read a {profile.document_tokens}-token document "
                              f"(prefill ~{tp.prefill_tok_s:.0f} tok/s; the profile allows "
                              f"{profile.max_first_token_s:g} s) ({cfg.label})", "ttft", est, tp, cfg, worst, needed,
                       first_token_s=ttft)
    short = []
    if tp.per_user_tok_s < target:
        short.append(f"{tp.per_user_tok_s:.1f} of {target:g} tok/s per user at {profile.users} users"
                     f"{_spread(copies, streams)}")
    if ttft is not None and ttft > profile.max_first_token_s:
        short.append(f"first token after {ttft:.0f} s of {profile.max_first_token_s:g} s for a "
                     f"{profile.document_tokens}-token document")
    return Outcome(True, "", "", est, tp, cfg, worst, needed, near_miss="; ".join(short), first_token_s=ttft)


def _spread(copies: int, streams: int) -> str:
    return f" over {copies} copies ({streams} each)" if copies > 1 else ""


def gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"
