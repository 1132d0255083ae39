"""The chat page's memory and its first-token marks (issue 17), in Debian's Chromium against the
front door with the recorded DeepSeek-R1 stub (fast: 10 ms between events).

Memory is checked as what the page holds, not as time: after a forced GC, the JS heap of many
exchanges stays within a bound, and a heap snapshot holds no text of the conversations that are
no longer open (they stay in IndexedDB). The waits use locators, never ``wait_for_selector``:
the ElementHandle that returns keeps a detached DOM tree (and every closure on it) alive in the
page — that, not the page, was most of bench/web.py's 4.5 → 10.8 MB."""

from __future__ import annotations

import json

import pytest

from webstack import CHROMIUM, admin_stack, launch_chromium

pytestmark = pytest.mark.slow

PAD = "，请详细说明" * 8  # the marker lies past the 40 characters a conversation's title keeps


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with admin_stack(tmp_path_factory.mktemp("memory")) as (base, keys), sync_playwright() as p:
        browser = launch_chromium(p)
        ctx = browser.new_context(locale="zh-CN")
        pg = ctx.new_page()
        pg.goto(f"{base}/#key={keys['clerk']}")
        pg.locator("#prompt").wait_for()
        pg.select_option("#model", "deepseek-r1")
        yield pg, ctx.new_cdp_session(pg)
        browser.close()


def _exchange(pg, question: str) -> None:
    pg.fill("#prompt", question)
    pg.press("#prompt", "Enter")
    pg.locator("#stop").wait_for(state="detached", timeout=60_000)
    pg.locator("#send").wait_for(timeout=60_000)


def _heap_mb(cdp) -> float:
    cdp.send("HeapProfiler.collectGarbage")
    return cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6


def _heap_strings(cdp) -> list[str]:
    chunks: list[str] = []
    cdp.on("HeapProfiler.addHeapSnapshotChunk", lambda e: chunks.append(e["chunk"]))
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("HeapProfiler.takeHeapSnapshot", {"reportProgress": False})
    return json.loads("".join(chunks))["strings"]


def test_the_first_token_is_marked_shown_once_and_marks_do_not_pile_up(page):
    pg, _ = page
    for i in range(3):  # "tail": the last answer token, the end and [DONE] arrive in one read
        _exchange(pg, f"标记检查 {i}（reasoning_content）tail")
        counts = pg.evaluate("['aibox:request-sent', 'aibox:first-token-received', 'aibox:first-token-shown']"
                             ".map(n => performance.getEntriesByName(n).length)")
        assert counts == [1, 1, 1], counts  # one answer's marks: no second 'shown' after the stream ended
        received, shown = pg.evaluate("['aibox:first-token-received', 'aibox:first-token-shown']"
                                      ".map(n => performance.getEntriesByName(n)[0].startTime)")
        assert shown >= received
    pg.click("button.new")


def test_memory_stays_bounded_and_closed_conversations_are_not_held(page):
    pg, cdp = page
    before = pg.locator(".convs .conv").count()
    for i in range(1, 41):
        _exchange(pg, f"第 {i} 个问题（reasoning_content）{PAD} MARKER-{i:03d}-END")
        pg.click("button.new")
        if i == 10:
            warm = _heap_mb(cdp)
    grown = _heap_mb(cdp) - warm
    held = sorted({s[s.index("MARKER-"):][:14] for s in _heap_strings(cdp) if "MARKER-" in s})
    assert held == [], f"the page still holds the text of closed conversations: {held[:5]}…"
    # 30 more exchanges after warm-up: the side list's 30 titles and buttons are all that may stay.
    assert grown < 0.5, f"JS heap grew {grown:.2f} MB over 30 exchanges"
    assert pg.locator(".convs .conv").count() == before + 40
    print(f"JS heap after GC: +{grown * 1000:.0f} KB over 30 exchanges")
