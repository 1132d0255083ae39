"""``aiboxctl estimate FILE|URL``: memory per device for given llama.cpp parameters."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.inspect import ModelArg
from aiboxctl.cli.options import JsonOpt

OnOff = ("on", "off")


def register(app: typer.Typer) -> None:
    app.command("estimate")(estimate)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def _human(console: Any, r: dict) -> None:
    from rich import box
    from rich.table import Table

    c = r["context"]
    console.print(f"{r['model'] or r['source']}: n_ctx {c['n_ctx']} ({c['n_stream']} stream(s) × {c['n_ctx_seq']} "
                  f"cells{', SWA layers ' + str(c['swa_cells']) + ' cells' if c['swa_cells'] != c['n_ctx_seq'] else ''}), "
                  f"{c['n_seq']} slot(s), ubatch {c['n_ubatch']}, flash attention "
                  f"{'on' if c['flash_attn'] else 'off'} — {r['method']}")
    cols = {"weights": "weights", "kv_cache": "KV", "recurrent": "state", "compute": "compute",
            "output": "output", "repack": "repack", "overhead": "fixed", "total": "total"}
    t = Table(title="MiB per device", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    t.add_column("device")
    for header in cols.values():
        t.add_column(header, justify="right")
    for name, d in r["devices"].items():
        t.add_row(name, *(_mib(d[col]) for col in cols))
    console.print(t)
    for n in r.get("notes", []):
        console.print(f"note: {n}")


def estimate(
    model: ModelArg,
    ctx: Annotated[int, typer.Option("--ctx", min=0, help="Total KV cells over all slots (0: training context).")] = 4096,
    parallel: Annotated[int, typer.Option("--parallel", min=1, help="Parallel slots (sequences).")] = 1,
    ubatch: Annotated[int, typer.Option("--ubatch", min=1, help="Physical batch size (n_ubatch).")] = 512,
    cache_type_k: Annotated[str, typer.Option("--cache-type-k", help="K cache type: f16, q8_0, q4_0, …")] = "f16",
    cache_type_v: Annotated[str, typer.Option("--cache-type-v", help="V cache type (quantized V needs flash attention).")] = "f16",
    flash_attn: Annotated[str, typer.Option("--flash-attn", help="on|off (auto: on).")] = "auto",
    swa_full: Annotated[str, typer.Option("--swa-full", help="on|off: full-size cache for sliding-window layers.")] = "off",
    gpu_layers: Annotated[int, typer.Option("--gpu-layers", help="Layers on the accelerator (the output layer counts; -1: all).")] = 0,
    exact: Annotated[bool, typer.Option("--exact", help="Ask llama.cpp: a dry run that allocates nothing (local file only).")] = False,
    json_: JsonOpt = False,
) -> int:
    """Predict host and accelerator memory (weights, KV cache, compute, output) before loading."""
    from aiboxctl.errors import UsageError

    if flash_attn not in ("auto", *OnOff):
        raise UsageError(f"--flash-attn must be on or off, not {flash_attn!r}", hint="aiboxctl estimate --help")
    if swa_full not in OnOff:
        raise UsageError(f"--swa-full must be on or off, not {swa_full!r}", hint="aiboxctl estimate --help")
    result = run_estimate(model, ctx=ctx, parallel=parallel, ubatch=ubatch, cache_type_k=cache_type_k,
                          cache_type_v=cache_type_v, flash_attn=flash_attn, swa_full=swa_full == "on",
                          gpu_layers=gpu_layers, exact=exact)
    return output.emit(result, _human)


def run_estimate(model: str, *, ctx: int, parallel: int, ubatch: int, cache_type_k: str, cache_type_v: str,
                 flash_attn: str, swa_full: bool, gpu_layers: int, exact: bool,
                 accelerators: Optional[list[str]] = None) -> dict:
    from aiboxctl.models.gguf import read_header
    from aiboxctl.models.source import is_url
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.sizing.memory import EngineParams, estimate_memory

    if exact and is_url(model):
        from aiboxctl.errors import UsageError

        raise UsageError("--exact runs llama.cpp on the file and needs it locally",
                         hint="aiboxctl pull, then aiboxctl estimate FILE --exact")
    header = read_header(model)
    facts = ModelFacts.from_header(header)
    params = EngineParams(n_ctx=ctx, parallel=parallel, n_batch=max(512, ubatch), n_ubatch=ubatch,
                          cache_type_k=cache_type_k.lower(), cache_type_v=cache_type_v.lower(),
                          flash_attn=flash_attn, swa_full=swa_full, n_gpu_layers=gpu_layers)
    dry = None
    if exact:
        from dataclasses import replace

        from aiboxctl.sizing.dryrun import oracle, with_dry_run

        dry = oracle(model, params, mode="dry")
        # Name the accelerators as llama.cpp found them (CUDA0, ROCm0, CANN0, …); with none,
        # llama.cpp keeps every layer on the host, and so does the estimate.
        accelerators = accelerators or [d.device for d in dry.devices if d.device != "host"]
        if gpu_layers and not accelerators:
            output.warn("llama.cpp found no accelerator here: every layer stays on the host")
            params = replace(params, n_gpu_layers=0)
    from aiboxctl.sizing.cpu_buffers import this_cpu

    # this CPU's extra buffer types (AMX, CPU_REPACK) decide which weights llama.cpp copies
    est = estimate_memory(facts, params, accelerators=accelerators or (), cpu=this_cpu())
    data: dict = {"source": str(model),
                  "method": "memory model (header arithmetic; compute buffer calibrated)"}
    if dry is not None:
        data["model_estimate"] = {d.device: d.to_dict() for d in est.devices}
        data["dry_run"] = dry.to_dict()
        est = with_dry_run(est, dry)
        data["method"] = "llama.cpp dry run (compute and output buffers measured; weights and KV from the header)"
    data = {**est.to_dict(), **data}
    return data
