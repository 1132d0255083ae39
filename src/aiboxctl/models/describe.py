"""What ``aiboxctl inspect`` says about a GGUF: a plain summary of its header."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiboxctl.models.gguf import GGUFHeader


@dataclass(frozen=True)
class ModelDescription:
    source: str
    architecture: str
    name: str
    size_label: str | None
    parameters: int  # elements over all tensors
    file_type: str | None  # general.file_type as a llama.cpp name (e.g. MOSTLY_Q4_K_M)
    file_size: int | None
    tensor_bytes: int
    n_tensors: int
    shards: int
    quantization: dict[str, int]  # bytes by ggml type, biggest first
    block_count: int
    embedding_length: int
    feed_forward_length: int | list[int] | None
    head_count: int | list[int] | None
    head_count_kv: int | list[int] | None
    head_dim_k: int | None
    head_dim_v: int | None
    context_length: int | None
    sliding_window: int | None
    swa_layers: list[int] | None  # indices of sliding-window layers
    mla: dict[str, int] | None  # kv_lora_rank, q_lora_rank, key/value_length_mla
    experts: dict[str, int] | None  # total, used, shared, feed_forward_length
    recurrent_layers: list[int] | None
    vocab_size: int
    tied_embeddings: bool
    chat_template: bool
    notes: list[str] = field(default_factory=list)


def _scalar_or_list(v: Any) -> Any:
    values = getattr(v, "values", None)
    if values is not None:
        vals = list(values)
        return vals[0] if vals and all(x == vals[0] for x in vals) else vals
    return v


def _file_type_name(ft: Any) -> str | None:
    if not isinstance(ft, int):
        return None
    from aiboxctl.models.gguf import gguf_constants

    try:
        return gguf_constants().LlamaFileType(ft).name
    except ValueError:
        return str(ft)


def describe(header: GGUFHeader) -> ModelDescription:
    from aiboxctl.models.facts import ModelFacts

    facts = ModelFacts.from_header(header)
    arch = header.architecture

    def key(suffix: str) -> Any:
        return header.arch_key(suffix)

    quant: dict[str, int] = {}
    for t in header.tensors:
        quant[t.type_name] = quant.get(t.type_name, 0) + t.n_bytes
    mla = None
    if facts.kv_lora_rank:
        mla = {k: int(key(f"attention.{k}") or 0) for k in ("kv_lora_rank", "q_lora_rank")}
        mla.update({"key_length_mla": int(key("attention.key_length_mla") or 0),
                    "value_length_mla": int(key("attention.value_length_mla") or 0)})
    experts = None
    if facts.n_expert:
        experts = {"total": facts.n_expert, "used": facts.n_expert_used, "shared": facts.n_expert_shared,
                   "feed_forward_length": facts.n_ff_exp}
    return ModelDescription(
        source=header.source,
        architecture=arch,
        name=facts.name,
        size_label=header.get("general.size_label"),
        parameters=sum(t.n_elements for t in header.tensors),
        file_type=_file_type_name(header.get("general.file_type")),
        file_size=header.file_size,
        tensor_bytes=header.tensor_bytes,
        n_tensors=len(header.tensors),
        shards=len(header.shards),
        quantization=dict(sorted(quant.items(), key=lambda kv: -kv[1])),
        block_count=facts.n_layer,
        embedding_length=facts.n_embd,
        feed_forward_length=_scalar_or_list(key("feed_forward_length")),
        head_count=_scalar_or_list(key("attention.head_count")),
        head_count_kv=_scalar_or_list(key("attention.head_count_kv") if key("attention.head_count_kv") is not None
                                      else key("attention.head_count")),
        head_dim_k=max(facts.head_dim_k, default=None),
        head_dim_v=max(facts.head_dim_v, default=None),
        context_length=facts.n_ctx_train or None,
        sliding_window=facts.n_swa or None,
        swa_layers=[il for il in range(facts.n_layer) if facts.is_swa(il)] or None,
        mla=mla,
        experts=experts,
        recurrent_layers=[il for il in range(facts.n_layer) if facts.is_recurrent(il)] or None,
        vocab_size=facts.n_vocab,
        tied_embeddings=facts.tied_embeddings,
        chat_template=bool(header.get("tokenizer.chat_template")),
        notes=list(facts.notes),
    )
