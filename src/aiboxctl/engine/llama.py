"""The thin adapter over llama-cpp-python's low-level (ctypes) API.

Everything that knows llama.cpp's C structs lives here: loading libllama (and, for the
portable ``GGML_BACKEND_DL`` build, its CPU variants), turning an :class:`EngineConfig` into
model and context parameters, tokenising and detokenising. The scheduler, the self-test and
the backends work (engine/backends.py) build on it; none of them touch ctypes structs.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiboxctl.errors import AiboxError, UsageError

if TYPE_CHECKING:
    from aiboxctl.engine.config import EngineConfig

log = logging.getLogger("aiboxctl.engine")

_INIT_LOCK = threading.Lock()
_INITIALISED = False
_LOG_LINES: deque[str] = deque(maxlen=400)  # recent llama.cpp log lines (buffer sizes, errors)
_LOG_CALLBACK: Any = None  # keep the ctypes callback alive, or the process crashes on the next log
_LOG_LISTENERS: list[Callable[[str], None]] = []  # see capture_log_lines

# ggml log levels: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 cont
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}


def llama_cpp_module() -> Any:
    """Import llama_cpp, route its log through ``logging`` and load backends once."""
    global _INITIALISED
    import llama_cpp

    with _INIT_LOCK:
        if not _INITIALISED:
            _install_log_callback(llama_cpp)
            load_backends(llama_cpp)
            llama_cpp.llama_backend_init()
            _INITIALISED = True
    return llama_cpp


def _install_log_callback(llama_cpp: Any) -> None:
    global _LOG_CALLBACK
    pending: list[str] = []

    def _on_log(level: int, text: bytes, _user: Any) -> None:
        try:
            piece = text.decode("utf-8", errors="replace") if text else ""
            pending.append(piece)
            if not piece.endswith("\n"):
                return
            line = "".join(pending).rstrip("\n")
            pending.clear()
            _LOG_LINES.append(line)
            for listener in _LOG_LISTENERS:
                listener(line)
            log.log(_LEVELS.get(level, logging.DEBUG), "llama.cpp: %s", line)
        except Exception:  # noqa: BLE001 - never raise into C
            pass

    _LOG_CALLBACK = llama_cpp.llama_log_callback(_on_log)
    llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


def capture_log_lines(*, skip: tuple[str, ...] = ()) -> list[str]:
    """A list that receives every whole llama.cpp log line from now on, for the life of the
    process (the recent tail keeps 400, and a graph dump can push the buffer lines out of it);
    lines containing any of ``skip`` are left out. Installs the log callback if need be."""
    lines: list[str] = []
    _LOG_LISTENERS.append(lambda line: None if any(s in line for s in skip) else lines.append(line))
    llama_cpp_module()
    return lines


def backend_variant_dirs(llama_cpp: Any) -> list[Path]:
    """Folders holding the portable build's CPU variants (``libggml-cpu-<isa>.so``)."""
    pkg = Path(llama_cpp.__file__).resolve().parent
    out = []
    for folder in (pkg.parent / "bin", pkg / "lib", pkg / "bin"):
        if any(folder.glob("libggml-cpu-*.so")):
            out.append(folder)
    return out


def load_backends(llama_cpp: Any) -> list[str]:
    """With ``GGML_BACKEND_DL`` llama-cpp-python does not load its backend variants itself;
    load them through llama_cpp's *own* library handle (a separate CDLL of libggml would get
    a different backend registry). Returns the folders loaded from."""
    lib = llama_cpp.llama_cpp._lib
    loaded: list[str] = []
    try:
        fn = lib.ggml_backend_load_all_from_path
    except AttributeError:  # statically linked backends: nothing to load
        return loaded
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = None
    for folder in backend_variant_dirs(llama_cpp):
        fn(str(folder).encode())
        loaded.append(str(folder))
    return loaded


def system_info() -> str:
    return llama_cpp_module().llama_print_system_info().decode("utf-8", errors="replace").strip()


_CACHE_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q4_0": "Q4_0",
                "q4_1": "Q4_1", "iq4_nl": "IQ4_NL", "q5_0": "Q5_0", "q5_1": "Q5_1"}


