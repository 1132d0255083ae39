"""The engine wheel cache, install into an environment, self-test and restore — with real pip,
real wheels and the real engine, in a throwaway virtualenv (the shared .venv is never touched).

The throwaway venv sees every package of the running environment except llama-cpp-python
(a folder of symlinks added with ``site.addsitedir``), so installs, restores and the
self-test run against exactly the llama-cpp-python the test put there.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest

from aiboxctl.engine.build.cache import CachedWheel, WheelCache
from aiboxctl.engine.build.compile import build_wheel
from aiboxctl.engine.build.install import install_engine, snapshot_installed
from aiboxctl.engine.build.record import read_record
from aiboxctl.engine.build.specs import build_spec
from aiboxctl.engine.build.status import engine_status
from aiboxctl.engine.build.verify import inspect_engine
from aiboxctl.errors import VerificationFailed
from aiboxctl.paths import StatePaths
from engineenv import drop_from_wheel, make_env

ROOT = Path(__file__).resolve().parents[1]


def _wheel(folder: Path, version: str = "0.3.36", tag: str = "py3-none-linux_x86_64", body: bytes = b"x") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"llama_cpp_python-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", body)
    return path


# --- the cache -------------------------------------------------------------------------------

def test_cache_keys_by_version_backend_and_architectures(tmp_path):
    cache = WheelCache(tmp_path / "wheels")
    cuda_a = build_spec("cuda", [], architectures=["86", "89"])
    cuda_b = build_spec("cuda", [], architectures=["90"])
    src = _wheel(tmp_path / "src", body=b"a")
    stored = cache.add(src, CachedWheel(src, "0.3.36", cuda_a.key, "cuda", cuda_a.architectures,
                                        cuda_a.cmake_args, build_seconds=12.5))
    assert stored.path == tmp_path / "wheels" / "0.3.36" / "cuda-86.89" / src.name
    assert stored.sha256 and stored.size_bytes == src.stat().st_size
    hit = cache.find("0.3.36", "cuda-86.89")
    assert hit is not None and hit.cmake_args == cuda_a.cmake_args and hit.build_seconds == 12.5
    assert cache.find("0.3.36", cuda_b.key) is None  # other architectures: another wheel
    assert cache.find("0.3.37", cuda_a.key) is None  # another llama-cpp-python version
    assert [e.key for e in cache.entries()] == ["cuda-86.89"]


def test_cache_ignores_wheels_for_another_machine(tmp_path):
    cache = WheelCache(tmp_path)
    other = "aarch64" if os.uname().machine != "aarch64" else "x86_64"
    _wheel(cache.dir_for("0.3.36", "cpu-portable"), tag=f"py3-none-linux_{other}")
    assert cache.find("0.3.36", "cpu-portable") is None


def test_a_cached_wheel_is_reused_without_building(tmp_path):
    """A hit never reaches the source download or the compiler (no sdist, no toolchain here)."""
    cache = WheelCache(tmp_path)
    spec = build_spec("cpu", [])
    src = _wheel(tmp_path / "src")
    cache.add(src, CachedWheel(src, "0.3.36", spec.key, "cpu", (), spec.cmake_args, build_seconds=400.0))
    got = build_wheel(spec, version="0.3.36", cache=cache, python="/nonexistent/python")
    assert got.key == "cpu-portable" and got.build_seconds == 400.0


def _tiny_sdist(folder: Path, version: str, setup_body: str) -> Path:
    """A stand-in llama-cpp-python source archive whose build takes seconds: it records the
    build environment it was given into the wheel (or fails like a compiler would)."""
    import tarfile

    src = folder / f"llama_cpp_python-{version}"
    (src / "llama_cpp").mkdir(parents=True)
    (src / "llama_cpp" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\n'
                                        'build-backend = "setuptools.build_meta"\n')
    (src / "setup.py").write_text(setup_body.replace("VERSION", version))
    sdist = folder / f"llama_cpp_python-{version}.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(src, arcname=src.name)
    return sdist


RECORDING_SETUP = """
import json, os
from setuptools import setup
with open(os.path.join("llama_cpp", "build_env.json"), "w") as f:
    json.dump({k: os.environ.get(k) for k in ("CMAKE_ARGS", "CMAKE_BUILD_PARALLEL_LEVEL", "CUDACXX")}, f)
setup(name="llama_cpp_python", version="VERSION", packages=["llama_cpp"],
      package_data={"llama_cpp": ["build_env.json"]})
