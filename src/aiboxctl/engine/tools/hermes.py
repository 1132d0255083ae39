"""Qwen2.5 / Qwen3 / QwQ (the Hermes format): each call is a JSON object between ``<tool_call>``
and ``</tool_call>`` lines; several calls are several blocks. Also the format taught to models
whose template knows nothing of tools."""

from __future__ import annotations

import json
import re
from typing import Any

from aiboxctl.engine.tools.base import ToolCall, ToolFormat, call, json_object_prefix, json_prefix

# a call as written: the name first, then the arguments object (its text follows the match)
_HEAD = re.compile(r'<tool_call>\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


class Hermes(ToolFormat):
    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<tool_call>" in template

    def parse_block(self, block: str, names: frozenset[str]) -> list[ToolCall] | None:
        inner = block[len(self.start): len(block) - len(self.end)]
        got = json_prefix(inner)
        if got is None or inner[got[1]:].strip():
            return None
        obj = got[0]
        if not isinstance(obj, dict):
            return None
        head = _HEAD.match(block)
        raw = json_object_prefix(block[head.end():]) if head else None
        one = call(obj.get("name"), obj.get("arguments", obj.get("parameters")), names, raw)
        return [one] if one else None

    def partial(self, block: str) -> tuple[str, str] | None:
        head = _HEAD.match(block)
        if head is None:
            return None
        try:
            name = json.loads(f'"{head.group(1)}"')
        except ValueError:
            return None
        return name, json_object_prefix(block[head.end():])

    def call_rule(self, b: Any, name: str, args_rule: str) -> str:
        head = '{"name": ' + json.dumps(name) + ', "arguments": '
        return f'{b.literal(head)} {args_rule} "}}"'

    def calls_rule(self, one_call: str, parallel: bool) -> str:
        block = f'"<tool_call>\\n" {one_call} "\\n</tool_call>"'
        return f'{block} ("\\n" {block})*' if parallel else block

    def write_calls(self, calls: list[tuple[str, dict]]) -> str:
        return "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a}, ensure_ascii=False)}\n</tool_call>"
                         for n, a in calls)
