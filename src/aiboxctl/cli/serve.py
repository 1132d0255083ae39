"""``aiboxctl serve``: the OpenAI-compatible engine (what the installed service runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, port_option


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="engine.yaml (what install writes).")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="A .gguf file (quick use without a config).")] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Model id in /v1/models.")] = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[Optional[int], port_option("--port", "-p", help="Port, 1..65535 (default 8080).")] = None,
    parallel: Annotated[Optional[int], typer.Option("--parallel", help="Slots: requests decoded together.")] = None,
    ctx: Annotated[Optional[int], typer.Option("--ctx", help="KV cache cells over all slots (n_ctx).")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: physical cores).")] = None,
    api_keys_file: Annotated[Optional[Path], typer.Option("--api-keys-file", help="One key per line (id:key); enables Bearer auth.")] = None,
    audit_log: Annotated[Optional[Path], typer.Option("--audit-log", help="JSONL audit log of request metadata.")] = None,
    repack: Annotated[Optional[bool], typer.Option("--repack/--no-repack", help="llama.cpp weight repacking (the self-test turns it off if it faults).")] = None,
    flash_attn: Annotated[Optional[str], typer.Option("--flash-attn", help="auto, on or off.")] = None,
    no_selftest: Annotated[bool, typer.Option("--no-selftest", help="Skip the child-process self-test.")] = False,
    json_: JsonOpt = False,
) -> int:
    """Serve a model over an OpenAI-compatible API (continuous batching on llama.cpp).

    /v1/chat/completions, /v1/completions, /v1/models, /health (503 until the self-test passed
    and the model is loaded), /metrics (Prometheus). SIGTERM stops gracefully (exit 0).
    """
    from aiboxctl.engine.config import engine_config_from_mapping, load_engine_config
    from aiboxctl.errors import UsageError

    if config is None and model is None:
        raise UsageError("Give --config engine.yaml or --model PATH", hint="aiboxctl serve --help")
    base: dict[str, Any] = load_engine_config(config).to_dict() if config is not None else {}
    flags = {"model": model, "model_name": model_name, "host": host, "port": port, "parallel": parallel,
             "n_ctx": ctx, "threads": threads, "api_keys_file": api_keys_file, "audit_log": audit_log,
             "repack": repack, "flash_attn": flash_attn}
    merged = {**base, **{k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None}}
    if no_selftest:
        merged["selftest"] = False
    cfg = engine_config_from_mapping(merged, source=str(config) if config else "command line")
    if not Path(cfg.model).is_file():
        raise UsageError(f"Model file not found: {cfg.model}", hint="aiboxctl pull, or check --model / 'model'")

    from aiboxctl.engine.serve import serve as run_server

    output.note(f"aiboxctl serve: {cfg.served_name} on http://{cfg.host}:{cfg.port} "
                f"({cfg.parallel} slots, n_ctx {cfg.n_ctx})")
    result = run_server(cfg, log_level="debug" if output.STATE.verbose else "info")

    def human(console: Any, r: Any) -> None:
        console.print(f"stopped ({r.stopped_by}) after {r.requests} requests"
                      + (f"; served with self-test fallback {r.fallback}" if r.fallback else ""))

    return output.emit(result, human)
