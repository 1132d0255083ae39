"""``EngineSettings``: the engine's settings, typed, from the plan to engine.yaml and back.

The one place every engine setting is named, defaulted and validated (contract 4). The planner
returns one (model left empty: install fills it), install and pack pin it (the install manifest
and plan.json carry :meth:`EngineSettings.to_dict`, read back by :meth:`EngineSettings.from_mapping`),
``templates/engine.yaml.j2`` renders :func:`sections` in field order, and ``aiboxctl serve``
reads the file back as :class:`aiboxctl.engine.config.EngineConfig` (these settings with a
model). sizing's ``EngineParams`` (what memory depends on) takes its defaults from here.

A foundation module, so that sizing (below the engine) can build it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.errors import UsageError

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("auto", "on", "off")
ROLES = ("chat", "embedding", "rerank")  # what the engine serves (the front door routes by it)
POOLINGS = ("auto", "mean", "cls", "last", "rank")  # auto: the GGUF's pooling_type
# how a thinking model's reply is split (aiboxctl.engine.reasoning): auto detects the family,
# none sends the raw text (<think> tags in content), a name forces that family's parser
REASONING_FORMATS = ("auto", "none", "deepseek_r1", "qwen3", "qwq", "glm_z1")


@dataclass(frozen=True)
class EngineSettings:
    """Every key of engine.yaml, in the order the file lists them, with the engine's defaults.
    ``model`` is empty in a plan (the file is not chosen yet); the engine requires it."""

    model: Path | None = None
    model_name: str | None = None  # id in /v1/models; default: the file name without .gguf
    # chat: /v1/chat/completions; embedding: /v1/embeddings; rerank: /v1/rerank (engine/embedding.py)
    role: str = "chat"
    pooling: str = "auto"  # embedding/rerank: how token states become one vector (auto: the GGUF's)
    matryoshka: bool = False  # embedding: trained for truncated vectors, so `dimensions` may cut them
    host: str = "127.0.0.1"
    port: int = 8080
    # llama.cpp parameters
    n_ctx: int = 4096  # total KV cells over all slots (kv_unified) or split evenly per slot
    parallel: int = 4  # slots (parallel sequences)
    kv_unified: bool = True
    n_batch: int = 512
    n_ubatch: int = 512
    threads: int | None = None  # None = physical cores
    threads_batch: int | None = None
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"
    swa_full: bool = False
    n_gpu_layers: int = 0
    tensor_split: tuple[float, ...] = ()
    main_gpu: int = 0
    repack: bool = True  # llama.cpp extra buffer types (use_extra_bufts)
    mmap: bool = True
    mlock: bool = False
    # security and limits
    api_keys_file: Path | None = None
    audit_log: Path | None = None
    audit_content: bool = False
    max_tokens_cap: int = 4096
    queue_size: int = 64
    chat_template: str | None = None
    reasoning_format: str = "auto"  # thinking into reasoning_content: auto, none (raw text) or a parser
    selftest: bool = True
    # seconds the decode loop may go without finishing a step before the engine counts as hung:
    # /health turns 503 and the process exits (5) so systemd or the supervisor restarts it. Far
    # above one step of a big model's prefill chunk on a slow CPU (tens of seconds).
    watchdog_s: int = 300
    max_body_bytes: int | None = None  # request body limit (413 above it); None = sized from n_ctx

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise UsageError("Invalid engine configuration: " + "; ".join(problems),
                             hint="fix the engine config (see docs/cli.md, aiboxctl serve)")

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML values (paths as strings, tensor_split as a list), in field order."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_mapping(cls, data: Any, *, source: str = "engine config", base_dir: Path | None = None):
        """Settings from a plain mapping (engine.yaml, a plan, an install manifest, CLI flags).
        Unknown keys and wrong types are errors naming ``source``; an explicit null means the
        default for a setting that cannot be null. Relative paths are resolved against
        ``base_dir`` (the config file's folder)."""
        if not isinstance(data, dict):
            raise UsageError(f"{source}: expected a mapping of engine settings")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise UsageError(f"{source}: unknown key(s): {', '.join(unknown)}",
                             hint="see the keys of EngineConfig in docs/cli.md (aiboxctl serve)")
        if cls._model_required and not data.get("model"):
            raise UsageError(f"{source}: 'model' (path of a .gguf file) is required")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            coerced = _coerce(name, value, source)
            if coerced is None and _FIELDS[name].default is not None:
                continue  # an explicit null means "the default" for non-nullable settings
            if isinstance(coerced, Path) and base_dir is not None and not coerced.is_absolute():
                coerced = base_dir / coerced
            kwargs[name] = coerced
        return cls(**kwargs)

    _model_required = False  # a class attribute, not a field: EngineConfig sets it


def validate(s: EngineSettings) -> list[str]:
    p: list[str] = []
    if s._model_required and not str(s.model or ""):
        p.append("model is required")
    for name in ("n_ctx", "parallel", "n_batch", "n_ubatch", "max_tokens_cap", "queue_size"):
        if int(getattr(s, name)) < 1:
            p.append(f"{name} must be ≥ 1")
    if int(s.watchdog_s) < 2:
        p.append("watchdog_s must be ≥ 2 (the idle loop beats every second)")
    if not 0 < s.port < 65536:
        p.append("port must be 1..65535")
    if s.max_body_bytes is not None and int(s.max_body_bytes) < 1024:
        p.append("max_body_bytes must be ≥ 1024 or null (sized from n_ctx)")
    for name in ("threads", "threads_batch"):
        v = getattr(s, name)
        if v is not None and int(v) < 1:
            p.append(f"{name} must be ≥ 1 or null")
    for name in ("cache_type_k", "cache_type_v"):
        if getattr(s, name) not in CACHE_TYPES:
            p.append(f"{name} must be one of {', '.join(CACHE_TYPES)}")
    if s.role not in ROLES:
        p.append(f"role must be one of {', '.join(ROLES)}")
    if s.reasoning_format not in REASONING_FORMATS:
        p.append(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}")
    if s.pooling not in POOLINGS:
        p.append(f"pooling must be one of {', '.join(POOLINGS)}")
    elif s.role == "rerank" and s.pooling not in ("auto", "rank"):
        p.append("a rerank engine pools with 'rank' (or 'auto')")
    elif s.role == "chat" and s.pooling != "auto":
        p.append("pooling applies to embedding and rerank engines only")
    if s.flash_attn not in FLASH_ATTN:
        p.append("flash_attn must be auto, on or off")
    if s.n_ubatch > s.n_batch:
        p.append("n_ubatch must be ≤ n_batch")
    if s.n_ctx < s.parallel:
        p.append("n_ctx must be ≥ parallel (each slot needs cells)")
    return p


# engine.yaml's sections: (comment, first field of the section), in field order.
SECTIONS: tuple[tuple[str | None, str], ...] = (
    (None, "model"),
    ("llama.cpp parameters (from the plan, fitted by the dry run)", "n_ctx"),
    ("security and limits", "api_keys_file"),
)


def sections(settings: EngineSettings) -> list[tuple[str | None, list[tuple[str, Any]]]]:
    """``settings.to_dict()`` cut into engine.yaml's commented sections (what the template renders)."""
    starts = {first: comment for comment, first in SECTIONS}
    out: list[tuple[str | None, list[tuple[str, Any]]]] = []
    for name, value in settings.to_dict().items():
        if name in starts or not out:
            out.append((starts.get(name), []))
        out[-1][1].append((name, value))
    return out


_FIELDS = {f.name: f for f in dataclasses.fields(EngineSettings)}
_BOOLS = {n for n, f in _FIELDS.items() if f.type == "bool"}
_INTS = {n for n, f in _FIELDS.items() if f.type in ("int", "int | None")}
_PATHS = {n for n, f in _FIELDS.items() if f.type == "Path | None"}
FIELD_NAMES = tuple(_FIELDS)


def _coerce(name: str, value: Any, source: str) -> Any:
    if value is None:
        return None
    if name in _PATHS:
        return Path(str(value)).expanduser()
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        raise UsageError(f"{source}: {name} must be true or false, not {value!r}")
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{source}: {name} must be an integer, not {value!r}")
        return value
    if name == "tensor_split":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) for v in value):
            raise UsageError(f"{source}: tensor_split must be a list of numbers")
        return tuple(float(v) for v in value)
    if name == "flash_attn" and isinstance(value, bool):  # YAML reads on/off as booleans
        return "on" if value else "off"
    return str(value)
