"""DeepSeek-V3 / R1 (and the R1 distills' template): calls sit between
``<｜tool▁calls▁begin｜>`` and ``<｜tool▁calls▁end｜>``, each as
``<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME`` + a fenced JSON block + ``<｜tool▁call▁end｜>``.
V3.1's shorter ``<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`` is read too."""

from __future__ import annotations

import json
import re
from typing import Any

from aiboxctl.engine.tools.base import ToolCall, ToolFormat, call, json_prefix

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
_CALL = re.compile(re.escape(CALL_BEGIN) + r"(.*?)" + re.escape(SEP) + r"(.*?)" + re.escape(CALL_END), re.DOTALL)
_FENCED = re.compile(r"\A([^\n]*)\n```(?:json)?\n(.*)\n```\s*\Z", re.DOTALL)


class DeepSeekV3(ToolFormat):
    name = "deepseek_v3"
    start = CALLS_BEGIN
    end = CALLS_END

    @classmethod
    def detect(cls, template: str) -> bool:
        return CALLS_BEGIN in template or "<｜Assistant｜>" in template

    def parse_block(self, block: str, names: frozenset[str]) -> list[ToolCall] | None:
        inner = block[len(self.start): len(block) - len(self.end)]
        calls: list[ToolCall] = []
        pos = 0
        for m in _CALL.finditer(inner):
            if inner[pos:m.start()].strip():
                return None
            pos = m.end()
            head, body = m.group(1).strip(), m.group(2)
            fenced = _FENCED.match(body)
            if fenced:  # V3 / R1: type<sep>name\n```json\n{…}\n```
                name, args = fenced.group(1).strip(), fenced.group(2)
            else:  # V3.1: name<sep>{…}
                got = json_prefix(body)
                if got is None or body[got[1]:].strip():
                    return None
                name, args = head, got[0]
            one = call(name, args, names)
            if one is None:
                return None
            calls.append(one)
        if inner[pos:].strip() or not calls:
            return None
        return calls

    def call_rule(self, b: Any, name: str, args_rule: str) -> str:
        head = f"{CALL_BEGIN}function{SEP}{name}\n```json\n"
        return f'{b.literal(head)} {args_rule} {b.literal(chr(10) + "```" + CALL_END)}'

    def calls_rule(self, one_call: str, parallel: bool) -> str:
        many = f"{one_call} ({one_call})*" if parallel else one_call
        return f'"{CALLS_BEGIN}" {many} "{CALLS_END}"'

    def write_calls(self, calls: list[tuple[str, dict]]) -> str:
        return CALLS_BEGIN + "".join(
            f"{CALL_BEGIN}function{SEP}{n}\n```json\n{json.dumps(a, ensure_ascii=False)}\n```{CALL_END}"
            for n, a in calls) + CALLS_END
