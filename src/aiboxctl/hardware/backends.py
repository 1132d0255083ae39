"""The one table of ggml backends and of which vendor's devices each can drive.

Everything that maps a vendor, a probe label or a ggml registry name to a backend reads it
here: the probe (which backend drives a device, and what to tell the user when none can),
the engine build (which wheel a box needs) and the planner (which devices it may offload to).

Three spellings of one backend: its *key* ("hip", what ``engine install --backend`` takes),
its *label* ("HIP", what ``probe`` reports) and the names ggml's backend registry uses at run
time (``ggml_backend_reg_name``): a HIP build registers as "ROCm", so both count for AMD and
Hygon, and its devices are named "ROCm0", "ROCm1"… (the first registry name is the device
name prefix for every backend).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class GgmlBackend:
    key: str  # "hip": what `engine install --backend` takes and the planner uses
    label: str  # "HIP": what probe reports as an accelerator's ggml_backend
    registry_names: tuple[str, ...]  # ggml_backend_reg_name values; the first prefixes device names
    # The vendor runtime's own variable that hides every other device from a process (an engine
    # instance sees only its device group, renumbered from 0), and how its value is spelled
    # ("{ids}": the comma-separated indices). None: the backend has no such variable.
    visible_env: str | None = None
    visible_format: str = "{ids}"
    # Per chip generation, which weight types the backend's supports_op runs on the device
    # (DeviceMatmul); () = no facts recorded (the planner does not restrict the backend).
    matmul: tuple[DeviceMatmul, ...] = ()
    # Model-name substring → chip generation, for devices whose chip is not given (probe labels).
    chip_names: tuple[tuple[str, str], ...] = ()

    @property
    def device_prefix(self) -> str:
        return self.registry_names[0]


# --- What each chip runs on the device -------------------------------------------------------
# ggml's scheduler asks a backend's supports_op for every node; a weight matmul it refuses runs on
# the CPU, op by op, with no error and at the host's speed (the weights are copied over each
# time). These rows are read from the llama.cpp vendored in llama-cpp-python 0.3.36 (commit
# 0c1e570); each names the file and lines. MUL_MAT is every dense layer's matmul, MUL_MAT_ID the
# MoE experts'.
VENDORED = "llama.cpp 0c1e570 (llama-cpp-python 0.3.36)"


@dataclass(frozen=True)
class DeviceMatmul:
    """The weight types (ggml type names: "Q4_K", "F16") whose matmuls one chip generation of a
    backend runs on the device."""

    chips: tuple[str, ...]  # the generations this row is for; () = every chip of the backend
    mul_mat: frozenset[str]  # dense weights
    mul_mat_id: frozenset[str]  # MoE expert weights
    source: str  # vendored file:lines
    note: str = ""


def _types(names: str) -> frozenset[str]:
    return frozenset(names.split())


# ggml-cuda/ggml-cuda.cu:5242-5270, the one switch for every NVIDIA arch (HIP and MUSA builds
# compile the same file): pre-Volta and pre-Turing cards lose the MMQ/tensor-core kernels
# (mmq.cu:318-370; dequantize + cuBLAS instead), slower prefill but still on the device.
_CUDA_TYPES = _types("F32 F16 BF16 Q1_0 Q2_0 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 MXFP4 NVFP4 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K "
                     "IQ1_M IQ1_S IQ2_S IQ2_XS IQ2_XXS IQ3_S IQ3_XXS IQ4_NL IQ4_XS")
_CUDA_SRC = "ggml/src/ggml-cuda/ggml-cuda.cu:5215-5270"
_VULKAN_TYPES = _types("F32 F16 BF16 Q1_0 Q2_0 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ1_S IQ1_M "
                       "IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_XS IQ4_NL MXFP4 NVFP4 TQ1_0 TQ2_0")
_SYCL_TYPES = _CUDA_TYPES  # every type but the ternary TQ1_0/TQ2_0 (ggml-sycl.cpp:6493)

_MATMUL: dict[str, tuple[DeviceMatmul, ...]] = {
    "cuda": (DeviceMatmul((), _CUDA_TYPES, _CUDA_TYPES, _CUDA_SRC,
                          "no weight type falls back by compute capability; pre-Volta/pre-Turing cards run "
                          "quantized matmuls without MMQ (ggml-cuda/mmq.cu:318), slower, still on the GPU"),),
    "hip": (DeviceMatmul((), _CUDA_TYPES, _CUDA_TYPES, _CUDA_SRC + " (compiled for HIP: ggml-hip/CMakeLists.txt:63)"),),
    "musa": (
        # MTT S80/S3000 (QY1) refuse only batched F16 x F16 matmuls (attention, not weights).
        DeviceMatmul(("mp_21",), _CUDA_TYPES, _CUDA_TYPES, _CUDA_SRC + ", QY1 at 5232-5235",
                     "QY1 runs batched F16 x F16 matmuls (attention on an F16 cache) on the CPU"),
        # MTT S4000 (QY2): MoE experts stored as Q2_K fall back for any batch of more than one token.
        DeviceMatmul(("mp_22",), _CUDA_TYPES, _CUDA_TYPES - {"Q2_K"}, _CUDA_SRC + ", QY2 at 5236-5239"),
        DeviceMatmul(("mp_31",), _CUDA_TYPES, _CUDA_TYPES, _CUDA_SRC),
    ),
    "cann": (
        # -DSOC_TYPE=ascend910b (and 910/910C): ASCEND_310P undefined.
        DeviceMatmul(("ascend910b", "ascend910"), _types("F32 F16 BF16 Q8_0 Q4_0"), _types("F32 F16 Q8_0 Q4_0"),
                     "ggml/src/ggml-cann/ggml-cann.cpp:2440-2476"),
        # ASCEND_310P: "Q4 && Q8 per group is not support on 310p device", and no BF16.
        DeviceMatmul(("ascend310p",), _types("F32 F16"), _types("F32 F16"),
                     "ggml/src/ggml-cann/ggml-cann.cpp:2443-2453, 2468-2471"),
    ),
    "vulkan": (DeviceMatmul((), _VULKAN_TYPES, _VULKAN_TYPES, "ggml/src/ggml-vulkan/ggml-vulkan.cpp:15377-15420",
                            "MoE experts fall back when the device lacks the shared memory for the row ids "
                            "(ggml-vulkan.cpp:15381-15384)"),),
    "sycl": (DeviceMatmul((), _SYCL_TYPES, _SYCL_TYPES, "ggml/src/ggml-sycl/ggml-sycl.cpp:6469-6497"),),
}

_CHIP_NAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "cann": (("310P", "ascend310p"), ("910B", "ascend910b"), ("910C", "ascend910b"), ("910", "ascend910")),
    # ggml-cuda/common.cuh:105-111: QY1 = MTT S80/S3000 (mp_21), QY2 = MTT S4000 (mp_22).
    "musa": (("S5000", "mp_31"), ("S4000", "mp_22"), ("S3000", "mp_21"), ("S80", "mp_21"), ("S70", "mp_21"),
             ("S90", "mp_21")),
}


GGML_BACKENDS: dict[str, GgmlBackend] = {
    b.key: replace(b, matmul=_MATMUL.get(b.key, ()), chip_names=_CHIP_NAMES.get(b.key, ())) for b in (
    GgmlBackend("cpu", "CPU", ("CPU",)),
    GgmlBackend("cuda", "CUDA", ("CUDA",), "CUDA_VISIBLE_DEVICES"),
    # ROCm and Hygon's DTK both honour HIP_VISIBLE_DEVICES.
    GgmlBackend("hip", "HIP", ("ROCm", "HIP"), "HIP_VISIBLE_DEVICES"),
    GgmlBackend("musa", "MUSA", ("MUSA",), "MUSA_VISIBLE_DEVICES"),
    GgmlBackend("cann", "CANN", ("CANN",), "ASCEND_RT_VISIBLE_DEVICES"),
    GgmlBackend("vulkan", "Vulkan", ("Vulkan",), "GGML_VK_VISIBLE_DEVICES"),
    GgmlBackend("sycl", "SYCL", ("SYCL",), "ONEAPI_DEVICE_SELECTOR", "level_zero:{ids}"),
    GgmlBackend("metal", "Metal", ("Metal",)),
)}

# Backends that put a model on an accelerator (the planner offloads only to these).
ACCELERATOR_BACKENDS: frozenset[str] = frozenset(k for k in GGML_BACKENDS if k != "cpu")


@dataclass(frozen=True)
class BackendFit:
    backend_key: str | None  # the ggml backend to use for this vendor (None: none exists)
    alternatives: tuple[str, ...]  # keys of other backends that can drive it (Vulkan)
    build_hint: str  # how to get a build that has it, or why there is none
    aliases: tuple[str, ...] = ()  # other spellings of the vendor in recorded reports ("Moore Threads")

    @property
    def backend(self) -> str | None:
        """The label probe reports ("HIP")."""
        return GGML_BACKENDS[self.backend_key].label if self.backend_key else None

    @property
    def registry_names(self) -> tuple[str, ...]:
        return GGML_BACKENDS[self.backend_key].registry_names if self.backend_key else ()


# Vendor key (probe's) → fit. The order matters only for recorded reports whose vendor string
# names several vendors: the first match wins.
FITS: dict[str, BackendFit] = {
    "nvidia": BackendFit("cuda", ("vulkan",),
                         "run `aiboxctl engine install --backend cuda` (llama-cpp-python built with -DGGML_CUDA=ON)"),
    "amd": BackendFit("hip", ("vulkan",),
                      "run `aiboxctl engine install --backend hip` (llama-cpp-python built with -DGGML_HIP=ON "
                      "-DGPU_TARGETS=<gfx target>)"),
    "hygon": BackendFit("hip", (),
                        "source /opt/dtk/env.sh, then run `aiboxctl engine install --backend hip` (DTK's HIP, "
                        "-DGGML_HIP=ON -DGPU_TARGETS=gfx906;gfx926;gfx928;gfx936)"),
    "huawei": BackendFit("cann", (),
                         "run `aiboxctl engine install --backend cann` (-DGGML_CANN=ON -DSOC_TYPE=ascend910b, "
                         "ascend310p for 310P; needs the CANN toolkit)", aliases=("ascend",)),
    "mthreads": BackendFit("musa", ("vulkan",),
                           "run `aiboxctl engine install --backend musa` (-DGGML_MUSA=ON; needs the MUSA SDK)",
                           aliases=("moorethreads",)),
    "intel": BackendFit("sycl", ("vulkan",),
                        "run `aiboxctl engine install --backend sycl` (oneAPI, -DGGML_SYCL=ON) or --backend vulkan"),
    "metax": BackendFit(None, (), "llama.cpp has no MetaX (MACA) backend upstream"),
    "iluvatar": BackendFit(None, (), "llama.cpp has no Iluvatar CoreX backend"),
    "cambricon": BackendFit(None, (), "llama.cpp has no Cambricon MLU backend"),
    "kunlunxin": BackendFit(None, (), "llama.cpp has no Kunlunxin XPU backend"),
    "enflame": BackendFit(None, (), "llama.cpp has no Enflame GCU backend"),
}


def registry_names(key: str) -> tuple[str, ...]:
    """The names backend ``key`` registers under at run time."""
    known = GGML_BACKENDS.get(key)
    return known.registry_names if known else (key.upper(),)


def device_prefix(key: str) -> str:
    """How llama.cpp names this backend's devices ("ROCm" for ROCm0)."""
    return registry_names(key)[0]


