"""``aiboxctl gateway``: the front door over the box's engine instances (what the installed
front-door service runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, port_option


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)


def gateway(
    config: Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml: listen address, internal token, engines, limits.")],
    host: Annotated[Optional[str], typer.Option("--host", help="Bind address (overrides the file).")] = None,
    port: Annotated[Optional[int], port_option("--port", "-p", help="Port, 1..65535 (overrides the file).")] = None,
    json_: JsonOpt = False,
) -> int:
    """Serve one OpenAI-compatible front door over several engines (docs/gateway.md).

    Routes by `model` (/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/rerank),
    balances over replicas (least busy, conversation affinity), queues then answers 429 when every
    slot is busy, streams through without buffering; /v1/models, /health, /metrics.
    """
    import dataclasses

    from aiboxctl.gateway.config import load_gateway_config

    cfg = load_gateway_config(config)
    changes = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if changes:
        cfg = dataclasses.replace(cfg, **changes)

    from aiboxctl.gateway.run import run_gateway

    output.note(f"aiboxctl gateway: {len(cfg.models())} models over {len(cfg.engines)} engines "
                f"on {cfg.scheme}://{cfg.host}:{cfg.port}"
                + (" (keys, limits, usage ledger, audit)" if cfg.access_settings() else ""))
    result = run_gateway(cfg, log_level="debug" if output.STATE.verbose else "info")

    def human(console: Any, r: Any) -> None:
        console.print(f"stopped ({r.stopped_by})")

    return output.emit(result, human)
