"""Security defaults by profile, as install pins them into the spec (no engine needed)."""

from __future__ import annotations

import dataclasses

import pytest

from aiboxctl.deploy.install import build_spec, inputs_fingerprint
from aiboxctl.deploy.spec import render_appliance
from aiboxctl.engine_settings import EngineSettings
from aiboxctl.paths import InstallLayout
from aiboxctl.sizing.profiles import load_use_case

FACTS = {"variant": "smollm2-135m-instruct", "quant": "Q4_1", "engine": {}, "predicted": {"decode_tok_s": 100.0}}


def spec_for(profile, tmp_path, **kw):
    return build_spec(layout=InstallLayout.for_root(tmp_path), profile=profile, facts=FACTS,
                      model_path="/m.gguf", engine=EngineSettings(n_ctx=2048, parallel=2), port=kw.get("port"),
                      bind=kw.get("bind"), system=False)


def test_demo_loopback_with_key_and_no_audit(tmp_path):
    spec = spec_for(load_use_case("demo"), tmp_path)
    e = spec.engine
    assert e.host == "127.0.0.1" and e.port == 8080
    assert e.api_keys_file == tmp_path / "etc/aibox/api_keys"
    assert e.audit_log is None
    assert spec.manager == "supervisor"  # a prefix is never the host's systemd


@pytest.mark.parametrize("name", ["gov-office", "finance"])
def test_gov_office_and_finance_audit_metadata_only(tmp_path, name):
    spec = spec_for(load_use_case(name), tmp_path)
    assert spec.engine.audit_log == tmp_path / "var/log/aibox/audit.jsonl"
    assert spec.engine.audit_content is False
    assert spec.engine.api_keys_file


def test_key_required_beyond_loopback_even_if_profile_says_no(tmp_path):
    demo = load_use_case("demo")
    open_lan = dataclasses.replace(demo, security=dataclasses.replace(demo.security, api_key=False, bind="0.0.0.0"))
    spec = spec_for(open_lan, tmp_path)
    assert spec.engine.host == "0.0.0.0" and spec.engine.api_keys_file
    no_key_loopback = dataclasses.replace(demo, security=dataclasses.replace(demo.security, api_key=False))
    assert spec_for(no_key_loopback, tmp_path).engine.api_keys_file is None
    # --bind beyond loopback on a keyless profile still gets a key
    assert spec_for(no_key_loopback, tmp_path, bind="192.168.1.10").engine.api_keys_file
    files = render_appliance(spec, "admin:k\n")
    assert any(f.path.endswith("api_keys") and f.mode == 0o600 for f in files)


def test_fingerprint_tracks_inputs_not_free_memory():
    demo = load_use_case("demo")
    hw = {"cpu": {"model": "x", "cores": 2}, "memory_total": 1, "accelerators": []}
    a = inputs_fingerprint(demo, None, {"port": 1}, hw)
    assert a == inputs_fingerprint(demo, None, {"port": 1}, dict(hw))
    assert a != inputs_fingerprint(demo, None, {"port": 2}, hw)
    assert a != inputs_fingerprint(demo, "gemma-3-270m", {"port": 1}, hw)
    assert a != inputs_fingerprint(load_use_case("dev"), None, {"port": 1}, hw)


@pytest.mark.parametrize("name", ["gov-office", "finance", "healthcare"])
def test_department_profiles_serve_the_lan_over_https_with_keys_behind_the_front_door(tmp_path, name):
    """Issue 16: a department's colleagues must reach the box — these profiles bind beyond
    loopback, so install puts the front door first (TLS on, keys checked), the one engine of a
    single-engine plan behind it on loopback. The demo stays one engine on loopback, no TLS."""
    from aiboxctl.deploy.install import behind_front_door, tls_wanted

    profile = load_use_case(name)
    spec = spec_for(profile, tmp_path)
    assert spec.engine.host == "0.0.0.0" and tls_wanted(profile.security, spec.engine.host)
    front, engines = behind_front_door(spec, {"instances": [], "single": [_Planned()]}, profile.security, None)
    assert front.tls and front.access and [e.name for e in engines] == ["chat"]
    assert front.engine.api_keys_file == tmp_path / "etc/aibox/admin-key"
    demo = load_use_case("demo")
    same, none = behind_front_door(spec_for(demo, tmp_path), {"instances": [], "single": [_Planned()]},
                                   demo.security, None)
    assert none == [] and not same.tls and not same.access


@dataclasses.dataclass
class _Planned:
    name: str = "x"
    role: str = "chat"
    variant: str = "smollm2-135m-instruct"
    quant: str = "Q4_1"
    engine: EngineSettings = EngineSettings()
    env: dict = dataclasses.field(default_factory=dict)
    devices: tuple = ()
    local_file: str | None = None


def test_the_endpoint_url_brackets_an_ipv6_bind(tmp_path):
    demo = load_use_case("demo")
    assert spec_for(demo, tmp_path).url == "http://127.0.0.1:8080/v1"
    assert spec_for(demo, tmp_path, bind="::1", port=9000).url == "http://[::1]:9000/v1"
