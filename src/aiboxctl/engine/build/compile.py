"""Compile llama-cpp-python from its sdist into the wheel cache (``engine install``'s build
step, and ``engine install --build-only`` on its own). pip runs through
:func:`aiboxctl.system.run_command`; a failed build names its first real error line and
leaves the whole log next to the cache entry."""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aiboxctl.engine.build.cache import DIST, WHEEL_PREFIX, CachedWheel, WheelCache, pinned_version
from aiboxctl.engine.build.cudastub import make_libcuda_stub
from aiboxctl.engine.build.specs import BuildSpec, build_spec
from aiboxctl.engine.build.toolchain import require_toolchain
from aiboxctl.errors import AiboxError
from aiboxctl.system import CommandResult, run_command

BUILD_TIMEOUT_S = 4 * 3600.0  # a CUDA build for several architectures on few cores is slow
PIP_TIMEOUT_S = 1800.0

Progress = Callable[[str], None]


def no_progress(_: str) -> None:
    pass


def run_pip(python: str, *args: str, timeout: float = PIP_TIMEOUT_S, env: dict[str, str] | None = None,
            cwd: str | None = None) -> CommandResult:
    return run_command([python, "-m", "pip", *args], timeout=timeout, env=env, cwd=cwd)


_PIP_NOISE = ("subprocess-exited-with-error", "error originates from a subprocess", "failed to build",
              "finished with status", "failed building wheel", "could not build wheels", "error: metadata")


def pip_failure_line(res: CommandResult) -> str:
    """The line that says why a pip/CMake/compiler run failed: the first real error (CMake's
    message line, a compiler's ``error:``), not pip's closing summary."""
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        low = line.lower()
        if any(noise in low for noise in _PIP_NOISE):
            continue
        if line.startswith("CMake Error at") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}"[:300]
        if "cmake error" in low or "fatal error" in low or " error:" in f" {low}" or low.startswith("error "):
            return line[:300]
    tail = [ln for ln in lines if not any(noise in ln.lower() for noise in _PIP_NOISE)][-1:]
    return (tail[0][:300] if tail else "") or res.failure_reason()


def fetch_sdist(version: str, cache: WheelCache, *, python: str = sys.executable,
                progress: Progress = no_progress) -> Path:
    """The llama-cpp-python source archive, downloaded once into the cache."""
    name = f"llama_cpp_python-{version}.tar.gz"
    target = cache.sdist_dir / name
    if target.is_file():
        return target
    cache.sdist_dir.mkdir(parents=True, exist_ok=True)
    progress(f"downloading the llama-cpp-python {version} source (about 75 MB)")
    with tempfile.TemporaryDirectory(dir=cache.sdist_dir) as tmp:
        res = run_pip(python, "download", "--no-deps", "--no-binary", ":all:", f"{DIST}=={version}", "-d", tmp)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if not res.ok or not found:
            raise AiboxError(f"Could not download the llama-cpp-python {version} source: {pip_failure_line(res)}",
                             code="download_failed",
                             hint="check network access to PyPI, or pass a built wheel: aiboxctl engine install --wheel PATH")
        os.replace(found[0], target)
    return target


def build_wheel(spec: BuildSpec, *, version: str | None = None, cache: WheelCache | None = None,
                python: str = sys.executable, build_env: Sequence[tuple[str, str]] = (),
                extra_cmake_args: Sequence[str] = (), cuda_stub_include: str | None = None,
                jobs: int | None = None, sdist: Path | None = None,
                progress: Progress = no_progress) -> CachedWheel:
    """Compile llama-cpp-python for ``spec`` into the cache; a cached wheel is returned as is.
    ``extra_cmake_args``: what this machine's toolchain adds (cuBLAS from a wheel), recorded
    with the wheel beside the spec's own arguments. ``cuda_stub_include``: no CUDA driver library
    to link here, so one is stubbed from that folder's cuda.h (kept beside the wheel).

    pip's own wheel cache is bypassed (``--no-cache-dir``): it keys wheels by the source
    archive only, so a CPU wheel would come back for a CUDA build."""
    version = version or pinned_version()
    cache = cache or WheelCache()
    hit = cache.find(version, spec.key)
    if hit:
        return hit
    sdist = sdist or fetch_sdist(version, cache, python=python, progress=progress)
    folder = cache.dir_for(version, spec.key)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    env = dict(os.environ)
    env.update(dict(build_env))
    if cuda_stub_include:
        stub = make_libcuda_stub(Path(cuda_stub_include), folder / "cuda-driver-stub")
        extra_cmake_args = (*extra_cmake_args, f"-DCUDA_cuda_driver_LIBRARY={stub}")
    cmake_args = (*spec.cmake_args, *extra_cmake_args)
    cmake_args_string = shlex.join(cmake_args)  # scikit-build-core shlex-splits CMAKE_ARGS
    env["CMAKE_ARGS"] = cmake_args_string
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 2)
    progress(f"building llama-cpp-python {version} for {spec.key} (CMAKE_ARGS={cmake_args_string}); "
             f"this takes minutes (CPU) to an hour (CUDA, many architectures)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aibox-build-") as out:
        res = run_pip(python, "wheel", "--no-deps", "--no-cache-dir", "-v", "-w", out, str(sdist),
                   timeout=BUILD_TIMEOUT_S, env=env)
        log_path.write_text(f"$ CMAKE_ARGS={cmake_args_string!r} pip wheel {sdist}\n"
                            f"{res.stdout}\n--- stderr ---\n{res.stderr}\n")
        built = sorted(Path(out).glob(f"{WHEEL_PREFIX}*.whl"))
        if not res.ok or not built:
            raise AiboxError(f"Building llama-cpp-python for {spec.key} failed: {pip_failure_line(res)}",
                             code="build_failed", hint=f"read the build log: {log_path}")
        seconds = round(time.monotonic() - started, 1)
        return cache.add(built[0], CachedWheel(
            path=built[0], version=version, key=spec.key, backend=spec.backend,
            architectures=spec.architectures, cmake_args=cmake_args, origin="built",
            build_seconds=seconds))


def build_engine_wheel(backend: str = "auto", *, accelerators: Sequence[Any],
                       architectures: Sequence[str] | None = None, cache: WheelCache | None = None,
                       version: str | None = None, jobs: int | None = None, python: str = sys.executable,
                       confirm: Callable[[str], None] | None = None, progress: Progress = no_progress,
                       toolchain_check: Callable[..., Any] | None = None) -> CachedWheel:
    """Only the build (``engine install --build-only``): the wheel for ``backend`` in the cache,
    e.g. for another box (``--hardware`` its recorded probe) that ``pack`` will bundle.
    ``accelerators``: the caller's probe (of this box or a recorded one)."""
    cache = cache or WheelCache()
    version = version or pinned_version()
    spec = build_spec(backend, accelerators, architectures=architectures)
    hit = cache.find(version, spec.key)
    if hit:
        return hit
    tc = (toolchain_check or require_toolchain)(spec.backend, hygon=spec.hygon_dtk)
    if confirm:
        confirm(f"Build llama-cpp-python {version} for {spec.key} (minutes to an hour)?")
    return build_wheel(spec, version=version, cache=cache, python=python, build_env=tc.build_env,
                       extra_cmake_args=getattr(tc, "cmake_args", ()),
                       cuda_stub_include=getattr(tc, "cuda_stub_include", None), jobs=jobs, progress=progress)