"""

FAILING_SETUP = """
import sys
sys.exit("CMake Error: Could not find CUDA toolkit (error: nvcc not found)")
"""


def test_build_passes_cmake_args_and_toolchain_env_and_caches_the_wheel(tmp_path):
    cache = WheelCache(tmp_path / "cache")
    spec = build_spec("cuda", [], architectures=["86", "89"])
    sdist = _tiny_sdist(tmp_path / "src", "0.0.1", RECORDING_SETUP)
    built = build_wheel(spec, version="0.0.1", cache=cache, sdist=sdist, jobs=3,
                        build_env=(("CUDACXX", "/opt/cuda/bin/nvcc"),))
    assert built.origin == "built" and built.key == "cuda-86.89" and built.build_seconds > 0
    assert built.path.parent == cache.dir_for("0.0.1", "cuda-86.89")
    with zipfile.ZipFile(built.path) as zf:
        seen = json.loads(zf.read("llama_cpp/build_env.json"))
    assert seen == {"CMAKE_ARGS": spec.cmake_args_string, "CMAKE_BUILD_PARALLEL_LEVEL": "3",
                    "CUDACXX": "/opt/cuda/bin/nvcc"}
    meta = json.loads((built.path.parent / "build.json").read_text())
    assert meta["cmake_args"] == list(spec.cmake_args) and meta["sha256"] == built.sha256
    assert "CMAKE_ARGS=" in (built.path.parent / "build.log").read_text()
    # A second call is a cache hit (the sdist is not even needed).
    assert build_wheel(spec, version="0.0.1", cache=cache, sdist=tmp_path / "gone.tar.gz").sha256 == built.sha256


def test_failed_build_names_its_log(tmp_path):
    from aiboxctl.errors import AiboxError

    cache = WheelCache(tmp_path / "cache")
    sdist = _tiny_sdist(tmp_path / "src", "0.0.2", FAILING_SETUP)
    with pytest.raises(AiboxError) as info:
        build_wheel(build_spec("cpu", []), version="0.0.2", cache=cache, sdist=sdist)
    log = cache.dir_for("0.0.2", "cpu-portable") / "build.log"
    assert info.value.code == "build_failed" and str(log) in info.value.hint
    assert "nvcc not found" in info.value.message and "nvcc not found" in log.read_text()
    assert cache.find("0.0.2", "cpu-portable") is None


# --- a throwaway environment -----------------------------------------------------------------

@pytest.fixture(scope="module")
def native_wheel(tmp_path_factory) -> Path:
    """The shared environment's llama-cpp-python packed into a wheel (what install keeps to
    restore when aiboxctl did not install the engine itself)."""
    cache = WheelCache(tmp_path_factory.mktemp("snapshot-cache"))
    engine = inspect_engine(sys.executable)["engine"]
    snap = snapshot_installed(engine, cache)
    assert snap is not None and snap.origin == "snapshot"
    return snap.path


def test_snapshot_is_a_complete_wheel(native_wheel):
    with zipfile.ZipFile(native_wheel) as zf:
        names = set(zf.namelist())
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert "llama_cpp/llama_cpp.py" in names and "llama_cpp/lib/libllama.so" in names
    assert not any("__pycache__" in n or n.endswith(("/INSTALLER", "/direct_url.json")) for n in names)
    listed = {line.split(",")[0] for line in record.splitlines()}
    assert listed == names


@pytest.mark.slow
def test_failed_selftest_restores_the_previous_engine(tmp_path, native_wheel):
    env_py = make_env(tmp_path / "env")
    cache = WheelCache(tmp_path / "cache")
    assert inspect_engine(str(env_py))["engine"]["error"] == "llama-cpp-python is not installed"

    good = install_engine("cpu", accelerators=[], wheel=native_wheel, python=str(env_py), cache=cache)
    assert good.action == "installed" and good.backend == "cpu"
    assert good.selftest["ok"] and good.engine["backends"] == ["CPU"]
    assert good.previous is None  # nothing was installed before
    record = read_record()
    assert record["ok"] and record["wheel"] == str(good.wheel)

    # The same wheel again: nothing to do.
    again = install_engine("cpu", accelerators=[], wheel=native_wheel, python=str(env_py), cache=cache)
    assert again.action == "unchanged"

    # A wheel whose CPU backend library is missing: it installs, then cannot load.
    broken = drop_from_wheel(native_wheel, tmp_path / "broken" / native_wheel.name,
                              lambda n: n.startswith("llama_cpp/lib/libggml-cpu"))
    with pytest.raises(VerificationFailed) as info:
        install_engine("cpu", accelerators=[], wheel=broken, python=str(env_py), cache=cache)
    err = info.value
    assert "failed its self-test" in err.message and "restored the previous engine" in err.message
    assert err.data["record"]["restored"]["available"] is True
    after = inspect_engine(str(env_py))["engine"]
    assert after["available"] and after["backends"] == ["CPU"]
    # The record still names the engine that is installed; the failure is in the history.
    assert read_record()["wheel"] == str(good.wheel)
    history = [json.loads(line) for line in (StatePaths.from_env().engine / "history.jsonl").read_text().splitlines()]
    assert [h["ok"] for h in history] == [True, False]
    assert "does not load" in history[-1]["failure"] or "libggml-cpu" in history[-1]["failure"]


def test_status_names_the_next_command_when_the_build_lacks_the_backend():
    nvidia = ROOT / "tests" / "fixtures" / "engine" / "probe-nvidia-mixed.json"
    from aiboxctl.engine.build.specs import load_accelerators

    status = engine_status(accelerators=load_accelerators(nvidia))
    assert status.available and "CPU" in status.backends
    assert status.needed_backend == "cuda" and not status.matches
    assert status.next_command == "aiboxctl engine install --backend cuda"
    cpu = status.devices[0]
    assert cpu["backend"] == "CPU" and cpu["memory_total_bytes"] > 0


def test_install_builds_the_missing_backend_only_with_confirmation():
    from aiboxctl.cli import output
    from aiboxctl.engine.build.specs import load_accelerators
    from aiboxctl.engine.build.install import backend_gap, ensure_engine
    from aiboxctl.errors import ConfirmationRequired

    nvidia = load_accelerators(ROOT / "tests" / "fixtures" / "engine" / "probe-nvidia-mixed.json")
    assert backend_gap(accelerators=[]) is None  # nothing to offload to
    assert ensure_engine(confirm=lambda q: pytest.fail("asked"), accelerators=[]) is None
    gap = backend_gap(accelerators=nvidia)  # this environment's engine is CPU-only
    assert gap is not None and gap.key == "cuda-80.89"

    def refuse(question: str) -> None:
        output.confirm(question, yes=False)  # no TTY under pytest: refuses, never prompts

    with pytest.raises(ConfirmationRequired) as info:
        ensure_engine(confirm=refuse, accelerators=nvidia)
    assert "no CUDA backend" in info.value.message and info.value.hint == "re-run with --yes"


def test_appliance_install_asks_to_build_the_engine_the_accelerators_need(monkeypatch, tmp_path):
    """`aiboxctl install` on a GPU box with a CPU-only engine: it stops before planning and
    writing anything, asking to build the engine (refused without --yes)."""
    import dataclasses

    from aiboxctl.cli import output
    from aiboxctl.deploy import install as deploy_install
    from aiboxctl.engine.build.specs import load_accelerators
    from aiboxctl.errors import ConfirmationRequired
    from aiboxctl.hardware.model import Accelerator
    from aiboxctl.hardware.probe import probe_box

    gpus = tuple(Accelerator(**{**d, "detected_by": tuple(d["detected_by"]), "notes": tuple(d["notes"])})
                 for d in load_accelerators(ROOT / "tests" / "fixtures" / "engine" / "probe-nvidia-mixed.json"))
    box = dataclasses.replace(probe_box(), accelerators=gpus)
    monkeypatch.setattr(deploy_install, "_probe", lambda: box)
    root = tmp_path / "root"
    with pytest.raises(ConfirmationRequired, match="no CUDA backend"):
        deploy_install.install("demo", root=root, confirm=lambda q: output.confirm(q, yes=False))
    assert not (root / "etc" / "aibox").exists()


def test_build_adds_the_toolchains_cmake_args_quoted_for_scikit_build(tmp_path):
    """cuBLAS from the nvidia-cublas wheel reaches CMake through CMAKE_ARGS, which
    scikit-build-core shlex-splits: a `$ORIGIN` run path in quotes must arrive as one argument."""
    import shlex

    cache = WheelCache(tmp_path / "cache")
    spec = build_spec("cuda", [], architectures=["90"])
    extra = ("-DCUDA_cublas_LIBRARY=/site/nvidia/cu13/lib/libcublas.so.13",
             "-DCMAKE_MODULE_LINKER_FLAGS=-Wl,-rpath,'$ORIGIN/../../nvidia/cu13/lib:$ORIGIN/../nvidia/cu13/lib'")
    sdist = _tiny_sdist(tmp_path / "src", "0.0.3", RECORDING_SETUP)
    built = build_wheel(spec, version="0.0.3", cache=cache, sdist=sdist, extra_cmake_args=extra)
    with zipfile.ZipFile(built.path) as zf:
        seen = json.loads(zf.read("llama_cpp/build_env.json"))
    assert shlex.split(seen["CMAKE_ARGS"]) == [*spec.cmake_args, *extra]
    assert built.cmake_args == (*spec.cmake_args, *extra)
    assert json.loads((built.path.parent / "build.json").read_text())["cmake_args"] == [*spec.cmake_args, *extra]
