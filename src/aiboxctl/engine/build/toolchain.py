"""Is the compiler toolchain for a llama.cpp backend installed? Checked before a build starts.

A CUDA build that fails after 20 minutes because cuBLAS is missing wastes an afternoon; a
check that names the missing piece in one line costs milliseconds. Each backend lists what
ggml's CMake needs (compiler, BLAS library, headers), where vendors install it by default,
and the one line that says what to install. The environment a found toolchain needs for the
build (CUDACXX, HIPCXX/HIP_PATH, MUSA_PATH, ASCEND_TOOLKIT_HOME) comes back with the result.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.errors import AiboxError

# Where vendors install their toolkits when no environment variable says otherwise.
DEFAULT_ROOTS: dict[str, tuple[str, ...]] = {
    "cuda": ("/usr/local/cuda", "/opt/cuda", "/usr"),
    "hip": ("/opt/rocm", "/opt/dtk"),
    "hygon": ("/opt/dtk", "/opt/rocm"),
    "musa": ("/usr/local/musa", "/opt/musa"),
    "cann": ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann"),
    "vulkan": ("/usr",),
    "sycl": ("/opt/intel/oneapi",),
}

# The environment variables that name a toolkit root (the first set one wins, and then only it
# is searched: an explicit choice must not silently fall back to another install).
ROOT_ENV: dict[str, tuple[str, ...]] = {
    "cuda": ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"),
    "hip": ("ROCM_PATH", "HIP_PATH"),
    "musa": ("MUSA_PATH",),
    "cann": ("ASCEND_TOOLKIT_HOME",),
    "vulkan": ("VULKAN_SDK",),
    "sycl": ("ONEAPI_ROOT",),
}

INSTALL_HINTS: dict[str, str] = {
    "compiler": "install a C/C++ compiler (apt install build-essential, or dnf install gcc-c++)",
    "cuda": "install the CUDA toolkit with cuBLAS (apt install nvidia-cuda-toolkit, or NVIDIA's "
            "cuda-toolkit package) or set CUDA_HOME to it",
    "hip": "install ROCm with hipBLAS and rocBLAS (apt install rocm-hip-sdk) or set ROCM_PATH to it",
    "hygon": "install Hygon's DTK (it brings hipcc, hipBLAS and rocBLAS) and `source /opt/dtk/env.sh`",
    "musa": "install the Moore Threads MUSA SDK (musa_toolkits with muBLAS) into /usr/local/musa "
            "or set MUSA_PATH to it",
    "cann": "install the Ascend CANN toolkit and `source /usr/local/Ascend/ascend-toolkit/set_env.sh`",
    "vulkan": "install the Vulkan headers, loader, glslc and SPIR-V headers "
              "(apt install libvulkan-dev glslc spirv-headers, or the LunarG Vulkan SDK)",
    "sycl": "install the Intel oneAPI Base Toolkit (DPC++ compiler and oneMKL) and "
            "`source /opt/intel/oneapi/setvars.sh`",
}

LABELS = {"cpu": "CPU", "cuda": "CUDA", "hip": "HIP (ROCm)", "hygon": "HIP (Hygon DTK)", "musa": "MUSA",
          "cann": "CANN", "vulkan": "Vulkan", "sycl": "SYCL"}


@dataclass(frozen=True)
class Toolchain:
    backend: str
    ok: bool
    root: str | None  # the toolkit folder used
    found: tuple[str, ...]  # "nvcc: /usr/local/cuda/bin/nvcc", ...
    missing: tuple[str, ...]  # "cuBLAS (libcublas.so) under /usr/local/cuda", ...
    install_hint: str | None  # one line: what to install
    build_env: tuple[tuple[str, str], ...] = ()  # extra environment for the build

    @property
    def message(self) -> str:
        label = LABELS.get(self.backend, self.backend)
        if self.ok:
            return f"{label} toolchain found" + (f" in {self.root}" if self.root else "")
        return f"Cannot build the {label} engine: missing {'; '.join(self.missing)}"


class _Probe:
    """Collects what was found and missed for one backend."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.found: list[str] = []
        self.missing: list[str] = []
        self.build_env: dict[str, str] = {}

    def which(self, name: str, extra_dirs: Sequence[Path] = ()) -> str | None:
        path = self.env.get("PATH", "")
        found = shutil.which(name, path=os.pathsep.join([*(str(d) for d in extra_dirs), path]))
        return found

    def need_exe(self, label: str, names: Sequence[str], extra_dirs: Sequence[Path] = (),
                 where: str = "PATH") -> str | None:
        for name in names:
            exe = self.which(name, extra_dirs)
            if exe:
                self.found.append(f"{label}: {exe}")
                return exe
        self.missing.append(f"{label} ({' or '.join(names)}) on {where}")
        return None

    def need_file(self, label: str, candidates: Sequence[Path], where: str) -> Path | None:
        for pattern in candidates:
            hits = sorted(pattern.parent.glob(pattern.name)) if any(c in str(pattern) for c in "*?[") else \
                ([pattern] if pattern.exists() else [])
            if hits:
                self.found.append(f"{label}: {hits[0]}")
                return hits[0]
        self.missing.append(f"{label} under {where}")
        return None


