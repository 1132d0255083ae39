"""Structured output: a JSON Schema (or "any JSON object", or a tool call) becomes a GBNF grammar
for llama.cpp's grammar sampler, so the model can only write text that matches.

The conversion is llama-cpp-python's own ``SchemaConverter`` (llama_cpp/llama_grammar.py, a port
of llama.cpp's json_schema_to_grammar.py). It silently ignores keywords it does not implement
(``minimum``, ``uniqueItems``…), so every schema is checked first against the keywords it does
implement: anything else is a :class:`SchemaError` naming the keyword (the HTTP side's 400), never
a grammar that quietly allows what the schema forbids.
"""

from __future__ import annotations

import json
from typing import Any

# keywords that describe and constrain nothing
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment",
                         "deprecated", "readOnly", "writeOnly", "strict"})
# keywords the converter turns into grammar rules
ENFORCED = frozenset({"type", "properties", "required", "additionalProperties", "items", "prefixItems",
                      "minItems", "maxItems", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "$defs",
                      "definitions", "pattern", "format", "minLength", "maxLength"})
TYPES = frozenset({"string", "number", "integer", "boolean", "null", "object", "array"})
FORMATS = frozenset({"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"})
MAX_SCHEMA_DEPTH = 64
# a character inside a JSON string (llama.cpp's current rule: no raw control characters)
JSON_CHAR = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\bfnrt] | "u" [0-9a-fA-F]{4})'


class SchemaError(ValueError):
    """A schema the grammar cannot enforce: ``keyword`` names what, ``where`` the JSON pointer."""

    def __init__(self, message: str, keyword: str | None = None, where: str = "") -> None:
        super().__init__(message)
        self.keyword = keyword
        self.where = where


