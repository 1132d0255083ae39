"""Which build a box needs and the CMake flags for it, from recorded probe results; the
toolchain checks that run before a build, with fake toolkits on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aiboxctl.engine.build.specs import (
    PORTABLE_CPU_ARGS,
    cuda_architecture,
    build_spec,
    load_accelerators,
    needed_backend,
)
from aiboxctl.engine.build.toolchain import check_toolchain, require_toolchain
from aiboxctl.errors import AiboxError, UsageError

FIXTURES = Path(__file__).parent / "fixtures" / "engine"


def box(name: str) -> list[dict]:
    return load_accelerators(FIXTURES / f"probe-{name}.json")


def args_dict(spec) -> dict[str, str]:
    out = {}
    for a in spec.cmake_args:
        k, _, v = a[2:].partition("=")
        out[k] = v
    return out


def test_every_build_keeps_the_portable_cpu_part():
    for name, backend in [("cpu-only", "auto"), ("nvidia-mixed", "auto"), ("amd", "auto"),
                          ("hygon-k100ai", "auto"), ("ascend-910b", "auto"), ("mthreads", "auto"),
                          ("intel-arc", "auto"), ("intel-arc", "vulkan")]:
        spec = build_spec(backend, box(name))
        assert spec.cmake_args[:3] == PORTABLE_CPU_ARGS, (name, spec.cmake_args)


def test_cpu_box_gets_the_portable_cpu_build():
    spec = build_spec("auto", box("cpu-only"))
    assert spec.backend == "cpu" and spec.key == "cpu-portable" and not spec.offload
    assert args_dict(spec) == {"GGML_NATIVE": "OFF", "GGML_BACKEND_DL": "ON", "GGML_CPU_ALL_VARIANTS": "ON"}


def test_accelerator_without_a_ggml_backend_falls_back_to_cpu():
    assert needed_backend(box("metax")) == "cpu"
    assert build_spec("auto", box("metax")).key == "cpu-portable"


def test_cuda_architectures_from_compute_capability():
    spec = build_spec("auto", box("nvidia-mixed"))
    assert spec.backend == "cuda" and spec.offload
    flags = args_dict(spec)
    assert flags["GGML_CUDA"] == "ON"
    assert flags["CMAKE_CUDA_ARCHITECTURES"] == "80;89"  # deduplicated, numeric order
    assert spec.key == "cuda-80.89"
    assert "3 × NVIDIA GeForce RTX 4090, NVIDIA A100-SXM4-80GB" in spec.reason


def test_cuda_blackwell_and_unknown_capability():
    assert args_dict(build_spec("auto", box("nvidia-blackwell")))["CMAKE_CUDA_ARCHITECTURES"] == "120"
    # No SMI answered: the PCI name (GA102 [GeForce RTX 3090]) still says Ampere 8.6.
    assert build_spec("auto", box("nvidia-no-smi")).key == "cuda-86"
    # Neither capability nor a known name: ggml's own default list (no -DCMAKE_CUDA_ARCHITECTURES).
    spec = build_spec("auto", [{"vendor": "nvidia", "model": "NVIDIA Device 2bff"}])
    assert spec.key == "cuda" and "CMAKE_CUDA_ARCHITECTURES" not in args_dict(spec)
    assert "default list" in spec.reason


def test_cuda_accepts_probe_dataclass_and_explicit_architectures():
    from aiboxctl.hardware.model import Accelerator

    acc = Accelerator(vendor="NVIDIA", vendor_key="nvidia", model="NVIDIA H100 80GB HBM3", index=0,
                      pci_bus_id="0000:4f:00.0", pci_vendor_id="0x10de", pci_device_id="0x2330",
                      memory_total_bytes=80 * 2**30, memory_free_bytes=79 * 2**30, driver_version="575.57",
                      runtime_version="12.9", numa_node=0, detected_by=("nvml",), ggml_backend="CUDA",
                      backend_in_build=False, notes=("compute capability 9.0",))
    assert build_spec("auto", [acc]).key == "cuda-90"
    assert build_spec("cuda", [acc], architectures=["86", "89"]).key == "cuda-86.89"


def test_hip_targets_from_rocminfo_notes():
    spec = build_spec("auto", box("amd"))
    flags = args_dict(spec)
    assert spec.backend == "hip" and not spec.hygon_dtk
    assert flags["GGML_HIP"] == "ON"
    assert flags["GPU_TARGETS"] == flags["CMAKE_HIP_ARCHITECTURES"] == "gfx1100;gfx942"
    assert spec.key == "hip-gfx1100.gfx942"


def test_hygon_dtk_targets_from_product_names():
    spec = build_spec("auto", box("hygon-k100ai"))
    assert spec.backend == "hip" and spec.hygon_dtk
    assert args_dict(spec)["GPU_TARGETS"] == "gfx928"
    assert "Hygon DTK" in spec.reason and "8 × K100_AI" in spec.reason
    mixed = build_spec("auto", box("hygon-mixed"))
    assert args_dict(mixed)["GPU_TARGETS"] == "gfx906;gfx926"  # Z100L by name, the other by its gfx note


def test_musa_architectures_per_moore_threads_generation():
    spec = build_spec("auto", box("mthreads"))
    flags = args_dict(spec)
    assert flags["GGML_MUSA"] == "ON" and flags["MUSA_ARCHITECTURES"] == "21;22"  # S80 = QY1, S4000 = QY2
    assert spec.key == "musa-21.22"


def test_cann_soc_type():
    spec = build_spec("auto", box("ascend-910b"))
    flags = args_dict(spec)
    assert flags["GGML_CANN"] == "ON" and flags["SOC_TYPE"] == "ascend910b"
    assert spec.key == "cann-ascend910b"
    assert args_dict(build_spec("auto", box("ascend-310p")))["SOC_TYPE"] == "ascend310p"
    with pytest.raises(UsageError, match="different SoC types"):
        build_spec("auto", box("ascend-mixed"))
    # Told explicitly, one SoC is built for.
    assert build_spec("cann", box("ascend-mixed"), architectures=["ascend310p"]).key == "cann-ascend310p"
    with pytest.raises(UsageError, match="SoC type"):
        build_spec("cann", box("cpu-only"))


def test_sycl_and_vulkan():
    sycl = build_spec("auto", box("intel-arc"))
    flags = args_dict(sycl)
    assert (flags["GGML_SYCL"], flags["CMAKE_C_COMPILER"], flags["CMAKE_CXX_COMPILER"]) == ("ON", "icx", "icpx")
    vulkan = build_spec("vulkan", box("intel-arc"))
    assert args_dict(vulkan)["GGML_VULKAN"] == "ON" and vulkan.key == "vulkan"


def test_the_backend_with_most_memory_wins():
    accs = box("intel-arc") + box("nvidia-blackwell")
    assert needed_backend(accs) == "cuda"


def test_unknown_backend_is_usage():
    with pytest.raises(UsageError):
        build_spec("opencl", [])


def test_probe_report_loader_accepts_envelope_and_data(tmp_path):
    import json

    doc = json.loads((FIXTURES / "probe-amd.json").read_text())
    (tmp_path / "data.json").write_text(json.dumps(doc["data"]))
    assert load_accelerators(tmp_path / "data.json") == box("amd")
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match="not a probe report"):
        load_accelerators(tmp_path / "bad.json")


# --- toolchain -----------------------------------------------------------------------------

def _exe(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


@pytest.fixture
def bare_env(tmp_path):
    """A PATH with a C/C++ compiler only, and no toolkit anywhere."""
    bindir = tmp_path / "bin"
    _exe(bindir / "cc")
    _exe(bindir / "c++")
    return {"PATH": str(bindir)}


NO_DEFAULTS = {k: () for k in ("cuda", "hip", "hygon", "musa", "cann", "vulkan", "sycl")}


@pytest.mark.parametrize("backend,needle,hint", [
    ("cuda", "nvcc", "install the CUDA toolkit"),
    ("hip", "hipcc", "install ROCm"),
    ("musa", "MUSA SDK", "MUSA SDK"),
    ("cann", "CANN toolkit", "source /usr/local/Ascend/ascend-toolkit/set_env.sh"),
    ("vulkan", "glslc", "apt install libvulkan-dev glslc spirv-headers"),
    ("sycl", "icpx", "source /opt/intel/oneapi/setvars.sh"),
])
def test_missing_toolchain_names_what_to_install(bare_env, backend, needle, hint):
    tc = check_toolchain(backend, env=bare_env, defaults=NO_DEFAULTS)
    assert not tc.ok and needle in tc.message and hint in tc.install_hint
    assert "\n" not in tc.message and "\n" not in tc.install_hint
    with pytest.raises(AiboxError) as info:
        require_toolchain(backend, env=bare_env, defaults=NO_DEFAULTS)
    assert info.value.code == "toolchain_missing" and info.value.hint == tc.install_hint


def test_hygon_hint_names_dtk(bare_env):
    tc = check_toolchain("hip", env=bare_env, defaults=NO_DEFAULTS, hygon=True)
    assert "DTK" in tc.install_hint and "/opt/dtk/env.sh" in tc.install_hint


def test_missing_compiler_is_named_first(tmp_path):
    tc = check_toolchain("cpu", env={"PATH": str(tmp_path)}, defaults=NO_DEFAULTS)
    assert not tc.ok and "C compiler" in tc.message and "build-essential" in tc.install_hint


def test_cuda_without_cublas_is_caught_before_building(bare_env, tmp_path):
    cuda = tmp_path / "cuda-13.0"
    _exe(cuda / "bin" / "nvcc")
    _touch(cuda / "include" / "cuda_runtime.h")
    env = {**bare_env, "CUDA_HOME": str(cuda)}
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert not tc.ok and len(tc.missing) == 1 and tc.missing[0].startswith(f"cuBLAS (libcublas.so) under {cuda}, or ")
    assert "pip install nvidia-cublas" in tc.install_hint
    _touch(cuda / "targets" / "x86_64-linux" / "lib" / "libcublas.so.13")
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert tc.ok and dict(tc.build_env) == {"CUDACXX": str(cuda / "bin" / "nvcc")}


def test_cuda_found_through_nvcc_on_path(bare_env, tmp_path):
    cuda = tmp_path / "opt" / "cuda"
    nvcc = _exe(cuda / "bin" / "nvcc")
    _touch(cuda / "include" / "cuda_runtime.h")
    _touch(cuda / "lib64" / "libcublas.so")
    env = {"PATH": f"{cuda / 'bin'}{os.pathsep}{bare_env['PATH']}"}
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS)
    assert tc.ok and tc.root == str(cuda) and dict(tc.build_env)["CUDACXX"] == str(nvcc)


def test_rocm_and_dtk_toolchains(bare_env, tmp_path):
    dtk = tmp_path / "dtk"
    _exe(dtk / "bin" / "hipcc")
    _exe(dtk / "llvm" / "bin" / "clang")
    _touch(dtk / "lib" / "libhipblas.so")
    env = {**bare_env, "ROCM_PATH": str(dtk)}
    tc = check_toolchain("hip", env=env, defaults=NO_DEFAULTS, hygon=True)
    assert not tc.ok and tc.missing == (f"rocBLAS (librocblas.so) under {dtk}",)
    _touch(dtk / "lib" / "librocblas.so.4")
    tc = check_toolchain("hip", env=env, defaults=NO_DEFAULTS, hygon=True)
    assert tc.ok
    assert dict(tc.build_env) == {"HIPCXX": str(dtk / "llvm" / "bin" / "clang"), "HIP_PATH": str(dtk),
                                  "ROCM_PATH": str(dtk)}


def test_musa_cann_vulkan_sycl_found(bare_env, tmp_path):
    musa = tmp_path / "musa"
    _exe(musa / "bin" / "clang++")
    _touch(musa / "lib" / "libmublas.so")
    assert check_toolchain("musa", env={**bare_env, "MUSA_PATH": str(musa)}, defaults=NO_DEFAULTS).ok

    cann = tmp_path / "ascend-toolkit" / "latest"
    _touch(cann / "include" / "acl" / "acl.h")
    tc = check_toolchain("cann", env={**bare_env, "ASCEND_TOOLKIT_HOME": str(cann)}, defaults=NO_DEFAULTS)
    assert not tc.ok and "libascendcl" in tc.message
    _touch(cann / "lib64" / "libascendcl.so")
    tc = check_toolchain("cann", env={**bare_env, "ASCEND_TOOLKIT_HOME": str(cann)}, defaults=NO_DEFAULTS)
    assert tc.ok and dict(tc.build_env) == {"ASCEND_TOOLKIT_HOME": str(cann)}

    sdk = tmp_path / "vulkan-sdk"
    _touch(sdk / "include" / "vulkan" / "vulkan.h")
    _touch(sdk / "include" / "spirv" / "unified1" / "spirv.hpp")
    _touch(sdk / "lib" / "libvulkan.so.1")
    tc = check_toolchain("vulkan", env={**bare_env, "VULKAN_SDK": str(sdk)}, defaults=NO_DEFAULTS)
    assert tc.missing == ("the shader compiler (glslc) on PATH",)
    _exe(sdk / "bin" / "glslc")
    assert check_toolchain("vulkan", env={**bare_env, "VULKAN_SDK": str(sdk)}, defaults=NO_DEFAULTS).ok

    oneapi = tmp_path / "oneapi"
    _exe(oneapi / "compiler" / "bin" / "icx")
    _exe(oneapi / "compiler" / "bin" / "icpx")
    _touch(oneapi / "mkl" / "latest" / "lib" / "libmkl_sycl_blas.so")
    env = {"PATH": f"{oneapi / 'compiler' / 'bin'}{os.pathsep}{bare_env['PATH']}", "ONEAPI_ROOT": str(oneapi)}
    assert check_toolchain("sycl", env=env, defaults=NO_DEFAULTS).ok


def test_cli_install_stops_at_missing_toolchain_with_one_line(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    r = cli("engine", "install", "--backend", "cuda", "--hardware", str(FIXTURES / "probe-nvidia-mixed.json"),
            "--yes", "--json")
    assert r.code == 1, r.stdout
    doc = r.json()
    (err,) = doc["errors"]
    assert err["code"] == "toolchain_missing" and "nvcc" in err["message"]
    assert "CUDA toolkit" in err["hint"]
    assert doc["data"]["toolchain"]["backend"] == "cuda"
    # Nothing was built or recorded.
    from aiboxctl.paths import StatePaths

    assert not (StatePaths.from_env().engine / "engine.json").exists()
    assert not list(StatePaths.from_env().wheels.glob("llama-cpp-python/*/cuda-*/*.whl"))
    r = cli("engine", "install", "--backend", "cuda", "--hardware", str(FIXTURES / "probe-nvidia-mixed.json"), "--yes")
    assert r.code == 1 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: Cannot build the CUDA engine")


def test_cli_build_only_returns_the_cached_wheel_for_the_recorded_box(cli, tmp_path, monkeypatch):
    import zipfile

    from aiboxctl.engine.build.cache import CachedWheel, WheelCache, pinned_version

    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    probe = str(FIXTURES / "probe-nvidia-mixed.json")
    r = cli("engine", "install", "--build-only", "--hardware", probe, "--yes", "--json")
    assert r.code == 1 and r.json()["errors"][0]["code"] == "toolchain_missing"  # not cached: would build

    src = tmp_path / f"llama_cpp_python-{pinned_version()}-py3-none-linux_{os.uname().machine}.whl"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", "")
    spec = build_spec("auto", box("nvidia-mixed"))
    WheelCache().add(src, CachedWheel(src, pinned_version(), spec.key, "cuda", spec.architectures, spec.cmake_args,
                                      build_seconds=1234.0))
    r = cli("engine", "install", "--build-only", "--hardware", probe, "--json")
    assert r.code == 0, r.stdout
    data = r.json()["data"]
    assert data["key"] == "cuda-80.89" and data["build_seconds"] == 1234.0 and data["path"].endswith(src.name)


def test_one_vendor_table_drives_the_probe_and_the_build(monkeypatch):
    """hardware/backends.FITS is the only vendor → backend table: a vendor added there is driven
    by its backend in the probe and gets that build from engine install."""
    from aiboxctl.hardware import backends

    monkeypatch.setitem(backends.FITS, "acme", backends.BackendFit("musa", (), "build it with MUSA",
                                                                   aliases=("acmecorp",)))
    assert backends.backend_for("acme", ("CPU", "MUSA")) == ("MUSA", True)
    assert needed_backend([{"vendor_key": "acme", "memory_total_bytes": 2**30}]) == "musa"
    assert needed_backend([{"vendor": "Acme Corp"}]) == "musa"
    assert build_spec("auto", [{"vendor_key": "acme", "model": "S4000"}]).key == "musa-22"


# --- cuBLAS from PyPI's nvidia-cublas wheel; the CUDA driver link stub ---------------------

def _cuda13_without_cublas(tmp_path: Path) -> Path:
    """A toolkit like this machine's /usr/local/cuda-13.0: nvcc, runtime headers, no cuBLAS."""
    cuda = tmp_path / "cuda-13.0"
    _exe(cuda / "bin" / "nvcc")
    _touch(cuda / "include" / "cuda_runtime.h")
    (cuda / "include" / "cuda_runtime_api.h").write_text("#define CUDART_VERSION 13000\n")
    return cuda


