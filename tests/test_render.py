"""Rendering the appliance's files: profile values are data, and every unit passes systemd-analyze."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from aiboxctl.deploy.render import sd_exec, sd_quote, sd_text
from aiboxctl.deploy.spec import InstallSpec, UNIT_NAME, render_appliance, service_command
from aiboxctl.errors import UsageError
from aiboxctl.engine_settings import EngineSettings
from aiboxctl.paths import InstallLayout

# Everything that has a meaning in a unit, a shell file or YAML.
EVIL = 'x"\n[Service]\nExecStartPre=/bin/touch /tmp/pwned %n ${HOME} $(touch /tmp/pwned) `id`; \'q\' \\'


def make_spec(root: Path, *, profile="demo", model_name="smollm2-135m-instruct", state_home=None,
              host="127.0.0.1", api_key=True, mlock=False, n_gpu_layers=0, user="root") -> InstallSpec:
    layout = InstallLayout.for_root(root)
    return InstallSpec(
        root=str(layout.root), profile=profile, description="test", model_variant="smollm2-135m-instruct",
        quant="Q4_1",
        engine=EngineSettings.from_mapping({
            "model": "/opt/models/model.gguf", "model_name": model_name, "host": host, "port": 8080,
            "mlock": mlock, "n_gpu_layers": n_gpu_layers,
            "api_keys_file": str(layout.etc / "api_keys") if api_key else None,
            "audit_log": str(layout.log / "audit.jsonl")}),
        manager="supervisor", service_user=user, service_group=user, exec_argv=service_command(),
        state_home=state_home or str(root / "state"), system_install=False,
    )


def write_all(files) -> dict[str, bytes]:
    out = {}
    for f in files:
        p = Path(f.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f.content)
        out[p.name] = f.content
    return out


def unit_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def verify_unit(root: Path, unit: Path) -> str:
    """systemd-analyze verify exits 0 even when it ignores a setting: return what it printed."""
    for d in ("var/lib/aibox", "var/log/aibox"):
        (root / d).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", "--generators=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    return (proc.stdout + proc.stderr).strip() + ("" if proc.returncode == 0 else f"\nexit {proc.returncode}")


needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason="systemd-analyze not installed (CI installs it)")


def test_engine_yaml_is_what_the_engine_loads(tmp_path):
    from aiboxctl.engine.config import load_engine_config

    spec = make_spec(tmp_path)
    files = render_appliance(spec, "admin:sk-test\n")
    write_all(files)
    layout = spec.layout
    cfg = load_engine_config(layout.engine_config)
    assert str(cfg.model) == "/opt/models/model.gguf"
    assert cfg.model_name == "smollm2-135m-instruct"
    assert (cfg.host, cfg.port) == ("127.0.0.1", 8080)
    assert str(cfg.api_keys_file) == str(layout.etc / "api_keys")
    assert str(cfg.audit_log) == str(layout.log / "audit.jsonl")
    modes = {Path(f.path).name: f.mode for f in files}
    assert modes["api_keys"] == 0o600 and modes["engine.yaml"] == 0o640


def test_rendering_is_deterministic(tmp_path):
    spec = make_spec(tmp_path)
    assert render_appliance(spec, "k\n") == render_appliance(spec, "k\n")


def test_profile_values_are_data_in_yaml_and_shell(tmp_path):
    spec = make_spec(tmp_path, profile="demo" + EVIL, model_name="m" + EVIL, state_home=str(tmp_path / "s") + EVIL)
    files = write_all(render_appliance(spec, "admin:sk-test\n"))
    doc = yaml.safe_load(files["engine.yaml"])
    assert doc["model_name"] == "m" + EVIL
    assert set(doc) >= {"model", "port", "n_ctx", "api_keys_file"}  # no key was injected
    # The environment file is POSIX shell: source it for real and read the values back.
    env_file = spec.layout.etc / "aibox.env"
    marker = tmp_path / "pwned"
    out = subprocess.run(["sh", "-c", f'cd "{tmp_path}" && . "$1" && printf "%s\\0%s\\0%s" "$AIBOX_PROFILE" "$AIBOX_MODEL" "$AIBOX_HOME"',
                          "sh", str(env_file)], capture_output=True, text=True, timeout=10,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\0") == ["demo" + EVIL, "m" + EVIL, str(tmp_path / "s") + EVIL]
    assert not marker.exists() and not Path("/tmp/pwned").exists()


@needs_systemd_analyze
def test_unit_injection_adds_no_directive_and_verifies_clean(tmp_path):
    plain = write_all(render_appliance(make_spec(tmp_path / "a"), "k\n"))[UNIT_NAME].decode()
    spec = make_spec(tmp_path / "b", profile="demo" + EVIL, model_name="m" + EVIL,
                     state_home=str(tmp_path / "b" / "s") + EVIL)
    evil = write_all(render_appliance(spec, "k\n"))[UNIT_NAME].decode()
    keys = lambda text: [ln.split("=", 1)[0] for ln in unit_lines(text)]  # noqa: E731
    assert keys(evil) == keys(plain), "a profile value changed the unit's structure"
    assert "ExecStartPre" not in keys(evil)
    # Specifiers are escaped (%% is a literal %), nothing expands $ in Environment=.
    env_line = next(ln for ln in unit_lines(evil) if ln.startswith("Environment=\"AIBOX_HOME="))
    assert "%%n" in env_line and "\\n" in env_line and '\\"' in env_line
    assert verify_unit(tmp_path / "b", spec.layout.unit_dir / UNIT_NAME) == ""


def test_escaping_functions():
    assert sd_quote('a"b\\c\nd%e') == '"a\\"b\\\\c\\nd%%e"'
    assert sd_exec(["/bin/x", "$(id)", "%h"]) == '"/bin/x" "$$(id)" "%%h"'
    assert sd_text("a\nb%c\\") == "a b%%c/"
    with pytest.raises(UsageError):
        sd_exec(["relative"])


@needs_systemd_analyze
@pytest.mark.parametrize("variant", [{}, {"mlock": True}, {"n_gpu_layers": 99}, {"host": "0.0.0.0"}])
def test_every_rendered_unit_verifies(tmp_path, variant):
    spec = make_spec(tmp_path, **variant)
    files = write_all(render_appliance(spec, "k\n"))
    unit = files[UNIT_NAME].decode()
    assert verify_unit(tmp_path, spec.layout.unit_dir / UNIT_NAME) == ""
    lines = unit_lines(unit)
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "CapabilityBoundingSet=",
                    "Restart=on-failure", "After=network-online.target"):
        assert setting in lines
    assert any(ln.startswith("ProtectHome=") for ln in lines)
    rw = next(ln for ln in lines if ln.startswith("ReadWritePaths="))
    assert str(spec.layout.state) in rw and str(spec.layout.log) in rw
    assert ("LimitMEMLOCK=infinity" in lines) == bool(variant.get("mlock"))
    assert ("PrivateDevices=yes" in lines) == (not variant.get("n_gpu_layers"))


@needs_systemd_analyze
def test_verify_output_is_read(tmp_path):
    """The check above is not vacuous: systemd-analyze prints (and exits 0) for a bad setting."""
    spec = make_spec(tmp_path)
    write_all(render_appliance(spec, "k\n"))
    unit = spec.layout.unit_dir / UNIT_NAME
    unit.write_text(unit.read_text().replace("PrivateTmp=yes", "PrivateTmp=maybe\nNoSuchSetting=1"))
    printed = verify_unit(tmp_path, unit)
    assert "NoSuchSetting" in printed and "Failed to parse" in printed


def test_beyond_loopback_requires_an_api_key(tmp_path):
    with pytest.raises(UsageError, match="without an API key"):
        render_appliance(make_spec(tmp_path, host="0.0.0.0", api_key=False), None)
    render_appliance(make_spec(tmp_path, host="127.0.0.1", api_key=False), None)


def test_invalid_service_user_is_refused(tmp_path):
    with pytest.raises(UsageError, match="invalid service user"):
        render_appliance(make_spec(tmp_path, user="aibox\nUser=root"), "k\n")


def test_unsafe_prefix_is_refused(tmp_path):
    with pytest.raises(UsageError):
        render_appliance(make_spec(tmp_path / "with space"), "k\n")


@needs_systemd_analyze
def test_unit_exposure_is_low(tmp_path):
    """systemd's own security review of the hardened unit, offline: exposure ≤ 2.5 ("OK")."""
    spec = make_spec(tmp_path, user="aibox")
    write_all(render_appliance(spec, "k\n"))
    unit = spec.layout.unit_dir / UNIT_NAME
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-800:] + proc.stderr[-800:]
    assert "Overall exposure level for aibox.service" in proc.stdout and " OK" in proc.stdout
