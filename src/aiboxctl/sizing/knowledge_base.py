"""The knowledge-base models planned beside the chat model: an embedding model and a reranker,
for profiles whose ``roles`` ask for them (gov-office, healthcare: RAG over the office's own
documents, docs/knowledge-base.md).

Each runs as its own pooled engine (engine/embedding.py) on the host's memory left after the
chat model: the profile's preference list (``embedding_models``, ``rerank_models``; else the
catalog's variants of that role) is tried in order, each file in the catalog's order, and the
first whose memory (:func:`aiboxctl.sizing.memory.estimate_memory` for a pooled engine) fits
what is left is taken. A role nothing fits is a note, never a silent omission.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.jsonable import to_jsonable
from aiboxctl.models.catalog import Catalog, QuantFile, Variant, facts_for
from aiboxctl.sizing.cpu_buffers import CpuBuffers
from aiboxctl.sizing.memory import EngineParams, MemoryEstimate, estimate_memory
from aiboxctl.sizing.profiles import UseCaseProfile

GiB = 1024 ** 3
ENCODER_ARCHS = frozenset({"bert", "nomic-bert", "jina-bert-v2", "neo-bert", "modern-bert"})  # non-causal
TOKENS_PER_DECODE = 8192  # n_ctx of a pooled engine: all inputs of one decode together
INPUTS_PER_DECODE = 64  # parallel: a RAG tool embeds chunks in batches of 16-64


@dataclass(frozen=True)
class Companion:
    role: str  # embedding | rerank
    variant: str
    family: str
    quant: str
    file: QuantFile
    engine: EngineSettings  # model left empty: install fills it
    memory: MemoryEstimate

    def to_dict(self) -> dict:
        return {"role": self.role, "variant": self.variant, "family": self.family, "quant": self.quant,
                "file": to_jsonable(self.file), "engine": self.engine.to_dict(), "memory": self.memory.to_dict()}


def pooled_settings(v: Variant, role: str, catalog: Catalog, *, threads: int | None,
                    repack: bool = True) -> EngineSettings:
    fam = catalog.families.get(v.family)  # None: a .gguf given by path
    n_ctx = max(min(v.architecture.context_length, TOKENS_PER_DECODE), 2048)
    return EngineSettings(model_name=v.name, role=role, matryoshka=bool(fam and fam.matryoshka), n_ctx=n_ctx,
                          parallel=INPUTS_PER_DECODE, n_batch=n_ctx, n_ubatch=n_ctx, threads=threads,
                          threads_batch=threads, repack=repack)


def preferences(profile: UseCaseProfile, catalog: Catalog, role: str) -> list[Variant]:
    named = profile.embedding_models if role == "embedding" else profile.rerank_models
    if named:
        out = []
        for name in named:
            if name.endswith(".gguf"):  # a local file: the profile says which role it plays
                from pathlib import Path

                from aiboxctl.sizing.candidates import local_variant

                out.append(local_variant(Path(name).expanduser()))
                continue
            out += [v for v in catalog.resolve(name) if catalog.families[v.family].role == role and v not in out]
        return out
    return [v for v in catalog.variants if catalog.families[v.family].role == role]


def plan_companions(profile: UseCaseProfile, catalog: Catalog, host_left: int, *,
                    threads: int | None = None, cpu: CpuBuffers | None = None,
                    repack: bool = True) -> tuple[tuple[Companion, ...], list[str]]:
    """(the companions that fit in ``host_left`` bytes, in the profile's role order; notes).

    ``cpu`` and ``repack``: the box's CPU extra buffer types and whether repacking is safe there
    (:class:`~aiboxctl.sizing.box.Box`), as for the chat model: the AMX copy of the weights
    counts, and a CPU where repacking faults runs the companions with it off too."""
    out: list[Companion] = []
    notes: list[str] = []
    for role in profile.roles:
        if role == "chat":
            continue
        smallest: int | None = None
        for v in preferences(profile, catalog, role):
            picked = None
            for f in v.files:
                settings = pooled_settings(v, role, catalog, threads=threads, repack=repack)
                facts = facts_for(v, f)
                if v.architecture.arch in ENCODER_ARCHS:  # the header says so; the catalog cannot
                    facts = replace(facts, causal=False)
                est = estimate_memory(facts, EngineParams.of(settings), cpu=cpu)
                smallest = est.total if smallest is None else min(smallest, est.total)
                if est.total <= host_left:
                    picked = Companion(role, v.name, v.family, f.quant, f, settings, est)
                    break
            if picked is not None:
                out.append(picked)
                host_left -= picked.memory.total
                break
        else:
            need = f"{smallest / GiB:.1f} GiB" if smallest is not None else "a catalog model of this role"
            notes.append(f"no {role} model fits beside the chat model: the smallest needs {need}, "
                         f"{max(host_left, 0) / GiB:.1f} GiB of host memory is left")
    return tuple(out), notes
