"""``EngineConfig``: everything ``aiboxctl serve`` needs, read from engine.yaml (contract 4).

The settings themselves (keys, defaults, validation, reading a mapping with file-named errors)
are :class:`aiboxctl.engine_settings.EngineSettings`; an EngineConfig is those settings with a
model file, plus what serving derives from them (served name, threads, slot context, body limit).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from aiboxctl.engine_settings import CACHE_TYPES, FLASH_ATTN, EngineSettings, validate
from aiboxctl.errors import UsageError

__all__ = ["CACHE_TYPES", "FLASH_ATTN", "BODY_BYTES_PER_CELL", "BODY_FLOOR_BYTES", "EngineConfig",
           "engine_config_from_mapping", "load_engine_config", "physical_cores", "validate"]

BODY_BYTES_PER_CELL = 64  # default request body limit per KV cell (EngineConfig.body_limit)
BODY_FLOOR_BYTES = 1 << 20


@dataclass(frozen=True)
class EngineConfig(EngineSettings):
    # Required here (no default, not the base's None): the file serve loads; a plan has none yet.
    model: Path = field(default=MISSING)

    _model_required = True

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


def engine_config_from_mapping(data: dict[str, Any], *, source: str = "engine config",
                               base_dir: Path | None = None) -> EngineConfig:
    """Build an EngineConfig from a plain mapping (YAML or CLI flags). Relative paths are
    resolved against ``base_dir`` (the config file's folder)."""
    return EngineConfig.from_mapping(data, source=source, base_dir=base_dir)


def load_engine_config(path: str | Path) -> EngineConfig:
    """Read engine.yaml (contract 4)."""
    import yaml

    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"Engine config not found: {path}", hint="aiboxctl serve --model PATH") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text (an engine.yaml is YAML)") from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise UsageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return engine_config_from_mapping(data, source=str(path), base_dir=path.parent)