def _roots(kind: str, env: Mapping[str, str], defaults: Mapping[str, Sequence[str]]) -> list[Path]:
    for var in ROOT_ENV.get("hip" if kind == "hygon" else kind, ()):
        if env.get(var):
            return [Path(env[var])]
    return [Path(p) for p in defaults.get(kind, ())]


def _libdirs(root: Path) -> list[Path]:
    dirs = [root / "lib64", root / "lib"]
    dirs += sorted((root / "targets").glob("*/lib")) if (root / "targets").is_dir() else []
    dirs += sorted(root.glob("lib/*-linux-gnu"))
    return dirs


def _lib(root: Path, name: str) -> list[Path]:
    return [d / f"lib{name}.so*" for d in _libdirs(root)]


def _compilers(p: _Probe) -> None:
    p.need_exe("C compiler", ("cc", "gcc", "clang"))
    p.need_exe("C++ compiler", ("c++", "g++", "clang++"))


def _first_root(kind: str, env: Mapping[str, str], defaults: Mapping[str, Sequence[str]],
                marker: Sequence[str], p: _Probe, *, from_path: str | None = None,
                prefer: str | None = None) -> Path | None:
    """The first toolkit root holding one of ``marker`` (relative paths). A tool on PATH adds its
    install root (``<root>/bin/<tool>``) as a candidate after an explicit env variable."""
    roots = _roots(kind, env, defaults)
    explicit = any(env.get(v) for v in ROOT_ENV.get("hip" if kind == "hygon" else kind, ()))
    if from_path and not explicit:
        exe = p.which(from_path)
        if exe:
            roots.insert(0, Path(os.path.realpath(exe)).parent.parent)
    usable = [r for r in roots if any((r / m).exists() for m in marker)]
    # Prefer a root that also has the headers (/usr/local/bin/nvcc may be a wrapper script).
    complete = [r for r in usable if prefer and (r / prefer).exists()]
    return (complete or usable or [None])[0]


