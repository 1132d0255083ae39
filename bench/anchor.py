#!/usr/bin/env python3
"""The anchor: llama.cpp's own llama-server, built from the llama.cpp source vendored in the
llama-cpp-python sdist aiboxctl pins (so both servers run the same kernels), into a cache folder
(never the repository): ``$AIBOX_BENCH_CACHE`` or ``~/.cache/aiboxctl-bench``. The sdist comes
from that cache, aiboxctl's engine-wheel cache, or ``pip download --no-binary :all: --no-deps
llama-cpp-python==<version>``.

Three builds (bench/serve_throughput.py and bench/device_check.py import this):

- ``llama_server()``: CPU, static, ``GGML_NATIVE=ON`` (the CPU benchmarks' anchor);
- ``llama_server("cuda", archs=("90",))``: a self-contained CUDA build (``GGML_CUDA=ON`` for those
  architectures, static ggml), the toolchain found as ``engine install`` finds it (cuBLAS from
  the toolkit or the ``nvidia-cublas`` wheel, a driver link stub where no driver is installed);
  it compiles every CUDA kernel a second time (the engine wheel already has them);
- ``llama_server_shared()``: only the server, linked against shared llama/ggml libraries and run
  on the *engine wheel's own* ``libllama``/``libggml*`` (``anchor_env``): the CUDA kernels are
  compiled once (the engine's), the two servers run the very same binaries, and what has to
  travel to a GPU box is one executable. No CUDA compiler needed to build it.

    .venv/bin/python bench/anchor.py [--cuda 90] [--shared]   # build and print the path
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"

# What every anchor build leaves out (no network, no tests, no examples).
COMMON_ARGS = ("-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
               "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON")


def cache_dir() -> Path:
    d = Path(os.environ.get("AIBOX_BENCH_CACHE") or Path.home() / ".cache" / "aiboxctl-bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def sdist() -> Path:
    d = cache_dir() / "sdist"
    d.mkdir(exist_ok=True)
    found = sorted(d.glob(SDIST))
    if found:
        return found[0]
    try:  # the one aiboxctl's engine build downloaded already
        from aiboxctl.engine.build.cache import WheelCache

        theirs = WheelCache().sdist_dir / SDIST
        if theirs.is_file():
            shutil.copy2(theirs, d / SDIST)
            return d / SDIST
    except ImportError:
        pass
    print(f"fetching the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist (pip cache or PyPI)…", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                    f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(d)], check=True)
    return sorted(d.glob("llama_cpp_python-*.tar.gz"))[0]


def source() -> Path:
    """The vendored llama.cpp tree, unpacked once (shared by every anchor build)."""
    src = cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}" / "src"
    if not (src / "CMakeLists.txt").is_file():
        src.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist()) as tar, tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
            vendored = next(Path(tmp).glob("*/vendor/llama.cpp"))
            shutil.rmtree(src, ignore_errors=True)
            shutil.move(str(vendored), src)
    return src


def _build(build: Path, args: Sequence[str], *, jobs: int | None, env: dict[str, str] | None = None) -> None:
    jobs_s = str(jobs or os.cpu_count() or 2)
    print(f"building llama-server in {build} (once; cmake -j{jobs_s})…", file=sys.stderr)
    run_env = {**os.environ, **(env or {})}
    subprocess.run(["cmake", "-S", str(source()), "-B", str(build), *COMMON_ARGS, *args], check=True,
                   stdout=subprocess.DEVNULL, env=run_env)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs_s],
                   check=True, stdout=subprocess.DEVNULL, env=run_env)


def cuda_toolchain_args(build: Path) -> tuple[list[str], dict[str, str]]:
    """CMake arguments and environment for a CUDA build here, found as ``engine install`` finds
    them; raises SystemExit with the toolchain's one line when something is missing."""
    from aiboxctl.engine.build.cudastub import make_libcuda_stub
    from aiboxctl.engine.build.toolchain import check_toolchain

    tc = check_toolchain("cuda")
    if not tc.ok:
        raise SystemExit(f"{tc.message} ({tc.install_hint})")
    args = list(tc.cmake_args)
    if tc.cuda_stub_include:
        stub = make_libcuda_stub(Path(tc.cuda_stub_include), build / "cuda-driver-stub")
        args.append(f"-DCUDA_cuda_driver_LIBRARY={stub}")
    return args, dict(tc.build_env)


