"""What the installed llama-cpp-python can drive, for ``probe``: the one reader of the installed
llama.cpp that never imports it.

What the files say (package folder, version from the dist-info name, the backend and CPU-variant
libraries) is read here. What only the loaded library can say (registered backends, devices,
CPU features, ``llama_print_system_info``) is asked of the engine's introspection child,
``python -m aiboxctl.engine.introspect``, started by module name: the hardware layer never
imports the engine, and a library that crashes on load (SIGILL on the wrong CPU) costs the
child, not the probe. The answer is cached in the state root keyed by the library files (name,
size, mtime), the llama-cpp-python version and this CPU's flags, so ``aiboxctl probe`` stays
fast and a rebuilt or reinstalled engine is read afresh.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.hardware.model import EngineBuild
from aiboxctl.system import run_command

CACHE_NAME = "engine-build.json"
CACHE_SCHEMA = 1
INTROSPECT_MODULE = "aiboxctl.engine.introspect"
LIVE_READ_TIMEOUT_S = 120.0  # importing llama_cpp and loading every backend module (CUDA: seconds)


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


def cpu_variant_of(path: str) -> str | None:
    m = re.search(r"libggml-cpu-([\w.]+?)\.so", path)
    return m.group(1) if m else None


@dataclass(frozen=True)
class InstalledFiles:
    """The installed llama-cpp-python as files: enough to fingerprint it and to know which
    backend modules a portable (GGML_BACKEND_DL) build must load."""

    package_dir: Path | None
    version: str | None
    lib_dirs: tuple[Path, ...]
    lib_files: tuple[Path, ...]

    @property
    def installed(self) -> bool:
        return self.version is not None or bool(self.lib_dirs)

    @property
    def backend_libraries(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(re.sub(r"\.so(\.\d+)*$", ".so", p.name) for p in self.lib_files
                                   if re.match(r"libggml-(?!base)[\w.-]+\.so", p.name)))

    @property
    def cpu_variants(self) -> tuple[str, ...]:
        return tuple(sorted({v for v in (cpu_variant_of(p.name) for p in self.lib_files) if v}))


def installed_files() -> InstalledFiles:
    pkg = _package_dir()
    dirs = _lib_dirs(pkg)
    return InstalledFiles(pkg, _installed_version(pkg), tuple(dirs), tuple(_lib_files(dirs)))


def ask_engine(python: str = sys.executable, args: Sequence[str] = (), *,
               timeout: float = LIVE_READ_TIMEOUT_S) -> dict[str, Any]:
    """Run ``python -m aiboxctl.engine.introspect ARGS`` and return its one JSON document; a
    child that dies, hangs or prints no JSON is an answer too (``engine.error`` says why)."""
    res = run_command([python, "-m", INTROSPECT_MODULE, *args], timeout=timeout)
    for line in reversed(res.stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    reason = res.failure_reason() or "no answer"
    return {"engine": {"available": False, "error": f"the engine inspection child failed: {reason}"}}


def read_engine_build(*, use_cache: bool = True, cache_dir: Path | None = None) -> EngineBuild:
    """This interpreter's engine. Never raises: an engine that is missing or broken is an
    answer, with ``error`` set."""
    files = installed_files()
    if not files.installed:
        return EngineBuild(False, None, (), (), (), (), None, (), False, "", "live", None,
                           "llama-cpp-python is not installed")
    fingerprint = _fingerprint(files.version, list(files.lib_files))
    cache = (cache_dir / CACHE_NAME) if cache_dir else None
    if use_cache and cache is not None:
        try:
            doc = json.loads(cache.read_text())
            if doc.get("fingerprint") == fingerprint:
                return EngineBuild(**{**_fields(doc["build"]), "source": "cache"})
        except (OSError, ValueError, KeyError, TypeError):
            pass
    build = _from_child(ask_engine(sys.executable), files)
    if cache is not None and build.available:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "build": dataclasses.asdict(build)}, indent=1))
            os.replace(tmp, cache)
        except OSError:
            pass  # a read-only state root only costs the next probe a live read
    return build


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(EngineBuild)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}


def _from_child(doc: dict[str, Any], files: InstalledFiles) -> EngineBuild:
    """The introspection child's ``engine`` document as an EngineBuild (its ``devices`` carry
    memory; the build lists them by name)."""
    engine = doc.get("engine") or {}
    known = _fields({k: v for k, v in engine.items() if k != "devices"})
    base = {"available": False, "llama_cpp_python_version": files.version, "backends": (), "devices": (),
            "backend_libraries": files.backend_libraries, "cpu_variants": files.cpu_variants,
            "cpu_variant_loaded": None, "cpu_features": (), "gpu_offload": False, "system_info": "",
            "source": "live", "read_seconds": None, "error": None}
    build = EngineBuild(**{**base, **known, "devices": tuple(engine.get("device_names") or ())})
    if not build.available and not build.error:
        build = dataclasses.replace(build, error=engine.get("error") or doc.get("error") or "llama_cpp does not load")
    return build
