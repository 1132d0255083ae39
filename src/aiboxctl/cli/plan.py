"""``aiboxctl plan``: the best model and engine settings for a use case on a box."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt

if TYPE_CHECKING:
    from rich.console import Console

GiB = 1024**3

# The profile's sizing inputs, overridden on the command line (plan, install, pack; recorded in an
# install so `upgrade` plans with them again).
UsersOpt = Annotated[Optional[int], typer.Option(
    "--users", help="Concurrent users (parallel slots) instead of the profile's users.", show_default=False)]
TargetOpt = Annotated[Optional[float], typer.Option(
    "--target-tok-s", help="Decode speed each user should see (tok/s) instead of the profile's "
                           "target_tokens_per_s.", show_default=False)]
CtxOpt = Annotated[Optional[int], typer.Option(
    "--ctx", help="Context per request (tokens) instead of the profile's context_per_request.", show_default=False)]


def overrides(users: int | None, target_tok_s: float | None, ctx: int | None) -> dict[str, Any]:
    """The given sizing overrides as profile field names (nothing for the ones not given)."""
    given = {"users": users, "target_tokens_per_s": target_tok_s, "context_per_request": ctx}
    return {k: v for k, v in given.items() if v is not None}


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if abs(n) >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def _human(console: "Console", plan: Any) -> None:
    from rich.table import Table

    e = plan.engine.to_dict()
    tp = plan.throughput
    f = plan.file
    where = {"pypi": f"pypi:{f.package}", "local": "local file"}.get(f.source, f"{f.repo}")
    console.print(f"[bold]{plan.variant}[/bold] {plan.quant}  ({plan.family}, {plan.params_b:g}B, quality "
                  f"{plan.quality}, licence {plan.licence})")
    console.print(f"  file: {where} / {f.file}" + (f" (+{f.shards - 1} shards)" if f.shards > 1 else "")
                  + f", {_size(f.size)}" + ("" if f.verified else " (size unverified)"))
    if plan.local_path:
        console.print(f"  already on this box: {plan.local_path}")
    console.print(f"  for profile {plan.profile} on {plan.hardware}: {e['parallel']} slots x "
                  f"{e['n_ctx'] // max(e['parallel'], 1)} tokens (n_ctx {e['n_ctx']}, unified KV)")
    console.print(f"  engine: KV {e['cache_type_k']}/{e['cache_type_v']}, flash attention {e['flash_attn']}, "
                  f"GPU layers {e['n_gpu_layers']}" + (f", tensor split {e['tensor_split']}" if e['tensor_split'] else "")
                  + f", threads {e['threads']}, repack {'on' if e['repack'] else 'off'}, "
                  f"mmap {'on' if e['mmap'] else 'off'}, batch {e['n_batch']}/{e['n_ubatch']}")
    def fig(x: float, digits: int = 1) -> str:
        if not plan.estimated:
            return f"{x:.{digits}f}"
        lo, hi = plan.span(x)
        return f"~{x:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"

    console.print(f"  speed{' (ESTIMATED)' if plan.estimated else ''}: {fig(tp.per_user_tok_s)} of "
                  f"{plan.target_tokens_per_s:g} tok/s per user at {tp.streams} users, depth {tp.depth}; "
                  f"{fig(tp.aggregate_tok_s, 0)} tok/s aggregate, {fig(tp.single_stream_tok_s)} tok/s alone, "
                  f"prefill {fig(tp.prefill_tok_s, 0)} tok/s ({tp.bound}-bound)", markup=False)
    if plan.first_token_s is not None:
        console.print(f"  first token: {fig(plan.first_token_s)} s for a {plan.document_tokens}-token document "
                      f"(limit {plan.max_first_token_s:g} s)", markup=False)
    if plan.near_miss:
        console.print(f"  [yellow]near miss[/yellow]: {plan.near_miss} (within the profile's tolerance; "
                      "the next choice costs more quality)")
    if plan.estimated:
        console.print(f"  estimated: {plan.estimated}", markup=False)
    table = Table(title=f"memory (weights/KV from the {plan.facts_source}, compute buffer from the "
                        f"{plan.compute_source})", title_justify="left")
    for col in ("device", "weights", "KV cache", "compute", "output", "repack", "overhead", "total", "budget",
                "headroom"):
        table.add_column(col, justify="left" if col == "device" else "right")
    budgets = {d.device: d for d in plan.devices}
    for d in plan.memory.devices:
        b = budgets.get(d.device)
        table.add_row(d.device, _size(d.weights), _size(d.kv_cache + d.recurrent), _size(d.compute), _size(d.output),
                      _size(d.repack), _size(d.overhead), _size(d.total), _size(b.budget) if b else "-",
                      _size(b.headroom) if b else "-")
    console.print(table)
    for c in plan.companions:  # the knowledge-base engines beside the chat model
        ce = c.engine.to_dict()
        cf = c.file
        console.print(f"+ {c.role}: [bold]{c.variant}[/bold] {c.quant} ({cf.repo or cf.package} / {cf.file}, "
                      f"{_size(cf.size)}{'' if cf.verified else ' unverified'}): {_size(c.memory.total)} of host "
                      f"memory, {ce['parallel']} inputs x {ce['n_ctx']} tokens per decode")
    for inst in plan.instances if plan.multi_instance or plan.idle else ():  # how the box is filled
        where = ", ".join("+".join(g) or "CPU" for g in inst.device_groups)
        speed = f"; {inst.per_user_tok_s:.1f} tok/s per user at {inst.streams_per_replica} users per replica" \
            if inst.per_user_tok_s is not None and inst.replicas > 1 else ""
        console.print(f"instance {inst.name} ({inst.role}): {inst.variant} {inst.quant} x {inst.replicas} on "
                      f"{where}{speed}", markup=False)
    for idle in plan.idle:
        console.print(f"idle {f'{idle.count} x ' if idle.count > 1 else ''}{idle.device}: {idle.why}", markup=False)
    shown = [r for r in plan.rejected if r.kind != "preference"]
    if shown:
        rej = Table(title=f"rejected alternatives ({len(shown)}; {len(plan.rejected) - len(shown)} lower-preference "
                          "ones not tried)", title_justify="left")
        rej.add_column("variant")
        rej.add_column("quant")
        rej.add_column("why not")
        for r in shown:
            rej.add_row(r.variant, r.quant, r.reason)
        console.print(rej)
    for n in plan.notes:
        console.print(f"note: {n}", markup=False)


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_cmd(
        profile: Annotated[str, typer.Option("--profile", "-p",
                                             help="Use-case profile: demo, gov-office, finance, healthcare, edge, dev, "
                                                  "or a YAML file of the same shape.")],
        hardware: Annotated[Optional[str], typer.Option(
            "--hardware", help="Plan for a hardware profile (cpu-32g, rtx4090, ascend-910b-x8, …, or a YAML file) "
                               "instead of this box.")] = None,
        model: Annotated[Optional[str], typer.Option(
            "--model", "-m", help="A catalog variant (qwen3-8b), VARIANT:QUANT (qwen3-8b:Q4_K_M), family (qwen3) "
                             "or a .gguf file instead of the profile's choice.")] = None,
        users: UsersOpt = None,
        target_tok_s: TargetOpt = None,
        ctx: CtxOpt = None,
        measure: Annotated[bool, typer.Option(
            "--measure", help="Measure this box's memory bandwidth first (≈2 s) when it is not known.")] = False,
        json_: JsonOpt = False,
    ) -> None:
        """Choose the model, quantization and engine settings that fit this box (or a hardware profile) and
        meet the profile's per-user speed; print the memory breakdown, predicted tok/s and every rejected
        alternative. Exit 3 when nothing fits, with the closest option and what would make it fit."""
        from aiboxctl.hub.local import local_model_file
        from aiboxctl.sizing.planner import plan
        from aiboxctl.sizing.profiles import load_use_case

        if json_:
            output.STATE.json = True
        use_case = load_use_case(profile).with_overrides(**overrides(users, target_tok_s, ctx))
        if hardware:
            from aiboxctl.sizing.hardware_profiles import load_hardware_profile

            box: Any = load_hardware_profile(hardware)
        else:
            from aiboxctl.hardware.probe import probe_box

            output.note("probing this box …")
            box = probe_box(measure_bandwidth=measure)
        result = plan(use_case, box, model, local_file=local_model_file)
        output.emit(result, _human)
