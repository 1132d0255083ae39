"""The admin view (issue 17): ``GET /v1/aibox/admin`` on the front door with governed access on
(a real AccessGate, key file and usage ledger; the recorded DeepSeek-R1 stub behind it), and the
page rendering it for an admin key in Debian's Chromium."""

from __future__ import annotations

import time

import httpx
import pytest

from webstack import CHROMIUM, STUB_USAGE, admin_stack, launch_chromium, screenshot

from aiboxctl.gateway.admin import local_midnight, read_ledger


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with admin_stack(tmp_path_factory.mktemp("admin")) as (base, keys):
        yield base, keys


def _ask(base: str, key: str, question: str = "你好（reasoning_content）") -> None:
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": question}], "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60) as r:
        assert r.status_code == 200
        r.read()


def _admin(base: str, key: str | None) -> httpx.Response:
    return httpx.get(base + "/v1/aibox/admin", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def test_only_an_admin_key_gets_the_admin_view(stack):
    base, keys = stack
    r = _admin(base, keys["clerk"])
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "admin_required" and r.json()["error"]["type"] == "permission_error"
    r = _admin(base, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    assert _admin(base, "sk-aibox-000000000000-nope").status_code == 401
    assert _admin(base, keys["admin"]).status_code == 200
    # the key as Anthropic's clients send it counts as it does on every other route
    assert httpx.get(base + "/v1/aibox/admin", headers={"x-api-key": keys["admin"]}, timeout=30).status_code == 200
    assert httpx.get(base + "/v1/aibox/admin", headers={"x-api-key": keys["clerk"]}, timeout=30).status_code == 403


def test_admin_view_shows_models_users_online_and_tokens_today(stack):
    base, keys = stack
    _ask(base, keys["clerk"])
    _ask(base, keys["legal"])
    _ask(base, keys["legal"])
    body = _admin(base, keys["admin"]).json()
    (model,) = body["models"]
    assert model["id"] == "deepseek-r1" and model["role"] == "chat" and model["queue"] == 0
    assert model["replicas"] == [{"name": "r1-0", "healthy": True, "state": "healthy", "reason": None,
                                  "slots": 2, "in_flight": 0}]
    online = {u["key"]: u for u in body["users_online"]}
    assert set(online) == {"clerk", "legal-1"}  # the admin key only looked: it made no ledgered request
    assert online["legal-1"]["requests"] == 2 and online["legal-1"]["tokens"] == 2 * sum(STUB_USAGE)
    assert body["tokens_today"]["total"] == 3 * sum(STUB_USAGE)
    assert body["tokens_today"]["by_model"] == [{"model": "deepseek-r1", "requests": 3,
                                                "prompt_tokens": 3 * STUB_USAGE[0],
                                                "completion_tokens": 3 * STUB_USAGE[1]}]
    assert body["queue_depth"] == 0 and body["ledger"] is True and body["ledger_error"] is None


def test_without_keys_the_admin_view_is_403_saying_how_to_turn_keys_on(tmp_path):
    from fastapi.testclient import TestClient

    from aiboxctl.gateway.app import create_app
    from aiboxctl.gateway.config import EngineEntry, GatewayConfig

    config = GatewayConfig(engines=(EngineEntry(name="e", models=("m",), url="http://127.0.0.1:9"),),
                           health_interval_s=60.0)
    with TestClient(create_app(config)) as client:
        r = client.get("/v1/aibox/admin")
    assert r.status_code == 403 and "keys_file" in r.json()["error"]["message"]


def test_ledger_reading_online_window_and_local_day(tmp_path):
    from aiboxctl.access.ledger import Ledger, UsageRecord

    now = local_midnight(time.time()) + 3600 * 12  # noon today, local time
    with Ledger(tmp_path / "u.db") as ledger:
        ledger.record(UsageRecord(now - 60, "a", None, "m", "chat", 200, 10, 5),
                      UsageRecord(now - 3600, "b", None, "m", "chat", 200, 1, 1),  # today, not online
                      UsageRecord(now - 86400, "c", None, "m", "chat", 200, 100, 100))  # yesterday
    view = read_ledger(tmp_path / "u.db", now)
    assert [k.key for k in view.online] == ["a"]
    assert view.tokens_today == 17
    assert read_ledger(tmp_path / "absent.db", now).online == ()  # no request recorded yet: empty


@pytest.mark.slow
def test_the_page_shows_the_admin_view_to_an_admin_key_only(stack, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    base, keys = stack
    _ask(base, keys["clerk"])
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            ctx = browser.new_context(locale="zh-CN", viewport={"width": 1200, "height": 800})
            page = ctx.new_page()
            page.goto(f"{base}/#key={keys['clerk']}")
            page.locator("#prompt").wait_for()
            assert page.locator("#admin").count() == 0  # a user key: no admin button
            page.goto(f"{base}/#key={keys['admin']}")
            page.locator("#admin").click()
            view = page.locator("#admin-view")
            view.wait_for()
            assert "deepseek-r1" in view.locator(".admin-models").inner_text()
            assert "clerk" in view.locator(".admin-users").inner_text()
            today = _admin(base, keys["admin"]).json()["tokens_today"]
            shown = view.locator(".admin-tokens").inner_text().replace(",", "")
            assert str(today["by_model"][0]["prompt_tokens"]) in shown
            assert str(today["total"]) in view.locator(".admin-cards").inner_text().replace(",", "")
            assert "今日用量" in view.inner_text()
            screenshot(page, tmp_path, "admin")
            page.locator("button.lang").click()
            view.locator(".admin-tokens h2").get_by_text("Tokens today").wait_for()  # re-rendered in English
            page.locator("#back-to-chat").click()
            page.locator("#prompt").wait_for()
            ctx.close()
        finally:
            browser.close()
