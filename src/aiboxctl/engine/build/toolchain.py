"""Is the compiler toolchain for a llama.cpp backend installed? Checked before a build starts.

A CUDA build that fails after 20 minutes because cuBLAS is missing wastes an afternoon; a
check that names the missing piece in one line costs milliseconds. Each backend lists what
ggml's CMake needs (compiler, BLAS library, headers), where vendors install it by default,
and the one line that says what to install. The environment a found toolchain needs for the
build (CUDACXX, HIPCXX/HIP_PATH, MUSA_PATH, ASCEND_TOOLKIT_HOME) comes back with the result.

cuBLAS need not come with the CUDA toolkit: PyPI's ``nvidia-cublas`` wheel (CUDA 13; the CUDA 12
one is ``nvidia-cublas-cu12``) ships its headers and ``libcublas.so.13``/``libcublasLt.so.13``
under ``site-packages/nvidia/cu13`` (``nvidia/cublas`` for CUDA 12). When the toolkit has none,
the running python's site-packages (or the folder ``AIBOX_CUBLAS_DIR`` names) is searched, and
the CMake arguments that make ggml-cuda use it come back in :attr:`Toolchain.cmake_args`:
FindCUDAToolkit's ``CUDA_cublas_LIBRARY``/``CUDA_cublasLt_LIBRARY`` cache entries (it looks for
an unversioned ``libcublas.so``, which the wheel lacks), the include folder for nvcc, and a
run-time search path ``$ORIGIN/../../nvidia/cu13/lib:$ORIGIN/../nvidia/cu13/lib``: the
engine's ``libggml-cuda.so`` (installed both in ``site-packages/llama_cpp/lib`` and, by ggml's
rule for backend modules, ``site-packages/bin``) then finds the cuBLAS of the same site-packages
wherever that environment lives (CMake also records the build folder's absolute path).
"""

from __future__ import annotations

import os
import re
import shutil
import site
import sysconfig
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
    "cublas": "pip install nvidia-cublas (CUDA 13; nvidia-cublas-cu12 for CUDA 12) into aiboxctl's "
              "python, or install cuBLAS with the CUDA toolkit, or set AIBOX_CUBLAS_DIR to a folder "
              "holding include/cublas_v2.h and lib/libcublas.so*",
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
    cmake_args: tuple[str, ...] = ()  # extra CMake arguments for the build (cuBLAS from a wheel)
    # CUDA without a driver library to link (no driver, no toolkit stub): the build makes a
    # link stub from the cuda.h in this folder (:mod:`aiboxctl.engine.build.cudastub`)
    cuda_stub_include: str | None = None

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


# Where the NVIDIA PyPI wheels put cuBLAS, relative to site-packages, by CUDA major version
# (nvidia-cublas 13.x: nvidia/cu13; nvidia-cublas-cu12: nvidia/cublas).
CUBLAS_WHEEL_DIRS: dict[int, str] = {13: "nvidia/cu13", 12: "nvidia/cublas"}
CUBLAS_DIR_ENV = "AIBOX_CUBLAS_DIR"
# Where a driver install puts libcuda.so (the toolkit's own lib64/stubs is searched first).
DRIVER_DIRS: tuple[str, ...] = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def find_cuda_driver(root: Path, driver_dirs: Sequence[str] | None = None) -> Path | None:
    """The libcuda.so the build can link: the toolkit's stub, else the driver's library."""
    extra = DRIVER_DIRS if driver_dirs is None else driver_dirs
    dirs = [d / "stubs" for d in _libdirs(root)] + _libdirs(root) + [Path(d) for d in extra]
    for d in dirs:
        hits = sorted(d.glob("libcuda.so*"), key=lambda q: (len(q.name), q.name)) if d.is_dir() else []
        if hits:
            return hits[0]
    return None


def python_site_dirs() -> list[Path]:
    """The running python's site-packages folders (where ``pip install nvidia-cublas`` puts it)."""
    dirs = [sysconfig.get_paths()[k] for k in ("platlib", "purelib")]
    try:
        dirs += site.getsitepackages()
    except AttributeError:  # some embedded pythons lack it
        pass
    out: list[Path] = []
    for d in dirs:
        if d and Path(d) not in out:
            out.append(Path(d))
    return out


def cuda_major(root: Path) -> int | None:
    """The toolkit's CUDA major version, from CUDART_VERSION in its cuda_runtime_api.h."""
    for inc in [root / "include", *(d.parent / "include" for d in _libdirs(root))]:
        header = inc / "cuda_runtime_api.h"
        if header.is_file():
            m = re.search(r"#define\s+CUDART_VERSION\s+(\d+)", header.read_text(errors="replace"))
            if m:
                return int(m.group(1)) // 1000
    return None


def _wheel_cublas(folder: Path) -> tuple[Path, Path, Path] | None:
    """(include dir, libcublas, libcublasLt) in a folder shaped like the nvidia-cublas wheel's."""
    inc, lib = folder / "include", folder / "lib"
    if not (inc / "cublas_v2.h").is_file():
        return None
    libs = []
    for name in ("cublas", "cublasLt"):
        hits = sorted(lib.glob(f"lib{name}.so*"), key=lambda q: (len(q.name), q.name))
        if not hits:
            return None
        libs.append(hits[0])
    return inc, libs[0], libs[1]


