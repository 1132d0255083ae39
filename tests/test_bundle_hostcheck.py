"""Issue 19: `install --bundle` on a box that is not the bundle's hardware warns with what differs
(before asking, before anything is unpacked)."""

from __future__ import annotations

from pathlib import Path

from aiboxctl.bundle.manifest import TargetPlatform
from aiboxctl.bundle.pack import Entry, write_bundle


def _bundle(tmp_path: Path, hardware: str) -> Path:
    model = tmp_path / "src" / "tiny.gguf"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"GGUF" + bytes(4096))
    out = tmp_path / "b.tar"
    write_bundle(out, [Entry("plan.json", data=b"{}"), Entry("models/tiny.gguf", source=model)],
                 target=TargetPlatform.here(), profile="demo", hardware=hardware,
                 model={"variant": "tiny", "quant": "Q4_1", "path": "models/tiny.gguf", "repo": "local/tiny",
                        "file": "tiny.gguf", "source": "dir"})
    return out


def test_install_bundle_for_other_hardware_warns_what_differs(tmp_path, cli):
    bundle = _bundle(tmp_path, "h800-x8")
    r = cli("install", "--bundle", str(bundle), "--root", str(tmp_path / "root"))
    assert r.code == 2  # no --yes and no terminal: refused, after the warning
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert any("h800-x8" in w and "H800" in w and "accelerators" in w for w in warnings), r.stderr
    assert any("memory" in w and "2048 GiB" in w for w in warnings), r.stderr
    assert not (tmp_path / "root").exists()


def test_differences_name_each_fact(tmp_path):
    from aiboxctl.bundle.hostcheck import hardware_differences
    from aiboxctl.hardware.probe import probe_box
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile

    box = probe_box()
    diffs = hardware_differences(load_hardware_profile("ascend-910b-x8"), box)
    text = " ".join(diffs)
    assert "Ascend 910B2" in text and "cann" in text
    assert "192 cores" in text
