"""Which ggml backend can drive which vendor's devices, and what to tell the user when none can.

Names are the ones ggml's backend registry uses at run time (``ggml_backend_reg_name``):
a HIP build registers as "ROCm", so both names count for AMD and Hygon.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackendFit:
    backend: str | None  # the ggml backend to use for this vendor (None: none exists)
    registry_names: tuple[str, ...]  # names that backend registers under
    alternatives: tuple[str, ...]  # other backends that can drive it (Vulkan)
    build_hint: str  # how to get a build that has it, or why there is none


FITS: dict[str, BackendFit] = {
    "nvidia": BackendFit("CUDA", ("CUDA",), ("Vulkan",),
                         "run `aiboxctl engine install --backend cuda` (llama-cpp-python built with -DGGML_CUDA=ON)"),
    "amd": BackendFit("HIP", ("ROCm", "HIP"), ("Vulkan",),
                      "run `aiboxctl engine install --backend hip` (llama-cpp-python built with -DGGML_HIP=ON "
                      "-DGPU_TARGETS=<gfx target>)"),
    "hygon": BackendFit("HIP", ("ROCm", "HIP"), (),
                        "source /opt/dtk/env.sh, then run `aiboxctl engine install --backend hip` (DTK's HIP, "
                        "-DGGML_HIP=ON -DGPU_TARGETS=gfx906;gfx926;gfx928;gfx936)"),
    "huawei": BackendFit("CANN", ("CANN",), (),
                         "run `aiboxctl engine install --backend cann` (-DGGML_CANN=ON -DSOC_TYPE=ascend910b, "
                         "ascend310p for 310P; needs the CANN toolkit)"),
    "mthreads": BackendFit("MUSA", ("MUSA",), ("Vulkan",),
                           "run `aiboxctl engine install --backend musa` (-DGGML_MUSA=ON; needs the MUSA SDK)"),
    "intel": BackendFit("SYCL", ("SYCL",), ("Vulkan",),
                        "run `aiboxctl engine install --backend sycl` (oneAPI, -DGGML_SYCL=ON) or --backend vulkan"),
    "metax": BackendFit(None, (), (), "llama.cpp has no MetaX (MACA) backend upstream"),
    "iluvatar": BackendFit(None, (), (), "llama.cpp has no Iluvatar CoreX backend"),
    "cambricon": BackendFit(None, (), (), "llama.cpp has no Cambricon MLU backend"),
    "kunlunxin": BackendFit(None, (), (), "llama.cpp has no Kunlunxin XPU backend"),
    "enflame": BackendFit(None, (), (), "llama.cpp has no Enflame GCU backend"),
}


def backend_for(vendor_key: str, registered: tuple[str, ...]) -> tuple[str | None, bool]:
    """(backend to name for this device, whether the installed build has it)."""
    fit = FITS.get(vendor_key)
    if fit is None or fit.backend is None:
        return None, False
    have = {name.lower() for name in registered}
    if any(n.lower() in have for n in fit.registry_names):
        return fit.backend, True
    for alt in fit.alternatives:
        if alt.lower() in have:
            return alt, True
    return fit.backend, False
