"""Issue 19: a bundle is for the machine it names — the target platform comes from the hardware
profile (Kunpeng boxes are aarch64), and an engine wheel of the wrong architecture or backend is
refused with the reason; a missing one says how to make it and what the bundle would lack."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from aiboxctl.bundle.manifest import TargetPlatform


def _wheel(folder: Path, plat: str, libs: list[str], version: str | None = None) -> Path:
    from aiboxctl.bundle.wheels import required_engine_version

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"llama_cpp_python-{version or required_engine_version()}-py3-none-{plat}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/__init__.py", "")
        for lib in libs:
            zf.writestr(f"llama_cpp/lib/{lib}", b"\x7fELF")
    return path


def test_hardware_profiles_say_their_cpu_architecture():
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile

    assert load_hardware_profile("ascend-910b-x8").cpu.arch == "aarch64"  # Kunpeng 920
    assert load_hardware_profile("ascend-310p").cpu.arch == "aarch64"
    assert load_hardware_profile("h800-x8").cpu.arch == "x86_64"


def test_hardware_profile_arch_is_validated(tmp_path):
    from aiboxctl.datafile import DataFileError
    from aiboxctl.resources import data_dir
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile

    text = (data_dir("profiles") / "hardware" / "ascend-910b-x8.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("arch: aarch64", "arch: sparc"))
    with pytest.raises(DataFileError) as info:
        load_hardware_profile(str(bad))
    assert "arch" in info.value.message


def test_target_platform_follows_the_hardware_profile():
    from aiboxctl.bundle.pack import target_for
    from aiboxctl.errors import UsageError

    assert target_for("3.11", None, arch="aarch64").platform == "manylinux_2_28_aarch64"
    assert target_for("3.11", None, arch="x86_64").platform == "manylinux_2_28_x86_64"
    with pytest.raises(UsageError) as info:
        target_for("3.11", "manylinux_2_28_x86_64", arch="aarch64", box="ascend-910b-x8")
    assert "aarch64" in info.value.message and "ascend-910b-x8" in info.value.message


def test_pack_for_a_cann_box_refuses_an_x86_cpu_engine_wheel(tmp_path, cli):
    wheel = _wheel(tmp_path / "w", "linux_x86_64", ["libggml-cpu.so", "libggml-base.so"])
    r = cli("pack", "--profile", "gov-office", "--hardware", "ascend-910b-x8", "-o", str(tmp_path / "b.tar"),
            "--python", "3.11", "--engine-wheel", str(wheel), "--json")
    doc = r.json()
    (err,) = doc["errors"]
    assert err["code"] == "engine_wheel_mismatch", err
    assert r.code == 2
    msg = err["message"]
    assert "x86_64" in msg and "aarch64" in msg  # the architecture, with the reason
    assert "cpu" in msg.lower() and "cann" in msg.lower()  # and the backend
    assert not (tmp_path / "b.tar").exists()


def test_pack_for_a_cann_box_refuses_an_aarch64_cpu_only_wheel(tmp_path, cli):
    wheel = _wheel(tmp_path / "w", "linux_aarch64", ["libggml-cpu.so"])
    r = cli("pack", "--profile", "gov-office", "--hardware", "ascend-910b-x8", "-o", str(tmp_path / "b.tar"),
            "--python", "3.11", "--engine-wheel", str(wheel), "--json")
    (err,) = r.json()["errors"]
    assert err["code"] == "engine_wheel_mismatch" and "cann" in err["message"].lower(), err
    assert "x86_64" not in err["message"]


def test_pack_for_a_cann_box_without_a_wheel_says_how_to_make_one(tmp_path, cli):
    r = cli("pack", "--profile", "gov-office", "--hardware", "ascend-910b-x8", "-o", str(tmp_path / "b.tar"),
            "--python", "3.11", "--json")
    (err,) = r.json()["errors"]
    assert err["code"] == "engine_wheel_missing", err
    assert "manylinux_2_28_aarch64" in err["message"] or "aarch64" in err["message"]
    assert "engine install --backend cann --build-only" in err["hint"]
    assert "aarch64" in err["hint"]
    assert "lack" in err["message"]  # what a bundle without it would lack
