"""``aiboxctl bench``: measure the running service and compare with the plan's predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.chat import KeyOpt, UrlOpt
from aiboxctl.cli.options import JsonOpt, RootOpt


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


def _fmt(v: float | None, unit: str = "") -> str:
    return "—" if v is None else f"{v:.1f}{unit}"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


ROLES = ("chat", "embedding", "rerank")


def bench(
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", help="Concurrent streams (default: the service's slots).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens per answer.")] = 64,
    runs: Annotated[int, typer.Option("--runs", help="Single-stream runs (median); embedding/rerank requests (median).")] = 2,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="About how long the single-stream prompt is (prefill).")] = 320,
    role: Annotated[Optional[list[str]], typer.Option("--role", help="Measure only models of this role (chat, embedding, rerank; repeatable). Default: every model served.")] = None,
    embed_batch: Annotated[int, typer.Option("--embed-batch", help="Passages per embeddings request.")] = 16,
    rerank_docs: Annotated[int, typer.Option("--rerank-docs", help="Documents per rerank request (one query).")] = 50,
    engine_config: Annotated[Optional[list[Path]], typer.Option("--engine-config", help="engine.yaml of an embedding/rerank engine reached by --url: its prediction (repeatable; an installed box's are read from the install).")] = None,
    root: RootOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    json_: JsonOpt = False,
) -> int:
    """TTFT, prefill and decode tok/s of one stream, aggregate tok/s at N streams; embeddings texts/s and tokens/s; rerank latency (1 query x 50 documents); each as a ratio to the plan's prediction."""
    from aiboxctl.deploy.endpoint import endpoint_from_install
    from aiboxctl.client.bench import PooledOnlyResult, run_bench, run_pooled_bench, served_models
    from aiboxctl.deploy.manifest import load_manifest
    from aiboxctl.deploy.spec import install_layout
    from aiboxctl.errors import UsageError

    wanted = set(role or ROLES)
    unknown = wanted - set(ROLES)
    if unknown:
        raise UsageError(f"--role must be one of {', '.join(ROLES)} (got {', '.join(sorted(unknown))})")
    endpoint = endpoint_from_install(root, url=url, api_key=api_key)
    manifest = load_manifest(install_layout(root)) if url is None else None
    spec = manifest.spec if manifest else {}
    served = served_models(endpoint)
    pooled_models = [(m, r) for m, r in served if r in ("embedding", "rerank") and r in wanted]
    chat_served = any(r == "chat" for _, r in served)
    configs = _pooled_configs(root if url is None else None, engine_config or [])
    predictors = _predictors(configs, [m for m, _ in pooled_models])
    pooled = []
    for model, r in pooled_models:
        output.note(f"benchmarking {r} model {model} at {endpoint.url}: "
                    + (f"{embed_batch} passages per request" if r == "embedding" else f"1 query x {rerank_docs} documents"))
        pooled.append(run_pooled_bench(endpoint, model, r, batch=embed_batch, documents=rerank_docs,
                                       rounds=max(runs, 1), predict=predictors.get(model)))
    if "chat" in wanted and chat_served:
        slots = int((spec.get("engine") or {}).get("parallel") or 4)
        output.note(f"benchmarking {endpoint.url} ({endpoint.model or 'model'}): 1 stream × {runs}, then {concurrency or slots} streams")
        result: Any = run_bench(endpoint, concurrency=concurrency or slots, max_tokens=max_tokens, runs=runs,
                                prompt_tokens=prompt_tokens,
                                predicted=spec.get("predicted") or {}, served=manifest.served if manifest else None)
        from dataclasses import replace

        result = replace(result, pooled=tuple(pooled))
    else:
        if not pooled:
            raise UsageError(f"{endpoint.url} serves no model of the role(s) asked for ({', '.join(sorted(wanted))}); "
                             f"it serves: {', '.join(f'{m} ({r})' for m, r in served) or 'nothing'}")
        result = PooledOnlyResult(endpoint.url, tuple(pooled))

    def human(console: Any, r: Any) -> None:
        from rich.table import Table

        if hasattr(r, "ttft_s"):
            _chat_table(console, r, Table)
        if r.pooled:
            _pooled_table(console, r.pooled, Table)
        for note in r.notes:
            console.print(f"note: {note}", markup=False)

    return output.emit(result, human)


