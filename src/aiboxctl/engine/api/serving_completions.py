"""``/v1/completions``: a prompt (text, or token ids checked against the vocabulary) as it is,
and the answer as ``text``."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.api.protocol import CompletionBody, LegacyLogprobs, text_choice
from aiboxctl.engine.api.serving import OpenAIServing


class CompletionServing(OpenAIServing):
    endpoint = "completions"
    body_type = CompletionBody
    id_prefix = "cmpl"
    prompt_param = "prompt"
    object_name = "text_completion"
    chunk_object_name = "text_completion"

    def prompt_tokens(self, body: CompletionBody) -> tuple[list[int], Any]:
        rt = self.state.runtime
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError("only one prompt per request is supported")
            prompt = prompt[0]
        if isinstance(prompt, list):
            if any(t < 0 or t >= rt.n_vocab for t in prompt):
                raise ValueError(f"prompt token ids must be in 0..{rt.n_vocab - 1}")
            tokens = list(prompt)
        else:
            tokens = rt.tokenize(prompt, add_special=True, parse_special=False)
        return tokens, body.prompt

    def logprobs(self, body: CompletionBody) -> Any:
        return LegacyLogprobs() if body.logprobs is not None else None

    def choice(self, text: str, finish_reason: str | None, reader: Any = None) -> dict:
        return text_choice(text, finish_reason)

    def chunk_choice(self, text: str | None, finish_reason: str | None, reader: Any = None) -> dict:
        return text_choice(text, finish_reason)
