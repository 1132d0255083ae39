"""What the installed llama-cpp-python really is, asked of the library itself.

Runs as a child (``python -m aiboxctl.engine.introspect``) of the interpreter whose engine is
asked about, so ``engine status`` never guesses and ``engine install`` can inspect a freshly
installed wheel (the parent may still have the old library mapped) and survive one that
crashes on load. Prints one JSON line; with ``--selftest CONFIG_JSON`` it also runs the engine
self-test (:func:`aiboxctl.engine.selftest.run_selftest`) in that interpreter.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any

# ggml_backend_dev_type
DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def _fn(lib: Any, name: str, restype: Any, argtypes: list[Any]) -> Any:
    fn = getattr(lib, name)
    fn.restype = restype
    fn.argtypes = argtypes
    return fn


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", errors="replace") if raw else ""


def device_memory() -> list[dict[str, Any]]:
    """Every device the registered backends see, with its memory (PROBE's EngineBuild lists
    devices by name only). Call after the backends are loaded."""
    from llama_cpp import llama_cpp as low

    lib = low._lib
    vp = ctypes.c_void_p
    reg_name = _fn(lib, "ggml_backend_reg_name", ctypes.c_char_p, [vp])
    dev_count = _fn(lib, "ggml_backend_dev_count", ctypes.c_size_t, [])
    dev_get = _fn(lib, "ggml_backend_dev_get", vp, [ctypes.c_size_t])
    dev_name = _fn(lib, "ggml_backend_dev_name", ctypes.c_char_p, [vp])
    dev_desc = _fn(lib, "ggml_backend_dev_description", ctypes.c_char_p, [vp])
    dev_mem = _fn(lib, "ggml_backend_dev_memory", None, [vp, ctypes.POINTER(ctypes.c_size_t),
                                                         ctypes.POINTER(ctypes.c_size_t)])
    dev_type = _fn(lib, "ggml_backend_dev_type", ctypes.c_int, [vp])
    dev_reg = _fn(lib, "ggml_backend_dev_backend_reg", vp, [vp])
    devices = []
    for i in range(dev_count()):
        dev = dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        dev_mem(dev, ctypes.byref(free), ctypes.byref(total))
        kind = int(dev_type(dev))
        devices.append({
            "name": _text(dev_name(dev)),
            "description": _text(dev_desc(dev)),
            "type": DEVICE_TYPES.get(kind, str(kind)),
            "backend": _text(reg_name(dev_reg(dev))),
            "memory_total_bytes": int(total.value),
            "memory_free_bytes": int(free.value),
        })
    return devices


def read_engine() -> dict[str, Any]:
    """PROBE's :func:`~aiboxctl.hardware.engine_build.read_engine_build` (read live, which also
    loads a portable build's backend modules), plus the devices with memory and where the
    distribution is installed."""
    import dataclasses
    from importlib import metadata

    from aiboxctl.hardware.engine_build import read_engine_build

    out: dict[str, Any] = {"available": False, "python": sys.executable}
    try:
        dist = metadata.distribution("llama_cpp_python")
        out["version"] = dist.version
        dist_info = getattr(dist, "_path", None)
        out["dist_info"] = str(dist_info) if dist_info else None
    except metadata.PackageNotFoundError:
        out["error"] = "llama-cpp-python is not installed"
        return out
    build = read_engine_build(use_cache=False)
    out.update({k: v for k, v in dataclasses.asdict(build).items() if k != "devices"})
    out["device_names"] = list(build.devices)
    if not build.available:
        out["error"] = build.error or "llama_cpp does not load"
        return out
    out["devices"] = device_memory()
    return out


def main(argv: list[str]) -> int:
    result: dict[str, Any] = {}
    try:
        result["engine"] = read_engine()
        if "--selftest" in argv:
            from aiboxctl.cli.output import to_jsonable
            from aiboxctl.engine.config import engine_config_from_mapping
            from aiboxctl.engine.selftest import run_selftest

            config = engine_config_from_mapping(json.loads(argv[argv.index("--selftest") + 1]),
                                                source="engine install self-test")
            result["selftest"] = to_jsonable(run_selftest(config))
    except Exception as exc:  # noqa: BLE001 - one JSON line for the parent, always
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
