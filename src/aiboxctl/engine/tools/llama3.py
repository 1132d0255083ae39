"""Llama 3.x (JSON tool calling): the whole reply is a call, ``{"name": …, "parameters": {…}}``,
optionally after ``<|python_tag|>``; several calls are separated by ``;``."""

from __future__ import annotations

import json
from typing import Any

from aiboxctl.engine.tools.base import ToolCall, ToolFormat, call, json_prefix

PYTHON_TAG = "<|python_tag|>"


class Llama3Json(ToolFormat):
    name = "llama3_json"
    whole_reply = True

    @classmethod
    def detect(cls, template: str) -> bool:
        return "<|start_header_id|>" in template

    def opens(self, text: str, names: frozenset[str]) -> bool | None:
        s = text.lstrip()
        if not s or PYTHON_TAG.startswith(s):
            return None
        return s.startswith(PYTHON_TAG) or s.startswith("{")

    def parse_block(self, block: str, names: frozenset[str]) -> list[ToolCall] | None:
        s = block.strip()
        if s.startswith(PYTHON_TAG):
            s = s[len(PYTHON_TAG):]
        calls: list[ToolCall] = []
        while s.strip():
            got = json_prefix(s)
            if got is None or not isinstance(got[0], dict):
                return None
            obj, end = got
            one = call(obj.get("name"), obj.get("parameters", obj.get("arguments")), names)
            if one is None:
                return None
            calls.append(one)
            s = s[end:].lstrip()
            if s.startswith(";"):
                s = s[1:]
            elif s:
                return None
        return calls or None

    def call_rule(self, b: Any, name: str, args_rule: str) -> str:
        head = '{"name": ' + json.dumps(name) + ', "parameters": '
        return f'{b.literal(head)} {args_rule} "}}"'

    def calls_rule(self, one_call: str, parallel: bool) -> str:
        return f'{one_call} ("; " {one_call})*' if parallel else one_call

    def write_calls(self, calls: list[tuple[str, dict]]) -> str:
        return "; ".join(json.dumps({"name": n, "parameters": a}, ensure_ascii=False) for n, a in calls)
