"""What the installed llama-cpp-python can drive, read from the library itself.

``read_engine_build()`` imports llama_cpp (about 0.3 s) and asks ggml's backend registry and
``llama_print_system_info``; no model is loaded. The answer is cached in the state root keyed
by the library files (name, size, mtime), the llama-cpp-python version and this CPU's flags,
so ``aiboxctl probe`` stays fast and a rebuilt or reinstalled engine is read afresh.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import time
from pathlib import Path

from aiboxctl.hardware.model import EngineBuild

CACHE_NAME = "engine-build.json"
CACHE_SCHEMA = 1


def _package_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _lib_dirs(pkg: Path | None) -> list[Path]:
    if pkg is None:
        return []
    # Portable builds (GGML_BACKEND_DL) install the backend modules to <site-packages>/bin.
    return [d for d in (pkg / "lib", pkg.parent / "bin") if d.is_dir()]


def _installed_version(pkg: Path | None) -> str | None:
    """From the dist-info folder name: importlib.metadata costs more to import than a
    cached probe is allowed to take."""
    if pkg is None:
        return None
    try:
        names = os.listdir(pkg.parent)
    except OSError:
        return None
    for name in names:
        m = re.fullmatch(r"llama_cpp_python-(.+)\.dist-info", name)
        if m:
            return m.group(1)
    return None


def _lib_files(dirs: list[Path]) -> list[Path]:
    return sorted(p for d in dirs for p in d.iterdir()
                  if p.name.startswith(("libggml", "libllama", "ggml", "llama")) and ".so" in p.name)


def _cpu_signature() -> str:
    """The CPU flags line: a DL build picks its CPU variant by them."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return ""


def _fingerprint(version: str | None, files: list[Path]) -> str:
    """Plain text, compared as a whole (hashlib would cost more to import than it saves)."""
    parts = [f"schema={CACHE_SCHEMA}", f"version={version}", f"machine={os.uname().machine}",
             f"cpu={_cpu_signature()}"]
    for p in files:
        try:
            st = p.stat()
            parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            parts.append(f"{p}:?")
    return "\n".join(parts)


def _variant_of(path: str) -> str | None:
    m = re.search(r"libggml-cpu-([\w.]+?)\.so", path)
    return m.group(1) if m else None


def read_engine_build(*, use_cache: bool = True, cache_dir: Path | None = None) -> EngineBuild:
    """Never raises: an engine that is missing or broken is an answer, with ``error`` set."""
    pkg = _package_dir()
    version = _installed_version(pkg)
    dirs = _lib_dirs(pkg)
    if version is None and not dirs:
        return EngineBuild(False, None, (), (), (), (), None, (), False, "", "live", None,
                           "llama-cpp-python is not installed")
    files = _lib_files(dirs)
    fingerprint = _fingerprint(version, files)
    cache = (cache_dir / CACHE_NAME) if cache_dir else None
    if use_cache and cache is not None:
        try:
            doc = json.loads(cache.read_text())
            if doc.get("fingerprint") == fingerprint:
                fields = {f.name for f in dataclasses.fields(EngineBuild)}
                data = {k: tuple(v) if isinstance(v, list) else v for k, v in doc["build"].items() if k in fields}
                return EngineBuild(**{**data, "source": "cache"})
        except (OSError, ValueError, KeyError, TypeError):
            pass
    build = _read_live(version, dirs, files)
    if cache is not None and build.available:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "build": dataclasses.asdict(build)}, indent=1))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only state root only costs the next probe 0.3 s
    return build


def _read_live(version: str | None, dirs: list[Path], files: list[Path]) -> EngineBuild:
    start = time.perf_counter()
    backend_libs = tuple(dict.fromkeys(re.sub(r"\.so(\.\d+)*$", ".so", p.name) for p in files
                                       if re.match(r"libggml-(?!base)[\w.-]+\.so", p.name)))
    variants = tuple(sorted({v for v in (_variant_of(p.name) for p in files) if v}))
    try:
        import ctypes

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
                if any(p.parent == d and p.name.startswith("libggml-") for p in files):
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
                    loaded = next((v for v in (_variant_of(line) for line in f) if v), None)
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
