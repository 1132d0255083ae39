"""Use-case and hardware profiles: every shipped file loads, the demo contract holds, and a broken
file is reported as file:line: field: problem."""

from __future__ import annotations

import textwrap

import pytest

from aiboxctl.sizing.hardware_profiles import hardware_profile_names, load_hardware_profile
from aiboxctl.sizing.profiles import load_use_case, use_case_names
from aiboxctl.datafile import DataFileError, parse_size

REQUIRED_HARDWARE = {"cpu-32g", "cpu-256g", "rtx4090", "a100-80g-x2", "h800-x8", "ascend-910b-x8", "ascend-310p",
                     "hygon-k100-x8", "metax-c500-x8", "mthreads-s4000-x8"}


def test_every_use_case_profile_loads_and_names_catalog_families():
    from aiboxctl.models.catalog import load_catalog

    assert {"gov-office", "finance", "healthcare", "edge", "dev", "demo"} <= set(use_case_names())
    cat = load_catalog()
    for name in use_case_names():
        p = load_use_case(name)
        assert p.name == name
        assert p.families and all(f in cat.families for f in p.families), name
        if p.model:
            assert cat.variant(p.model) is not None


def test_demo_profile_is_the_contract():
    p = load_use_case("demo")
    assert p.model == "smollm2-135m-instruct"
    assert (p.users, p.context_per_request) == (4, 2048)
    assert (p.security.bind, p.security.api_key, p.security.audit_log) == ("127.0.0.1", True, False)
    assert p.service.port == 8080


def test_every_hardware_profile_loads_with_a_source_for_each_fact():
    assert REQUIRED_HARDWARE <= set(hardware_profile_names())
    for name in hardware_profile_names():
        hw = load_hardware_profile(name)
        assert hw.memory.total > 0 and hw.memory.sources["bandwidth_gbps"]
        for acc in hw.accelerators:
            assert {"memory", "bandwidth_gbps", "fp16_tflops", "backend"} <= set(acc.sources), name
    ascend = load_hardware_profile("ascend-910b-x8").accelerators[0]
    assert (ascend.backend, ascend.soc, ascend.count, ascend.memory) == ("cann", "ascend910b", 8, 64 * 2**30)
    assert load_hardware_profile("metax-c500-x8").accelerators[0].backend == "none"


def _write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p


def test_use_case_errors_name_file_line_and_field(tmp_path):
    path = _write(tmp_path, "office.yaml", """
        name: office
        description: "x"
        users: many
        context_per_request: 4096
        target_tokens_per_s: 5
        min_quality: best
        security:
          bind: 127.0.0.1
          api_key: perhaps
        colour: blue
        """)
    with pytest.raises(DataFileError) as info:
        load_use_case(str(path))
    problems = info.value.data["problems"]
    assert f"{path}:3: users: " in problems[0]
    assert any(p.startswith(f"{path}:6: min_quality: ") for p in problems)
    assert any(p.startswith(f"{path}:9: security.api_key: ") for p in problems)
    assert any(p == f"{path}:10: colour: unknown field" for p in problems)
    assert info.value.message.startswith(f"{path}:3: users:") and "(and 3 more)" in info.value.message


def test_missing_field_points_at_its_parent_and_yaml_syntax_errors_have_a_line(tmp_path):
    path = _write(tmp_path, "p.yaml", """
        name: p
        description: "x"
        context_per_request: 4096
        target_tokens_per_s: 5
        """)
    with pytest.raises(DataFileError) as info:
        load_use_case(str(path))
    assert info.value.data["problems"] == [f"{path}:1: users: required field is missing"]
    bad = _write(tmp_path, "bad.yaml", """
        name: p
        families: [qwen3
        users: 3
        """)
    with pytest.raises(DataFileError) as info:
        load_use_case(str(bad))
    assert info.value.message.startswith(f"{bad}:3: invalid YAML")


def test_hardware_fact_without_a_source_is_an_error_at_its_line(tmp_path):
    path = _write(tmp_path, "box.yaml", """
        name: box
        description: "one GPU"
        cpu: {model: x, cores: 8, threads: 16}
        memory:
          total: 64 GiB
          bandwidth_gbps: 80
          sources: {total: "config", bandwidth_gbps: "arithmetic"}
        accelerators:
          - vendor: nvidia
            model: "L4"
            memory: 24 GB
            bandwidth_gbps: 300
            fp16_tflops: 121
            backend: cuda
            sources: {memory: "datasheet", backend: "llama.cpp CUDA"}
        """)
    with pytest.raises(DataFileError) as info:
        load_hardware_profile(str(path))
    assert info.value.data["problems"] == [
        f"{path}:12: accelerators[0].bandwidth_gbps: no source given (add it under sources:)",
        f"{path}:13: accelerators[0].fp16_tflops: no source given (add it under sources:)",
    ]


def test_sizes_accept_units():
    assert parse_size("24 GiB") == 24 * 2**30
    assert parse_size("80 GB") == 80 * 10**9
    assert parse_size("44280 MiB") == 44280 * 2**20
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError):
        parse_size("lots")


def test_cli_reports_a_broken_profile_with_its_line(cli, tmp_path):
    path = _write(tmp_path, "p.yaml", """
        name: p
        description: "x"
        users: 0
        context_per_request: 4096
        target_tokens_per_s: 5
        """)
    r = cli("plan", "--profile", str(path), "--hardware", "cpu-32g", "--json")
    assert r.code == 2  # bad input, like an unknown profile (issue 19: one exit-code table)
    err = r.json()["errors"][0]
    assert err["code"] == "invalid_data_file" and err["message"].startswith(f"{path}:3: users:")
    r = cli("plan", "--profile", "no-such-profile", "--json")
    assert r.code == 2 and "known:" in r.json()["errors"][0]["message"]


def test_unknown_family_or_model_is_reported_at_its_line(tmp_path):
    path = _write(tmp_path, "p.yaml", """
        name: p
        description: "x"
        users: 2
        context_per_request: 4096
        target_tokens_per_s: 5
        families:
          - qwen3
          - qwen9
        model: qwen3-9000b
        """)
    with pytest.raises(DataFileError) as info:
        load_use_case(str(path))
    problems = info.value.data["problems"]
    assert problems[0].startswith(f"{path}:8: families[1]: unknown model family 'qwen9'")
    assert problems[1] == f"{path}:9: model: 'qwen3-9000b' is not a catalog variant or family"