def visible_devices_env(key: str, indices: tuple[int, ...] | list[int]) -> dict[str, str]:
    """The environment that pins a process to the devices ``indices`` (the box's numbering) of
    backend ``key``: ``{"CUDA_VISIBLE_DEVICES": "2,3"}``; empty for the CPU and Metal."""
    known = GGML_BACKENDS.get(key)
    if known is None or known.visible_env is None:
        return {}
    return {known.visible_env: known.visible_format.format(ids=",".join(str(i) for i in indices))}


def backend_key(name: str | None) -> str | None:
    """A backend's key from any of its spellings: key, label or registry name ("ROCm" → "hip")."""
    if not name:
        return None
    low = name.lower()
    for b in GGML_BACKENDS.values():
        if low == b.key or low == b.label.lower() or low in (n.lower() for n in b.registry_names):
            return b.key
    return None


def vendor_backend(vendor: str) -> str | None:
    """The backend key that drives a vendor's devices, from its probe key or a recorded vendor
    name ("Moore Threads", "Huawei Ascend"); None when no ggml backend exists for it."""
    folded = vendor.lower().replace(" ", "")
    for key, fit in FITS.items():
        if fit.backend_key and any(name in folded for name in (key, *fit.aliases)):
            return fit.backend_key
    return None


def backend_for(vendor_key: str, registered: tuple[str, ...]) -> tuple[str | None, bool]:
    """(backend label to name for this device, whether the installed build has it)."""
    fit = FITS.get(vendor_key)
    if fit is None or fit.backend_key is None:
        return None, False
    have = {name.lower() for name in registered}
    if any(n.lower() in have for n in fit.registry_names):
        return fit.backend, True
    for alt in fit.alternatives:
        if any(n.lower() in have for n in registry_names(alt)):
            return GGML_BACKENDS[alt].label, True
    return fit.backend, False


