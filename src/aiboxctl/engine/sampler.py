"""A request's llama.cpp sampler chain, built from its :class:`SamplingParams`: logit bias,
penalties (primed with the prompt's last tokens), then greedy, or top-k/top-p/min-p,
temperature and a seeded draw. Plain greedy needs no chain (the loop takes an argmax)."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.request import SamplingParams


def make_sampler(L: Any, n_vocab: int, p: SamplingParams, prompt: list[int]) -> Any:
    """A new chain (the caller frees it with ``llama_sampler_free``); RuntimeError when
    llama.cpp cannot create one of its samplers, with nothing left allocated."""
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if not chain:
        raise RuntimeError("llama.cpp could not create a sampler chain")
    try:
        _fill_chain(L, n_vocab, chain, p, prompt)
    except BaseException:
        L.llama_sampler_free(chain)  # frees the samplers already added too
        raise
    return chain


def _fill_chain(L: Any, n_vocab: int, chain: Any, p: SamplingParams, prompt: list[int]) -> None:
    def add(sampler: Any, what: str) -> None:
        if not sampler:
            raise RuntimeError(f"llama.cpp could not create the {what} sampler")
        L.llama_sampler_chain_add(chain, sampler)

    if p.logit_bias:
        arr = (L.llama_logit_bias * len(p.logit_bias))()
        for i, (tok, bias) in enumerate(p.logit_bias):
            arr[i].token = tok
            arr[i].bias = bias
        add(L.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), arr), "logit bias")
    if p.uses_penalties:
        add(L.llama_sampler_init_penalties(n_vocab, p.penalty_last_n, p.repeat_penalty,
                                           p.frequency_penalty, p.presence_penalty), "penalties")
        for tok in prompt[-p.penalty_last_n:] if p.penalty_last_n > 0 else prompt:
            L.llama_sampler_accept(chain, tok)
    if p.temperature <= 0:
        add(L.llama_sampler_init_greedy(), "greedy")
        return
    if p.top_k > 0:
        add(L.llama_sampler_init_top_k(p.top_k), "top-k")
    if p.top_p < 1.0:
        add(L.llama_sampler_init_top_p(p.top_p, 1), "top-p")
    if p.min_p > 0.0:
        add(L.llama_sampler_init_min_p(p.min_p, 1), "min-p")
    add(L.llama_sampler_init_temp(p.temperature), "temperature")
    seed = L.LLAMA_DEFAULT_SEED if p.seed is None else (p.seed & 0xFFFFFFFF)
    add(L.llama_sampler_init_dist(seed), "dist")