def _cublas_wheel(site: Path, folder: str = "nvidia/cu13", so: str = "13") -> Path:
    """The files nvidia-cublas puts into site-packages (no unversioned .so links)."""
    root = site / folder
    _touch(root / "include" / "cublas_v2.h")
    _touch(root / "lib" / f"libcublas.so.{so}")
    _touch(root / "lib" / f"libcublasLt.so.{so}")
    return root


def test_cublas_from_the_nvidia_wheel_in_site_packages(bare_env, tmp_path):
    cuda = _cuda13_without_cublas(tmp_path)
    site = tmp_path / "site-packages"
    env = {**bare_env, "CUDA_HOME": str(cuda)}
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=[site])
    assert not tc.ok and "nvidia/cu13" in tc.missing[0] and str(site) in tc.missing[0]
    assert tc.install_hint.startswith("pip install nvidia-cublas")
    wheel = _cublas_wheel(site)
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=[site])
    assert tc.ok, tc.missing
    lib = wheel / "lib"
    assert tc.cmake_args[:3] == (f"-DCUDA_cublas_LIBRARY={lib / 'libcublas.so.13'}",
                                 f"-DCUDA_cublasLt_LIBRARY={lib / 'libcublasLt.so.13'}",
                                 f"-DCMAKE_CUDA_FLAGS=-I{wheel / 'include'}")
    # At run time libggml-cuda.so (site-packages/llama_cpp/lib and site-packages/bin) finds the
    # cuBLAS of its own site-packages.
    rpath = "-Wl,-rpath,'$ORIGIN/../../nvidia/cu13/lib:$ORIGIN/../nvidia/cu13/lib'"
    assert f"-DCMAKE_MODULE_LINKER_FLAGS={rpath}" in tc.cmake_args
    assert f"-DCMAKE_SHARED_LINKER_FLAGS={rpath}" in tc.cmake_args


