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
* on devices whose chip runs its weight type's matmuls itself (each backend's supports_op per
  chip generation, :mod:`aiboxctl.hardware.backends`: a 310P runs only F16, a 910B F16, BF16,
  Q8_0 and Q4_0); where no file of a variant runs there, it is planned on the CPU and says why.

Every candidate that lost says why. When none fits, :class:`~aiboxctl.errors.DoesNotFit`
carries the closest option and what would make it fit.

This module is the search. The box is :mod:`~aiboxctl.sizing.box`, the candidates and their
order :mod:`~aiboxctl.sizing.candidates`, the configurations tried :mod:`~aiboxctl.sizing.configs`,
the fit and speed test :mod:`~aiboxctl.sizing.fit`, the result :mod:`~aiboxctl.sizing.plan_result`
and the does-not-fit advice :mod:`~aiboxctl.sizing.advice`. Which files are on this box already
is the caller's knowledge (the model store lives above sizing): it passes ``local_file``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.hardware.backends import device_weight_problem
from aiboxctl.models.catalog import Catalog, QuantFile, Variant, facts_for, load_catalog
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.advice import does_not_fit
from aiboxctl.sizing.box import Box, BoxDevice, as_box
from aiboxctl.sizing.candidates import candidates, degraded, family_order, preference_order
from aiboxctl.sizing.configs import Config, engine_configs
from aiboxctl.sizing.fill import fill_box
from aiboxctl.sizing.fit import Outcome, cannot_fit, check, judge
from aiboxctl.sizing.hardware_profiles import HardwareProfile
from aiboxctl.sizing.knowledge_base import plan_companions
from aiboxctl.sizing.memory import MemoryEstimate
from aiboxctl.sizing.plan_result import DeviceUse, Plan, Rejected
from aiboxctl.sizing.profiles import UseCaseProfile

# How far an assumed decode efficiency may be off either way: measured η for one device class
# spans 0.31–0.53 (H100, memory-model.md §6.3), ±40 % around an assumed midpoint.
ASSUMED_ETA_SPREAD = 0.4

# Finds a catalog file on this box already (the model store, an installed PyPI model): the GGUF
# (the first shard of a split file), or None.
LocalFile = Callable[[Variant, QuantFile], Path | None]


def _header_facts(path: Path, name: str) -> ModelFacts | None:
    from aiboxctl.models.gguf import GGUFError, read_header

    try:
        return replace(ModelFacts.from_header(read_header(path)), name=name)
    except (GGUFError, OSError):
        return None


def _backend_ok(f: QuantFile, devices: tuple[BoxDevice, ...], experts: bool = False) -> str | None:
    """Why the devices would run this file's matmuls on the CPU (its main weight type, and for a
    MoE model its experts', by each chip's supports_op: hardware/backends.py); None when they run
    them. A plan never puts weights on such a device."""
    for d in devices:
        why = device_weight_problem(d.backend, d.chip, f.main_type, False) or \
            (device_weight_problem(d.backend, d.chip, f.main_type, True) if experts else None)
        if why:
            stored = f"this file is {f.quant}" if f.quant == f.main_type else \
                f"{f.quant} stores most weights as {f.main_type}"
            return f"{why}; {stored}"
    return None


