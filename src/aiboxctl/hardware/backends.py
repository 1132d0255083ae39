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
                         "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_CUDA=on\""),
    "amd": BackendFit("HIP", ("ROCm", "HIP"), ("Vulkan",),
                      "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_HIP=on -DGPU_TARGETS=<gfx target>\""),
    "hygon": BackendFit("HIP", ("ROCm", "HIP"), (),
                        "build llama-cpp-python with DTK's HIP (source /opt/dtk/env.sh; "
                        "CMAKE_ARGS=\"-DGGML_HIP=on -DGPU_TARGETS=gfx906;gfx926;gfx928;gfx936\")"),
    "huawei": BackendFit("CANN", ("CANN",), (),
                         "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_CANN=on -DSOC_TYPE=ascend910b\" "
                         "(ascend310p for 310P) and CANN installed"),
    "mthreads": BackendFit("MUSA", ("MUSA",), ("Vulkan",),
                           "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_MUSA=on\" and the MUSA SDK"),
    "intel": BackendFit("SYCL", ("SYCL",), ("Vulkan",),
                        "reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_SYCL=on\" (oneAPI) or \"-DGGML_VULKAN=on\""),
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