def test_cublas_wheel_for_another_cuda_major_is_not_used(bare_env, tmp_path):
    cuda = _cuda13_without_cublas(tmp_path)
    site = tmp_path / "site-packages"
    _cublas_wheel(site, "nvidia/cublas", "12")  # nvidia-cublas-cu12 beside a CUDA 13 toolkit
    tc = check_toolchain("cuda", env={**bare_env, "CUDA_HOME": str(cuda)}, defaults=NO_DEFAULTS, site_dirs=[site])
    assert not tc.ok and "nvidia/cu13" in tc.missing[0]


def test_cublas_dir_named_by_environment(bare_env, tmp_path):
    cuda = _cuda13_without_cublas(tmp_path)
    mine = _cublas_wheel(tmp_path / "elsewhere")
    env = {**bare_env, "CUDA_HOME": str(cuda), "AIBOX_CUBLAS_DIR": str(mine)}
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert tc.ok and f"-DCUDA_cublas_LIBRARY={mine / 'lib' / 'libcublas.so.13'}" in tc.cmake_args
    # An explicit folder is the only one looked at.
    env["AIBOX_CUBLAS_DIR"] = str(tmp_path / "empty")
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=[tmp_path / "elsewhere"])
    assert not tc.ok and "AIBOX_CUBLAS_DIR=" in tc.missing[0]