def check_toolchain(backend: str, *, env: Mapping[str, str] | None = None, hygon: bool = False,
                    defaults: Mapping[str, Sequence[str]] | None = None) -> Toolchain:
    """What the ``backend`` build needs, found or missing. Never raises."""
    env = dict(os.environ if env is None else env)
    defaults = DEFAULT_ROOTS if defaults is None else defaults
    p = _Probe(env)
    _compilers(p)
    compiler_misses = len(p.missing)
    kind = "hygon" if backend == "hip" and hygon else backend
    root: Path | None = None

    if backend == "cuda":
        root = _first_root("cuda", env, defaults, ("bin/nvcc",), p, from_path="nvcc",
                           prefer="include/cuda_runtime.h")
        where = str(root) if root else "CUDA_HOME, PATH, " + ", ".join(defaults.get("cuda", ()))
        if root is None:
            p.missing.append(f"nvcc (the CUDA compiler) in {where}")
        else:
            p.found.append(f"nvcc: {root / 'bin' / 'nvcc'}")
            p.need_file("cuBLAS (libcublas.so)", _lib(root, "cublas"), str(root))
            p.need_file("CUDA runtime headers (cuda_runtime.h)",
                        [root / "include" / "cuda_runtime.h", *[d.parent / "include" / "cuda_runtime.h"
                                                               for d in _libdirs(root)]], str(root))
            p.build_env["CUDACXX"] = str(root / "bin" / "nvcc")
    elif backend == "hip":
        root = _first_root(kind, env, defaults, ("bin/hipcc", "bin/hipconfig"), p, from_path="hipcc",
                           prefer="include/hip/hip_runtime.h")
        where = str(root) if root else "ROCM_PATH, PATH, " + ", ".join(defaults.get(kind, ()))
        if root is None:
            p.missing.append(f"hipcc (the HIP compiler) in {where}")
        else:
            p.found.append(f"hipcc: {root / 'bin' / 'hipcc'}")
            clang = p.need_file("HIP clang (llvm/bin/clang)", [root / "llvm" / "bin" / "clang"], str(root))
            p.need_file("hipBLAS (libhipblas.so)", _lib(root, "hipblas"), str(root))
            p.need_file("rocBLAS (librocblas.so)", _lib(root, "rocblas"), str(root))
            p.build_env.update({"HIP_PATH": str(root), "ROCM_PATH": str(root)})
            if clang:
                p.build_env["HIPCXX"] = str(clang)
    elif backend == "musa":
        root = _first_root("musa", env, defaults, ("bin/clang++", "bin/mcc"), p)
        where = str(root) if root else "MUSA_PATH, " + ", ".join(defaults.get("musa", ()))
        if root is None:
            p.missing.append(f"the MUSA SDK compiler (bin/clang++) in {where}")
        else:
            p.found.append(f"MUSA clang++: {root / 'bin' / 'clang++'}")
            p.need_file("muBLAS (libmublas.so)", _lib(root, "mublas"), str(root))
            p.build_env["MUSA_PATH"] = str(root)
    elif backend == "cann":
        root = _first_root("cann", env, defaults, ("include/acl/acl.h", "runtime/include/acl/acl.h"), p)
        where = str(root) if root else "ASCEND_TOOLKIT_HOME, " + ", ".join(defaults.get("cann", ()))
        if root is None:
            p.missing.append(f"the CANN toolkit (include/acl/acl.h) in {where}")
        else:
            p.found.append(f"CANN: {root}")
            p.need_file("AscendCL (libascendcl.so)", [*_lib(root, "ascendcl"),
                                                     root / "runtime" / "lib64" / "libascendcl.so"], str(root))
            p.build_env["ASCEND_TOOLKIT_HOME"] = str(root)
    elif backend == "vulkan":
        roots = _roots("vulkan", env, defaults)
        root = roots[0] if roots else None
        incs = [r / "include" for r in roots]
        p.need_file("Vulkan headers (vulkan/vulkan.h)", [i / "vulkan" / "vulkan.h" for i in incs],
                    ", ".join(map(str, incs)) or "VULKAN_SDK")
        p.need_file("SPIR-V headers (spirv/unified1/spirv.hpp)",
                    [i / "spirv" / "unified1" / "spirv.hpp" for i in incs], ", ".join(map(str, incs)) or "VULKAN_SDK")
        p.need_file("the Vulkan loader (libvulkan.so)", [g for r in roots for g in _lib(r, "vulkan")],
                    ", ".join(map(str, roots)) or "VULKAN_SDK")
        p.need_exe("the shader compiler", ("glslc",), [r / "bin" for r in roots])
    elif backend == "sycl":
        roots = _roots("sycl", env, defaults)
        root = roots[0] if roots else None
        p.need_exe("the oneAPI C compiler", ("icx",), where="PATH (source setvars.sh)")
        p.need_exe("the oneAPI DPC++ compiler", ("icpx",), where="PATH (source setvars.sh)")
        mkl = [Path(env["MKLROOT"])] if env.get("MKLROOT") else [r / "mkl" / "latest" for r in roots]
        p.need_file("oneMKL (libmkl_sycl*.so)", [g for r in mkl for g in _lib(r, "mkl_sycl*")],
                    ", ".join(map(str, mkl)) or "MKLROOT")
    elif backend != "cpu":
        raise ValueError(f"unknown backend {backend!r}")

    hints = []
    if compiler_misses:
        hints.append(INSTALL_HINTS["compiler"])
    if len(p.missing) > compiler_misses:
        hints.append(INSTALL_HINTS[kind])
    hint = "; ".join(hints) or None
    return Toolchain(backend, not p.missing, str(root) if root else None, tuple(p.found), tuple(p.missing),
                     hint, tuple(sorted(p.build_env.items())))


def require_toolchain(backend: str, **kwargs) -> Toolchain:
    """:func:`check_toolchain`, raising one line naming what to install when something is missing."""
    tc = check_toolchain(backend, **kwargs)
    if not tc.ok:
        raise AiboxError(tc.message, code="toolchain_missing", hint=tc.install_hint,
                         data={"toolchain": {"backend": tc.backend, "missing": list(tc.missing),
                                             "found": list(tc.found)}})
    return tc
