"""``/v1/chat/completions``: messages through the model's chat template into prompt tokens, and
the answer as an assistant message (whole) or as deltas (streamed). Which part of what the
model wrote goes where — today all of its text as ``content`` — is decided here, in ``choice``
and ``chunk_choice``."""

from __future__ import annotations

from typing import Any

from aiboxctl.engine.api.protocol import ChatBody, chat_choice, chat_delta_choice, chat_role_choice
from aiboxctl.engine.api.serving import OpenAIServing


class ChatServing(OpenAIServing):
    endpoint = "chat"
    body_type = ChatBody
    id_prefix = "chatcmpl"
    prompt_param = "messages"
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"

    def prompt_tokens(self, body: ChatBody) -> tuple[list[int], Any]:
        state = self.state
        rt, template = state.runtime, state.template
        messages = [m.flat() for m in body.messages]
        text = template.render(messages, add_generation_prompt=True)
        add_bos = rt.add_bos and not (template.spec.bos_token and text.startswith(template.spec.bos_token))
        return rt.tokenize(text, add_special=add_bos, parse_special=True), messages

    def max_tokens_wanted(self, body: ChatBody) -> int | None:
        return body.max_completion_tokens or body.max_tokens

    def choice(self, text: str, finish_reason: str | None) -> dict:
        return chat_choice(text, finish_reason)

    def chunk_choice(self, text: str | None, finish_reason: str | None) -> dict:
        return chat_delta_choice(text, finish_reason)

    def opening_choice(self) -> dict | None:
        return chat_role_choice()
