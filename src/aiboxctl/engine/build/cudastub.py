"""A link-time stand-in for the CUDA driver library (``libcuda.so``) on a build machine that has
the CUDA toolkit but no NVIDIA driver.

ggml-cuda links the driver API (``CUDA::cuda_driver``: the virtual-memory pool uses cuMemCreate,
cuMemMap, …). The toolkit normally carries a stub in ``lib64/stubs/libcuda.so`` for exactly
this; a runtime-only toolkit (or a container image without ``cuda-driver-dev``) does not, and
CMake stops with 'Target "ggml-cuda" links to: CUDA::cuda_driver but the target was not
found'. Building without the driver API (``GGML_CUDA_NO_VMM``) would change the engine's GPU
memory pool, so instead we make what NVIDIA's stub is: a shared library named ``libcuda.so.1``
(its SONAME) that defines every driver-API function ``cuda.h`` declares. It is used only by the
linker; at run time the dynamic loader finds the real ``libcuda.so.1`` of the box's driver.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiboxctl.errors import AiboxError
from aiboxctl.system import run_command

SONAME = "libcuda.so.1"
_FUNCTION = re.compile(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(")


def driver_symbols(preprocessed: str) -> list[str]:
    """The driver-API function names in preprocessed ``cuda.h`` text (after its ``#define
    cuMemAlloc cuMemAlloc_v2`` renames, so the versioned names the objects reference)."""
    return sorted(set(_FUNCTION.findall(preprocessed)))


def make_libcuda_stub(include_dir: Path, out_dir: Path, *, cc: str = "cc") -> Path:
    """Write ``out_dir/libcuda.so`` (SONAME libcuda.so.1) defining every function of
    ``include_dir/cuda.h``, both with and without the per-thread default stream names."""
    header = Path(include_dir) / "cuda.h"
    if not header.is_file():
        raise AiboxError(f"Cannot make a CUDA driver link stub: no {header}", code="toolchain_missing",
                         hint="install the CUDA toolkit headers, or the NVIDIA driver (libcuda.so)")
    names: set[str] = set()
    for extra in ((), ("-DCUDA_API_PER_THREAD_DEFAULT_STREAM",)):
        res = run_command([cc, "-E", "-P", *extra, f"-I{include_dir}", str(header)], timeout=120)
        if not res.ok:
            raise AiboxError(f"Cannot preprocess {header} for the CUDA driver link stub: {res.failure_reason()}",
                             code="build_failed", hint="check the C compiler and the CUDA headers")
        names.update(driver_symbols(res.stdout))
    out_dir.mkdir(parents=True, exist_ok=True)
    source = out_dir / "libcuda_stub.c"
    source.write_text("/* link-time stand-in for the CUDA driver (aiboxctl); never loaded */\n"
                      + "".join(f"int {name}(void) {{ return 999; }}\n" for name in sorted(names)))
    lib = out_dir / "libcuda.so"
    res = run_command([cc, "-shared", "-fPIC", f"-Wl,-soname,{SONAME}", "-o", str(lib), str(source)], timeout=300)
    if not res.ok:
        raise AiboxError(f"Cannot compile the CUDA driver link stub: {res.failure_reason()}", code="build_failed",
                         hint="check the C compiler")
    return lib
