#!/usr/bin/env python3
"""The prepared device check (issue 18): one command that proves, on a GPU box lent for minutes,
the CUDA engine, full offload, the memory model and the speed against llama-server — and its CPU
rehearsal (``--cpu``), which CI runs (tests/test_device_check.py).

Steps, in order of what matters most, each time-boxed (a step that fails or runs out of time is
recorded and the next one runs; the JSON is rewritten after every step, so a killed run still
leaves what it measured):

1. ``install``: the carried wheels (``--prepare`` made them) into a private prefix
   (``pip install --no-index --no-deps --prefix``): the engine wheel, aiboxctl, the packages the
   device's Python lacks; ``probe``: ``aiboxctl probe --json`` (NVML and nvidia-smi) and NVML
   read directly; ``synth-7b``: the Qwen2.5-7B-shaped Q4_K_M (``bench/synth_models.py``);
   ``selftest``: the engine's self-test with full offload.
2. ``speed``: ``aiboxctl serve`` against llama-server (``bench/anchor.py``; on the device the
   shared build running on the engine wheel's own libraries) at 1/8/32/64 streams, full offload,
   ``ignore_eos``: aggregate tok/s, TTFT, the ratio, and the engine's host time per step and per
   token from its /metrics.
3. ``plan``: ``aiboxctl plan --profile gov-office`` on the probed box, and the same profile for
   the synthetic 7B at each stream count, against what ``speed`` measured.
4. ``sizing-7b`` / ``sizing-32b`` (``synth-32b`` writes the 32B shape between them): per model
   × three settings (context, slots, KV type) ``estimate`` and ``estimate --exact`` against what
   a real ``aiboxctl serve`` uses once loaded: llama.cpp's buffers per device (its load log) and
   the GPU memory NVML sees taken (on the CPU, the process RSS stands in). Goal ≤ 3 % and never
   under.
5. ``device-check.json`` and ``device-check.md`` in ``$OUT`` (or ``--out``).

Here, once, before the device (prints the carry folder's size; the tree that travels ≤ 64 MiB):

    .venv/bin/python bench/device_check.py --prepare .carry [--engine-wheel WHEEL]

On the device (docs/gpu.md has the exact ``run`` call, carry list and timeout):

    python3 bench/device_check.py --carry .carry --budget 420

Here, the rehearsal (small shapes, CPU engine and CPU llama-server, a few minutes on 2 cores):

    .venv/bin/python bench/device_check.py --cpu --out /tmp/device-check
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "tests")]

from front_door_figures import (  # noqa: E402  (bench/front_door_figures.py)
    FRONT_DOOR_SIDES, cpu_seconds, front_door_level, idle_rate, status_bytes)
from serve_throughput import counters, free_port, run_level, step_costs  # noqa: E402  (bench/serve_throughput.py)

GOAL_SIZING = 0.03  # ≤ 3 % and never under
SLOT_CTX = 512  # the speed step's KV cells per slot
GOAL_SPEED = {1: 1.0, 64: 0.95}  # aiboxctl / llama-server aggregate, at that many streams
MiB = 2**20

# The packages the device's python3 (/opt/torch/.venv, Python 3.12) already has, from
# /work/.library/device/KINDS.md (read 2026-11-17); --prepare carries every other runtime
# dependency of aiboxctl as a cp312 manylinux wheel. typer is carried anyway: aiboxctl pins a
# range (Typer 0.26 moved Click into a private module) and the device's version is not known.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml
markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas
nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13
nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
ALWAYS_CARRY = frozenset({"typer"})
# Runtime dependencies no step of the check imports, left out to fit the 64 MiB (with their own
# dependencies: cffi, pycparser): the front door's TLS alone imports cryptography, lazily; probe,
# plan, estimate and serve were run here with it made unimportable (2026-11-30).
NOT_CARRIED = frozenset({"cryptography"})
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64", "manylinux_2_24_x86_64")
TREE_LIMIT = 64 * MiB
ANCHOR_TAR = "llama-server.tar.xz"  # bench/anchor.py's shared llama-server, in the carry folder


@dataclass(frozen=True)
class Mode:
    """What differs between the device run and the CPU rehearsal."""

    cpu: bool
    gpu_layers: int
    streams: tuple[int, ...]
    tokens: int
    settings: tuple[dict, ...]  # sizing: ctx, parallel, kv
    small: bool = False  # the small shapes (always with --cpu)
    front_door_streams: tuple[int, ...] = ()  # the front-door step's levels (default: streams)
    front_door_rounds: int = 3  # rounds per level in the front-door step (--rounds)

    @staticmethod
    def device() -> Mode:
        # the front door at 1 stream and at issue 16's two levels: three sides × 3 rounds each
        return Mode(False, -1, (1, 8, 32, 64), 128,
                    ({"ctx": 8192, "parallel": 1, "kv": "f16"}, {"ctx": 65536, "parallel": 16, "kv": "f16"},
                     {"ctx": 131072, "parallel": 64, "kv": "q8_0"}), front_door_streams=(1, 16, 64))

    @staticmethod
    def rehearsal() -> Mode:
        return Mode(True, 0, (1, 4), 16,
                    ({"ctx": 2048, "parallel": 1, "kv": "f16"}, {"ctx": 8192, "parallel": 4, "kv": "f16"},
                     {"ctx": 8192, "parallel": 8, "kv": "q8_0"}), small=True)


@dataclass
class Run:
    mode: Mode
    out: Path
    deadline: float
    carry: Path
    work: Path  # models, site-packages, configs, logs
    threads: int
    aiboxctl: list[str] = field(default_factory=list)
    site: Path | None = None  # where the carried wheels were installed (device)
    models: dict[str, dict] = field(default_factory=dict)  # key -> synth_models.write() result
    steps: dict[str, dict] = field(default_factory=dict)
    step_deadline: float = 0.0
    started: str = ""
    anchor_build: dict | None = None  # --cpu: the CPU llama-server and the seconds it took to get
    selected: tuple[str, ...] = ()  # the steps to run (select_steps)

    def left(self) -> float:
        return min(self.deadline, self.step_deadline) - time.monotonic()


# --- small helpers ----------------------------------------------------------------------------

def rel_error(est: float, measured: float) -> float | None:
    """(estimate − measured) / measured; 0 within two log lines' 0.01 MiB rounding."""
    if not measured:
        return None
    if abs(est - measured) <= 0.02 * MiB:
        return 0.0
    return (est - measured) / measured


def cli(run: Run, *args: str, timeout: float | None = None) -> dict:
    """One ``aiboxctl --json`` command: its envelope (exit code added), never raising on a failure."""
    t = max(1.0, min(timeout or run.left(), run.left()))
    try:
        p = subprocess.run([*run.aiboxctl, "--json", *args], capture_output=True, text=True, timeout=t,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "exit_code": None, "errors": [{"message": f"timed out after {t:.0f} s"}], "data": {}}
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = {"ok": False, "data": {}, "errors": [{"message": (p.stderr.strip().splitlines() or ["no output"])[-1]}]}
    doc["exit_code"] = p.returncode
    return doc


