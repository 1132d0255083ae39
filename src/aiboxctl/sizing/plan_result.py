"""What the planner returns: the plan, the memory it takes per device, and every candidate that
lost with the reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.jsonable import to_jsonable
from aiboxctl.models.catalog import QuantFile
from aiboxctl.sizing.memory import MemoryEstimate
from aiboxctl.sizing.throughput import Throughput


@dataclass(frozen=True)
class Rejected:
    variant: str
    quant: str
    reason: str  # one line a person can act on
    kind: str  # "quality" | "backend" | "context" | "memory" | "speed" | "preference"
    needed: dict = field(default_factory=dict)  # per device bytes needed vs budget, or speeds


@dataclass(frozen=True)
class DeviceUse:
    device: str
    budget: int  # bytes the plan may use on it
    planned: int  # bytes the memory model predicts
    capacity: int

    @property
    def headroom(self) -> int:
        return self.budget - self.planned

    def to_dict(self) -> dict:
        return {"device": self.device, "capacity": self.capacity, "budget": self.budget,
                "planned": self.planned, "headroom": self.headroom}


@dataclass(frozen=True)
class Plan:
    profile: str
    hardware: str
    variant: str
    family: str
    quant: str
    quality: str
    params_b: float
    licence: str
    file: QuantFile
    local_path: str | None  # the GGUF when it is already on this box
    facts_source: str  # "header" or "catalog"
    compute_source: str  # "dry run" (llama.cpp's own figure) or "model"
    engine: EngineSettings  # model left empty: install fills it
    security: dict
    chat_template: str  # catalog template used when the GGUF has none
    memory: MemoryEstimate
    devices: tuple[DeviceUse, ...]
    throughput: Throughput
    target_tokens_per_s: float
    rejected: tuple[Rejected, ...]
    notes: tuple[str, ...] = ()
    near_miss: str = ""  # the targets reached only within the profile's tolerance, by how much
    first_token_s: float | None = None  # prefill of the profile's typical document, one request alone
    document_tokens: int | None = None
    max_first_token_s: float | None = None
    # Non-empty when a device's decode efficiency is assumed, not measured: the speed figures
    # are estimates, shown as a range (speed_range: low, high factor on every figure).
    estimated: str = ""
    speed_range: tuple[float, float] = (1.0, 1.0)
    # the knowledge-base engines beside the chat model (sizing/knowledge_base.py), host memory
    companions: tuple = ()
    # The box filled (sizing/fill.py): every engine instance — the chat model's replicas, each on
    # its device group, and the companions — and each device left idle with why.
    instances: tuple = ()
    idle: tuple = ()

    @property
    def multi_instance(self) -> bool:
        """More than one engine: install renders one per replica and role behind the front door."""
        return sum(i.replicas for i in self.instances) > 1

    def span(self, value: float) -> tuple[float, float]:
        return value * self.speed_range[0], value * self.speed_range[1]

    def to_dict(self) -> dict:
        return {
            "profile": self.profile, "hardware": self.hardware,
            # Top level too, for scripts and `aiboxctl pull --plan plan.json`.
            "variant": self.variant, "quant": self.quant,
            "choice": {"variant": self.variant, "family": self.family, "quant": self.quant,
                       "quality": self.quality, "params_b": self.params_b, "licence": self.licence,
                       "file": to_jsonable(self.file), "file_names": list(self.file.file_names),
                       "local_path": self.local_path, "chat_template": self.chat_template},
            "engine": self.engine.to_dict(), "security": self.security,
            "memory": self.memory.to_dict(), "budget": [d.to_dict() for d in self.devices],
            "facts_source": self.facts_source, "compute_source": self.compute_source,
            "throughput": {"per_user_tok_s": round(self.throughput.per_user_tok_s, 2),
                           "aggregate_tok_s": round(self.throughput.aggregate_tok_s, 2),
                           "single_stream_tok_s": round(self.throughput.single_stream_tok_s, 2),
                           "prefill_tok_s": round(self.throughput.prefill_tok_s, 1),
                           "streams": self.throughput.streams, "depth": self.throughput.depth,
                           "bound": self.throughput.bound, "target_per_user_tok_s": self.target_tokens_per_s,
                           "near_miss": self.near_miss or None,
                           "first_token_s": round(self.first_token_s, 1) if self.first_token_s is not None else None,
                           "document_tokens": self.document_tokens, "max_first_token_s": self.max_first_token_s,
                           "estimated": bool(self.estimated), "estimated_because": self.estimated or None,
                           "per_user_tok_s_range": [round(x, 2) for x in self.span(self.throughput.per_user_tok_s)],
                           "prefill_tok_s_range": [round(x, 1) for x in self.span(self.throughput.prefill_tok_s)]},
            "rejected": [to_jsonable(r) for r in self.rejected],
            "notes": list(self.notes),
            "companions": [c.to_dict() for c in self.companions],
            "instances": [i.to_dict() for i in self.instances],
            "idle": [i.to_dict() for i in self.idle],
            "devices_used": sum(len(g) for i in self.instances for g in i.device_groups),
            "devices_total": sum(len(g) for i in self.instances for g in i.device_groups)
            + sum(i.count for i in self.idle),
        }
