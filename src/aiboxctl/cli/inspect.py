"""``aiboxctl inspect FILE|URL``: what a GGUF header says, without reading tensor data."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt

ModelArg = Annotated[str, typer.Argument(metavar="FILE|URL", help="A local .gguf file or an HTTP(S) URL "
                                         "(read with Range requests; split models: any shard).")]


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:,.2f} MiB"


def _human(console: Any, d: Any) -> None:
    from rich.table import Table

    t = Table(show_header=False, box=None, pad_edge=False)
    row = t.add_row
    row("model", f"{d.name or '?'} ({d.architecture}{', ' + d.size_label if d.size_label else ''})")
    row("parameters", f"{d.parameters:,}")
    row("file", f"{_mib(d.file_size)}, {d.n_tensors} tensors, {d.shards} shard(s), file type {d.file_type or '?'}")
    row("quantization", ", ".join(f"{k} {_mib(v)}" for k, v in d.quantization.items()))
    row("layers", str(d.block_count))
    row("embedding / ffn", f"{d.embedding_length} / {d.feed_forward_length}")
    row("heads / kv heads", f"{d.head_count} / {d.head_count_kv}")
    row("head dims k / v", f"{d.head_dim_k} / {d.head_dim_v}")
    row("context length", str(d.context_length))
    if d.sliding_window:
        row("sliding window", f"{d.sliding_window} on {len(d.swa_layers or [])} of {d.block_count} layers "
                              f"(full attention: {[i for i in range(d.block_count) if i not in (d.swa_layers or [])]})")
    if d.mla:
        row("MLA", ", ".join(f"{k} {v}" for k, v in d.mla.items()))
    if d.experts:
        e = d.experts
        row("experts", f"{e['total']} total, {e['used']} used, {e['shared']} shared (ffn {e['feed_forward_length']})")
    if d.recurrent_layers:
        row("recurrent layers", f"{len(d.recurrent_layers)} of {d.block_count}")
    row("vocabulary", f"{d.vocab_size:,}{' (tied embeddings)' if d.tied_embeddings else ''}")
    row("chat template", "yes" if d.chat_template else "no")
    console.print(t)
    for n in d.notes:
        console.print(f"note: {n}")


def inspect(model: ModelArg, json_: JsonOpt = False) -> int:
    """Show a GGUF's architecture, size, quantization mix, heads, context, SWA, MLA, experts, vocab."""
    from aiboxctl.models.describe import describe
    from aiboxctl.models.gguf import read_header

    return output.emit(describe(read_header(model)), _human)
