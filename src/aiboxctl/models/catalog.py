"""The model catalog (profiles/catalog.yaml): families, variants, files per quantization.

``load_catalog()`` validates the file (errors name file:line and the field) and returns a frozen
:class:`Catalog`. ``catalog.resolve("qwen3")`` / ``resolve("qwen3-8b")`` turns what a user types
into variants. Numbers here are for planning before download; a readable GGUF header wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import ConfigDict, Field, with_config

from aiboxctl.datafile import FieldProblem, SizeBytes, raise_problems, read_document, validate
from aiboxctl.errors import UsageError
from aiboxctl.resources import data_dir

_STRICT = ConfigDict(extra="forbid")
Quality = Literal["low", "medium", "high"]

# Effective bits per weight of a whole file by llama.cpp file type (mixes included), from
# llama.cpp tools/quantize/README.md (Llama-3.1-8B) and memory-model.md §6.2. Used to rank
# quantizations by quality and to estimate sizes; a real header gives exact bytes.
QUANT_BPW: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.70, "Q5_K_S": 5.57,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q4_1": 5.0, "Q4_K_M": 4.89, "Q4_K_S": 4.67, "Q4_0": 4.55, "IQ4_NL": 4.68,
    "IQ4_XS": 4.46, "Q3_K_L": 4.30, "Q3_K_M": 3.91, "Q3_K_S": 3.64, "IQ3_XXS": 3.25, "Q2_K": 3.16,
    "IQ2_XXS": 2.38, "IQ1_M": 2.1, "IQ1_S": 2.0,
}
# The ggml type most weights of a file type are stored in (what a backend must support).
QUANT_MAIN_TYPE: dict[str, str] = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K",
    "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q4_1": "Q4_1", "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_0": "Q4_0",
    "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS", "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K",
    "IQ3_XXS": "IQ3_XXS", "Q2_K": "Q2_K", "IQ2_XXS": "IQ2_XXS", "IQ1_M": "IQ1_M", "IQ1_S": "IQ1_S",
}
_SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


def base_quant(quant: str) -> str:
    """``UD-Q2_K_XL`` → ``Q2_K``; ``UD-IQ1_S`` → ``IQ1_S``; ``Q4_K_M`` → ``Q4_K_M``."""
    q = quant.upper().removeprefix("UD-")
    if q in QUANT_BPW or not q.endswith("_XL"):
        return q
    stem = q[: -len("_XL")]
    return stem if stem in QUANT_BPW else stem + "_M"


@with_config(_STRICT)
@dataclass(frozen=True)
class ChatTemplate:
    jinja: str
    llama_cpp: Optional[str] = None  # llama.cpp built-in template name


@with_config(_STRICT)
@dataclass(frozen=True)
class Family:
    description: str
    licence: str
    chat_template: Optional[str] = None  # required for chat families
    languages: tuple[str, ...] = ()
    reasoning: bool = False
    # what its models serve: chat, or pooled outputs for knowledge bases (engine/embedding.py);
    # the planner picks chat models from chat families only
    role: Literal["chat", "embedding", "rerank"] = "chat"
    pooling: Optional[Literal["mean", "cls", "last", "rank"]] = None  # as the GGUF says (informative)
    matryoshka: bool = False  # embedding: trained for truncated vectors (OpenAI's `dimensions`)


@with_config(_STRICT)
@dataclass(frozen=True)
class Architecture:
    """Enough GGUF metadata (names as in ``{arch}.*`` keys) to size a model without its file."""

    arch: str
    block_count: Annotated[int, Field(ge=1)]
    embedding_length: Annotated[int, Field(ge=1)]
    feed_forward_length: Annotated[int, Field(ge=1)]
    head_count: Annotated[int, Field(ge=1)]
    head_count_kv: Annotated[int, Field(ge=1)]
    context_length: Annotated[int, Field(ge=1)]
    vocab_size: Annotated[int, Field(ge=1)]
    tied_embeddings: bool = False
    key_length: Optional[int] = None  # default embedding_length / head_count
    value_length: Optional[int] = None
    sliding_window: Optional[int] = None
    sliding_window_pattern: Optional[int] = None  # every Nth layer is full attention
    expert_count: Optional[int] = None
    expert_used_count: Optional[int] = None
    expert_shared_count: Optional[int] = None
    expert_feed_forward_length: Optional[int] = None
    leading_dense_block_count: Optional[int] = None
    kv_lora_rank: Optional[int] = None  # MLA
    q_lora_rank: Optional[int] = None
    rope_dimension_count: Optional[int] = None
    key_length_mla: Optional[int] = None
    value_length_mla: Optional[int] = None

    @property
    def head_dim_k(self) -> int:
        return self.key_length or self.embedding_length // self.head_count

    @property
    def head_dim_v(self) -> int:
        return self.value_length or self.embedding_length // self.head_count

    @property
    def is_moe(self) -> bool:
        return bool(self.expert_count)

    @property
    def is_mla(self) -> bool:
        return bool(self.kv_lora_rank)


@with_config(_STRICT)
@dataclass(frozen=True)
class QuantFile:
    quant: str  # llama.cpp file type name, or an Unsloth dynamic name (UD-IQ1_S)
    file: str  # file name in the repo (first shard when split), or in the wheel for pypi
    size: SizeBytes  # all shards together
    source: Literal["hf", "pypi", "local"] = "hf"  # local: a file given by path, not in the catalog
    repo: Optional[str] = None  # hf: owner/name
    package: Optional[str] = None  # pypi: distribution name
    shards: Annotated[int, Field(ge=1)] = 1
    sha256: Optional[str] = None
    verified: bool = False  # size (and names) checked against the real file
    dynamic: bool = False  # mixed low-bit "dynamic" quant (experts in 1.5-2.5 bits)

    @property
    def base_quant(self) -> str:
        return base_quant(self.quant)

    @property
    def main_type(self) -> str:
        return QUANT_MAIN_TYPE.get(self.base_quant, self.base_quant)

    @property
    def file_names(self) -> tuple[str, ...]:
        if self.shards == 1:
            return (self.file,)
        m = _SHARD_RE.match(self.file)
        assert m is not None  # checked at load
        return tuple(f"{m['stem']}-{i:05d}-of-{self.shards:05d}.gguf" for i in range(1, self.shards + 1))

    @property
    def url(self) -> str | None:
        """The hub URL of the first shard (HF_ENDPOINT honoured by the caller)."""
        if self.source != "hf" or not self.repo:
            return None
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.file}"


@with_config(_STRICT)
@dataclass(frozen=True)
class Variant:
    name: str
    family: str
    params: Annotated[float, Field(gt=0)]  # billions, total
    quality: Quality
    architecture: Architecture
    files: tuple[QuantFile, ...]
    sources: tuple[str, ...]
    base_model: Optional[str] = None
    active_params: Optional[Annotated[float, Field(gt=0)]] = None  # billions read per token (MoE)
    licence: Optional[str] = None  # overrides the family's
    chat_template: Optional[str] = None  # overrides the family's
    has_chat_template: Optional[bool] = None  # does the GGUF carry one (None: assume yes)
    instruct: bool = True  # False: a base model (continues text); planned only when pinned
    notes: tuple[str, ...] = ()

    @property
    def active(self) -> float:
        return self.active_params or self.params

    def file_for(self, quant: str) -> QuantFile | None:
        for f in self.files:
            if f.quant.upper() == quant.upper():
                return f
        return None


@with_config(_STRICT)
@dataclass(frozen=True)
class Catalog:
    provenance: dict[str, str]
    chat_templates: dict[str, ChatTemplate]
    families: dict[str, Family]
    variants: tuple[Variant, ...]
    # Names people type for a model ("deepseek", "qwen", "r1") → catalog families or variants,
    # in the order the planner should prefer them.
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def variant(self, name: str) -> Variant | None:
        for v in self.variants:
            if v.name == name:
                return v
        return None

    def family_variants(self, family: str) -> list[Variant]:
        return [v for v in self.variants if v.family == family]

    def resolve(self, name: str) -> list[Variant]:
        """A variant name → [it]; a family name → its variants; an alias → the variants of every
        family or variant it names, in its order; else a UsageError naming the closest names."""
        key = name.strip().lower()
        v = self.variant(key)
        if v is not None:
            return [v]
        if key in self.families:
            return self.family_variants(key)
        if key in self.aliases:
            out: list[Variant] = []
            for target in self.aliases[key]:
                out += [x for x in self.resolve(target) if x not in out]
            return out
        import difflib

        names = sorted({*self.families, *self.aliases, *(x.name for x in self.variants)})
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
        hint = (f"did you mean {' or '.join(close)}? " if close else "") + \
            "families: " + ", ".join(sorted(self.families)) + "; aliases: " + ", ".join(sorted(self.aliases))
        raise UsageError(f"No catalog variant, family or alias named {name!r}", hint=hint)

    def family_order(self, name: str) -> list[str]:
        """The families ``name`` (a family or an alias) stands for, in its order of preference."""
        key = name.strip().lower()
        if key in self.families:
            return [key]
        out: list[str] = []
        for target in self.aliases.get(key, ()):
            fam = target if target in self.families else (self.variant(target).family if self.variant(target) else None)
            if fam and fam not in out:
                out.append(fam)
        return out

    def licence_of(self, v: Variant) -> str:
        return v.licence or self.families[v.family].licence

    def chat_template_of(self, v: Variant) -> ChatTemplate:
        return self.chat_templates[v.chat_template or self.families[v.family].chat_template]


def _check(doc, cat: Catalog) -> None:
    problems: list[FieldProblem] = []
    for name, fam in cat.families.items():
        if fam.role != "chat" and fam.chat_template is None:
            continue
        if fam.chat_template not in cat.chat_templates:
            problems.append(doc.problem(("families", name, "chat_template"),
                                        f"unknown chat template {fam.chat_template!r}"))
    variant_names = {v.name for v in cat.variants}
    for alias, targets in cat.aliases.items():
        if alias != alias.lower() or alias in cat.families or alias in variant_names:
            problems.append(doc.problem(("aliases", alias), "an alias must be lower case and not a family or "
                                        "variant name"))
        for t in targets:
            if t not in cat.families and t not in variant_names:
                problems.append(doc.problem(("aliases", alias), f"{t!r} is not a catalog family or variant"))
    seen: set[str] = set()
    for i, v in enumerate(cat.variants):
        loc = ("variants", i)
        if v.name in seen:
            problems.append(doc.problem((*loc, "name"), f"duplicate variant {v.name!r}"))
        seen.add(v.name)
        if v.family not in cat.families:
            problems.append(doc.problem((*loc, "family"), f"unknown family {v.family!r}"))
        if v.chat_template and v.chat_template not in cat.chat_templates:
            problems.append(doc.problem((*loc, "chat_template"), f"unknown chat template {v.chat_template!r}"))
        for s in v.sources:
            if s not in cat.provenance:
                problems.append(doc.problem((*loc, "sources"), f"unknown provenance id {s!r}"))
        if not v.files:
            problems.append(doc.problem((*loc, "files"), "a variant needs at least one file"))
        a = v.architecture
        if a.expert_count and not (a.expert_used_count and a.expert_feed_forward_length):
            problems.append(doc.problem((*loc, "architecture"),
                                        "MoE needs expert_used_count and expert_feed_forward_length"))
        for j, f in enumerate(v.files):
            floc = (*loc, "files", j)
            if f.base_quant not in QUANT_BPW:
                problems.append(doc.problem((*floc, "quant"), f"unknown quantization {f.quant!r}"))
            if f.source == "hf" and not f.repo:
                problems.append(doc.problem((*floc, "repo"), "hub files need repo: owner/name"))
            if f.source == "pypi" and not f.package:
                problems.append(doc.problem((*floc, "package"), "PyPI files need package: <distribution>"))
            if f.shards > 1 and not _SHARD_RE.match(f.file):
                problems.append(doc.problem((*floc, "file"),
                                            "a split file must name its first shard: NAME-00001-of-0000N.gguf"))
            if f.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
                problems.append(doc.problem((*floc, "sha256"), "not a lowercase hex SHA-256 (64 characters)"))
            if not f.file.endswith(".gguf"):
                problems.append(doc.problem((*floc, "file"), "not a .gguf file name"))
    raise_problems(problems)


def _catalog_from_text(text: str, shown: str) -> Catalog:
    doc = read_document(text, shown)
    cat = validate(doc, Catalog)
    _check(doc, cat)
    return cat


def load_catalog_file(path: Path | str, *, name: str | None = None) -> Catalog:
    path = Path(path)
    return _catalog_from_text(path.read_text(encoding="utf-8"), name or str(path))


@cache
def load_catalog() -> Catalog:
    """The shipped catalog (cached: it is read-only data)."""
    return _catalog_from_text((data_dir("profiles") / "catalog.yaml").read_text(encoding="utf-8"),
                              "profiles/catalog.yaml")


def facts_for(variant: Variant, qfile: QuantFile):
    """:class:`~aiboxctl.models.facts.ModelFacts` from the catalog alone (no download).

    Weights total the file size; the split between embedding, layers and experts is estimated
    from the architecture. When the header can be read, use ``ModelFacts.from_header`` instead.
    """
    from aiboxctl.models.facts import ModelFacts

    a = variant.architecture
    weight_bytes = qfile.size
    expert_bytes = 0
    if a.is_moe:
        moe_layers = a.block_count - (a.leading_dense_block_count or 0)
        expert_params = moe_layers * 3 * a.embedding_length * a.expert_feed_forward_length * a.expert_count
        expert_bytes = int(weight_bytes * min(expert_params / (variant.params * 1e9), 0.98))
    n_ff = a.feed_forward_length
    facts = ModelFacts.from_plain(
        architecture=a.arch, n_layer=a.block_count, n_embd=a.embedding_length, n_vocab=a.vocab_size,
        n_head=a.head_count, n_head_kv=a.head_count_kv, head_dim_k=a.head_dim_k, head_dim_v=a.head_dim_v,
        n_ff=0 if (a.is_moe and not a.leading_dense_block_count) else n_ff,
        weight_bytes=weight_bytes, tied_embeddings=a.tied_embeddings, n_ctx_train=a.context_length,
        n_swa=a.sliding_window or 0, swa_period=a.sliding_window_pattern,
        kv_lora_rank=a.kv_lora_rank or 0, n_rot=a.rope_dimension_count or 0,
        n_expert=a.expert_count or 0, n_expert_used=a.expert_used_count or 0,
        n_expert_shared=a.expert_shared_count or 0, n_ff_exp=a.expert_feed_forward_length or 0,
        expert_bytes=expert_bytes, name=variant.name, source=f"catalog ({variant.name} {qfile.quant})",
        file_type=qfile.base_quant,  # which matrices an extra buffer type (AMX, CPU_REPACK) takes
    )
    return facts