def plan(profile: UseCaseProfile, hardware: Box | HardwareProfile | Any, model: str | None = None, *,
         quant: str | None = None, catalog: Catalog | None = None, exact: bool | None = None,
         local_file: LocalFile | None = None) -> Plan:
    """Plan ``profile`` on ``hardware`` (a Box, a HardwareProfile or a HardwareReport).

    ``model``: a catalog variant or family that overrides the profile's choice
    (``VARIANT:QUANT`` pins the quantization too, as does ``quant``). ``exact``: use
    llama.cpp's dry run for the compute buffer when the chosen file is local (default: when
    planning for this box). ``local_file``: where a catalog file is on this box already, if it
    is (its header gives exact facts); without it only a .gguf given by path is local.
    """
    if model and ":" in model:
        model, quant = model.split(":", 1)
    catalog = catalog or load_catalog()
    box = as_box(hardware)
    if exact is None:
        exact = box.is_this_box
    variants, rejected = candidates(profile, catalog, model)
    families = family_order(profile, catalog, model)
    devices = box.accelerators
    notes = list(box.notes) + [f"accelerator left idle: {s.describe()}" for s in box.idle_accelerators]
    outcomes: list[tuple[Variant, QuantFile, Outcome, ModelFacts]] = []
    chosen: tuple[Variant, QuantFile, Outcome, ModelFacts, Path | None, str] | None = None
    chosen_why: str | None = None
    for v, f in preference_order(variants, families):
        if quant and f.quant.upper() != quant.upper():
            continue
        experts = bool(v.architecture.expert_count)
        why = _backend_ok(f, devices, experts)
        if why and any(_backend_ok(g, devices, experts) is None for g in v.files):
            rejected.append(Rejected(v.name, f.quant, why, "backend"))
            continue
        if chosen is not None and (chosen[2].meets or (chosen[0].name, degraded(chosen[0], chosen[1]))
                                   != (v.name, degraded(v, f))):
            rejected.append(Rejected(v.name, f.quant, f"not tried: {chosen[0].name} {chosen[1].quant} comes first "
                                     "(quality tier, quantization, family order, size)", "preference"))
            continue
        # A variant with no file the accelerators can run (the PyPI demo models) runs on the CPU.
        if why:
            why += (f"; no file of {v.name} has a weight type the devices run (the catalog has "
                    f"{', '.join(g.quant for g in v.files)})")
        use = () if why else devices
        ctx_train = v.architecture.context_length
        if profile.context_per_request > ctx_train:
            rejected.append(Rejected(v.name, f.quant, f"trained for {ctx_train} tokens of context; the profile needs "
                                     f"{profile.context_per_request} per request", "context"))
            continue
        local = Path(f.file) if f.source == "local" else local_file(v, f) if local_file else None
        facts = (_header_facts(local, v.name) if local else None) or facts_for(v, f)
        best: Outcome | None = None
        slow_full: set[str] = set()  # KV types whose full offload fitted but was too slow
        for cfg in engine_configs(facts, box, profile, use):
            if cannot_fit(facts, cfg, box, use):
                continue
            # Spreading layers over more devices, or offloading fewer, never decodes faster.
            if cfg.placement == "partial" and slow_full or cfg.params.cache_type_k in slow_full:
                continue
            out = check(facts, cfg, box, profile, v.active * 1e9, use)
            if out.meets:
                best = out
                break
            if out.ok:
                # A near miss is kept while a later configuration (a q8_0 KV cache reads less)
                # might reach the targets in full.
                if best is None or not best.ok:
                    best = out
                continue
            if out.kind == "speed" and cfg.placement == "full":
                slow_full.add(cfg.params.cache_type_k)
            if best is None or (not best.ok and _closer(out, best)):
                best = out
        if best is None:  # every configuration was ruled out by the weights alone
            cfg = next(iter(engine_configs(facts, box, profile, use)))
            best = check(facts, cfg, box, profile, v.active * 1e9, use)
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
            rejudged = judge(exact_est, facts, best.config, box, profile, v.active * 1e9, use)
            rejudged.devices = use
            if not rejudged.ok:
                rejudged.reason = f"by llama.cpp's dry run: {rejudged.reason}"
            best = rejudged
        outcomes.append((v, f, best, facts))
        if best.ok and chosen is not None:
            # Same variant and quality of quantization: a full meet replaces a near miss.
            if best.meets:
                rejected.append(Rejected(chosen[0].name, chosen[1].quant, f"only nearly reaches the targets "
                                         f"({chosen[2].near_miss}); {v.name} {f.quant} reaches them with a "
                                         "quantization of the same quality class", "speed"))
                chosen = (v, f, best, facts, local, compute_source)
                chosen_why = why
            else:
                rejected.append(Rejected(v.name, f.quant, f"also only nearly reaches the targets ({best.near_miss}); "
                                         f"{chosen[0].name} {chosen[1].quant} keeps more bits", "preference"))
        elif best.ok:
            chosen = (v, f, best, facts, local, compute_source)
            chosen_why = why
        else:
            rejected.append(Rejected(v.name, f.quant, best.reason, best.kind, best.needed))
    if chosen is None:
        does_not_fit(profile, box, outcomes, rejected, catalog, notes)
    v, f, out, facts, local, compute_source = chosen
    if chosen_why:
        notes.append(f"runs on the CPU: {chosen_why}")
    if out.near_miss:
        notes.insert(0, f"near miss: {out.near_miss} — within the profile's tolerance of "
                        f"{profile.speed_tolerance:.0%}, kept over a lower-quality choice (docs/planning.md)")
    assert out.estimate is not None and out.throughput is not None and out.config is not None
    result = _make_plan(profile, box, v, f, out, facts, local, out.estimate, compute_source, rejected, notes, catalog)
    if any(role != "chat" for role in profile.roles):
        host = result.devices[0]
        companions, kb_notes = plan_companions(profile, catalog, host.headroom, threads=result.engine.threads,
                                               cpu=box.cpu_buffers, repack=box.repack_ok)
        result = replace(result, companions=companions, notes=result.notes + tuple(kb_notes))
    filled = fill_box(profile=profile, box=box, catalog=catalog, variant=v.name, quant=f.quant, file=f, facts=facts,
                      engine=result.engine, estimate=out.estimate, placement=out.config.placement, k=out.config.k,
                      used=out.devices, active_params=v.active * 1e9, companions=result.companions,
                      cpu_why=chosen_why, backend_check=_backend_ok)
    return replace(result, instances=filled.instances, idle=filled.idle, notes=result.notes + filled.notes)