def llama_server(backend: str = "cpu", *, archs: Sequence[str] = (), jobs: int | None = None) -> Path:
    """The llama-server binary for ``backend`` ("cpu" or "cuda"), built once into the cache."""
    if backend == "cpu":
        root = cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}"
        exe = root / "build" / "bin" / "llama-server"
        if not exe.is_file():
            _build(root / "build", ["-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"], jobs=jobs)
        return exe
    if backend != "cuda":
        raise ValueError(f"anchor backend {backend!r}: cpu or cuda")
    if not archs:
        raise ValueError("a CUDA anchor needs its architectures, e.g. archs=('90',)")
    build = cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-cuda-{'.'.join(archs)}"
    exe = build / "bin" / "llama-server"
    if not exe.is_file():
        build.mkdir(parents=True, exist_ok=True)
        args, env = cuda_toolchain_args(build)
        # GGML_NATIVE off: the binary runs on another machine's CPU (the GPU box).
        _build(build, ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_CUDA=ON",
                       f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(archs)}", *args], jobs=jobs, env=env)
    return exe


# What the shared llama-server needs besides the engine wheel's libllama/libggml (SONAME names).
SERVER_LIBS = ("libllama-server-impl.so", "libllama-common.so.0", "libmtmd.so.0")


def llama_server_shared(*, jobs: int | None = None) -> Path:
    """llama-server alone (``dist/llama-server``), linked against shared llama/ggml libraries with
    backends as loadable modules and no run-time search path of its own: run it with
    :func:`anchor_env` to use an installed engine wheel's libraries, CUDA included."""
    build = cache_dir() / f"llama-server-{LLAMA_CPP_PYTHON_VERSION}-shared"
    exe = build / "dist" / "llama-server"
    if not exe.is_file():
        _build(build, ["-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON", "-DGGML_BACKEND_DL=ON",
                       "-DGGML_CPU_ALL_VARIANTS=OFF", "-DCMAKE_SKIP_RPATH=ON"], jobs=jobs)
        exe.parent.mkdir(parents=True, exist_ok=True)
        # The server's own code (libllama-server-impl, llama-common, mtmd) goes beside it, under
        # the names the loader asks for; no ggml library or backend module does.
        for name in SERVER_LIBS:
            shutil.copy2((build / "bin" / name).resolve(), exe.parent / name)
        shutil.copy2(build / "bin" / "llama-server", exe)
    return exe


def anchor_env(site: Path, exe: Path | None = None) -> tuple[dict[str, str], Path]:
    """(environment, working directory) that make :func:`llama_server_shared`'s binary ``exe``
    run on the engine wheel installed in ``site``: the server's own libraries beside ``exe``,
    then the wheel's libllama/libggml (``llama_cpp/lib``) through LD_LIBRARY_PATH, and its backend
    modules (``bin/``: libggml-cpu-*.so, libggml-cuda.so), which ggml looks for beside the
    executable and in the working directory."""
    exe = exe or llama_server_shared()
    libs = [str(exe.parent), str(site / "llama_cpp" / "lib"), str(site / "lib")]
    old = os.environ.get("LD_LIBRARY_PATH")
    env = {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join([*libs, *([old] if old else [])])}
    modules = site / "bin" if any((site / "bin").glob("libggml-*.so")) else site / "llama_cpp" / "lib"
    return env, modules


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", metavar="ARCHS", help="CUDA architectures, comma-separated (90 = Hopper)")
    ap.add_argument("--shared", action="store_true", help="the server only, on the engine wheel's libraries")
    ap.add_argument("--jobs", type=int)
    a = ap.parse_args()
    if a.shared:
        exe = llama_server_shared(jobs=a.jobs)
    elif a.cuda:
        exe = llama_server("cuda", archs=[x for x in a.cuda.split(",") if x], jobs=a.jobs)
    else:
        exe = llama_server(jobs=a.jobs)
    print(f"{exe}  ({exe.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