def nvml_gpus() -> list[dict]:
    """Every GPU's name and memory (bytes) through NVML; [] without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no library: a CPU box
        return []
    out = []
    for i in range(pynvml.nvmlDeviceGetCount()):
        h = pynvml.nvmlDeviceGetHandleByIndex(i)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        name = pynvml.nvmlDeviceGetName(h)
        out.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                    "total": int(mem.total), "used": int(mem.used)})
    return out


def gpu_used() -> int | None:
    gpus = nvml_gpus()
    return sum(g["used"] for g in gpus) if gpus else None


def rss_bytes(pid: int) -> int | None:
    return status_bytes(pid, "VmRSS")


class Server:
    """A server process (aiboxctl or llama-server) with its log, up once /health answers 200."""

    def __init__(self, name: str, argv: list[str], port: int, timeout: float, env: dict | None = None,
                 cwd: Path | None = None, log_dir: Path | None = None) -> None:
        import httpx

        self.name, self.port = name, port
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir)[1])
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=cwd, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} not healthy within {timeout:.0f} s: {self.tail()}")
            try:
                if httpx.get(self.base + "/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, n: int = 3) -> str:
        lines = [ln.strip() for ln in self.log().splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-600:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def engine_yaml(run: Run, model: str, *, ctx: int, parallel: int, kv: str = "f16", port: int,
                keys: Path | None = None) -> Path:
    import yaml

    cfg = {"model": model, "port": port, "n_ctx": ctx, "parallel": parallel, "cache_type_k": kv,
           "cache_type_v": kv, "flash_attn": "on", "n_gpu_layers": run.mode.gpu_layers, "repack": False,
           "threads": run.threads, "threads_batch": run.threads, "selftest": False,
           "max_tokens_cap": 4096, "queue_size": 256}
    if keys is not None:  # the front door's internal token, as an appliance's engines trust it
        cfg["api_keys_file"] = str(keys)
    path = run.work / f"engine-{Path(model).stem}-{ctx}-{parallel}-{kv}{'-keys' if keys else ''}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def serve(run: Run, model: str, *, ctx: int, parallel: int, kv: str = "f16", keys: Path | None = None) -> Server:
    port = free_port()
    cfg = engine_yaml(run, model, ctx=ctx, parallel=parallel, kv=kv, port=port, keys=keys)
    return Server("aiboxctl", [*run.aiboxctl, "--verbose", "serve", "--config", str(cfg)], port,
                  timeout=max(5.0, run.left() - 5), log_dir=run.work)


def llama_buffers(log: str) -> dict[str, dict[str, int]]:
    """llama.cpp's buffers per device from a real load's log (aiboxctl's log prefixes each of
    llama.cpp's lines with 'llama.cpp: '), read by sizing's own parser."""
    from aiboxctl.sizing.dryrun import parse_buffer_lines

    lines = [ln.split("llama.cpp: ", 1)[1] for ln in log.splitlines() if "llama.cpp: " in ln]
    return parse_buffer_lines(lines, mode="real")["devices"]


# --- the steps --------------------------------------------------------------------------------

def step_install(run: Run) -> dict:
    """Device: the carried wheels into ``work/prefix``; children find them through PYTHONPATH."""
    if run.mode.cpu:
        run.aiboxctl = [str(Path(sys.executable).with_name("aiboxctl"))]
        info = subprocess.run([sys.executable, "-c", "import llama_cpp as L; print(L.__version__, "
                               "bool(L.llama_supports_gpu_offload()))"], capture_output=True, text=True,
                              timeout=max(1, run.left()))
        return {"skipped_install": "--cpu uses this environment's engine", "engine": info.stdout.strip()}
    wheels = sorted((run.carry / "wheels").glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"no wheels in {run.carry / 'wheels'} (run --prepare here first, and carry it)")
    # --prefix, not --target: llama-cpp-python keeps its backend modules in site-packages/bin,
    # which --target shares with every wheel's scripts (the last wheel's bin/ replaces the others)
    prefix = run.work / "prefix"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--prefix", str(prefix), *map(str, wheels)],
                       capture_output=True, text=True, timeout=max(1, run.left()))
    if p.returncode:
        raise RuntimeError(f"pip install failed: {p.stderr.strip()[-500:]}")
    import sysconfig

    site = Path(sysconfig.get_path("purelib", "posix_prefix", vars={"base": str(prefix), "platbase": str(prefix)}))
    if not (site / "llama_cpp").is_dir():
        raise RuntimeError(f"the engine wheel did not land in {site}")
    run.site = site
    if (run.carry / ANCHOR_TAR).is_file():
        import tarfile

        with tarfile.open(run.carry / ANCHOR_TAR) as tar:
            tar.extractall(run.work, filter="data")
    # CUDA runtime and cuBLAS: the toolkit's, and the nvidia-* wheels of the device's python
    libs = [str(site / "llama_cpp" / "lib")]
    libs += [str(d) for base in map(Path, sys.path) if base.is_dir() for d in sorted(base.glob("nvidia/*/lib"))]
    libs += [d for d in ("/usr/local/cuda/lib64", "/usr/local/nvidia/lib64") if Path(d).is_dir()]
    old = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([*dict.fromkeys(libs), *([old] if old else [])])
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.environ["PATH"] = os.pathsep.join([str(prefix / "bin"), os.environ.get("PATH", "")])
    sys.path.insert(0, str(site))
    import importlib

    importlib.invalidate_caches()
    exe = prefix / "bin" / "aiboxctl"
    run.aiboxctl = [str(exe)] if exe.is_file() else [sys.executable, "-c",
                                                        "import sys; from aiboxctl.cli.app import main; sys.exit(main())"]
    info = subprocess.run([sys.executable, "-c", "import llama_cpp as L, aiboxctl, fastapi, gguf; "
                           "print(L.__version__, bool(L.llama_supports_gpu_offload()), aiboxctl.__version__)"],
                          capture_output=True, text=True, timeout=max(1, run.left()))
    if info.returncode:
        raise RuntimeError(f"the installed engine does not import: {info.stderr.strip()[-500:]}")
    return {"wheels": [w.name for w in wheels], "site": str(site), "engine": info.stdout.strip(),
            "ld_library_path": os.environ["LD_LIBRARY_PATH"]}


def step_probe(run: Run) -> dict:
    doc = cli(run, "probe", timeout=60)
    data = doc.get("data") or {}
    gpus = nvml_gpus()
    out = {"exit_code": doc["exit_code"], "errors": doc.get("errors"), "nvml": gpus,
           "accelerators": data.get("accelerators"), "engine": data.get("engine"), "cpu": data.get("cpu"),
           "memory": data.get("memory"), "warnings": data.get("warnings")}
    if doc["exit_code"] != 0:
        raise StepFailed("aiboxctl probe failed", out)
    if not run.mode.cpu and not gpus:
        raise StepFailed("NVML sees no GPU", out)
    return out


class StepFailed(RuntimeError):
    def __init__(self, message: str, data: dict) -> None:
        super().__init__(message)
        self.data = data


def models_dir(run: Run, need: int) -> Path:
    """/dev/shm when it has room (no disk in the way), else the work folder."""
    shm = Path("/dev/shm")
    if not run.mode.cpu and shm.is_dir() and shutil.disk_usage(shm).free > need * 1.2:
        d = shm / "aibox-synth"
        d.mkdir(exist_ok=True)
        return d
    d = run.work / "models"
    d.mkdir(exist_ok=True)
    return d


def step_synth(key: str) -> Callable[[Run], dict]:
    def go(run: Run) -> dict:
        import synth_models as sm

        tok_file = run.carry / sm.TOKENIZER_FILE
        tok = sm.load_tokenizer(tok_file if tok_file.is_file() else None)
        shapes = sm.SMALL if run.mode.small else sm.SHAPES
        need = 2**30 if run.mode.small else {"7b": 5 * 2**30, "32b": 19 * 2**30}[key]
        written = sm.write(shapes[key], models_dir(run, need), tok, small=run.mode.small)
        written["check"] = sm.check(written, timeout=max(5, run.left()))
        run.models[key] = written
        if not (written["check"].get("loaded") and written["check"].get("sizes_match")):
            raise StepFailed("llama.cpp did not load it with the written sizes", written)
        return written

    return go


def step_selftest(run: Run) -> dict:
    model = run.models["7b"]["path"]
    code = ("import json, sys\n"
            "from aiboxctl.engine.config import engine_config_from_mapping\n"
            "from aiboxctl.engine.selftest import run_selftest\n"
            f"cfg = engine_config_from_mapping({{'model': {model!r}, 'n_ctx': 4096, 'parallel': 1, "
            f"'n_gpu_layers': {run.mode.gpu_layers}, 'threads': {run.threads}}})\n"
            f"print(json.dumps(run_selftest(cfg, timeout={max(5.0, run.left() - 5):.0f}).to_dict()))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=max(1, run.left()))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"self-test produced no result: {p.stderr.strip()[-500:]}")
    res = json.loads(lines[-1])
    out = {"ok": res["ok"], "fallback": res.get("fallback"), "fallback_reason": res.get("fallback_reason"),
           "attempts": [{k: a.get(k) for k in ("name", "ok", "reason", "signal", "seconds", "tokens")}
                        for a in res.get("attempts", [])],
           "n_gpu_layers": (res.get("config") or {}).get("n_gpu_layers")}
    if not res["ok"]:
        raise StepFailed("the self-test failed", out)
    if run.mode.gpu_layers and out["n_gpu_layers"] != run.mode.gpu_layers:
        # a CPU-side fallback (repack off on a CPU whose AMX faults) keeps the offload: not a failure
        raise StepFailed(f"full offload did not pass (fallback {res['fallback']}: {res.get('fallback_reason')})", out)
    return out


def step_sizing(key: str) -> Callable[[Run], dict]:
    def go(run: Run) -> dict:
        model = run.models[key]["path"]
        cells = []
        for s in run.mode.settings:
            if run.left() < 10:
                cells.append({**s, "skipped": "no time left"})
                continue
            args = ["estimate", model, "--ctx", str(s["ctx"]), "--parallel", str(s["parallel"]),
                    "--cache-type-k", s["kv"], "--cache-type-v", s["kv"], "--flash-attn", "on",
                    "--gpu-layers", str(run.mode.gpu_layers)]
            est = cli(run, *args, timeout=60)
            exact = cli(run, *args, "--exact", timeout=120)
            cell: dict[str, Any] = {**s, "estimate": (est.get("data") or {}).get("devices"),
                                    "exact": (exact.get("data") or {}).get("devices"),
                                    "errors": [e.get("message") for d in (est, exact) for e in d.get("errors") or []]}
            before = gpu_used()
            try:
                srv = serve(run, model, ctx=s["ctx"], parallel=s["parallel"], kv=s["kv"])
            except (RuntimeError, OSError) as e:
                cell["measured_error"] = str(e)
                cells.append(cell)
                continue
            try:
                after = gpu_used()
                cell["measured"] = llama_buffers(srv.log())
                cell["rss"] = rss_bytes(srv.proc.pid)
                if before is not None and after is not None:
                    cell["nvml_used"] = after - before
            finally:
                srv.stop()
            cell["compare"] = compare(run, cell)
            cells.append(cell)
        worst = [c["compare"] for c in cells if "compare" in c]
        if not any(e is not None for c in worst for src in c.values() for e in src["errors"].values()):
            raise StepFailed("no buffer compared (no device in the load log or the estimate matching "
                             f"{'the host' if run.mode.cpu else 'a GPU'})", {"model": key, "cells": cells})
        return {"model": key, "cells": cells,
                "worst": max((abs(e) for c in worst for src in c.values() for e in src["errors"].values()
                              if e is not None), default=None),
                "under": [f"{key} ctx={c['ctx']} par={c['parallel']} {c['kv']}: {src}.{k}"
                          for c in cells if "compare" in c for src, v in c["compare"].items()
                          for k, e in v["errors"].items() if e is not None and e < 0]}

    return go


BUFFERS = ("weights", "kv_cache", "compute", "output")
HOST_COMPUTE = "host_compute"  # on a GPU: the host's compute buffer beside the accelerator's


def compare(run: Run, cell: dict) -> dict:
    """Per buffer and in total: estimate and --exact against the real load. On a GPU the
    accelerator (its buffers, and NVML's used memory against the device's estimated total); on the
    CPU the host's buffers (repack off in both), and its total against the process RSS."""
    measured = cell["measured"]
    gpu_names = [d for d in measured if d != "host"]
    out = {}
    for src in ("estimate", "exact"):
        devs = cell.get(src) or {}
        if not devs:
            continue
        if run.mode.cpu:
            est_dev, meas_dev = devs.get("host", {}), measured.get("host", {})
            total_est = est_dev.get("total", 0) - est_dev.get("repack", 0)
            total_meas = cell.get("rss")
        else:
            est_name = next((d for d in devs if d != "host"), None)
            est_dev = devs.get(est_name, {}) if est_name else {}
            meas_dev = measured.get(gpu_names[0], {}) if gpu_names else {}
            total_est = est_dev.get("total", 0)
            total_meas = cell.get("nvml_used")
        errors = {b: rel_error(est_dev.get(b, 0), meas_dev.get(b, 0)) for b in BUFFERS if meas_dev.get(b)}
        host_est = host_meas = None
        if not run.mode.cpu:
            # the host's compute buffer (CUDA_Host) is a buffer llama.cpp reports too: the first two
            # H200 runs had it 5-36 % under and no goal saw it
            host_est = (devs.get("host") or {}).get("compute")
            host_meas = (measured.get("host") or {}).get("compute")
            if host_meas:
                errors[HOST_COMPUTE] = rel_error(host_est or 0, host_meas)
        total = rel_error(total_est, total_meas) if total_meas else None
        if not run.mode.cpu and total is not None:
            errors["total"] = total  # NVML counts what cudaMalloc committed: the device's real use
        out[src] = {"errors": errors, "estimated": {**{b: est_dev.get(b) for b in (*BUFFERS, "total")},
                                                    **({HOST_COMPUTE: host_est} if host_meas else {})},
                    "measured": {**{b: meas_dev.get(b) for b in BUFFERS},
                                 **({HOST_COMPUTE: host_meas} if host_meas else {}),
                                 "total": total_meas, "total_is": "process RSS" if run.mode.cpu else "NVML used"},
                    # RSS counts only touched pages (mmapped weights, an untouched compute buffer):
                    # shown, never a goal
                    "total_vs_measured": total}
    return out


def bounded(run: Run, fn: Callable[[], Any], servers: list[Server], what: str) -> Any:
    """``fn()`` within the step's time: servers that hang are stopped (their clients then fail)
    instead of holding the whole check."""
    import threading

    box: dict[str, Any] = {}

    def go() -> None:
        try:
            box["result"] = fn()
        except Exception as e:  # handed to the caller's thread
            box["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(max(1.0, run.left()))
    if t.is_alive():
        for srv in servers:
            srv.stop()
        t.join(30)
        raise TimeoutError(f"{what} did not finish within the step's time")
    if "error" in box:
        raise box["error"]
    return box["result"]


def bounded_level(run: Run, srv: Server, streams: int, tokens: int) -> dict:
    """serve_throughput.run_level within the step's time."""
    return bounded(run, lambda: run_level(srv.base, streams, tokens), [srv], f"{streams} streams")


GPU_COUNTERS_NOTE = ("on CUDA llama_decode returns once the kernels are queued: decode_ms_per_step is launch "
                     "time only, and the wait for the GPU lands in the sampling counter")
AGGREGATE_IS = "all streams' tokens / wall time from the first request to the last token (prefill and admission included)"


def step_speed(run: Run) -> dict:
    import anchor

    model = run.models["7b"]["path"]
    streams = run.mode.streams
    slots = max(streams)
    slot_ctx = SLOT_CTX
    if run.mode.cpu:
        exe, env, cwd = anchor.llama_server(), None, None
        if not exe.is_file():
            raise RuntimeError("the CPU llama-server did not build")
    else:
        exe = run.work / "llama-server" / "llama-server"
        if not exe.is_file():
            raise RuntimeError(f"{exe} missing (install unpacks {ANCHOR_TAR}: --prepare makes it)")
        env, cwd = anchor.anchor_env(run.site, exe)  # its own libraries beside it, ggml the engine's
    ls_argv = [str(exe), "-m", model, "--host", "127.0.0.1", "-t", str(run.threads), "-tb", str(run.threads),
               "-c", str(slots * slot_ctx), "-np", str(slots), "-b", "512", "-ub", "512", "--kv-unified",
               "-fa", "on", "--metrics", "--no-repack", "-ngl", "999" if run.mode.gpu_layers else "0"]
    results: dict[str, dict] = {}
    notes = []
    for name in ("llama-server", "aiboxctl"):
        if run.left() < 15:
            notes.append(f"{name}: skipped, no time left")
            continue
        try:
            if name == "llama-server":
                port = free_port()
                srv = Server(name, [*ls_argv, "--port", str(port)], port, timeout=max(5.0, run.left() - 5),
                             env=env, cwd=cwd, log_dir=run.work)
            else:
                srv = serve(run, model, ctx=slots * slot_ctx, parallel=slots)
        except (RuntimeError, OSError) as e:  # did not start or not healthy: the other server still runs
            notes.append(f"{name}: {type(e).__name__}: {e}")
            continue
        try:
            bounded_level(run, srv, 1, 8)  # warm-up
            results[name] = {"levels": {}, "gpu_used": gpu_used(), "rss": rss_bytes(srv.proc.pid)}
            for n in streams:
                if run.left() < 5:
                    notes.append(f"{name}: {n} streams skipped, no time left")
                    continue
                m0 = counters(srv.base) if name == "aiboxctl" else {}
                r = bounded_level(run, srv, n, run.mode.tokens)
                if m0:  # the engine's own split (serve_throughput's parse of /metrics)
                    c = step_costs(m0, counters(srv.base), r["wall"])
                    r["host_us_per_step"], r["host_us_per_token"] = c["host"], c["host_per_token"]
                    r["decode_ms_per_step"] = c["decode"] / 1e3
                results[name]["levels"][str(n)] = r
        except Exception as e:  # a level that breaks ends this server's levels, not the step
            notes.append(f"{name}: {type(e).__name__}: {e}")
        finally:
            srv.stop()
    ratios = {}
    for n in streams:
        ls = results.get("llama-server", {}).get("levels", {}).get(str(n))
        ab = results.get("aiboxctl", {}).get("levels", {}).get(str(n))
        if ls and ab:
            ratios[str(n)] = {"aggregate": ab["aggregate"] / ls["aggregate"],
                              "ttft_p50": ab["ttft_p50"] / ls["ttft_p50"] if ls["ttft_p50"] else None}
    if not run.mode.cpu:
        notes.append(GPU_COUNTERS_NOTE)
    out = {"streams": list(streams), "tokens": run.mode.tokens, "servers": results, "ratios": ratios, "notes": notes}
    if not ratios:
        raise StepFailed("no stream level measured on both servers", out)
    return out


PROMPT_TOKENS = 10  # serve_throughput's prompts ("Essay i: The history of the Roman Empire") in Qwen2's BPE

# The prediction at the depth the speed step decoded at, with the settings it served (a child
# process: on the device aiboxctl lives in the installed prefix).
_PREDICT = """
import json, sys
from aiboxctl.hardware.probe import probe_box
from aiboxctl.models.facts import ModelFacts
from aiboxctl.models.gguf import read_header
from aiboxctl.sizing.box import box_from_report
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.sizing.throughput import estimate_throughput
a = json.loads(sys.argv[1])
box = box_from_report(probe_box())
header = read_header(a["model"])
facts = ModelFacts.from_header(header)
params = EngineParams(n_ctx=a["ctx"], parallel=a["parallel"], flash_attn="on", n_gpu_layers=a["gpu_layers"], repack=False)
accelerators = tuple(d.name for d in box.accelerators) if a["gpu_layers"] else ()
est = estimate_memory(facts, params, accelerators=accelerators, cpu=box.cpu_buffers)
out = {}
for n in a["streams"]:
    tp = estimate_throughput(facts, est, box.speeds(), active_params=sum(t.n_elements for t in header.tensors),
                             streams=n, depth=a["depth"], cpu=box.cpu_buffers)
    out[str(n)] = {"per_user": tp.per_user_tok_s, "aggregate": tp.aggregate_tok_s, "bound": tp.bound}
print(json.dumps(out))
"""


def predict_decode(run: Run, streams: tuple[int, ...], depth: int) -> dict:
    """{streams: per-user and aggregate decode tok/s} the throughput model predicts for the speed
    step's server (its slots and context, full offload or none) at ``depth``."""
    slots = max(run.mode.streams)
    arg = json.dumps({"model": run.models["7b"]["path"], "ctx": slots * SLOT_CTX, "parallel": slots,
                      "gpu_layers": run.mode.gpu_layers, "streams": list(streams), "depth": depth})
    p = subprocess.run([sys.executable, "-c", _PREDICT, arg], capture_output=True, text=True,
                       timeout=max(1, min(60, run.left())))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        raise RuntimeError(f"the decode prediction failed: {p.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def decode_rate(level: dict, tokens: int) -> float:
    """A stream's decode rate from serve_throughput's per_stream (all its tokens over the time
    after its first): ``tokens − 1`` intervals, not ``tokens``."""
    return level["per_stream"] * (tokens - 1) / tokens


def step_plan(run: Run) -> dict:
    box = cli(run, "plan", "--profile", "gov-office", timeout=60)
    data = box.get("data") or {}
    chosen = {"exit_code": box["exit_code"], "variant": data.get("variant"), "quant": data.get("quant"),
              "engine": {k: (data.get("engine") or {}).get(k) for k in ("n_ctx", "parallel", "n_gpu_layers",
                                                                        "cache_type_k", "flash_attn")},
              "throughput": data.get("throughput") or (data.get("closest") or {}),
              "errors": box.get("errors")}
    measured = (run.steps.get("speed", {}).get("data") or {}).get("servers", {}).get("aiboxctl", {}).get("levels", {})
    levels = {}
    for n in run.mode.streams:
        if run.left() < 5:
            break
        doc = cli(run, "plan", "--profile", "gov-office", "--model", run.models["7b"]["path"], "--users", str(n),
                  "--target-tok-s", "0.01", timeout=60)
        tp = (doc.get("data") or {}).get("throughput") or {}
        got = measured.get(str(n))
        levels[str(n)] = {"exit_code": doc["exit_code"], "predicted_aggregate": tp.get("aggregate_tok_s"),
                          "predicted_per_user": tp.get("per_user_tok_s"), "depth": tp.get("depth"),
                          "measured_aggregate": got["aggregate"] if got else None,
                          "error": (tp["aggregate_tok_s"] - got["aggregate"]) / got["aggregate"]
                          if got and tp.get("aggregate_tok_s") else None}
    # Like with like: the predicted per-user decode speed at the depth the speed step decoded at,
    # against each stream's measured decode rate (its first token's wait excluded).
    depth = PROMPT_TOKENS + run.mode.tokens // 2
    notes = []
    try:
        predicted = predict_decode(run, run.mode.streams, depth) if measured and run.left() > 5 else {}
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        predicted = {}
        notes.append(str(e))
    for n, pred in predicted.items():
        got = measured.get(n)
        rate = decode_rate(got, run.mode.tokens) if got else None
        levels.setdefault(n, {}).update({
            "decode_depth": depth, "predicted_per_user_at_depth": pred["per_user"],
            "predicted_aggregate_at_depth": pred["aggregate"], "bound_at_depth": pred["bound"],
            "measured_decode_per_stream": rate,
            "decode_error": (pred["per_user"] - rate) / rate if rate else None})
    return {"box": chosen, "synthetic_7b": levels, "notes": notes}


# --- front door: clients → aiboxctl gateway → engine against clients → engine (issue 14) --------
# --- and the same with governed access on: keys, limits, usage ledger, audit chain (issue 16) ----

GOAL_FRONT_DOOR = 0.97  # gateway / direct aggregate tok/s (ratio of the medians over rounds)
GOAL_FRONT_DOOR_TTFT_MS = 5.0  # TTFT p50 the front door adds
GOAL_ACCESS = 0.98  # access / gateway aggregate tok/s: what keys, limits, ledger and audit cost
GOAL_ACCESS_TTFT_MS = 3.0  # TTFT p50 governed access adds to the gateway's
GOAL_ACCESS_STREAMS = (16, 64)  # issue 16 sets its goals at these levels
FRONT_DOOR_TOKEN = "device-check-internal"
# What governed access imports (aiboxctl.access.gate pulls keys, limits, ledger and audit; the
# key file's lock is filelock's). Not cryptography: only TLS, which the step does not turn on.
ACCESS_IMPORTS = ("sqlite3", "filelock", "aiboxctl.access.gate", "aiboxctl.gateway.access")


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (VmHWM), kept by the kernel: no sampling."""
    return status_bytes(pid, "VmHWM")


def streams_level(base: str, streams: int, tokens: int, headers: dict) -> dict:
    """serve_throughput.run_level with the front door's token, every stream's TTFT kept (the
    front door's TTFT p50 pools every stream of every round)."""
    r = run_level(base, streams, tokens, headers)
    return {k: r[k] for k in ("aggregate", "wall", "ttfts", "tokens")}


def gateway_yaml(run: Run, port: int, keys: Path, model: str, engine: Server, queue_depth: int,
                 access_dir: Path | None = None) -> Path:
    """A gateway.yaml as bench/front_door.py writes it: the internal token the engine trusts,
    one engine entry serving the model under its file name (the engine's served name); with
    ``access_dir``, governed access on (keys.json, usage.db, access-audit.jsonl, box-secret there)."""
    import yaml

    name = Path(model).name
    name = name[:-5] if name.lower().endswith(".gguf") else name
    cfg = {"port": port, "internal_token_file": str(keys), "queue_depth": queue_depth,
           "engines": [{"name": "chat-0", "models": [name], "url": engine.base}]}
    if access_dir is not None:
        cfg["access_dir"] = str(access_dir)
    path = run.work / ("gateway-access.yaml" if access_dir is not None else "gateway.yaml")
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def access_missing(modules: tuple[str, ...] = ACCESS_IMPORTS) -> str | None:
    """What of governed access this python cannot import (the gateway's, on the device: the
    same interpreter and the carried site), in one line; None when everything imports."""
    import importlib

    missing = []
    for mod in modules:
        try:
            importlib.import_module(mod)
        except ImportError as e:
            missing.append(f"{mod} ({e})")
    return "; ".join(missing) or None


def access_key(access_dir: Path) -> str:
    """A key whose limits never refuse here but are all checked (tokens reserved and settled)."""
    from aiboxctl.access.keys import KeyLimits, KeyStore

    limits = KeyLimits(rpm=10**6, tokens_per_day=10**12, concurrency=10**4)
    return KeyStore(access_dir / "keys.json").add("device-check", limits, now=time.time()).secret


def ledger_rows(path: Path) -> int:
    """The usage ledger's request rows, read straight from its SQLite file."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
    finally:
        conn.close()


def audit_verify(run: Run, log: Path, secret: Path) -> dict:
    """``aiboxctl audit verify`` on one audit file: its exit code, the records it checked and
    its error lines. Its own 30 s, whatever the step has left: it runs after the levels."""
    argv = [*run.aiboxctl, "--json", "audit", "verify", str(log), "--secret", str(secret)]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"audit_verify_exit": None, "audit_records": None, "audit_errors": ["timed out after 30 s"]}
    try:
        doc = json.loads(p.stdout)
    except ValueError:
        doc = {"errors": [{"message": (p.stderr.strip().splitlines() or ["no output"])[-1]}]}
    return {"audit_verify_exit": p.returncode, "audit_records": (doc.get("data") or {}).get("records"),
            "audit_errors": [e.get("message") for e in doc.get("errors") or []]}


def step_front_door(run: Run) -> dict:
    """``aiboxctl serve`` on the synthetic 7B as the speed step runs it, ``aiboxctl gateway``
    over it, and a second gateway with governed access on (issue 16) over the same engine; at
    each stream level the clients go direct, through the front door and through the governed one
    (with a key made for it) in rotated order, round after round: median aggregate tok/s of each,
    their ratios (gateway to direct, access to gateway) and the spread of the round-by-round
    ratios, TTFT p50 over every stream of every round, each gateway's CPU per relayed token (less
    its idle rate, measured while the direct side ran) and peak RSS; then the usage ledger's rows
    against the requests the access side made, and ``aiboxctl audit verify`` on its audit log."""
    import importlib.util

    model = run.models["7b"]["path"]
    streams, tokens = run.mode.front_door_streams or run.mode.streams, run.mode.tokens
    slots = max(streams)
    keys = run.work / "engine-keys"
    keys.write_text(f"gateway:{FRONT_DOOR_TOKEN}\n")
    headers = {"Authorization": f"Bearer {FRONT_DOOR_TOKEN}"}
    engine = serve(run, model, ctx=slots * SLOT_CTX, parallel=slots, keys=keys)
    servers = [engine]
    raw: dict[str, dict[str, list[dict]]] = {}
    notes: list[str] = []
    missing = access_missing()
    access: dict[str, Any] = {"on": False, "missing": missing, "error": None, "requests": 0}
    out: dict[str, Any] = {"streams": list(streams), "tokens": tokens, "rounds": run.mode.front_door_rounds, "slots": slots,
                           # what uvicorn picks up in the front door's python (loop="auto", http="auto")
                           "event_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                           "http_parser": "httptools" if importlib.util.find_spec("httptools") else "h11",
                           "access": access}
    pids: dict[str, int] = {"engine": engine.proc.pid}
    acc: Server | None = None
    adir = Path(tempfile.mkdtemp(prefix="access-", dir=run.work))
    try:
        gport = free_port()
        cfg = gateway_yaml(run, gport, keys, model, engine, slots)
        gw = Server("gateway", [*run.aiboxctl, "gateway", "--config", str(cfg)], gport,
                    timeout=max(5.0, min(60.0, run.left() - 5)), log_dir=run.work)
        servers.insert(0, gw)
        pids["gateway"] = gw.proc.pid
        bases = {"direct": engine.base, "gateway": gw.base}
        auth = {"direct": headers, "gateway": headers}
        if not missing:
            try:
                secret = access_key(adir)
                aport = free_port()
                acfg = gateway_yaml(run, aport, keys, model, engine, slots, access_dir=adir)
                acc = Server("gateway-access", [*run.aiboxctl, "gateway", "--config", str(acfg)], aport,
                             timeout=max(5.0, min(60.0, run.left() - 5)), log_dir=run.work)
            except Exception as e:  # the step still measures the front door without access
                access["error"] = f"did not start: {type(e).__name__}: {e}"[:600]
            else:
                servers.insert(0, acc)
                pids["access"] = acc.proc.pid
                bases["access"], auth["access"] = acc.base, {"Authorization": f"Bearer {secret}"}
                access.update(on=True, dir=str(adir))
        for name in FRONT_DOOR_SIDES:  # warm-up, and proof the token (the key) is accepted on every path
            if name not in bases:
                continue
            if name != "access":
                bounded(run, lambda b=bases[name]: streams_level(b, 1, 8, headers), servers, f"{name} warm-up")
                continue
            access["requests"] += 1
            try:
                bounded(run, lambda: streams_level(bases["access"], 1, 8, auth["access"]), servers, "access warm-up")
            except Exception as e:  # the front door without access is still measured
                access["error"] = f"warm-up failed: {type(e).__name__}: {e}"[:600]
                del bases["access"], pids["access"]
        sides = tuple(name for name in FRONT_DOOR_SIDES if name in bases)
        out["gateway_rss_after_warmup"] = rss_bytes(gw.proc.pid)
        for n in streams:
            if run.left() < (15 if acc else 5):  # with access: time to stop it, count and verify
                notes.append(f"{n} streams skipped, no time left")
                continue
            rounds: dict[str, list[dict]] = {name: [] for name in sides}
            raw[str(n)] = rounds
            try:
                for r in range(run.mode.front_door_rounds):
                    for name in sides[r % len(sides):] + sides[:r % len(sides)]:
                        before = {p: cpu_seconds(pid) for p, pid in pids.items()}
                        if name == "access":
                            access["requests"] += n
                        res = bounded(run, lambda b=bases[name], h=auth[name]: streams_level(b, n, tokens, h),
                                      servers, f"{n} streams ({name})")
                        res.update({f"{p}_cpu": cpu_seconds(pid) - before[p] for p, pid in pids.items()})
                        rounds[name].append(res)
            except Exception as e:  # a level that breaks ends the levels, not the step
                notes.append(f"{n} streams: {type(e).__name__}: {e}")
                break
        out["gateway_peak_rss"] = peak_rss_bytes(gw.proc.pid)
        out["gateway_rss_end"] = rss_bytes(gw.proc.pid)
        if acc:
            access["peak_rss"] = peak_rss_bytes(acc.proc.pid)
    except (RuntimeError, OSError) as e:  # the front door did not start
        notes.append(f"{type(e).__name__}: {e}")
    finally:
        for srv in servers:
            srv.stop()
    if acc:  # stopped: every row it acknowledged is in the file
        ledger, audit = adir / "usage.db", adir / "access-audit.jsonl"
        try:
            access["ledger_rows"] = ledger_rows(ledger)
        except Exception as e:  # sqlite3.Error: no file, no table
            access["ledger_rows"], access["ledger_error"] = None, f"{type(e).__name__}: {e}"
        access.update(audit_verify(run, audit, adir / "box-secret"))
    # idle rates pooled over every direct round (10 ms ticks: one level's direct side is short)
    direct = [r for rounds in raw.values() for r in rounds["direct"]]
    out["gateway_idle_cores"] = idle = idle_rate(direct, "gateway")
    access["idle_cores"] = access_idle = idle_rate(direct, "access")
    levels = {n: front_door_level(rounds, idle, access_idle) for n, rounds in raw.items()
              if min(len(rounds["direct"]), len(rounds["gateway"])) > 0}
    out["levels"] = levels
    relayed = sum(v["gateway"]["tokens"] for v in levels.values())
    out["gateway_cpu_us_per_token"] = (sum(v["gateway_cpu_s"] for v in levels.values()) * 1e6 / relayed
                                       if relayed else None)  # pooled over every level
    with_access = [v for v in levels.values() if "access" in v]
    relayed = sum(v["access"]["tokens"] for v in with_access)
    access["cpu_us_per_token"] = (sum(v["access_cpu_s"] for v in with_access) * 1e6 / relayed
                                  if relayed else None)
    out["notes"] = notes
    if not levels:
        raise StepFailed("no stream level measured on both sides", out)
    return out


# --- running, recording, reporting ------------------------------------------------------------

STEPS: tuple[tuple[str, float, Callable[[Run], dict]], ...] = (
    ("install", 90, step_install),
    ("probe", 60, step_probe),
    ("synth-7b", 90, step_synth("7b")),
    ("selftest", 90, step_selftest),
    ("speed", 150, step_speed),
    ("plan", 40, step_plan),
    ("sizing-7b", 90, step_sizing("7b")),
    ("synth-32b", 90, step_synth("32b")),
    ("sizing-32b", 120, step_sizing("32b")),
    ("front-door", 150, step_front_door),
)
NEEDS = {"selftest": "synth-7b", "speed": "synth-7b", "plan": "synth-7b", "sizing-7b": "synth-7b",
         "sizing-32b": "synth-32b", "front-door": "synth-7b"}
OPTIONAL = frozenset({"front-door"})  # run only when named in --steps: the default plan stays as it was
DEFAULT_STEPS = tuple(name for name, _, _ in STEPS if name not in OPTIONAL)


def select_steps(spec: str | None) -> tuple[str, ...]:
    """The steps to run, in the check's order: the default set, or those named (comma-separated)
    with install and what they need added. ValueError names the unknown ones."""
    if spec is None:
        return DEFAULT_STEPS
    names = [x.strip() for x in spec.split(",") if x.strip()]
    known = [name for name, _, _ in STEPS]
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        raise ValueError(f"unknown step{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}" if unknown
                         else "no step named")
    chosen = {"install", *names}
    for name in names:
        while NEEDS.get(name):
            name = NEEDS[name]
            chosen.add(name)
    return tuple(name for name in known if name in chosen)


def run_steps(run: Run) -> None:
    for name, box, fn in STEPS:
        if name not in run.selected:
            continue
        t0 = time.monotonic()
        record: dict[str, Any] = {"status": "ok", "seconds": 0.0, "box_s": box, "error": None, "data": {}}
        need = NEEDS.get(name)
        if need and run.steps.get(need, {}).get("status") != "ok":
            record.update(status="skipped", error=f"needs {need}")
        elif name != "install" and not run.aiboxctl:
            record.update(status="skipped", error="needs install")
        elif run.deadline - t0 < 10:
            record.update(status="skipped", error="no time left in the budget")
        else:
            run.step_deadline = t0 + box
            print(f"[{name}] (≤ {min(box, run.deadline - t0):.0f} s)…", file=sys.stderr, flush=True)
            try:
                record["data"] = fn(run)
            except StepFailed as e:
                record.update(status="failed", error=str(e), data=e.data)
            except BaseException as e:  # recorded, and the next step runs (Ctrl-C still stops)
                if isinstance(e, KeyboardInterrupt):
                    raise
                record.update(status="failed", error=f"{type(e).__name__}: {e}"[:800],
                              traceback=traceback.format_exc()[-2000:])
            if time.monotonic() > min(run.deadline, t0 + box) and record["status"] == "ok":
                record["over_box"] = True
        record["seconds"] = round(time.monotonic() - t0, 1)
        run.steps[name] = record
        print(f"[{name}] {record['status']} in {record['seconds']} s" + (f": {record['error']}" if record["error"] else ""),
              file=sys.stderr, flush=True)
        write_report(run)


def summary(run: Run) -> dict:
    s: dict[str, Any] = {"steps": {n: r["status"] for n, r in run.steps.items()}}
    sizing = [run.steps[n]["data"] for n in ("sizing-7b", "sizing-32b") if run.steps.get(n, {}).get("data")]
    worst = [d["worst"] for d in sizing if d.get("worst") is not None]
    s["sizing_worst_error"] = max(worst) if worst else None
    s["sizing_under"] = [u for d in sizing for u in d.get("under", [])]
    speed = (run.steps.get("speed") or {}).get("data") or {}
    s["speed_ratios"] = {n: r["aggregate"] for n, r in (speed.get("ratios") or {}).items()}
    plan = ((run.steps.get("plan") or {}).get("data") or {}).get("synthetic_7b") or {}
    s["plan_errors"] = {n: v["error"] for n, v in plan.items() if v.get("error") is not None}
    s["decode_errors"] = {n: v["decode_error"] for n, v in plan.items() if v.get("decode_error") is not None}
    goals = {}
    if s["sizing_worst_error"] is not None:
        goals["sizing ≤ 3 % and never under"] = s["sizing_worst_error"] <= GOAL_SIZING and not s["sizing_under"]
    for n, goal in GOAL_SPEED.items():
        if str(n) in s["speed_ratios"]:
            goals[f"speed ≥ {goal}× at {n} stream(s)"] = s["speed_ratios"][str(n)] >= goal
    fd = ((run.steps.get("front-door") or {}).get("data") or {}).get("levels") or {}
    if fd:
        s["front_door"] = {n: {"ratio": v["ratio"], "ttft_added_ms": v["ttft_added_ms"],
                               "gateway_cpu_us_per_token": v["gateway_cpu_us_per_token"]} for n, v in fd.items()}
    for n, v in fd.items():
        goals[f"front door ≥ {GOAL_FRONT_DOOR}× at {n} stream(s)"] = v["ratio"] >= GOAL_FRONT_DOOR
        goals[f"front door adds ≤ {GOAL_FRONT_DOOR_TTFT_MS:g} ms TTFT p50 at {n} stream(s)"] = (
            v["ttft_added_ms"] <= GOAL_FRONT_DOOR_TTFT_MS)
    goals.update(access_goals(s, (run.steps.get("front-door") or {}).get("data") or {}))
    s["goals"] = goals
    return s


def access_goals(s: dict, fd: dict) -> dict[str, bool]:
    """Issue 16's goals from the front-door step's data (and its figures into the summary ``s``):
    the governed gateway against the plain one at GOAL_ACCESS_STREAMS, one ledger row per
    request it was sent, an audit chain that verifies; not measured at all is a goal missed."""
    access, levels = fd.get("access"), fd.get("levels") or {}
    if access is None:  # no front-door step, or one from before governed access
        return {}
    measured = {n: v for n, v in levels.items() if "access" in v}
    s["access"] = {n: {"ratio": v["access_ratio"], "ttft_added_ms": v["access_ttft_added_ms"],
                       "cpu_us_per_token": v["access_cpu_us_per_token"]} for n, v in measured.items()}
    goals = {"governed access measured": bool(measured)}
    for n, v in measured.items():
        if int(n) in GOAL_ACCESS_STREAMS:
            goals[f"governed access ≥ {GOAL_ACCESS}× the gateway at {n} streams"] = v["access_ratio"] >= GOAL_ACCESS
            goals[f"governed access adds ≤ {GOAL_ACCESS_TTFT_MS:g} ms TTFT p50 at {n} streams"] = (
                v["access_ttft_added_ms"] <= GOAL_ACCESS_TTFT_MS)
    if access.get("on"):
        goals["usage ledger: one row per request made"] = access.get("ledger_rows") == access.get("requests")
        goals["aiboxctl audit verify passes"] = access.get("audit_verify_exit") == 0
    return goals


def write_report(run: Run) -> None:
    doc = {"version": 1, "mode": "cpu" if run.mode.cpu else "device", "started": run.started,
           "machine": {"host": platform.node(), "cpu": platform.processor() or platform.machine(),
                       "cores": os.cpu_count(), "loadavg": Path("/proc/loadavg").read_text().split()[:3]
                       if Path("/proc/loadavg").exists() else None, "gpus": nvml_gpus()},
           "settings": {"steps": list(run.selected), "streams": list(run.mode.streams),
                        "front_door_streams": list(run.mode.front_door_streams or run.mode.streams),
                        "tokens": run.mode.tokens, "sizing": list(run.mode.settings), "gpu_layers": run.mode.gpu_layers, "threads": run.threads},
           "anchor_build": run.anchor_build,
           "steps": run.steps, "summary": summary(run)}
    run.out.mkdir(parents=True, exist_ok=True)
    (run.out / "device-check.json").write_text(json.dumps(doc, indent=1, default=str))
    (run.out / "device-check.md").write_text(markdown(doc))


def _pct(e: float | None) -> str:
    return "-" if e is None else f"{e:+.1%}"


def _num(x: float | None, fmt: str = ".1f") -> str:
    """A figure for the report's tables, "-" when not measured."""
    return "-" if x is None else format(x, fmt)


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x / MiB:.1f} MiB"


def access_markdown(fd: dict) -> list[str]:
    """The front-door step's governed-access table and its ledger and audit line."""
    access = fd.get("access")
    if access is None:
        return []
    lines = ["", "## governed access: clients → aiboxctl gateway with keys, limits, usage ledger and audit → "
             "engine against the same gateway without", "",
             "The same engine, a second gateway with `access_dir` (a key with limits that never refuse here, all "
             f"checked), the third side of the same rotated rounds; the ratio is to the plain gateway (goal ≥ "
             f"{GOAL_ACCESS}× at {', '.join(map(str, GOAL_ACCESS_STREAMS))} streams), as is the TTFT p50 added "
             f"(goal ≤ {GOAL_ACCESS_TTFT_MS:g} ms); its CPU per relayed token less its idle rate (measured while "
             "the direct side ran).", "",
             "| streams | gateway tok/s | access tok/s | ratio | round ratios | TTFT p50 gateway/access ms | added ms "
             "| access µs/token | access cores |", "|---|---|---|---|---|---|---|---|---|"]
    for n, v in (fd.get("levels") or {}).items():
        if "access" not in v:
            continue
        cores = v.get("access_cores")
        lo, hi = v["access_ratio_range"]
        lines.append(f"| {n} | {v['gateway']['aggregate']:.1f} | {v['access']['aggregate']:.1f} | "
                     f"{v['access_ratio']:.3f} | {lo:.3f}–{hi:.3f} | {v['gateway']['ttft_p50_ms']:.1f}/"
                     f"{v['access']['ttft_p50_ms']:.1f} | {v['access_ttft_added_ms']:+.1f} | "
                     f"{v['access_cpu_us_per_token']:.0f} | {_num(cores, '.3f')} |")
    if access.get("missing"):
        lines.append(f"- governed access not measured: this python cannot import {access['missing']}")
    elif access.get("error"):
        lines.append(f"- governed access not measured: {access['error']}")
    if not access.get("on"):
        return lines
    pooled, peak = access.get("cpu_us_per_token"), access.get("peak_rss")
    errors = "; ".join(e for e in access.get("audit_errors") or [] if e)
    lines.append(f"- access gateway: {_num(pooled, '.0f')} µs of CPU per relayed token over "
                 f"every level; idle {access.get('idle_cores', 0):.4f} cores; peak RSS {_mib(peak)}")
    lines.append(f"- usage ledger: {access.get('ledger_rows')} rows for {access.get('requests')} requests made "
                 f"(warm-up included); `aiboxctl audit verify`: exit {access.get('audit_verify_exit')}, "
                 f"{access.get('audit_records')} records" + (f" ({errors})" if errors else ""))
    return lines


def markdown(doc: dict) -> str:
    m = doc["machine"]
    gpus = ", ".join(f"{g['name']} ({g['total'] / 2**30:.0f} GiB)" for g in m["gpus"]) or "none"
    lines = [f"# Device check ({doc['mode']}), {doc['started']}", "",
             f"Machine: {m['host']}, {m['cores']} cores, load {' '.join(m['loadavg'] or [])}, GPUs: {gpus}.", "",
             "| step | status | seconds | note |", "|---|---|---|---|"]
    for name, r in doc["steps"].items():
        lines.append(f"| {name} | {r['status']} | {r['seconds']} | {(r.get('error') or '').replace('|', '/')[:160]} |")
    steps = doc["steps"]
    for key in ("sizing-7b", "sizing-32b"):
        data = (steps.get(key) or {}).get("data") or {}
        if not data.get("cells"):
            continue
        total_is = "process RSS: touched pages only, not a goal" if doc["mode"] == "cpu" else "NVML used"
        cols = BUFFERS if doc["mode"] == "cpu" else (*BUFFERS, HOST_COMPUTE)
        lines += ["", f"## {key}: estimate / --exact vs the real load (total against {total_is})", "",
                  "| ctx | slots | KV | " + " | ".join(f"{b} est/exact" for b in (*cols, "total")) + " |",
                  "|---|---|---|" + "---|" * (len(cols) + 1)]
        for c in data["cells"]:
            cmp_ = c.get("compare") or {}
            row = [str(c["ctx"]), str(c["parallel"]), c["kv"]]
            for b in cols:
                row.append(" / ".join(_pct((cmp_.get(src) or {}).get("errors", {}).get(b)) for src in ("estimate", "exact")))
            row.append(" / ".join(_pct((cmp_.get(src) or {}).get("total_vs_measured")) for src in ("estimate", "exact")))
            if not cmp_:
                row[-1] = c.get("measured_error") or c.get("skipped") or "not measured"
            lines.append("| " + " | ".join(row) + " |")
    speed = (steps.get("speed") or {}).get("data") or {}
    if speed.get("servers"):
        lines += ["", f"## speed: 7B shape, {speed['tokens']} tokens per stream, ignore_eos", "",
                  f"tok/s is the aggregate: {AGGREGATE_IS}; decode/stream is each stream's tokens after its "
                  "first over the time after it (aiboxctl).", "",
                  "| streams | llama-server tok/s | aiboxctl tok/s | ratio | TTFT p50 ls/ab ms | aiboxctl decode/stream "
                  "| host µs/token |",
                  "|---|---|---|---|---|---|---|"]
        for n in speed["streams"]:
            ls = speed["servers"].get("llama-server", {}).get("levels", {}).get(str(n)) or {}
            ab = speed["servers"].get("aiboxctl", {}).get("levels", {}).get(str(n)) or {}
            ratio = (speed.get("ratios") or {}).get(str(n), {}).get("aggregate")
            host = ab.get("host_us_per_token")
            rate = decode_rate(ab, speed["tokens"]) if "per_stream" in ab else None
            lines.append(f"| {n} | {ls.get('aggregate', float('nan')):.1f} | {ab.get('aggregate', float('nan')):.1f} | "
                         f"{_num(ratio, '.3f')} | "
                         f"{ls.get('ttft_p50', float('nan')) * 1e3:.0f}/{ab.get('ttft_p50', float('nan')) * 1e3:.0f} | "
                         f"{_num(rate)} | {_num(host)} |")
        for note in speed.get("notes") or []:
            lines.append(f"- {note}")
    plan = (steps.get("plan") or {}).get("data") or {}
    if plan:
        box = plan.get("box") or {}
        lines += ["", "## plan --profile gov-office", "",
                  (f"On this box: {box.get('variant')} {box.get('quant')}, " if box.get("exit_code") == 0 else
                   f"On this box nothing fits the profile (exit {box.get('exit_code')}); the closest option: ")
                  + f"{(box.get('throughput') or {}).get('per_user_tok_s')} tok/s per user predicted. For the synthetic "
                  "7B at each stream count: like with like, the model's per-user decode speed at the depth the speed "
                  "step decoded at (its prompt + half its tokens) against each stream's measured decode rate; then "
                  "what `plan` says (the profile's context, at its depth) against the served aggregate "
                  f"({AGGREGATE_IS}), which are not the same quantity:", "",
                  "| streams | depth | predicted per user | measured decode/stream | error | plan aggregate (depth) "
                  "| served aggregate | error |", "|---|---|---|---|---|---|---|---|"]

        for n, v in (plan.get("synthetic_7b") or {}).items():
            lines.append(f"| {n} | {v.get('decode_depth', '-')} | {_num(v.get('predicted_per_user_at_depth'))} | "
                         f"{_num(v.get('measured_decode_per_stream'))} | {_pct(v.get('decode_error'))} | "
                         f"{_num(v.get('predicted_aggregate'))} ({v.get('depth', '-')}) | "
                         f"{_num(v.get('measured_aggregate'))} | {_pct(v.get('error'))} |")
        for note in plan.get("notes") or []:
            lines.append(f"- {note}")
    fd = (steps.get("front-door") or {}).get("data") or {}
    if fd.get("levels"):
        lines += ["", f"## front door: clients → aiboxctl gateway → engine against clients → engine, 7B shape, "
                  f"{fd['tokens']} tokens per stream, ignore_eos", "",
                  f"{fd['rounds']} rounds per level, the sides alternating in rotated order; tok/s is the median of "
                  f"the rounds' aggregates ({AGGREGATE_IS.replace(' (', ', ').rstrip(')')}), the ratio that of "
                  f"the medians (goal ≥ {GOAL_FRONT_DOOR}×), "
                  "the range that of the round-by-round ratios; TTFT p50 over every stream of every round (goal ≤ "
                  f"{GOAL_FRONT_DOOR_TTFT_MS:g} ms added); the gateway's CPU per relayed token less its idle rate, "
                  "and the cores that makes while it relays.", "",
                  "| streams | direct tok/s | gateway tok/s | ratio | round ratios | TTFT p50 direct/gateway ms "
                  "| added ms | gateway µs/token | gateway cores |", "|---|---|---|---|---|---|---|---|---|"]
        for n, v in fd["levels"].items():
            cores = v.get("gateway_cores")
            lines.append(f"| {n} | {v['direct']['aggregate']:.1f} | {v['gateway']['aggregate']:.1f} | {v['ratio']:.3f} | "
                         f"{v['ratio_range'][0]:.3f}–{v['ratio_range'][1]:.3f} | {v['direct']['ttft_p50_ms']:.1f}/"
                         f"{v['gateway']['ttft_p50_ms']:.1f} | {v['ttft_added_ms']:+.1f} | "
                         f"{v['gateway_cpu_us_per_token']:.0f} | {_num(cores, '.3f')} |")
        pooled = fd.get("gateway_cpu_us_per_token")
        lines.append(f"- gateway: {_num(pooled, '.0f')} µs of CPU per relayed token over every "
                     f"level; idle {fd.get('gateway_idle_cores', 0):.4f} cores; peak RSS {_mib(fd.get('gateway_peak_rss'))}; "
                     f"{fd.get('event_loop')} event loop, {fd.get('http_parser')} HTTP parser")
        lines += access_markdown(fd)
        for note in fd.get("notes") or []:
            lines.append(f"- {note}")
    s = doc["summary"]
    lines += ["", "## goals", ""] + [f"- {g}: {'met' if ok else 'NOT met'}" for g, ok in s["goals"].items()]
    if s["sizing_under"]:
        lines.append(f"- under-estimates: {', '.join(s['sizing_under'][:8])}")
    return "\n".join(lines) + "\n"


# --- --prepare: the carry folder --------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_requirements(python_version: str = "3.12") -> dict[str, str]:
    """{distribution: version installed here} for every runtime dependency of aiboxctl (its
    pyproject.toml, the truth even when the installed metadata is older) that the device's python
    lacks, and theirs in turn; a package the device has brings its own."""
    import tomllib
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict[str, str] = {}
    todo = list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    todo += metadata.requires("llama-cpp-python") or []  # the engine wheel travels; its needs too
    while todo:
        req = Requirement(todo.pop())
        key = _norm(req.name)
        if (key in seen or key == "llama-cpp-python" or key in NOT_CARRIED
                or (key in DEVICE_HAS and key not in ALWAYS_CARRY)):
            continue
        if req.marker and not req.marker.evaluate({"extra": "", "python_version": python_version}):
            continue
        try:
            seen[key] = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is not installed here: pip install it first") from None
        todo += metadata.requires(req.name) or []
    return seen


def find_engine_wheel() -> Path | None:
    """The newest CUDA wheel in aiboxctl's engine cache (``aiboxctl engine install --backend cuda
    --build-only``)."""
    from aiboxctl.engine.build.cache import WheelCache, wheel_backend

    found = [e.path for e in WheelCache().entries() if (e.backend or wheel_backend(e.path)) == "cuda"]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def tree_bytes() -> int:
    """What travels besides the carry folder: tracked files and untracked files git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / n).stat().st_size for n in names if n and (ROOT / n).is_file())


def prepare(dest: Path, engine_wheel: Path | None, llama_server: Path | None, python_version: str = "3.12") -> int:
    import synth_models as sm

    dest = dest.resolve()
    wheels = dest / "wheels"
    for old in (wheels, dest / "llama-server"):  # what an earlier --prepare left
        shutil.rmtree(old, ignore_errors=True)
    wheels.mkdir(parents=True)
    engine_wheel = engine_wheel or find_engine_wheel()
    if engine_wheel is None:
        print("no CUDA engine wheel: build one (aiboxctl engine install --backend cuda --build-only) "
              "or pass --engine-wheel", file=sys.stderr)
        return 2
    shutil.copy2(engine_wheel, wheels / engine_wheel.name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT)], check=True)
    missing = missing_requirements(python_version)
    if missing:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(wheels)]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        subprocess.run(cmd + [f"{k}=={v}" for k, v in sorted(missing.items())], check=True)
    if llama_server is None:
        import anchor

        llama_server = anchor.llama_server_shared()
    # the shared build's folder (the executable and the server's own libraries beside it),
    # compressed: 11 MiB of libraries are 4 in a tar.xz, and every MiB counts against the 64
    import tarfile

    with tarfile.open(dest / ANCHOR_TAR, "w:xz") as tar:
        for f in sorted(llama_server.parent.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f"llama-server/{f.name}")
    tok = dest / sm.TOKENIZER_FILE
    if not tok.is_file():
        src = sm.default_tokenizer()
        shutil.copy2(src, tok) if src.is_file() else sm.export_tokenizer(tok)
    sizes = {p.relative_to(dest).as_posix(): p.stat().st_size for p in sorted(dest.rglob("*")) if p.is_file()}
    carry, tree = sum(sizes.values()), tree_bytes()
    for name, size in sizes.items():
        print(f"{size / MiB:8.2f} MiB  {name}")
    print(f"carry {carry / MiB:.1f} MiB + tree {tree / MiB:.1f} MiB = {(carry + tree) / MiB:.1f} MiB "
          f"(limit {TREE_LIMIT / MiB:.0f} MiB); carried for the device: {', '.join(sorted(missing))}")
    return 0 if carry + tree <= TREE_LIMIT else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="the rehearsal: small shapes, CPU engine and llama-server")
    ap.add_argument("--out", type=Path, help="where the JSON and Markdown go (default: $OUT, else ./device-check-out)")
    ap.add_argument("--budget", type=float, default=450, help="seconds for the whole check (default 450)")
    ap.add_argument("--carry", type=Path, default=ROOT / ".carry", help="the folder --prepare made")
    ap.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 2, 16))
    ap.add_argument("--streams", help="comma-separated stream counts, every step's (default: 1,8,32,64, "
                                      "the front door 1,16,64; --cpu 1,4)")
    ap.add_argument("--tokens", type=int, help="tokens per stream (default 128; --cpu 16)")
    ap.add_argument("--steps", metavar="A,B",
                    help="run only these steps (install and what they need are added): "
                         f"{', '.join(n for n, _, _ in STEPS)}; default: all but {', '.join(sorted(OPTIONAL))}")
    ap.add_argument("--rounds", type=int, help="front-door step: rounds per level (default 3)")
    ap.add_argument("--small", action="store_true",
                    help="the rehearsal's shapes and settings in device mode (rehearse the install path)")
    ap.add_argument("--prepare", type=Path, metavar="DIR", help="make the carry folder here and stop")
    ap.add_argument("--python-version", default="3.12", help="--prepare: the device's Python (default 3.12)")
    ap.add_argument("--engine-wheel", type=Path, help="--prepare: the CUDA engine wheel (default: the engine cache's)")
    ap.add_argument("--llama-server", type=Path,
                    help="--prepare: llama-server; its folder travels (default: bench/anchor.py's shared build)")
    args = ap.parse_args(argv)
    if args.prepare:
        return prepare(args.prepare, args.engine_wheel, args.llama_server, args.python_version)
    try:
        selected = select_steps(args.steps)
    except ValueError as e:
        print(f"device_check: --steps: {e} (known: {', '.join(n for n, _, _ in STEPS)})", file=sys.stderr)
        return 2
    mode = Mode.rehearsal() if args.cpu else Mode.device()
    if args.small and not args.cpu:
        mode = replace(Mode.rehearsal(), cpu=False, gpu_layers=mode.gpu_layers)
    if args.streams:
        mode = replace(mode, streams=tuple(int(x) for x in args.streams.split(",")), front_door_streams=())
    if args.tokens:
        mode = replace(mode, tokens=args.tokens)
    if args.rounds is not None:
        if args.rounds < 1:
            print("device_check: --rounds must be at least 1", file=sys.stderr)
            return 2
        mode = replace(mode, front_door_rounds=args.rounds)
    out = args.out or Path(os.environ.get("OUT") or "device-check-out")
    anchor_build = None
    if mode.cpu and "speed" in selected:  # the CPU llama-server is built once into the bench cache, outside the budget
        import anchor

        t0 = time.monotonic()
        exe = anchor.llama_server()
        anchor_build = {"exe": str(exe), "seconds": round(time.monotonic() - t0, 1)}
    with tempfile.TemporaryDirectory(prefix="device-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("AIBOX_HOME", str(work / "aibox-home"))
        run = Run(mode=mode, out=out, deadline=time.monotonic() + args.budget, carry=args.carry.resolve(), work=work,
                  threads=args.threads, anchor_build=anchor_build, selected=selected,
                  started=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
        try:
            run_steps(run)
        finally:
            write_report(run)
            shm = Path("/dev/shm/aibox-synth")
            if not mode.cpu and shm.is_dir():
                shutil.rmtree(shm, ignore_errors=True)
    s = summary(run)
    print(json.dumps(s, indent=1, default=str))
    print(f"wrote {out / 'device-check.json'} and {out / 'device-check.md'}", file=sys.stderr)
    return 0 if all(v == "ok" for v in s["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