def find_wheel_cublas(p: _Probe, major: int | None, site_dirs: Sequence[Path]) -> tuple[str, ...] | None:
    """cuBLAS from ``AIBOX_CUBLAS_DIR`` or a pip-installed nvidia-cublas wheel: the CMake arguments
    that make ggml-cuda link it, or None (with the reason added to ``p.missing``)."""
    explicit = p.env.get(CUBLAS_DIR_ENV)
    majors = [major] if major in CUBLAS_WHEEL_DIRS else sorted(CUBLAS_WHEEL_DIRS, reverse=True)
    if explicit:
        candidates = [(Path(explicit), major)]
    else:
        candidates = [(d / CUBLAS_WHEEL_DIRS[m], m) for d in site_dirs for m in majors]
    for folder, m in candidates:
        found = _wheel_cublas(folder)
        if found is None:
            continue
        inc, cublas, cublas_lt = found
        p.found.append(f"cuBLAS: {cublas}")
        args = [f"-DCUDA_cublas_LIBRARY={cublas}", f"-DCUDA_cublasLt_LIBRARY={cublas_lt}",
                f"-DCMAKE_CUDA_FLAGS=-I{inc}"]
        rel = CUBLAS_WHEEL_DIRS.get(m or 0)
        if rel:  # the wheel's place in the same site-packages, seen from llama_cpp/lib/ and bin/
            rpath = f"-Wl,-rpath,'$ORIGIN/../../{rel}/lib:$ORIGIN/../{rel}/lib'"
            args += [f"-DCMAKE_MODULE_LINKER_FLAGS={rpath}", f"-DCMAKE_SHARED_LINKER_FLAGS={rpath}"]
        return tuple(args)
    if explicit:
        p.missing.append(f"cuBLAS (include/cublas_v2.h, lib/libcublas.so*) under {CUBLAS_DIR_ENV}={explicit}")
    else:
        wanted = " or ".join(CUBLAS_WHEEL_DIRS[m] for m in majors)
        where = ", ".join(str(d) for d in site_dirs) or "no site-packages"
        p.missing.append(f"the nvidia-cublas wheel ({wanted}) in {where}")
    return None


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
                    defaults: Mapping[str, Sequence[str]] | None = None,
                    site_dirs: Sequence[Path] | None = None) -> Toolchain:
    """What the ``backend`` build needs, found or missing. Never raises. ``site_dirs``: where
    to look for pip-installed NVIDIA libraries (default: this python's site-packages)."""
    env = dict(os.environ if env is None else env)
    site_dirs = python_site_dirs() if site_dirs is None else [Path(d) for d in site_dirs]
    cmake_args: tuple[str, ...] = ()
    stub_include: str | None = None
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
            toolkit_cublas = [hit for pat in _lib(root, "cublas") for hit in sorted(pat.parent.glob(pat.name))]
            if toolkit_cublas and not env.get(CUBLAS_DIR_ENV):
                p.found.append(f"cuBLAS (libcublas.so): {toolkit_cublas[0]}")
            else:
                before = len(p.missing)
                cmake_args = find_wheel_cublas(p, cuda_major(root), site_dirs) or ()
                if len(p.missing) > before:  # say the toolkit lacks it too, in the same line
                    p.missing[-1] = f"cuBLAS (libcublas.so) under {root}, or " + p.missing[-1]
            headers = p.need_file("CUDA runtime headers (cuda_runtime.h)",
                                  [root / "include" / "cuda_runtime.h",
                                   *[d.parent / "include" / "cuda_runtime.h" for d in _libdirs(root)]], str(root))
            driver = find_cuda_driver(root)
            if driver is not None:
                p.found.append(f"CUDA driver library: {driver}")
                if driver.name != "libcuda.so":  # FindCUDAToolkit looks for the unversioned name only
                    cmake_args = (*cmake_args, f"-DCUDA_cuda_driver_LIBRARY={driver}")
            elif headers is not None:
                p.found.append("CUDA driver library: none here; the build links a stub made from cuda.h "
                               "(the box's driver is used at run time)")
                stub_include = str(headers.parent)
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
        cublas_only = backend == "cuda" and all("cuBLAS" in m for m in p.missing[compiler_misses:])
        hints.append(INSTALL_HINTS["cublas" if cublas_only else kind])
    hint = "; ".join(hints) or None
    return Toolchain(backend, not p.missing, str(root) if root else None, tuple(p.found), tuple(p.missing),
                     hint, tuple(sorted(p.build_env.items())), cmake_args, stub_include)


def require_toolchain(backend: str, **kwargs) -> Toolchain:
    """:func:`check_toolchain`, raising one line naming what to install when something is missing."""
    tc = check_toolchain(backend, **kwargs)
    if not tc.ok:
        raise AiboxError(tc.message, code="toolchain_missing", hint=tc.install_hint,
                         data={"toolchain": {"backend": tc.backend, "missing": list(tc.missing),
                                             "found": list(tc.found)}})
    return tc
