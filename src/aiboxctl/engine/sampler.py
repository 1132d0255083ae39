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


_REGEX_SPECIAL = frozenset("\\^$.|?*+()[]{}")


def _split_triggers(L: Any, vocab: Any, triggers: tuple[str, ...]) -> tuple[list[int], list[bytes]]:
    """(trigger tokens, trigger patterns): a text the vocabulary writes as one token is watched
    as that token; any other becomes an ECMAScript regex matching the text literally."""
    tokens: list[int] = []
    patterns: list[bytes] = []
    for text in triggers:
        data = text.encode()
        arr = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(vocab, data, len(data), arr, len(arr), False, True)
        if n == 1:
            tokens.append(int(arr[0]))
        else:
            patterns.append("".join("\\" + c if c in _REGEX_SPECIAL else c for c in text).encode())
    return tokens, patterns


class GrammarSampling:
    """A grammar-constrained draw, as llama.cpp's common sampler does it: the request's own
    chain (or argmax) picks a token; when the grammar accepts it, that is the token (one cheap
    check of one candidate). Only when the grammar rejects it is the grammar applied to the whole
    vocabulary and the chain run again over what is left. The grammar and the chain then both
    accept the token. One per constrained slot; ``free`` releases the grammar sampler.

    ``triggers`` make the grammar lazy (llama.cpp's own lazy grammar sampler, as llama-server
    uses it for tool calls): until one of these texts is written the reply is free (the sampler
    lets every token through and only watches); from the trigger on the grammar holds, fed the
    text from the trigger's first character — so the grammar starts with the trigger text. A
    trigger that is one token of the vocabulary is watched as that token (no text search); any
    other as a literal pattern searched in the reply so far."""

    def __init__(self, L: Any, vocab: Any, n_vocab: int, gbnf: str, triggers: tuple[str, ...] = ()) -> None:
        import numpy

        self.L = L
        if triggers:
            import ctypes

            tokens, patterns = _split_triggers(L, vocab, triggers)
            pats = (ctypes.c_char_p * max(1, len(patterns)))(*patterns)
            toks = (L.llama_token * max(1, len(tokens)))(*tokens)
            self.grammar = L.llama_sampler_init_grammar_lazy_patterns(
                vocab, gbnf.encode(), b"root", pats, len(patterns), toks, len(tokens))
        else:
            self.grammar = L.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self.grammar:
            raise RuntimeError("llama.cpp refused the request's grammar (see the engine log)")
        self.n_vocab = n_vocab
        self._cur = (L.llama_token_data * n_vocab)()
        self._view = numpy.frombuffer(self._cur, dtype=numpy.dtype(
            [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")], align=True))
        self._ids = numpy.arange(n_vocab, dtype=numpy.int32)
        self._arr = L.llama_token_data_array(self._cur, n_vocab, -1, False)
        self._one = (L.llama_token_data * 1)()
        self._one_arr = L.llama_token_data_array(self._one, 1, -1, False)

    def _fill(self, logits: Any) -> None:
        v = self._view
        v["id"] = self._ids
        v["logit"] = logits
        v["p"] = 0.0
        a = self._arr
        a.size, a.selected, a.sorted = self.n_vocab, -1, False

    def _pick(self, chain: Any, logits: Any) -> int:
        import ctypes

        self._fill(logits)
        if chain is None:
            return int(self._view["logit"].argmax())
        self.L.llama_sampler_apply(chain, ctypes.byref(self._arr))
        return int(self._cur[self._arr.selected].id)

    def allows(self, token: int) -> bool:
        import ctypes

        one = self._one[0]
        one.id, one.logit, one.p = token, 1.0, 0.0
        a = self._one_arr
        a.size, a.selected, a.sorted = 1, -1, False
        self.L.llama_sampler_apply(self.grammar, ctypes.byref(a))
        return self._one[0].logit != float("-inf")

    def sample(self, chain: Any, logits: Any) -> int:
        """The next token from ``logits`` (a float32 numpy view of the row); ``chain`` None: greedy."""
        import ctypes

        t = int(logits.argmax()) if chain is None else self._pick(chain, logits)
        if not self.allows(t):
            self._fill(logits)
            self.L.llama_sampler_apply(self.grammar, ctypes.byref(self._arr))
            if self._view["logit"].max() == float("-inf"):
                # accepting a token now would throw inside llama.cpp (and abort the process)
                raise RuntimeError("the grammar allows no next token")
            if chain is None:
                t = int(self._view["logit"].argmax())
            else:
                self.L.llama_sampler_apply(chain, ctypes.byref(self._arr))
                t = int(self._cur[self._arr.selected].id)
        self.L.llama_sampler_accept(self.grammar, t)
        if chain is not None:
            self.L.llama_sampler_accept(chain, t)
        return t

    def free(self) -> None:
        if self.grammar:
            self.L.llama_sampler_free(self.grammar)
            self.grammar = None


def token_logprobs(logits: Any, token: int, top: int, piece: Any) -> tuple:
    """The log-probability of ``token`` and of the ``top`` most likely tokens, from the raw logits
    of the step it was sampled at (``logits``: the row as a float32 numpy view): a log-softmax over
    the whole vocabulary *before* any sampler transform (temperature, penalties, logit_bias,
    grammar) — the model's own distribution, as OpenAI and vLLM (``raw_logprobs``) report it and
    llama-server's ``n_probs`` does from the same row. Ties in the top list go to the lower id, so
    a greedy (first-maximum) pick is first. Returns ``(bytes, logprob, ((bytes, logprob), …))``;
    ``piece`` gives a token's bytes. Only computed for requests that ask (numpy over the row)."""
    import math

    import numpy

    m = float(logits.max())
    lse = m + math.log(float(numpy.exp(logits - m).sum(dtype=numpy.float64)))
    tops: tuple = ()
    if top > 0:
        k = min(top, logits.shape[0])
        ids = numpy.argpartition(logits, -k)[-k:]
        ids = ids[numpy.lexsort((ids, -logits[ids]))]
        tops = tuple((piece(int(i)), float(logits[i]) - lse) for i in ids)
    return piece(token), float(logits[token]) - lse, tops
