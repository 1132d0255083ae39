"""``aiboxctl bench``: measure the running service and compare with the plan's predictions."""

from __future__ import annotations

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


def bench(
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-c", help="Concurrent streams (default: the service's slots).")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens per answer.")] = 64,
    runs: Annotated[int, typer.Option("--runs", help="Single-stream runs (median).")] = 2,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="About how long the single-stream prompt is (prefill).")] = 320,
    root: RootOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    json_: JsonOpt = False,
) -> int:
    """TTFT, prefill and decode tok/s of one stream, aggregate tok/s at N streams; ratio to the plan's prediction."""
    from aiboxctl.deploy.endpoint import endpoint_from_install
    from aiboxctl.client.bench import run_bench
    from aiboxctl.deploy.manifest import load_manifest
    from aiboxctl.deploy.spec import install_layout

    endpoint = endpoint_from_install(root, url=url, api_key=api_key)
    manifest = load_manifest(install_layout(root)) if url is None else None
    spec = manifest.spec if manifest else {}
    slots = int((spec.get("engine") or {}).get("parallel") or 4)
    output.note(f"benchmarking {endpoint.url} ({endpoint.model or 'model'}): 1 stream × {runs}, then {concurrency or slots} streams")
    result = run_bench(endpoint, concurrency=concurrency or slots, max_tokens=max_tokens, runs=runs,
                       prompt_tokens=prompt_tokens,
                       predicted=spec.get("predicted") or {}, served=manifest.served if manifest else None)

    def human(console: Any, r: Any) -> None:
        from rich.table import Table

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
        for note in r.notes:
            console.print(f"note: {note}", markup=False)

    return output.emit(result, human)