def check_schema(schema: Any, where: str = "#", depth: int = 0) -> None:
    """Raise :class:`SchemaError` for the first keyword or shape the converter would not enforce."""
    if depth > MAX_SCHEMA_DEPTH:
        raise SchemaError(f"the schema is nested deeper than {MAX_SCHEMA_DEPTH} levels", None, where)
    if isinstance(schema, bool):
        if schema is False:
            raise SchemaError(f"schema false at {where} can never be satisfied", None, where)
        return
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be an object, got {type(schema).__name__} at {where}", None, where)
    for key in schema:
        if key not in ENFORCED and key not in ANNOTATIONS:
            raise SchemaError(f"JSON Schema keyword {key!r} at {where} is not supported for structured output",
                              key, where)
    t = schema.get("type")
    for one in (t if isinstance(t, list) else [t] if t is not None else []):
        if one not in TYPES:
            raise SchemaError(f"unknown type {one!r} at {where}", "type", where)
    if isinstance(t, list) and len(schema.keys() - ANNOTATIONS - {"type"}) > 0:
        extra = sorted(schema.keys() - ANNOTATIONS - {"type"})[0]
        raise SchemaError(f"{extra!r} beside a list of types at {where} is not supported", extra, where)
    fmt = schema.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise SchemaError(f"format {fmt!r} at {where} is not supported (supported: {', '.join(sorted(FORMATS))})",
                          "format", where)
    if "pattern" in schema:
        clash = sorted(schema.keys() & {"minLength", "maxLength", "format"})
        if clash:
            raise SchemaError(f"'pattern' with {clash[0]!r} at {where} is not supported", clash[0], where)
        if not isinstance(schema["pattern"], str):
            raise SchemaError(f"pattern at {where} must be a string", "pattern", where)
    for union in ("anyOf", "oneOf"):
        if union in schema:
            clash = sorted(schema.keys() - ANNOTATIONS - {union, "$defs", "definitions"})
            if clash:
                raise SchemaError(f"{clash[0]!r} beside {union!r} at {where} is not supported", clash[0], where)
    if "allOf" in schema:
        clash = sorted(schema.keys() - ANNOTATIONS - {"allOf", "type", "$defs", "definitions"})
        if clash:
            raise SchemaError(f"{clash[0]!r} beside 'allOf' at {where} is not supported", clash[0], where)
        for i, part in enumerate(schema["allOf"]):
            if not isinstance(part, dict) or part.keys() - ANNOTATIONS - {"properties", "required", "type", "$ref"}:
                raise SchemaError(f"allOf at {where}/allOf/{i}: only object parts (properties, required, $ref) "
                                  "are supported", "allOf", where)
    if "$ref" in schema:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            raise SchemaError(f"$ref {ref!r} at {where}: only local references (#/...) are supported", "$ref", where)
        clash = sorted(schema.keys() - ANNOTATIONS - {"$ref", "$defs", "definitions"})
        if clash:
            raise SchemaError(f"{clash[0]!r} beside '$ref' at {where} is not supported", clash[0], where)
    if "const" in schema or "enum" in schema:
        clash = sorted(schema.keys() - ANNOTATIONS - {"const", "enum", "type", "$defs", "definitions"})
        if clash:
            raise SchemaError(f"{clash[0]!r} beside 'enum'/'const' at {where} is not supported", clash[0], where)
        if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
            raise SchemaError(f"enum at {where} must be a non-empty list", "enum", where)
    props = schema.get("properties")
    if props is not None and not isinstance(props, dict):
        raise SchemaError(f"properties at {where} must be an object", "properties", where)
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise SchemaError(f"required at {where} must be a list of names", "required", where)
    missing = [r for r in required if r not in (props or {})]
    if missing and "allOf" not in schema:
        raise SchemaError(f"required names {missing[0]!r} at {where}, which is not in its properties",
                          "required", where)
    for name, sub in (props or {}).items():
        check_schema(sub, f"{where}/properties/{name}", depth + 1)
    add = schema.get("additionalProperties")
    if isinstance(add, dict):
        check_schema(add, f"{where}/additionalProperties", depth + 1)
    items = schema.get("items")
    if isinstance(items, list):
        for i, sub in enumerate(items):
            check_schema(sub, f"{where}/items/{i}", depth + 1)
    elif items is not None:
        check_schema(items, f"{where}/items", depth + 1)
    if "prefixItems" in schema:
        if "items" in schema:
            raise SchemaError(f"'items' beside 'prefixItems' at {where} is not supported", "items", where)
        for i, sub in enumerate(schema["prefixItems"]):
            check_schema(sub, f"{where}/prefixItems/{i}", depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        parts = schema.get(key)
        if parts is not None:
            if not isinstance(parts, list) or not parts:
                raise SchemaError(f"{key} at {where} must be a non-empty list", key, where)
            for i, sub in enumerate(parts):
                check_schema(sub, f"{where}/{key}/{i}", depth + 1)
    for key in ("$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            check_schema(sub, f"{where}/{key}/{name}", depth + 1)
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        v = schema.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise SchemaError(f"{key} at {where} must be a non-negative integer", key, where)


def _anchored(pattern: str) -> str:
    """JSON Schema patterns match anywhere; the converter wants a whole-string ``^…$`` regex."""
    head = "" if pattern.startswith("^") else ".*"
    tail = "" if pattern.endswith("$") and not pattern.endswith("\\$") else ".*"
    core = pattern[1:] if pattern.startswith("^") else pattern
    core = core[:-1] if not tail else core
    return f"^{head}({core}){tail}$" if head or tail else f"^{core}$"


def _anchor_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _anchor_patterns(v) for k, v in node.items() if k not in ("properties", "$defs", "definitions")}
        for k in ("properties", "$defs", "definitions"):
            if k in node and isinstance(node[k], dict):
                out[k] = {n: _anchor_patterns(v) for n, v in node[k].items()}
        if isinstance(node.get("pattern"), str):
            out["pattern"] = _anchored(node["pattern"])
        return out
    if isinstance(node, list):
        return [_anchor_patterns(v) for v in node]
    return node


class GrammarBuilder:
    """Rules from several schemas in one grammar: each :meth:`value` gives the rule name that
    matches one JSON value of that schema; :meth:`grammar` renders them with a root."""

    def __init__(self) -> None:
        from llama_cpp.llama_grammar import SchemaConverter

        self._conv = SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
        self._n = 0

    def value(self, schema: Any, name: str) -> str:
        if schema is True or schema == {}:
            schema = {}
        check_schema(schema)
        schema = _anchor_patterns(schema)
        self._n += 1
        try:
            schema = self._conv.resolve_refs(schema, f"s{self._n}")
            return self._conv.visit(schema, name)
        except (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError) as exc:
            raise SchemaError(f"the schema cannot be turned into a grammar: {exc}") from None

    def literal(self, text: str) -> str:
        """A GBNF string literal for ``text``."""
        return self._conv._format_literal(text)  # noqa: SLF001 - the converter's own escaping

    def add(self, name: str, rule: str) -> str:
        return self._conv._add_rule(name, rule)  # noqa: SLF001

    def grammar(self, root_rule: str) -> str:
        rules = self._conv._rules  # noqa: SLF001
        rules["root"] = root_rule
        if "char" in rules:  # 0.3.36's rule lets raw control characters into strings: not JSON
            rules["char"] = JSON_CHAR
        return self._conv.format_grammar()


def after_marker(gbnf: str, marker: str) -> str:
    """``gbnf`` behind ``marker`` and a few blanks: the grammar a lazy sampler triggered by
    ``marker`` holds (it is fed the text from the marker on) — JSON after ``</think>``."""
    body = [("after-marker ::= " + line[len("root ::= "):]) if line.startswith("root ::= ") else line
            for line in gbnf.splitlines()]
    return "\n".join([f"root ::= {json.dumps(marker, ensure_ascii=False)} [ \\t\\n]{{0,8}} after-marker",
                      *body]) + "\n"


def schema_grammar(schema: Any) -> str:
    """GBNF for exactly one JSON value of ``schema``; SchemaError when it cannot be enforced."""
    b = GrammarBuilder()
    rule = b.value(schema, "value")
    return b.grammar(rule)


def json_object_grammar() -> str:
    """GBNF for any JSON object (``response_format: json_object``)."""
    return schema_grammar({"type": "object"})


def response_format_grammar(fmt: dict[str, Any]) -> str | None:
    """The grammar an OpenAI ``response_format`` asks for; None for ``text``. ValueError (with a
    message naming the field) for a malformed one, SchemaError for an unenforceable schema."""
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_grammar()
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec and "name" not in spec:
            raise ValueError("response_format.json_schema must be an object with a schema")
        schema = spec.get("schema", {})
        try:
            json.dumps(schema)
        except (TypeError, ValueError):
            raise ValueError("response_format.json_schema.schema is not JSON") from None
        return schema_grammar(schema)
    raise ValueError(f"response_format.type {kind!r} is not one of text, json_object, json_schema")
