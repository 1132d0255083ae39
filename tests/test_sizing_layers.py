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