def test_cuda_driver_stub_only_when_no_libcuda_to_link(bare_env, tmp_path, monkeypatch):
    from aiboxctl.engine.build import toolchain

    monkeypatch.setattr(toolchain, "DRIVER_DIRS", ())
    cuda = _cuda13_without_cublas(tmp_path)
    _touch(cuda / "lib64" / "libcublas.so")
    env = {**bare_env, "CUDA_HOME": str(cuda)}
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert tc.ok and tc.cuda_stub_include == str(cuda / "include")
    _touch(cuda / "lib64" / "stubs" / "libcuda.so")
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert tc.ok and tc.cuda_stub_include is None and not tc.cmake_args
    driver = tmp_path / "driver"
    _touch(driver / "libcuda.so.1")  # the driver without its -dev symlink: named to CMake
    (cuda / "lib64" / "stubs" / "libcuda.so").unlink()
    monkeypatch.setattr(toolchain, "DRIVER_DIRS", (str(driver),))
    tc = check_toolchain("cuda", env=env, defaults=NO_DEFAULTS, site_dirs=())
    assert tc.cuda_stub_include is None and tc.cmake_args == (f"-DCUDA_cuda_driver_LIBRARY={driver / 'libcuda.so.1'}",)


def test_cuda_driver_stub_exports_the_versioned_driver_names(tmp_path):
    import ctypes
    import subprocess

    from aiboxctl.engine.build.cudastub import SONAME, make_libcuda_stub

    inc = tmp_path / "include"
    inc.mkdir()
    (inc / "cuda.h").write_text(
        "typedef int CUresult;\n#define cuMemAlloc cuMemAlloc_v2\n"
        "#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)\n#define cuMemcpy cuMemcpy_ptds\n#endif\n"
        "/* cuInComment(x) is not a function */\n"
        "CUresult cuMemAlloc(void **p, unsigned long n);\nCUresult cuMemCreate(void *h);\n"
        "CUresult cuMemcpy(void *a, void *b);\n")
    lib = make_libcuda_stub(inc, tmp_path / "stub")
    so = ctypes.CDLL(str(lib))
    for name in ("cuMemAlloc_v2", "cuMemCreate", "cuMemcpy", "cuMemcpy_ptds"):
        assert hasattr(so, name), name
    assert not hasattr(so, "cuInComment") and not hasattr(so, "cuMemAlloc")
    dyn = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
    assert f"[{SONAME}]" in dyn


