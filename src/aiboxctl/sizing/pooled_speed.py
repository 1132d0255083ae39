"""Predicted speed of a pooled engine (embedding or rerank, engine/embedding.py): texts per second
for a batch of inputs, and the latency of one rerank request.

A pooled decode runs every input of the batch through the model once and keeps no KV cache and
computes no logits. It is compute-bound as soon as the batch has more than a few tokens (a prefill
without a decode), so its time is::

    t_decode = max(N · f_token / (η_c · FLOPS · share),  W / (η_d · BW)) + t0
    f_token  = 2 · P_layers + 4 · L · n_layer · d_attn      (matmuls + attention over the input)

with N the batch's tokens, L one input's tokens, P_layers the repeating layers' matmul weights
(the embedding table is a row lookup, the classification head a few numbers), ``share`` the
fraction of the device's cores the engine's threads use (CPU only) and η, t0 as for chat
(sizing/throughput.py). A batch larger than ``n_ctx`` tokens or ``parallel`` inputs takes
several decodes. ``aiboxctl bench`` prints measured figures next to these as a ratio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.throughput import T0_ACCEL, T0_CPU, DeviceSpeed

if TYPE_CHECKING:
    from aiboxctl.engine_settings import EngineSettings
    from aiboxctl.sizing.box import Box

UNGATED_FFN = frozenset({"bert", "nomic-bert"})  # BERT/XLM-R: up and down only; the others gate


@dataclass(frozen=True)
class PooledSpeed:
    batch: int  # inputs per request
    input_tokens: int  # tokens per input
    decodes: int  # llama_decode calls the batch needs
    seconds: float  # one request of ``batch`` inputs
    texts_per_s: float
    tokens_per_s: float
    bound: str  # "compute" or "memory"

    def to_dict(self) -> dict:
        return {"batch": self.batch, "input_tokens": self.input_tokens, "decodes": self.decodes,
                "seconds": round(self.seconds, 6), "texts_per_s": round(self.texts_per_s, 2),
                "tokens_per_s": round(self.tokens_per_s, 1), "bound": self.bound}


def layer_matmul_params(facts: ModelFacts) -> float:
    """Weights the repeating layers multiply each token by (element count): from the header's
    matrices when it lists them, else from the shapes (attention q/k/v/o and the feed-forward)."""
    mats = [w for w in facts.weight_matrices if w.slot < facts.n_layer and not w.duplicate and len(w.shape) >= 2]
    if mats:
        return float(sum(math.prod(w.shape[:2]) for w in mats))
    gated = facts.architecture not in UNGATED_FFN
    total = 0.0
    for il in range(facts.n_layer):
        d = facts.n_embd
        attn = d * (facts.n_head[il] * facts.head_dim_k[il] + facts.n_head_kv[il] * facts.head_dim_k[il]
                    + facts.n_head_kv[il] * facts.head_dim_v[il] + facts.n_head[il] * facts.head_dim_v[il])
        total += attn + (3 if gated else 2) * d * facts.n_ff[il]
    return total


def predict_pooled(facts: ModelFacts, device: DeviceSpeed, *, batch: int, input_tokens: int, n_ctx: int,
                   parallel: int, threads: int | None = None, cores: int | None = None) -> PooledSpeed:
    """One request of ``batch`` inputs of ``input_tokens`` tokens each on an engine with
    ``n_ctx`` tokens and ``parallel`` inputs per decode, on ``device`` (``threads`` of ``cores``
    on a CPU)."""
    batch, input_tokens = max(batch, 1), max(input_tokens, 1)
    per_decode = max(1, min(parallel, n_ctx // input_tokens if input_tokens <= n_ctx else 1))
    decodes = math.ceil(batch / per_decode)
    attn_width = sum(facts.n_head[il] * facts.head_dim_k[il] for il in range(facts.n_layer)) or facts.n_embd * facts.n_layer
    flop_token = 2 * layer_matmul_params(facts) + 4 * input_tokens * attn_width
    share = 1.0
    if device.kind == "cpu" and threads and cores:
        share = min(threads, cores) / cores
    flops = device.tflops * 1e12 * device.eta_compute * share
    bw = device.bandwidth_gbps * 1e9 * device.eta_decode
    t0 = T0_CPU if device.kind == "cpu" else T0_ACCEL
    seconds = 0.0
    compute_bound = False
    left = batch
    for _ in range(decodes):
        n = min(left, per_decode)
        left -= n
        t_cmp = n * input_tokens * flop_token / flops
        t_mem = facts.weight_bytes / bw
        compute_bound |= t_cmp >= t_mem
        seconds += max(t_cmp, t_mem) + t0
    return PooledSpeed(batch, input_tokens, decodes, seconds, batch / seconds, batch * input_tokens / seconds,
                       "compute" if compute_bound else "memory")


def predictor_for(config: "EngineSettings", box: "Box"):
    """The bench's predictor for the pooled engine ``config`` (an engine.yaml as the engine reads
    it: engine.config.load_engine_config) on ``box``: (role, inputs, tokens per input) ->
    {"texts_per_s", "tokens_per_s", "latency_s", …}. The device is the box's first accelerator when
    the engine offloads layers, else the host."""
    from aiboxctl.models.gguf import read_header

    facts = ModelFacts.from_header(read_header(config.model))
    on_accel = bool(config.n_gpu_layers) and bool(box.accelerators)
    device = box.accelerators[0].speed if on_accel else box.host_speed
    threads = config.threads

    def predict(role: str, inputs: int, tokens: float) -> dict:
        p = predict_pooled(facts, device, batch=inputs, input_tokens=max(1, round(tokens)), n_ctx=config.n_ctx,
                           parallel=config.parallel, threads=threads, cores=box.cpu_cores)
        return {**p.to_dict(), "latency_s": round(p.seconds, 6), "device": device.name,
                "basis": f"sizing/pooled_speed.py on {device.name} ({device.tflops:g} TFLOPS peak"
                         + (f", {threads} of {box.cpu_cores} cores" if device.kind == "cpu" and threads else "") + ")"}

    return predict
