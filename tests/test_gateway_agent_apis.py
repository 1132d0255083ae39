"""The front door routes /v1/responses and /v1/messages (issue 13) by ``model`` with governed
access: keys (x-api-key as well as Bearer), scope, and the usage ledger filled from these shapes'
input/output tokens, whole and streamed — through the real `openai` and `anthropic` clients over
HTTPS (test_gateway_governed's box: a real SmolLM2 engine behind a real `aiboxctl gateway`)."""

from __future__ import annotations

import httpx
import pytest

from test_gateway_governed import Box, box  # noqa: F401 - the fixture

anthropic = pytest.importorskip("anthropic")
openai = pytest.importorskip("openai")

ASK = [{"role": "user", "content": "Say hi."}]


def test_both_shapes_are_routed_keyed_and_metered(box: Box):
    http = httpx.Client(verify=box.verify, timeout=300)
    claude = anthropic.Anthropic(base_url=box.base, api_key=box.secrets["meter"], http_client=http, max_retries=0)
    oai = openai.OpenAI(base_url=box.base + "/v1", api_key=box.secrets["meter"], http_client=http, max_retries=0)
    seen = []
    m = claude.messages.create(model="smollm2", max_tokens=6, messages=ASK)
    seen.append((m.usage.input_tokens, m.usage.output_tokens))
    with claude.messages.stream(model="smollm2", max_tokens=6, messages=ASK) as stream:
        m = stream.get_final_message()
    seen.append((m.usage.input_tokens, m.usage.output_tokens))
    r = oai.responses.create(model="smollm2", input="Say hi.", max_output_tokens=6)
    seen.append((r.usage.input_tokens, r.usage.output_tokens))
    with oai.responses.stream(model="smollm2", input="Say hi.", max_output_tokens=6) as stream:
        r = stream.get_final_response()
    seen.append((r.usage.input_tokens, r.usage.output_tokens))
    rows = box.ledger("meter")
    assert [r.status for r in rows] == [200] * 4
    assert sorted((r.prompt_tokens, r.completion_tokens) for r in rows) == sorted(seen)
    assert all(p > 0 and c > 0 for p, c in seen)
    # scope and keys: a model outside the key's scope, an unknown model, no key
    legal = anthropic.Anthropic(base_url=box.base, api_key=box.secrets["legal"], http_client=http, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        legal.messages.create(model="gemma", max_tokens=2, messages=ASK)
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="nowhere", input="Hi")
    assert http.post(box.base + "/v1/messages", json={"max_tokens": 2, "messages": ASK}).status_code == 401
