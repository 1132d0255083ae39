"""One typed engine-settings object from plan to rendered file (issue 12): the planner returns
it, install pins it, engine.yaml renders every field of it and serve reads the file back."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from aiboxctl.deploy.spec import InstallSpec, render_appliance
from aiboxctl.engine.config import EngineConfig, load_engine_config
from aiboxctl.engine_settings import FIELD_NAMES, SECTIONS, EngineSettings
from aiboxctl.errors import UsageError
from aiboxctl.sizing.memory import EngineParams

# engine.yaml as the previous release rendered it (no watchdog_s, max_body_bytes): must still load.
OLD_ENGINE_YAML = """\
# aiboxctl 0.1.0: engine configuration for `aiboxctl serve --config` (profile "demo").
model: "/opt/models/model.gguf"
model_name: "smollm2-135m-instruct"
host: "127.0.0.1"
port: 8080

# llama.cpp parameters (from the plan, fitted by the dry run)
n_ctx: 4096
parallel: 4
kv_unified: true
n_batch: 512
n_ubatch: 512
threads: null
threads_batch: null
cache_type_k: "f16"
cache_type_v: "f16"
flash_attn: "auto"
swa_full: false
n_gpu_layers: 0
tensor_split: []
main_gpu: 0
repack: true
mmap: true
mlock: false

# security and limits
api_keys_file: null
audit_log: null
audit_content: false
max_tokens_cap: 4096
queue_size: 64
chat_template: null
selftest: true
"""


def _spec(tmp_path: Path, engine: EngineSettings) -> InstallSpec:
    return InstallSpec(root=str(tmp_path), profile="demo", description="test", model_variant="m", quant="Q4_1",
                       engine=engine, manager="supervisor", service_user="root", service_group="root",
                       exec_argv=("/usr/bin/aiboxctl",), state_home=str(tmp_path / "state"), system_install=False)


def test_engine_yaml_renders_every_setting_once_in_order_and_serve_reads_it_back(tmp_path):
    pinned = EngineSettings(model=Path("/opt/models/m.gguf"), model_name="m", n_ctx=2048, parallel=2,
                            tensor_split=(0.25, 0.75), cache_type_k="q8_0", flash_attn="on", threads=3,
                            watchdog_s=60, max_body_bytes=4096)
    spec = _spec(tmp_path, pinned)
    files = {Path(f.path).name: f.content.decode() for f in render_appliance(spec, None)}
    text = files["engine.yaml"]
    keys = [ln.split(":", 1)[0] for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert keys == list(FIELD_NAMES)  # every field, once, in declared order, nothing else
    for comment, _first in SECTIONS:
        assert comment is None or f"\n\n# {comment}\n" in text
    (tmp_path / "engine.yaml").write_text(text)
    cfg = load_engine_config(tmp_path / "engine.yaml")
    assert isinstance(cfg, EngineConfig) and EngineSettings(**{f: getattr(cfg, f) for f in FIELD_NAMES}) == pinned
    assert (cfg.watchdog_s, cfg.max_body_bytes, cfg.body_limit) == (60, 4096, 4096)


def test_an_engine_yaml_of_the_previous_release_still_loads_with_the_defaults(tmp_path):
    (tmp_path / "engine.yaml").write_text(OLD_ENGINE_YAML)
    cfg = load_engine_config(tmp_path / "engine.yaml")
    assert cfg == EngineConfig(model=Path("/opt/models/model.gguf"), model_name="smollm2-135m-instruct")
    assert yaml.safe_load(OLD_ENGINE_YAML).keys() <= set(FIELD_NAMES)


def test_the_install_manifest_pins_the_settings_and_names_itself_in_errors(tmp_path):
    spec = _spec(tmp_path, EngineSettings(model=Path("/m.gguf"), n_ctx=1024, parallel=2, tensor_split=(1.0, 3.0)))
    again = InstallSpec.from_dict(spec.to_dict())
    assert again == spec and isinstance(again.engine, EngineSettings)
    doc = spec.to_dict()
    doc["engine"]["paralel"] = 2
    with pytest.raises(UsageError, match="install manifest's engine settings: unknown key"):
        InstallSpec.from_dict(doc)


def test_settings_validate_wherever_they_are_made():
    with pytest.raises(UsageError, match="n_ubatch must be ≤ n_batch"):
        EngineSettings(n_batch=256, n_ubatch=512)
    assert EngineSettings().model is None  # a plan's settings: install fills the model
    with pytest.raises(UsageError, match="'model'"):
        EngineConfig.from_mapping({"n_ctx": 2048}, source="engine.yaml")


def test_sizing_params_are_a_view_of_the_settings():
    defaults = EngineSettings()
    names = [f.name for f in dataclasses.fields(EngineParams)]
    assert set(names) - set(FIELD_NAMES) == {"offload_kqv"}
    p = EngineParams()
    for name in names:
        if name not in ("offload_kqv", "parallel"):  # an estimate assumes one sequence unless told
            assert getattr(p, name) == getattr(defaults, name), name
    s = EngineParams(n_ctx=2048, parallel=2, cache_type_k="q8_0").settings(model_name="x", threads=4)
    assert (s.n_ctx, s.parallel, s.cache_type_k, s.model_name, s.threads) == (2048, 2, "q8_0", "x", 4)
    assert EngineParams.of(s) == EngineParams(n_ctx=2048, parallel=2, cache_type_k="q8_0")


def test_the_plan_returns_settings_and_its_json_reads_back_equal():
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile
    from aiboxctl.sizing.planner import plan
    from aiboxctl.sizing.profiles import load_use_case

    p = plan(load_use_case("gov-office"), load_hardware_profile("a100-80g-x2"))
    assert isinstance(p.engine, EngineSettings) and p.engine.model is None
    doc = p.to_dict()["engine"]
    assert list(doc) == list(FIELD_NAMES)
    assert EngineSettings.from_mapping(doc, source="plan.json") == p.engine
