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
    given = _given_configs(engine_config or [])  # a bad argument fails before anything is measured
    endpoint = endpoint_from_install(root, url=url, api_key=api_key)
    manifest = load_manifest(install_layout(root)) if url is None else None
    spec = manifest.spec if manifest else {}
    served = served_models(endpoint)
    pooled_models = [(m, r) for m, r in served if r in POOLED and r in wanted]
    chat_served = any(r == "chat" for _, r in served)
    # the installed engines' configurations: those of this box (--root), also behind --url without --engine-config
    layout = install_layout(root) if url is None or not given else None
    predictors, why = _predictions([m for m, _ in pooled_models], given, layout)
    notes = _unused_config_notes(given, {m for m, _ in served}, endpoint.url)
    pooled = []
    for model, r in pooled_models:
        output.note(f"benchmarking {r} model {model} at {endpoint.url}: "
                    + (f"{embed_batch} passages per request" if r == "embedding" else f"1 query x {rerank_docs} documents"))
        pooled.append(run_pooled_bench(endpoint, model, r, batch=embed_batch, documents=rerank_docs,
                                       rounds=max(runs, 1), predict=predictors.get(model), no_prediction=why.get(model)))
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
    if notes:
        from dataclasses import replace

        result = replace(result, notes=(*result.notes, *notes))

    def human(console: Any, r: Any) -> None:
        from rich.table import Table

        if hasattr(r, "ttft_s"):
            _chat_table(console, r, Table)
        if r.pooled:
            _pooled_table(console, r.pooled, Table)
        for note in r.notes:
            console.print(f"note: {note}", markup=False)

    return output.emit(result, human)


POOLED = ("embedding", "rerank")
_CONFIG_HINT = "the engine.yaml the embedding/rerank engine was started with; without it, no prediction"


def _read_config(path: Path) -> Any:
    """``path`` read as the engine reads it (engine.config.load_engine_config: its defaults, a
    relative model path against the file's folder); any way it fails is one UsageError whose
    message starts with the path."""
    from aiboxctl.engine.config import load_engine_config
    from aiboxctl.errors import AiboxError, UsageError

    if not path.exists():
        raise UsageError(f"{path}: no such file")
    try:
        return load_engine_config(path)
    except AiboxError as exc:
        raise UsageError(exc.message if exc.message.startswith(str(path)) else f"{path}: {exc.message}") from None


def _given_configs(files: list[Path]) -> list[tuple[Path, Any]]:
    """The --engine-config files, each with its configuration; one that is missing, unreadable or
    not a valid engine.yaml is a usage error naming the option."""
    from aiboxctl.errors import UsageError

    out = []
    for path in files:
        path = path.expanduser()
        try:
            out.append((path, _read_config(path)))
        except UsageError as exc:
            raise UsageError(f"--engine-config {exc.message}", hint=_CONFIG_HINT) from None
    return out


def _unused_config_notes(given: list[tuple[Path, Any]], served: set[str], url: str) -> tuple[str, ...]:
    """Why an --engine-config file predicts nothing: its model is not served at ``url``, or its
    engine is not a pooled one."""
    notes = []
    for path, cfg in given:
        if cfg.served_name not in served:
            notes.append(f"--engine-config {path}: its model {cfg.served_name!r} is not served at {url}: "
                         "no prediction from it")
        elif cfg.role not in POOLED:
            notes.append(f"--engine-config {path}: a {cfg.role} engine's configuration: no prediction from it "
                         f"(only {' and '.join(POOLED)} are predicted from one)")
    return tuple(notes)


def _installed_paths(layout: Any, model: str) -> list[Path]:
    """engines/<name>.yaml of the installed engines that serve ``model`` (the front door's
    gateway.yaml says which); every engine's when gateway.yaml cannot be read; none on a box of
    one engine."""
    from aiboxctl.deploy.instances import engines_dir, gateway_config_path, instance_names, is_multi
    from aiboxctl.errors import AiboxError
    from aiboxctl.gateway.config import load_gateway_config

    if not is_multi(layout):
        return []
    try:
        names = [e.name for e in load_gateway_config(gateway_config_path(layout)).engines if model in e.models]
    except (AiboxError, OSError, ValueError):
        names = instance_names(layout)
    return [engines_dir(layout) / f"{name}.yaml" for name in names]


def _predictions(models: list[str], given: list[tuple[Path, Any]],
                 layout: Any | None) -> tuple[dict[str, Any], dict[str, str]]:
    """For each pooled model measured, sizing's predictor for its engine's configuration (an
    --engine-config file, else the installed engines/<name>.yaml that serves it), or why there is
    none, said beside its figures. Only those files are read, and only when a pooled model is
    measured: a broken configuration costs its prediction, never the measurement."""
    from aiboxctl.errors import AiboxError, UsageError

    found: dict[str, tuple[Path, Any]] = {}
    why: dict[str, str] = {}
    for path, cfg in given:
        if cfg.role in POOLED and cfg.served_name in models:
            found.setdefault(cfg.served_name, (path, cfg))
    for model in models:
        if model in found or layout is None:
            continue
        for path in _installed_paths(layout, model):
            try:
                cfg = _read_config(path)
            except UsageError as exc:
                why.setdefault(model, f"no prediction: the installed engine configuration {exc.message}")
                continue
            if cfg.role in POOLED and cfg.served_name == model:
                found[model] = (path, cfg)
                why.pop(model, None)
                break
    if not found:
        return {}, why
    from aiboxctl.hardware.probe import probe_box
    from aiboxctl.sizing.box import as_box
    from aiboxctl.sizing.pooled_speed import predictor_for

    box = as_box(probe_box())
    predictors = {}
    for model, (path, cfg) in found.items():
        try:
            predictors[model] = predictor_for(cfg, box)
        except AiboxError as exc:  # not a GGUF, a directory
            why[model] = f"no prediction: {path} names the model file {cfg.model}: {exc.message}"
        except OSError as exc:  # not on this machine (a file from the box at --url), unreadable
            why[model] = f"no prediction: {path} names the model file {cfg.model}: {exc.strerror or exc}"
    return predictors, why


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
