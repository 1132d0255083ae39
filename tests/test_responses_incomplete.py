"""How a Responses API stream ends, through the real `openai` client against the real engine
(SmolLM2 behind `aiboxctl serve`, test_engine_agent_apis' server).

OpenAI's API ends a stream cut by max_output_tokens with ``response.incomplete``; this engine ends it
with ``response.completed`` whose response has status ``incomplete`` and incomplete_details
{reason: max_output_tokens} (as vLLM does). Why: the openai SDK's stream helper
(``client.responses.stream(...).get_final_response()``) takes its final response from
``response.completed`` alone and raises ``RuntimeError("Didn't receive a `response.completed`
event.")`` after ``response.incomplete`` (openai 2.54 installed, 3.57 the newest on PyPI;
openai/openai-python#3538 proposes the fix). The last test checks that premise on the installed SDK:
when it fails, the SDK accepts ``response.incomplete`` and the engine should send OpenAI's event
(docs/chat-api.md, "The Responses API")."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from test_engine_agent_apis import KEY, oai, server  # noqa: F401 - fixtures

openai = pytest.importorskip("openai")

CUT = dict(model="smollm2", input="Tell me a long story about a dragon.", max_output_tokens=4, temperature=0)
SHORT = dict(model="smollm2", input="Reply with just the word: yes", max_output_tokens=64, temperature=0)


def test_stream_cut_by_max_output_tokens_gives_the_sdk_an_incomplete_final_response(oai):  # noqa: F811
    with oai.responses.stream(**CUT) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed" and kinds.count("response.completed") == 1, kinds
    assert "response.incomplete" not in kinds
    assert final.status == "incomplete"
    assert final.incomplete_details is not None and final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text and final.usage.output_tokens == 4


def test_async_create_stream_types_the_terminal_event(server):  # noqa: F811
    """openai.AsyncOpenAI().responses.create(stream=True): each event typed; the cut stream and a
    normal one both end with one ResponseCompletedEvent, whose status tells them apart."""
    from openai.types.responses import ResponseCompletedEvent

    async def last_event(ask: dict):
        async with openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0) as client:
            events = [e async for e in await client.responses.create(stream=True, **ask)]
        assert sum(e.type.startswith("response.completed") for e in events) == 1
        return events[-1]

    cut = asyncio.run(last_event(CUT))
    assert isinstance(cut, ResponseCompletedEvent)
    assert cut.response.status == "incomplete" and cut.response.incomplete_details.reason == "max_output_tokens"
    done = asyncio.run(last_event(SHORT))
    assert isinstance(done, ResponseCompletedEvent)
    assert done.response.status == "completed" and done.response.incomplete_details is None
    assert done.response.output_text and done.response.usage.output_tokens < 64


def test_normal_stream_ends_with_response_completed(oai):  # noqa: F811
    with oai.responses.stream(**SHORT) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[-1] == "response.completed", kinds
    assert final.status == "completed" and final.incomplete_details is None and final.output_text


def _as_openai_ends(sse: str) -> str:
    """The engine's cut stream with its last event renamed as OpenAI's API names it."""
    head, last = sse.rstrip("\n").rsplit("\n\n", 1)
    data = json.loads(last.split("data: ", 1)[1])
    assert data["type"] == "response.completed" and data["response"]["status"] == "incomplete"
    data["type"] = "response.incomplete"
    return f"{head}\n\nevent: response.incomplete\ndata: {json.dumps(data)}\n\n"


def test_premise_the_sdk_stream_helper_refuses_a_stream_ending_in_response_incomplete(server):  # noqa: F811
    """Why the engine does not send response.incomplete: the installed SDK's helper cannot finish
    such a stream (it types the event, then get_final_response raises). The stream is the real
    engine's, its last event renamed; fed to the real SDK through httpx's MockTransport. If this
    fails, the SDK learnt response.incomplete: send it (OpenAI's behaviour) and rewrite this test."""
    real = httpx.post(server.url + "/responses", json={**CUT, "stream": True},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    assert real.status_code == 200, real.text
    body = _as_openai_ends(real.text).encode()
    transport = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, content=body))
    client = openai.OpenAI(base_url="http://openai.invalid/v1", api_key=KEY, max_retries=0,
                           http_client=httpx.Client(transport=transport))

    from openai.types.responses import ResponseIncompleteEvent
    events = list(client.responses.create(stream=True, **CUT))
    assert isinstance(events[-1], ResponseIncompleteEvent)  # the raw stream types it
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    with client.responses.stream(**CUT) as stream:
        kinds = [e.type for e in stream]  # iterating the helper is fine too ...
        assert kinds[-1] == "response.incomplete"
        with pytest.raises(RuntimeError, match="response.completed"):
            stream.get_final_response()  # ... but it has no final response to give
