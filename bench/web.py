"""The chat page's numbers (issue 17), measured with the browser the tests use (Debian's Chromium
through Playwright) against the front door with a real SmolLM2 engine behind it:

* page weight: the bytes a first visit transfers (gzip, as the front door serves them); target ≤ 300 KB
* first paint: first-contentful-paint of a cold visit (new profile); target ≤ 1 s
* first token: when the page shows the first answer token vs. when its fetch received it (the
  page's own delay), and the page's time to first token vs. the API's measured with httpx for the
  same request (the anchor, same run); target: shown within 50 ms of arrival
* memory: the JS heap after a forced GC (HeapProfiler.collectGarbage) at 0, N/2 and N exchanges
  (stub engine, a new chat each time); target: no growth beyond the conversations list itself.
  Every wait here is a locator's: ``page.wait_for_selector`` returns an ElementHandle that keeps
  its (soon detached) DOM tree and every closure on it alive in the page — that handle, not the
  page, was most of the 4.5 → 10.8 MB this bench once reported.

    .venv/bin/python bench/web.py [--exchanges 100] [--runs 5]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx  # noqa: E402

from webstack import GOOD_KEY, launch_chromium, web_stack  # noqa: E402

QUESTION = "你好，请用一句话介绍你自己。"


def page_weight(base: str) -> tuple[int, int]:
    with httpx.Client(base_url=base, headers={"Accept-Encoding": "gzip"}) as c:
        index = c.get("/")
        total_wire = total_raw = len(index.content)
        for path in re.findall(r'"(/assets/[^"]+)"', index.text):
            with c.stream("GET", path) as r:
                wire = sum(len(chunk) for chunk in r.iter_raw())
            total_wire += wire
            total_raw += len(c.get(path).content)
    return total_wire, total_raw


def api_ttft(base: str, runs: int) -> list[float]:
    out = []
    body = {"model": "smollm2", "messages": [{"role": "user", "content": QUESTION}], "stream": True, "max_tokens": 16}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {GOOD_KEY}"}, timeout=300) as c:
        for _ in range(runs):
            t0 = time.perf_counter()
            with c.stream("POST", "/v1/chat/completions", json=body) as r:
                for line in r.iter_lines():
                    if '"content":"' in line.replace(" ", "") and '"content":""' not in line.replace(" ", ""):
                        out.append((time.perf_counter() - t0) * 1000)
                        break
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exchanges", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with web_stack(Path(tempfile.mkdtemp()), max_tokens_cap=16, stub_delay_s=0.005) as base, \
            sync_playwright() as p:
        browser = launch_chromium(p)
        wire, raw = page_weight(base)
        print(f"page weight: {wire / 1024:.1f} KB compressed ({raw / 1024:.1f} KB uncompressed); target <= 300 KB")

        paints = []
        for _ in range(args.runs):
            ctx = browser.new_context()
            page = ctx.new_page()
            page.goto(base + "/")
            page.locator("#key").wait_for()
            paints.append(page.evaluate("performance.getEntriesByName('first-contentful-paint')[0].startTime"))
            ctx.close()
        print(f"first paint (cold): median {statistics.median(paints):.0f} ms, max {max(paints):.0f} ms; target <= 1000 ms")

        ctx = browser.new_context()
        page = ctx.new_page()
        page.goto(f"{base}/#key={GOOD_KEY}")
        page.locator("#prompt").wait_for()
        page.select_option("#model", "smollm2")
        shown_delay, page_ttft = [], []
        for _ in range(args.runs):
            page.evaluate("performance.clearMarks()")
            page.fill("#prompt", QUESTION)
            page.press("#prompt", "Enter")
            page.locator("#send").wait_for(timeout=300_000)
            marks = page.evaluate("Object.fromEntries(['aibox:request-sent', 'aibox:first-token-received', "
                                  "'aibox:first-token-shown'].map(n => [n, performance.getEntriesByName(n)"
                                  ".map(e => e.startTime)]))")
            assert all(len(v) <= 1 for v in marks.values()), f"a mark was set twice in one answer: {marks}"
            marks = {k: v[0] for k, v in marks.items() if v}
            if "aibox:first-token-shown" in marks:
                shown_delay.append(marks["aibox:first-token-shown"] - marks["aibox:first-token-received"])
                page_ttft.append(marks["aibox:first-token-shown"] - marks["aibox:request-sent"])
            page.click("button.new")
        print("  per run received→shown (ms):", [round(x, 1) for x in shown_delay])
        anchor = api_ttft(base, args.runs)
        print(f"first token: API (httpx, anchor) median {statistics.median(anchor):.0f} ms; page sent→shown median "
              f"{statistics.median(page_ttft):.0f} ms (+{statistics.median(page_ttft) - statistics.median(anchor):.0f} ms, "
              f"{statistics.median(page_ttft) / statistics.median(anchor):.2f}× the anchor)")
        print(f"first token: received→shown in the page median {statistics.median(shown_delay):.1f} ms, "
              f"max {max(shown_delay):.1f} ms; target <= 50 ms")

        cdp = ctx.new_cdp_session(page)
        page.select_option("#model", "deepseek-r1")
        page.click("button.new")

        def heap_mb() -> float:
            cdp.send("HeapProfiler.collectGarbage")
            return cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6

        heap = {0: heap_mb()}
        for i in range(1, args.exchanges + 1):
            page.fill("#prompt", f"第 {i} 个问题（reasoning_content）")
            page.press("#prompt", "Enter")
            page.locator("#send").wait_for(timeout=60_000)
            page.click("button.new")
            if i in (args.exchanges // 2, args.exchanges):
                heap[i] = heap_mb()
        print("JS heap after GC (MB) by exchanges: " + ", ".join(f"{k}: {v:.2f}" for k, v in heap.items()))
        page.once("dialog", lambda d: d.accept())
        page.click("#clear-all")
        page.locator(".empty").wait_for()
        cdp.send("HeapProfiler.collectGarbage")
        print(f"JS heap after GC once every conversation is deleted: {cdp.send('Runtime.getHeapUsage')['usedSize'] / 1e6:.2f} MB")
        dom = page.evaluate("document.getElementsByTagName('*').length")
        print(f"DOM nodes at the end: {dom} (the conversations list holds {args.exchanges} entries)")
        browser.close()


if __name__ == "__main__":
    main()