def device_chip(key: str, model: str, soc: str | None = None) -> str | None:
    """The chip generation the fact rows name ("ascend310p", "mp_22") of a device of backend
    ``key``: its SoC when given (hardware profiles), else read from its model name; None when
    the backend's rows do not depend on the chip or the name says nothing."""
    known = GGML_BACKENDS.get(key)
    if known is None or not known.chip_names:
        return None
    if soc:
        return soc.lower()
    upper = model.upper()
    return next((chip for needle, chip in known.chip_names if needle in upper), None)


def device_weight_problem(key: str, chip: str | None, weight_type: str, experts: bool = False) -> str | None:
    """Why a device of backend ``key`` (chip generation ``chip``) would run the matmuls of
    ``weight_type`` weights (``experts``: MoE expert weights) on the CPU; None when it runs them
    itself. An unknown chip gets only the types every generation of the backend runs."""
    known = GGML_BACKENDS.get(key)
    if known is None or not known.matmul:
        return None
    rows = [r for r in known.matmul if not r.chips or (chip and chip in r.chips)] or list(known.matmul)
    op = "MoE expert" if experts else "weight"
    bad = [r for r in rows if weight_type not in (r.mul_mat_id if experts else r.mul_mat)]
    if not bad:
        return None
    row = bad[0]
    ok = sorted(frozenset.intersection(*((r.mul_mat_id if experts else r.mul_mat) for r in rows)))
    where = f"{chip} chips" if chip and row.chips else f"every {known.label} chip" if not row.chips else \
        f"a {known.label} device of unknown chip (only types every generation runs)"
    runs = ", ".join(ok) if len(ok) <= 6 else f"{len(ok)} types"
    return (f"llama.cpp's {known.label} backend runs {weight_type} {op} matmuls on the CPU on {where} "
            f"(supports_op, {row.source}); on the device: {runs}")