def model_params(config: "EngineConfig", llama_cpp: Any) -> tuple[Any, list[Any]]:
    """llama_model_params for a config, plus the ctypes objects that must outlive the load."""
    p = llama_cpp.llama_model_default_params()
    keep: list[Any] = []
    p.n_gpu_layers = int(config.n_gpu_layers)
    p.main_gpu = int(config.main_gpu)
    p.use_extra_bufts = bool(config.repack)
    if config.tensor_split:
        arr = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)()
        for i, v in enumerate(config.tensor_split[: llama_cpp.LLAMA_MAX_DEVICES]):
            arr[i] = float(v)
        keep.append(arr)
        p.tensor_split = arr
        p.split_mode = llama_cpp.LLAMA_SPLIT_MODE_LAYER
    if config.mmap and config.mlock:
        p.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK
    elif config.mmap:
        p.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    elif config.mlock:
        p.load_mode = llama_cpp.LLAMA_LOAD_MODE_MLOCK
    else:
        p.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return p, keep


def context_params(config: "EngineConfig", llama_cpp: Any) -> Any:
    c = llama_cpp.llama_context_default_params()
    c.n_ctx = int(config.n_ctx)
    c.n_batch = int(config.n_batch)
    c.n_ubatch = int(config.n_ubatch)
    c.n_seq_max = int(config.parallel)
    c.n_threads = int(config.effective_threads)
    c.n_threads_batch = int(config.effective_threads_batch)
    c.type_k = getattr(llama_cpp, f"GGML_TYPE_{_CACHE_TYPES[config.cache_type_k]}")
    c.type_v = getattr(llama_cpp, f"GGML_TYPE_{_CACHE_TYPES[config.cache_type_v]}")
    c.flash_attn_type = {"auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
                         "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                         "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}[config.flash_attn]
    c.swa_full = bool(config.swa_full)
    c.kv_unified = bool(config.kv_unified)
    c.no_perf = True
    return c


class LlamaRuntime:
    """A loaded model and one context. Owned by a single thread (the decode loop)."""

    def __init__(self, config: "EngineConfig") -> None:
        self.config = config
        path = Path(config.model)
        if not path.is_file():
            raise UsageError(f"Model file not found: {path}", hint="aiboxctl pull, or check 'model' in the engine config")
        self.lib = L = llama_cpp_module()
        mparams, self._keep = model_params(config, L)
        self.model = L.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise AiboxError(f"llama.cpp could not load {path}: {_last_error()}", code="model_load_failed",
                             hint="check that the file is a complete GGUF (aiboxctl pull --verify)")
        self.ctx = L.llama_init_from_model(self.model, self._context_params(config, L))
        if not self.ctx:
            L.llama_model_free(self.model)
            raise AiboxError(f"llama.cpp could not create a context for {path}: {_last_error()}",
                             code="context_failed", hint="lower n_ctx / parallel, or check free memory")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.mem = L.llama_get_memory(self.ctx)
        self.n_ctx = int(L.llama_n_ctx(self.ctx))
        self.n_vocab = int(L.llama_vocab_n_tokens(self.vocab))
        self.n_swa = int(L.llama_model_n_swa(self.model)) if hasattr(L, "llama_model_n_swa") else 0
        self.add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        self._piece_cache: dict[int, bytes] = {}
        self._eog_cache: dict[int, bool] = {}
        self._piece_buf = ctypes.create_string_buffer(256)

    def _context_params(self, config: "EngineConfig", L: Any) -> Any:
        """The context's parameters (engine/embedding.py's pooled runtime changes them)."""
        return context_params(config, L)

    # --- metadata -----------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        L = self.lib
        buf = ctypes.create_string_buffer(1 << 20)
        n = L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            L.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        raw = self.lib.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", errors="replace") if raw else None

    def token_text(self, token: int) -> str:
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    @property
    def bos_token(self) -> int:
        return int(self.lib.llama_vocab_bos(self.vocab))

    @property
    def eos_token(self) -> int:
        return int(self.lib.llama_vocab_eos(self.vocab))

    # --- tokens -------------------------------------------------------------------------
    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        L = self.lib
        data = text.encode("utf-8")
        cap = len(data) + 8
        arr = (L.llama_token * cap)()
        n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            arr = (L.llama_token * cap)()
            n = L.llama_tokenize(self.vocab, data, len(data), arr, cap, add_special, parse_special)
        return list(arr[:n])

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (cached: the per-token cost of streaming stays a dict hit)."""
        key = token if not special else -1 - token
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        buf = self._piece_buf
        n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self.lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        out = buf.raw[:n]
        self._piece_cache[key] = out
        return out

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (cached like ``piece``: asked for every token)."""
        known = self._eog_cache.get(token)
        if known is None:
            known = self._eog_cache[token] = bool(self.lib.llama_vocab_is_eog(self.vocab, token))
        return known

    def close(self) -> None:
        L = self.lib
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None


def _last_error() -> str:
    for line in reversed(_LOG_LINES):
        low = line.lower()
        if "error" in low or "failed" in low:
            return line.strip()[:300]
    return "see the log"