def _closer(a: Outcome, b: Outcome) -> bool:
    """Is outcome a closer to working than b? Memory-fitting beats not; then less overshoot/faster."""
    rank = {"speed": 0, "ttft": 0, "memory": 1}
    if rank.get(a.kind, 2) != rank.get(b.kind, 2):
        return rank.get(a.kind, 2) < rank.get(b.kind, 2)
    if a.kind == "speed":
        return (a.throughput.per_user_tok_s if a.throughput else 0) > (b.throughput.per_user_tok_s if b.throughput else 0)
    return a.overshoot < b.overshoot


def _with_dry_run(path: Path, cfg: Config, est: MemoryEstimate) -> tuple[MemoryEstimate, str, str | None]:
    from aiboxctl.sizing.dryrun import DryRunFailed, oracle

    try:
        res = oracle(path, cfg.params, mode="dry", timeout=120)
    except DryRunFailed as exc:
        return est, "model", f"llama.cpp dry run failed ({exc.message}); compute buffer from the model"
    host = res.host
    devices = list(est.devices)
    devices[0] = replace(devices[0], compute=max(host.compute, 0), output=max(host.output, devices[0].output))
    return replace(est, devices=tuple(devices)), "dry run", None


def _engine_settings(profile: UseCaseProfile, box: Box, v: Variant, cfg: Config) -> EngineSettings:
    threads = box.cpu_cores if box.cpu_cores else None
    return cfg.params.settings(model_name=v.name, host=profile.security.bind, port=profile.service.port,
                               threads=threads, threads_batch=threads,
                               audit_content=profile.security.audit_content)


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
    used = set(out.throughput.per_device)
    assumed = sorted({f"{d.model} ({d.backend})" for d in out.devices if d.name in used and d.eta_assumed})
    estimated = (f"the decode efficiency of {', '.join(assumed)} is an assumption, not a measurement "
                 "(aiboxctl bench measures it)") if assumed else ""
    return Plan(
        profile=profile.name, hardware=box.name, variant=v.name, family=v.family, quant=f.quant,
        quality=v.quality, params_b=v.params, licence=catalog.licence_of(v), file=f,
        local_path=str(local) if local else None, facts_source="header" if facts.source == "header" else "catalog",
        compute_source=compute_source, engine=_engine_settings(profile, box, v, cfg),
        security={"bind": profile.security.bind, "api_key": profile.security.api_key,
                  "audit_log": profile.security.audit_log, "audit_content": profile.security.audit_content,
                  "service_user": profile.service.user},
        chat_template=tmpl_name, memory=estimate, devices=uses, throughput=out.throughput,
        target_tokens_per_s=profile.target_tokens_per_s, rejected=tuple(rejected), notes=tuple(notes),
        near_miss=out.near_miss, first_token_s=out.first_token_s, document_tokens=profile.document_tokens,
        max_first_token_s=profile.max_first_token_s if profile.document_tokens else None,
        estimated=estimated, speed_range=(1 - ASSUMED_ETA_SPREAD, 1 + ASSUMED_ETA_SPREAD) if estimated else (1.0, 1.0),
    )
