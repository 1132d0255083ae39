"""GLM-4 (0414): a call is the function's name on its own line, then its arguments as a JSON
object; the whole reply is the call (several: one after the other)."""

from __future__ import annotations

import json
from typing import Any

from aiboxctl.engine.tools.base import ToolCall, ToolFormat, call, json_prefix


class Glm4(ToolFormat):
    name = "glm4"
    whole_reply = True

    @classmethod
    def detect(cls, template: str) -> bool:
        return "[gMASK]" in template

    def opens(self, text: str, names: frozenset[str]) -> bool | None:
        s = text.lstrip()
        if "\n" in s:
            return s[: s.index("\n")].strip() in names
        return None if any(n.startswith(s) for n in names) else False

    def parse_block(self, block: str, names: frozenset[str]) -> list[ToolCall] | None:
        s = block.strip()
        calls: list[ToolCall] = []
        while s:
            if "\n" not in s:
                return None
            name, rest = s.split("\n", 1)
            got = json_prefix(rest)
            if got is None:
                return None
            one = call(name.strip(), got[0], names)
            if one is None:
                return None
            calls.append(one)
            s = rest[got[1]:].strip()
        return calls or None

    def call_rule(self, b: Any, name: str, args_rule: str) -> str:
        return f"{b.literal(name + chr(10))} {args_rule}"

    def calls_rule(self, one_call: str, parallel: bool) -> str:
        return f'{one_call} ("\\n" {one_call})*' if parallel else one_call

    def write_calls(self, calls: list[tuple[str, dict]]) -> str:
        return "\n".join(f"{n}\n{json.dumps(a, ensure_ascii=False)}" for n, a in calls)