@pytest.mark.parametrize("profile,key,devices", [
    ("a100-80g-x2", "cuda-80", "2 × A100-SXM4-80GB"),
    ("h800-x8", "cuda-90", "8 × H800 SXM5 80GB"),
    ("rtx4090", "cuda-89", "1 × GeForce RTX 4090"),
])
def test_catalog_profiles_build_for_their_gpus_arch(profile, key, devices):
    """A profile names the GPU, not its compute capability: without the name table the build
    fell back to ggml's list of every architecture (hours on few cores, a far bigger wheel)."""
    from aiboxctl.engine.build.specs import load_accelerators

    root = Path(__file__).resolve().parent.parent
    spec = build_spec("auto", load_accelerators(root / "profiles" / "hardware" / f"{profile}.yaml"))
    assert spec.key == key and devices in spec.reason


@pytest.mark.parametrize("model,arch", [
    ("NVIDIA H200", "90"), ("NVIDIA GH200 480GB", "90"), ("NVIDIA H20", "90"), ("NVIDIA L40S", "89"),
    ("NVIDIA RTX 6000 Ada Generation", "89"), ("NVIDIA A10", "86"), ("NVIDIA RTX A6000", "86"),
    ("NVIDIA A800 80GB PCIe", "80"), ("NVIDIA B200", "100"), ("NVIDIA GeForce RTX 5090", "120"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "120"), ("Tesla T4", "75"), ("NVIDIA Mystery 9", None),
])
def test_cuda_arch_from_the_product_name(model, arch):
    assert cuda_architecture({"vendor": "nvidia", "model": model}) == arch
    # what nvidia-smi reports wins over the name
    assert cuda_architecture({"vendor": "nvidia", "model": model, "compute_capability": "8.7"}) == "87"
