"""Backend facts per chip (issue 14): what each chip generation's supports_op runs on the device,
through the planner on the hardware profiles. A plan never puts weights on a device whose chip
would run their matmuls on the CPU; where only F16 runs there it plans F16 or says why not."""

from __future__ import annotations

import re
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from aiboxctl.errors import DoesNotFit
from aiboxctl.hardware.backends import GGML_BACKENDS, device_chip, device_weight_problem
from aiboxctl.sizing.box import box_from_profile
from aiboxctl.sizing.hardware_profiles import load_hardware_profile
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import load_use_case


def _plan(profile: str, hardware, model: str | None = None):
    hw = load_hardware_profile(hardware) if isinstance(hardware, str) else hardware
    return plan(load_use_case(profile), hw, model)


def test_ascend_310p_runs_only_f16_on_the_npu_and_plans_f16():
    # 310P's supports_op (ASCEND_310P) refuses Q8_0 and Q4_0 MUL_MAT: a 910B would take Q8_0 here.
    p = _plan("edge", "ascend-310p", model="qwen2.5-3b-instruct")
    assert p.quant == "F16" and p.engine.n_gpu_layers > 0
    assert p.instances[0].device_groups and all(g for g in p.instances[0].device_groups)
    refused = {r.quant: r.reason for r in p.rejected if r.kind == "backend"}
    assert {"Q8_0", "Q4_0"} <= set(refused)
    assert "on ascend310p chips" in refused["Q8_0"] and "ggml-cann.cpp:2443-2453" in refused["Q8_0"]
    assert "on the device: F16, F32" in refused["Q4_0"]


def test_ascend_910b_takes_q8_0_where_the_310p_cannot():
    p = _plan("edge", "ascend-910b-x8", model="qwen2.5-3b-instruct:Q8_0")
    assert p.quant == "Q8_0" and p.engine.n_gpu_layers > 0
    with pytest.raises(DoesNotFit) as exc:
        _plan("edge", "ascend-310p", model="qwen2.5-3b-instruct:Q8_0")
    refused = [r for r in exc.value.data["rejected"] if r["kind"] == "backend"]
    assert refused and "on ascend310p chips" in refused[0]["reason"]


def test_ascend_310p_without_an_f16_file_runs_on_the_cpu_and_says_why():
    p = _plan("edge", "ascend-310p", model="qwen3-30b-a3b")
    assert p.engine.n_gpu_layers == 0
    why = next(n for n in p.notes if n.startswith("runs on the CPU"))
    assert "ascend310p" in why and "no file of qwen3-30b-a3b has a weight type the devices run" in why
    assert {i.device for i in p.idle} == {"CANN0", "CANN1"}


def test_mthreads_s4000_never_gets_q2_k_moe_experts():
    # QY2 (mp_22) refuses MUL_MAT_ID on Q2_K for batches of more than one token; dense Q2_K is fine.
    assert device_weight_problem("musa", "mp_22", "Q2_K") is None
    p = _plan("edge", "mthreads-s4000-x8", model="deepseek-r1")
    assert p.file.main_type != "Q2_K"
    r = next(r for r in p.rejected if r.quant == "UD-Q2_K_XL")
    assert r.kind == "backend" and "MoE expert matmuls on the CPU on mp_22 chips" in r.reason
    assert "QY2 at 5236-5239" in r.reason


def test_an_older_moore_threads_chip_keeps_q2_k_experts():
    hw = load_hardware_profile("mthreads-s4000-x8")
    s80 = replace(hw, accelerators=tuple(replace(a, model="MTT S80") for a in hw.accelerators))
    assert {d.chip for d in box_from_profile(s80).accelerators} == {"mp_21"}
    p = _plan("edge", s80, model="deepseek-r1")
    assert not [r for r in p.rejected if r.kind == "backend"]


def test_a_cann_device_of_unknown_chip_gets_only_what_every_generation_runs():
    # A probe label naming no chip: only F16/F32 (what the 310P runs too) go on the device.
    assert device_chip("cann", "Ascend (unknown)") is None
    why = device_weight_problem("cann", None, "Q8_0")
    assert why and "unknown chip" in why
    assert device_weight_problem("cann", None, "F16") is None


def test_cuda_runs_every_catalog_weight_type_on_every_chip():
    for t in ("Q4_K", "Q5_K", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "F16", "Q2_K", "IQ1_S", "Q3_K"):
        assert device_weight_problem("cuda", None, t) is None
        assert device_weight_problem("cuda", None, t, experts=True) is None
        assert device_weight_problem("hip", None, t) is None


def _sdist() -> Path | None:
    for base in (Path.home() / ".cache/aiboxctl-tests/engine-wheels/llama-cpp-python/sdist",):
        hits = sorted(base.glob("llama_cpp_python-0.3.36.tar.gz")) if base.is_dir() else []
        if hits:
            return hits[0]
    return None


def test_every_fact_row_cites_lines_that_hold_the_switch():
    """Each row's file:lines, read from the vendored llama.cpp in the pinned sdist, hold the
    supports_op matmul switch it claims (a bumped pin that moves the code fails here)."""
    sdist = _sdist()
    if sdist is None:
        pytest.skip("the llama-cpp-python 0.3.36 sdist is not in the test cache")
    with tarfile.open(sdist) as tar:
        def lines(rel: str) -> list[str]:
            f = tar.extractfile(f"llama_cpp_python-0.3.36/vendor/llama.cpp/{rel}")
            assert f is not None
            return f.read().decode().splitlines()

        for backend in GGML_BACKENDS.values():
            for row in backend.matmul:
                m = re.match(r"(ggml/src/\S+):(\d+)-(\d+)", row.source)
                assert m, row.source
                text = "\n".join(lines(m[1])[int(m[2]) - 1:int(m[3])])
                assert "GGML_OP_MUL_MAT" in text or "case GGML_TYPE_" in text, (backend.key, row.source)
                for t in sorted(row.mul_mat)[:3]:
                    if backend.key != "sycl":  # SYCL's switch lists only what it refuses
                        assert f"GGML_TYPE_{t}" in text, (backend.key, t, row.source)
