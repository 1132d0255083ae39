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

from dataclasses import dataclass


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

    @property
    def device_prefix(self) -> str:
        return self.registry_names[0]


GGML_BACKENDS: dict[str, GgmlBackend] = {b.key: b for b in (
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
