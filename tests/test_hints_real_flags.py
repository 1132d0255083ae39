"""Hints name commands and flags that exist where the user meets them (issue 19): a pull error
reached through install or pack names a whole `aiboxctl pull …` command (install and pack have no
--source); a native engine wheel given with --engine-wheel is not answered with 'pass
--engine-wheel'. (client/api.py's `aiboxctl status --root`: test_install_e2e.py.)"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def test_install_offline_hint_is_a_whole_pull_command(cli, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = cli("install", "--profile", "demo", "--model", "qwen3-0.6b", "--root", str(tmp_path / "root"), "--yes",
            "--json")
    (err,) = r.json()["errors"]
    assert err["code"] == "offline"
    assert "aiboxctl pull qwen3-0.6b --quant Q8_0 --source dir:PATH" in err["hint"]
    assert "MODEL" not in err["hint"]


def test_unreachable_hint_is_a_whole_pull_command():
    from aiboxctl.hub.pull import _no_source_error
    from aiboxctl.hub.resolve import resolve_request
    from aiboxctl.hub.results import SourceAttempt

    req = resolve_request("qwen3-0.6b", quant="Q8_0")
    err = _no_source_error(req, [SourceAttempt("hf", "https://huggingface.co", "unreachable", "refused")])
    assert err.code == "unreachable"
    assert "aiboxctl pull qwen3-0.6b --quant Q8_0 --source dir:PATH" in err.hint
    assert not err.hint.rstrip().endswith(": --source dir:PATH")


def _native_wheel(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/lib/libggml-cpu.so", b"\x7fELF")
        zf.writestr("llama_cpp/__init__.py", "")
    return path


def test_native_wheel_given_is_not_told_to_pass_engine_wheel(tmp_path):
    from aiboxctl.bundle.wheels import describe_engine_wheel, native_engine_warning

    wheel = _native_wheel(tmp_path / "llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl")
    given = native_engine_warning(describe_engine_wheel(wheel, "given"))
    assert "given with --engine-wheel" in given and "or pass --engine-wheel" not in given
    assert "engine install --backend cpu --build-only" in given
    cached = native_engine_warning(describe_engine_wheel(wheel, "pip wheel cache"))
    assert "--engine-wheel" in cached and "from the pip wheel cache" in cached
