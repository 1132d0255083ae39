"""The quick start asks the demo model in a language it speaks, says that SmolLM2 is English-only,
and names a Chinese-capable model by a command that exists (issue 19: it asked "你好" and got
English or garbage)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _quick_start() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Quick start")
    return text[start:text.index("\n## ", start + 1)]


def test_quick_start_says_demo_is_english_only_and_shows_a_chinese_model():
    from aiboxctl.models.catalog import load_catalog

    qs = _quick_start()
    assert "English-only" in qs
    commands = [line for line in qs.splitlines() if "aiboxctl" in line and not line.startswith(("`", "#"))]
    demo = next(c for c in commands if "--profile demo" in c)
    asked = shlex.split(demo.split("aiboxctl chat", 1)[1])[1]
    assert not re.search(r"[\u4e00-\u9fff]", asked), "the demo model is asked in a language it does not speak"
    zh = [c for c in commands if re.search(r"[\u4e00-\u9fff]", c)]
    assert zh, "a Chinese-capable model's install line"
    model = shlex.split(zh[0].split("--model", 1)[1])[0]
    catalog = load_catalog()
    variant = catalog.variant(model)
    assert variant is not None, model
    assert "zh" in catalog.families[variant.family].languages
    assert zh[0].split()[0].endswith("aiboxctl") and zh[0].split()[1] in ("install", "upgrade")
