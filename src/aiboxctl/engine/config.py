"""``EngineConfig``: everything ``aiboxctl serve`` needs, read from engine.yaml (contract 4).

The YAML keys are the field names below; all are optional except ``model``. Unknown keys are
an error (a typo must not silently fall back to a default), reported with the file name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.errors import UsageError

CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("auto", "on", "off")
BODY_BYTES_PER_CELL = 64  # default request body limit per KV cell (EngineConfig.body_limit)
BODY_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class EngineConfig:
    model: Path
    model_name: str | None = None  # id in /v1/models; default: the file name without .gguf
    host: str = "127.0.0.1"
    port: int = 8080
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
    api_keys_file: Path | None = None
    audit_log: Path | None = None
    audit_content: bool = False
    max_tokens_cap: int = 4096
    queue_size: int = 64
    chat_template: str | None = None
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

    @property
    def served_name(self) -> str:
        if self.model_name:
            return self.model_name
        name = Path(self.model).name
        return name[:-5] if name.lower().endswith(".gguf") else name

    @property
    def effective_threads(self) -> int:
        return self.threads or physical_cores()

    @property
    def effective_threads_batch(self) -> int:
        return self.threads_batch or self.effective_threads

    @property
    def slot_ctx(self) -> int:
        """Tokens one request may occupy (prompt + completion).

        With a unified KV cache any one sequence may use all cells, but then the others
        would starve; we give each slot an even share, as llama-server does."""
        return max(1, self.n_ctx // max(1, self.parallel))

    @property
    def body_limit(self) -> int:
        """Largest request body accepted, in bytes: ``max_body_bytes``, else
        ``BODY_BYTES_PER_CELL`` per KV cell with a floor of ``BODY_FLOOR_BYTES``. A prompt
        that fits the context is far smaller (a token is ~4 bytes of text, ~12 as escaped JSON
        CJK, ~7 as a token id), so nothing a slot could hold is refused, while a body the server
        would only parse to reject cannot cost seconds of CPU and gigabytes of memory."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return max(BODY_FLOOR_BYTES, BODY_BYTES_PER_CELL * self.n_ctx)

    def replace(self, **changes: Any) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


def physical_cores() -> int:
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except Exception:  # noqa: BLE001 - psutil missing or /proc unreadable: fall back
        n = None
    if not n:
        import os

        n = os.cpu_count() or 1
    return int(n)


def validate(cfg: EngineConfig) -> list[str]:
    p: list[str] = []
    if not str(cfg.model):
        p.append("model is required")
    for name in ("n_ctx", "parallel", "n_batch", "n_ubatch", "max_tokens_cap", "queue_size"):
        if int(getattr(cfg, name)) < 1:
            p.append(f"{name} must be ≥ 1")
    if int(cfg.watchdog_s) < 2:
        p.append("watchdog_s must be ≥ 2 (the idle loop beats every second)")
    if not 0 < cfg.port < 65536:
        p.append("port must be 1..65535")
    if cfg.max_body_bytes is not None and int(cfg.max_body_bytes) < 1024:
        p.append("max_body_bytes must be ≥ 1024 or null (sized from n_ctx)")
    for name in ("threads", "threads_batch"):
        v = getattr(cfg, name)
        if v is not None and int(v) < 1:
            p.append(f"{name} must be ≥ 1 or null")
    for name in ("cache_type_k", "cache_type_v"):
        if getattr(cfg, name) not in CACHE_TYPES:
            p.append(f"{name} must be one of {', '.join(CACHE_TYPES)}")
    if cfg.flash_attn not in FLASH_ATTN:
        p.append("flash_attn must be auto, on or off")
    if cfg.n_ubatch > cfg.n_batch:
        p.append("n_ubatch must be ≤ n_batch")
    if cfg.n_ctx < cfg.parallel:
        p.append("n_ctx must be ≥ parallel (each slot needs cells)")
    return p


_FIELDS = {f.name: f for f in dataclasses.fields(EngineConfig)}
_BOOLS = {n for n, f in _FIELDS.items() if f.type in ("bool",)}
_INTS = {n for n, f in _FIELDS.items() if f.type in ("int", "int | None")}
_PATHS = {"model", "api_keys_file", "audit_log"}


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


def engine_config_from_mapping(data: dict[str, Any], *, source: str = "engine config",
                               base_dir: Path | None = None) -> EngineConfig:
    """Build an EngineConfig from a plain mapping (YAML or CLI flags). Relative paths are
    resolved against ``base_dir`` (the config file's folder)."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of engine settings")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise UsageError(f"{source}: unknown key(s): {', '.join(unknown)}",
                         hint="see the keys of EngineConfig in docs/cli.md (aiboxctl serve)")
    if not data.get("model"):
        raise UsageError(f"{source}: 'model' (path of a .gguf file) is required")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if value is None and name in ("model",):
            continue
        coerced = _coerce(name, value, source)
        if coerced is None and _FIELDS[name].default is not None and name not in _PATHS \
                and name not in ("threads", "threads_batch", "model_name", "chat_template"):
            continue  # an explicit null means "the default" for non-nullable settings
        if isinstance(coerced, Path) and base_dir is not None and not coerced.is_absolute():
            coerced = base_dir / coerced
        kwargs[name] = coerced
    return EngineConfig(**kwargs)


def load_engine_config(path: str | Path) -> EngineConfig:
    """Read engine.yaml (contract 4)."""
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Engine config not found: {path}", hint="aiboxctl serve --model PATH") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return engine_config_from_mapping(data, source=str(path), base_dir=path.parent)
