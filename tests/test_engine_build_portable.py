"""The REAL portable CPU build: llama-cpp-python compiled from its sdist with GGML_NATIVE=OFF,
GGML_BACKEND_DL and GGML_CPU_ALL_VARIANTS, installed into a throwaway virtualenv through
``install_engine`` and proven by the engine self-test.

The build takes minutes (7+ on 2 idle cores), so its wheel cache lives outside the per-test
state root (``engineenv.engine_wheel_cache_root``). Only the first run on a machine compiles;
later runs install from the cache.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from aiboxctl.engine.build.cache import WheelCache
from aiboxctl.engine.build.compile import build_wheel
from aiboxctl.engine.build.install import install_engine
from aiboxctl.engine.build.specs import build_spec
from aiboxctl.engine.build.status import engine_status
from aiboxctl.engine.build.verify import inspect_engine
from aiboxctl.errors import VerificationFailed
from engineenv import drop_from_wheel, engine_wheel_cache_root, make_env

ROOT = Path(__file__).resolve().parents[1]


def persistent_cache() -> WheelCache:
    return WheelCache(engine_wheel_cache_root() / "llama-cpp-python")


@pytest.mark.slow
def test_real_portable_cpu_build_installs_and_passes_the_selftest(tmp_path):
    cache = persistent_cache()
    spec = build_spec("auto", [])
    assert spec.key == "cpu-portable"
    wheel = build_wheel(spec, cache=cache, progress=print)  # compiles once per machine
    assert wheel.origin == "built" and wheel.backend == "cpu" and wheel.cmake_args == spec.cmake_args
    assert wheel.build_seconds and wheel.build_seconds > 0
    with zipfile.ZipFile(wheel.path) as zf:
        variants = sorted(n for n in zf.namelist() if "libggml-cpu-" in n)
    assert len(variants) >= 10 and any(v.endswith("libggml-cpu-x64.so") for v in variants)

    env_py = make_env(tmp_path / "env")
    result = install_engine("cpu", python=str(env_py), cache=cache, accelerators=[])
    assert result.action == "installed" and not result.built and result.key == "cpu-portable"
    assert result.selftest["ok"]
    eng = result.engine
    assert eng["backends"] == ["CPU"] and len(eng["cpu_variants"]) >= 10
    assert eng["cpu_variant_loaded"] in eng["cpu_variants"]  # ggml picked one at run time

    status = engine_status(python=str(env_py), accelerators=[], cache=cache)
    assert status.matches and status.next_command is None
    assert status.cpu_variants == tuple(eng["cpu_variants"]) and status.record["key"] == "cpu-portable"

    # The portable wheel without its CPU variants loads but registers no backend, so the
    # self-test fails: the working portable engine comes back.
    broken = drop_from_wheel(wheel.path, tmp_path / "broken" / wheel.path.name, lambda n: "libggml-cpu-" in n)
    with pytest.raises(VerificationFailed, match="restored the previous engine"):
        install_engine("cpu", accelerators=[], wheel=broken, python=str(env_py), cache=cache)
    after = inspect_engine(str(env_py))["engine"]
    assert after["available"] and len(after["cpu_variants"]) >= 10

    # `engine status --json` run by that environment's interpreter, through the CLI.
    proc = subprocess.run([str(env_py), "-m", "aiboxctl.cli.app", "engine", "status", "--json", "--hardware",
                           str(ROOT / "tests" / "fixtures" / "engine" / "probe-cpu-only.json")],
                          capture_output=True, text=True, timeout=300)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0 and doc["data"]["matches"] is True
    assert doc["data"]["cpu_variant_loaded"] in doc["data"]["cpu_variants"]

    # `engine install --wheel` through the CLI of that environment: refused without --yes (no
    # TTY), then installed, self-tested and reported as one JSON envelope.
    cli = [str(env_py), "-m", "aiboxctl.cli.app", "engine", "install", "--wheel", str(wheel.path), "--force", "--json"]
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 2 and doc["errors"][0]["hint"] == "re-run with --yes"
    proc = subprocess.run([*cli, "--yes"], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = doc["data"]
    assert data["action"] == "installed" and data["backend"] == "cpu" and data["selftest"]["ok"]
    assert data["key"].startswith("given-") and len(data["engine"]["cpu_variants"]) >= 10