def _pooled_configs(root: Any, files: list[Path]) -> list[Any]:
    """The pooled engines' configurations, read as the engine reads them (its defaults, a relative
    model path against the file's folder): the installed set's (engines/*.yaml) and the files
    given with --engine-config."""
    from aiboxctl.deploy.instances import engines_dir, instance_names, is_multi
    from aiboxctl.deploy.spec import install_layout
    from aiboxctl.engine.config import load_engine_config

    paths = list(files)
    if root is not None or not files:
        layout = install_layout(root)
        if is_multi(layout):
            paths += [engines_dir(layout) / f"{name}.yaml" for name in instance_names(layout)]
    configs = [load_engine_config(p) for p in paths]
    return [c for c in configs if c.role in ("embedding", "rerank")]


def _predictors(configs: list[Any], models: list[str]) -> dict[str, Any]:
    if not configs or not models:
        return {}
    from aiboxctl.hardware.probe import probe_box
    from aiboxctl.sizing.box import as_box
    from aiboxctl.sizing.pooled_speed import predictor_for

    box = as_box(probe_box())
    out = {}
    for cfg in configs:
        if cfg.served_name in models and cfg.served_name not in out:
            out[cfg.served_name] = predictor_for(cfg, box)
    return out


def _chat_table(console: Any, r: Any, Table: Any) -> None:
    t = Table(title=f"aibox bench — {r.model} at {r.endpoint}")
    predicted_col = "plan predicted" if r.predicted_for == "plan" else f"predicted ({r.predicted_for})"
    for col in ("metric", "measured", predicted_col, "ratio"):
        t.add_column(col, justify="right" if col != "metric" else "left")
    p = r.predicted
    rows = [
        ("time to first token", _fmt(r.ttft_s * 1000, " ms"), "", ""),
        (f"prefill ({r.prompt_tokens} tok prompt)", _fmt(r.prefill_tok_s, " tok/s"),
         _fmt(p.get("prefill_tok_s"), " tok/s") if p.get("prefill_tok_s") else "—", _ratio(r.ratio["prefill"])),
        ("decode, 1 stream", _fmt(r.decode_tok_s, " tok/s"),
         _fmt(p.get("decode_tok_s"), " tok/s") if p.get("decode_tok_s") else "—", _ratio(r.ratio["decode"])),
        (f"decode, {r.concurrency} streams (aggregate)", _fmt(r.aggregate_tok_s, " tok/s"),
         _fmt(p.get("aggregate_tok_s"), " tok/s") if p.get("aggregate_tok_s") else "—", _ratio(r.ratio["aggregate"])),
        ("  per stream", _fmt(r.per_stream_tok_s, " tok/s"), "", ""),
    ]
    for row in rows:
        t.add_row(*row)
    console.print(t)


def _pooled_table(console: Any, pooled: Any, Table: Any) -> None:
    t = Table(title="embedding and rerank models")
    for col in ("model", "metric", "measured", "predicted", "ratio"):
        t.add_column(col, justify="left" if col in ("model", "metric") else "right")
    for b in pooled:
        p = b.predicted
        if b.role == "embedding":
            t.add_row(b.model, f"texts/s ({b.batch} per request, {b.input_tokens:g} tok each)", _fmt(b.texts_per_s),
                      _fmt(p.get("texts_per_s")), _ratio(b.ratio.get("texts_per_s")))
            t.add_row("", "tokens/s", _fmt(b.tokens_per_s), _fmt(p.get("tokens_per_s")),
                      _ratio(b.ratio.get("tokens_per_s")))
        else:
            t.add_row(b.model, f"rerank latency (1 query x {b.batch} documents)", _fmt(b.seconds * 1000, " ms"),
                      _fmt(p["latency_s"] * 1000, " ms") if p.get("latency_s") else "—", _ratio(b.ratio.get("latency")))
    console.print(t)
    for b in pooled:
        for note in b.notes:
            console.print(f"note: {b.model}: {note}", markup=False)
