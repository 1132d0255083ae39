"""The child process behind sizing's dry run: load a model with llama.cpp and report the log
lines that carry its buffer sizes (``python -m aiboxctl.engine.dryrun``).

Request on stdin, one JSON document: ``{"model": PATH, "mode": "dry"|"real", "params": [{…}]}``
where each params mapping has the keys of :class:`aiboxctl.sizing.memory.EngineParams`. Reply on
stdout, one JSON line: ``{"model_bytes": N, "results": [{"lines": [...]} | {"error": "..."}]}``,
or ``{"error": "..."}`` when the model does not load. Reading the lines is sizing's job
(:func:`aiboxctl.sizing.dryrun.parse_buffer_lines`); this module only drives llama.cpp.

``dry`` loads the model with ``no_alloc=True`` and ``load_mode=LLAMA_LOAD_MODE_NONE`` and creates
a context: llama.cpp then reserves its worst-case graphs and logs the exact compute and output
buffers while allocating nothing. ``real`` loads everything. A child, because llama.cpp aborts
the whole process on configurations it rejects, and its global state should not leak into the
caller.
"""

from __future__ import annotations

import json
import sys

from aiboxctl.engine.config import EngineConfig
from aiboxctl.engine_settings import FIELD_NAMES
from aiboxctl.errors import AiboxError

# The lines the sizing side reads: "<what>: <buft> <kind> buffer size = …", "llama_kv_cache:
# size = …", "llama_memory_recurrent: size = …" and the flash attention decision.
_WANTED = ("buffer size", "size =", "flash_attn")
_NOISE = ("llama_graph_n_input_tensors",)  # one line per graph built; buries the errors


def _engine_config(model: str, p: dict) -> EngineConfig:
    # ``p`` is sizing's EngineParams: engine settings by name, plus offload_kqv (set below).
    settings = {k: v for k, v in p.items() if k in FIELD_NAMES}
    return EngineConfig.from_mapping({**settings, "model": model, "threads": 1}, source="dry run request")


def run(request: dict) -> dict:
    from aiboxctl.engine.llama import capture_log_lines, context_params, llama_cpp_module, model_params

    mode = request["mode"]
    configs = [_engine_config(request["model"], p) for p in request["params"]]
    lines = capture_log_lines(skip=_NOISE)
    llama = llama_cpp_module()
    mp, keep = model_params(configs[0], llama)
    if mode == "dry":
        mp.no_alloc = True
        mp.load_mode = llama.LLAMA_LOAD_MODE_NONE  # without it load_tensors asserts !no_alloc
    model = llama.llama_model_load_from_file(str(configs[0].model).encode(), mp)
    if not model:
        return {"error": "could not load the model: " + " | ".join(lines[-3:])}
    model_lines = list(lines)
    model_bytes = int(llama.llama_model_size(model))
    results = []
    for cfg, p in zip(configs, request["params"]):
        mark = len(lines)
        cp = context_params(cfg, llama)
        cp.offload_kqv = bool(p.get("offload_kqv", True))
        ctx = llama.llama_init_from_model(model, cp)
        ctx_lines = lines[mark:]
        if not ctx:
            results.append({"error": "could not create the context: " + " | ".join(ctx_lines[-3:])})
            continue
        results.append({"lines": [ln for ln in model_lines + ctx_lines if any(w in ln for w in _WANTED)]})
        llama.llama_free(ctx)
    llama.llama_model_free(model)
    del keep
    return {"model_bytes": model_bytes, "results": results}


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        out = run(request)
    except AiboxError as exc:
        out = {"error": exc.message}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
