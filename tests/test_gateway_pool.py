"""The live state without sockets: model resolution, the FIFO queue handing freed slots to the
oldest waiter, a waiter that leaves, 429/503 refusals."""

from __future__ import annotations

import asyncio

import pytest

from aiboxctl.gateway.app import _resolve
from aiboxctl.gateway.config import gateway_config_from_text
from aiboxctl.gateway.pool import Gateway, Refusal

CONFIG = """\
queue_depth: 2
queue_timeout_s: 0.5
engines:
  - {name: a, models: [chat], url: "http://127.0.0.1:1"}
  - {name: e, models: [emb], role: embedding, url: "http://127.0.0.1:2"}
"""


def _gateway(text: str = CONFIG) -> Gateway:
    cfg = gateway_config_from_text(text)
    gw = Gateway(cfg, {e.name: None for e in cfg.engines})
    for r in gw.replicas.values():
        r.healthy, r.slots = True, 1
    return gw


def test_missing_model_is_the_one_model_of_that_role():
    gw = _gateway()
    assert _resolve(gw, {}, "chat", "/v1/chat/completions").name == "chat"
    assert _resolve(gw, {}, "embedding", "/v1/embeddings").name == "emb"
    with pytest.raises(Refusal) as err:
        _resolve(gw, {}, "rerank", "/v1/rerank")
    assert err.value.status == 400 and "serves no rerank model" in err.value.message
    with pytest.raises(Refusal) as err:
        _resolve(gw, {"model": "nope"}, "chat", "/v1/chat/completions")
    assert err.value.status == 404 and err.value.body()["error"]["code"] == "model_not_found"


def test_queue_is_fifo_bounded_and_times_out():
    async def scenario():
        gw = _gateway()
        pool = gw.pools["chat"]
        first = await gw.acquire(pool, None)  # the only slot
        order = []

        async def waiter(tag):
            r = await gw.acquire(pool, None)
            order.append(tag)
            return r

        t1 = asyncio.create_task(waiter(1))
        await asyncio.sleep(0)
        t2 = asyncio.create_task(waiter(2))
        await asyncio.sleep(0)
        with pytest.raises(Refusal) as full:
            await gw.acquire(pool, None)
        assert full.value.status == 429 and full.value.code == "queue_full" and full.value.headers()["Retry-After"]
        gw.release(first)
        r1 = await t1
        gw.release(r1)
        r2 = await t2
        assert order == [1, 2] and pool.replicas[0].outstanding == 1
        with pytest.raises(Refusal) as late:
            await gw.acquire(pool, None)  # waits queue_timeout_s, nothing frees
        assert late.value.code == "queue_timeout" and not pool.waiters
        gw.release(r2)
        assert pool.replicas[0].outstanding == 0

    asyncio.run(scenario())


def test_a_waiter_that_leaves_gives_its_place_and_slot_back():
    async def scenario():
        gw = _gateway()
        pool = gw.pools["chat"]
        held = await gw.acquire(pool, None)
        t = asyncio.create_task(gw.acquire(pool, None))
        await asyncio.sleep(0)
        t.cancel()  # the client hung up while queued
        with pytest.raises(asyncio.CancelledError):
            await t
        assert not pool.waiters
        gw.release(held)
        assert pool.replicas[0].outstanding == 0

    asyncio.run(scenario())


def test_no_healthy_replica_is_503():
    async def scenario():
        gw = _gateway()
        gw.mark_down(gw.replicas["a"], "ConnectError")
        with pytest.raises(Refusal) as err:
            await gw.acquire(gw.pools["chat"], None)
        assert err.value.status == 503 and "a: ConnectError" in err.value.message

    asyncio.run(scenario())


def test_the_front_door_drops_idle_engine_connections_before_the_engine_does():
    """A POST sent on a kept-alive connection the engine is closing fails and takes the replica
    out; the front door's client lets an idle connection go before the engine's server does."""
    import uvicorn

    from aiboxctl.gateway.upstream import KEEPALIVE_S

    assert KEEPALIVE_S < uvicorn.Config(app=None).timeout_keep_alive
