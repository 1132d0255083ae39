"""Which models the planner tries, in order: the catalog's variants for the profile (or the ones
named with --model: a variant, a family, an alias, or a .gguf given by path), in the order of the
objective (docs/planning.md): quality tier of the variant, then a quantization that keeps the
model's quality (3.5 bits per weight or more) before one that degrades it, then the profile's
family order, then the bigger model, then the better quantization. What the profile rules out
says why."""

from __future__ import annotations

from pathlib import Path

from aiboxctl.errors import UsageError
from aiboxctl.models.catalog import QUANT_BPW, Architecture, Catalog, QuantFile, Variant
from aiboxctl.models.facts import EXPERT_TENSOR, ModelFacts
from aiboxctl.sizing.plan_result import Rejected
from aiboxctl.sizing.profiles import QUALITY_ORDER, UseCaseProfile


# Below this many bits per weight (2- and 1-bit quants, IQ3_XXS) a quantization loses quality a
# user notices; from Q3_K_S up the loss is small (llama.cpp tools/quantize/README.md perplexities).
DEGRADED_BPW = 3.5


def family_order(profile: UseCaseProfile, catalog: Catalog, model: str | None) -> list[str]:
    """The families in order of preference: the named alias's order, else the profile's."""
    named = catalog.family_order(model) if model and not model.endswith(".gguf") else []
    rest = [f for f in (list(profile.families) or sorted(catalog.families)) if f not in named]
    return named + rest


def candidates(profile: UseCaseProfile, catalog: Catalog, model: str | None) -> tuple[list[Variant], list[Rejected]]:
    rejected: list[Rejected] = []
    pinned = model or profile.model
    if pinned and pinned.endswith(".gguf"):
        return [local_variant(Path(pinned).expanduser())], rejected
    if pinned:
        found = catalog.resolve(pinned)
        chat = [v for v in found if catalog.families[v.family].role == "chat"]
        if found and not chat:
            kind = "an embedding" if catalog.families[found[0].family].role == "embedding" else "a rerank"
            raise UsageError(f"{pinned!r} is {kind} model, not a chat model",
                             hint="name a chat model with --model; embedding and rerank models are served "
                                  "beside one (docs/knowledge-base.md)")
        return chat, rejected
    families = list(profile.families) or list(catalog.families)
    for fam in families:
        if fam not in catalog.families:
            raise UsageError(f"profile {profile.name}: unknown model family {fam!r}",
                             hint="see the families in profiles/catalog.yaml")
    out = []
    floor = QUALITY_ORDER[profile.min_quality]
    for fam in families:
        if catalog.families[fam].role != "chat":
            continue  # embedding and rerank models are never the chat model
        for v in catalog.family_variants(fam):
            if not v.instruct:
                rejected.append(Rejected(v.name, "*", "a base model (not instruction-tuned): planned only when "
                                         "named with --model", "quality"))
                continue
            if QUALITY_ORDER[v.quality] < floor:
                rejected.append(Rejected(v.name, "*", f"quality tier {v.quality} is below the profile's "
                                         f"min_quality {profile.min_quality}", "quality"))
                continue
            out.append(v)
    return out, rejected


def bits_per_weight(v: Variant, f: QuantFile) -> float:
    return QUANT_BPW.get(f.base_quant, f.size * 8 / (v.params * 1e9))


def degraded(v: Variant, f: QuantFile) -> bool:
    """A quantization that costs the model noticeable quality (under 3.5 bits per weight)."""
    return bits_per_weight(v, f) < DEGRADED_BPW


def preference_key(v: Variant, f: QuantFile, fam_rank: dict[str, int]) -> tuple:
    """The static part of the objective, best first: quality tier, a quantization that keeps
    it, the profile's family order, size, bits per weight."""
    return (-QUALITY_ORDER[v.quality], degraded(v, f), fam_rank.get(v.family, len(fam_rank)), -v.params,
            -bits_per_weight(v, f), v.name)


def preference_order(variants: list[Variant], families: list[str]) -> list[tuple[Variant, QuantFile]]:
    """Every (variant, file) in the objective's order (:func:`preference_key`)."""
    fam_rank = {f: i for i, f in enumerate(families)}
    pairs = [(v, f) for v in variants for f in v.files]
    pairs.sort(key=lambda vf: preference_key(*vf, fam_rank))
    return pairs


def local_variant(path: Path) -> Variant:
    """A GGUF given by path, described from its own header as a one-file variant (family
    ``local``): exact parameter count, quantization from ``general.file_type``."""
    from aiboxctl.models.gguf import gguf_constants, read_header

    if not path.is_file():
        raise UsageError(f"No such model file: {path}", hint="aiboxctl plan --model VARIANT, or a path to a .gguf")
    header = read_header(path)
    facts = ModelFacts.from_header(header)
    n_params = sum(t.n_elements for t in header.tensors)
    expert = sum(t.n_elements for t in header.tensors if EXPERT_TENSOR.search(t.name))
    active = n_params - expert * (1 - facts.n_expert_used / facts.n_expert) if facts.n_expert else n_params
    try:
        quant = gguf_constants().LlamaFileType(int(header.get("general.file_type", -1))).name.removeprefix("MOSTLY_")
    except ValueError:
        quant = "F16" if n_params and header.tensor_bytes / n_params > 1.5 else "Q4_K_M"
    billions = n_params / 1e9
    quality = "low" if billions < 3 else "medium" if billions < 20 else "high"
    heads_kv = max(facts.n_head_kv) or 1
    arch = Architecture(
        arch=facts.architecture, block_count=facts.n_layer, embedding_length=facts.n_embd,
        feed_forward_length=max(facts.n_ff) or 1, head_count=max(facts.n_head) or 1, head_count_kv=heads_kv,
        context_length=facts.n_ctx_train or 4096, vocab_size=facts.n_vocab, tied_embeddings=facts.tied_embeddings,
        key_length=max(facts.head_dim_k), value_length=max(facts.head_dim_v), sliding_window=facts.n_swa or None,
        expert_count=facts.n_expert or None, expert_used_count=facts.n_expert_used or None,
        expert_feed_forward_length=facts.n_ff_exp or None, kv_lora_rank=facts.kv_lora_rank or None)
    qfile = QuantFile(quant=quant, file=str(path.resolve()), size=path.stat().st_size, source="local", verified=True)
    licence = str(header.get("general.license", "") or "unknown (not in the GGUF)")
    return Variant(name=path.stem, family="local", params=round(billions, 3), quality=quality, architecture=arch,
                   files=(qfile,), sources=("local-header",), active_params=round(active / 1e9, 3),
                   licence=licence, has_chat_template=header.get("tokenizer.chat_template") is not None,
                   notes=(f"planned from the file {path}",))
