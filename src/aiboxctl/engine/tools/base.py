"""What every tool-call format shares: the call, the streaming reader that splits a reply into
content and calls however the text arrives, and the format's contract (detect, parse, grammar).

A format is one small class: the markers that open and close its calls (or "the whole reply is
the call"), how a closed block becomes calls, how a call is written (for the grammar that forces
one, and for templates that cannot render calls themselves)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar

from aiboxctl.engine.slot import held_suffix


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it
    id: str = ""

    def wire(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out = {"index": index, **out}
        return out


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def call(name: Any, args: Any, names: frozenset[str], raw: str | None = None) -> ToolCall | None:
    """A ToolCall when ``name`` is one of the request's functions and ``args`` a JSON object (or
    its text); else None (the block stays text). ``raw``: the object's text as the model wrote it,
    kept as the arguments (what a piecewise stream sent) when it is that object."""
    if not isinstance(name, str) or name not in names:
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    if raw is not None:
        try:
            if json.loads(raw) == args:
                return ToolCall(name, raw, new_call_id())
        except ValueError:
            pass
    return ToolCall(name, json.dumps(args, ensure_ascii=False), new_call_id())


_JSON_OUTSIDE = frozenset(' \t\r\n{}[],:-+.0123456789eEtruefalsn"')


def json_object_prefix(text: str) -> str:
    """The part of ``text`` that is so far a JSON object being written: from its ``{`` up to the
    closing brace when it has come, else up to the first character that cannot be JSON outside a
    string (a closing marker, say) — what a piecewise stream may send of a call's arguments."""
    if not text.startswith("{"):
        return ""
    depth = 0
    in_str = esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch not in _JSON_OUTSIDE:
            return text[:i]
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return text[: i + 1]
    return text


def json_prefix(text: str) -> tuple[Any, int] | None:
    """The JSON value at the start of ``text`` (after blanks) and where it ends, or None."""
    s = text.lstrip()
    try:
        value, end = json.JSONDecoder().raw_decode(s)
    except ValueError:
        return None
    return value, len(text) - len(s) + end


class ToolFormat:
    """One model family's way of writing tool calls. Subclasses set the markers or override
    ``whole_reply``, and implement ``parse_block`` and ``write_call``."""

    name: ClassVar[str]
    start: ClassVar[str] = ""  # opens a block of calls; "" with whole_reply
    end: ClassVar[str] = ""  # closes it
    whole_reply: ClassVar[bool] = False  # the reply is either all call(s) or all text

    @classmethod
    def detect(cls, template: str) -> bool:
        """Whether a chat template is this family's."""
        return False

    def parse_block(self, block: str, names: frozenset[str]) -> list[ToolCall] | None:
        """The calls in one block (markers included), or None when it is not valid calls."""
        raise NotImplementedError

    def partial(self, block: str) -> tuple[str, str] | None:
        """For a call block still being written (its start marker first): (function name,
        the arguments' text so far) once the name is complete, for formats that stream the
        arguments piecewise; None: the call goes out whole when its block closes."""
        return None

    def opens(self, text: str, names: frozenset[str]) -> bool | None:
        """For whole-reply formats: whether a reply starting with ``text`` is a call (None: not
        known yet)."""
        return False

    # --- writing calls: the grammar that forces one, and templates without tool support ----
    def call_rule(self, b: Any, name: str, args_rule: str) -> str:
        """GBNF for one call of ``name`` whose arguments match ``args_rule``."""
        raise NotImplementedError

    def calls_rule(self, one_call: str, parallel: bool) -> str:
        """GBNF for the whole reply: one call, or (``parallel``) one or more."""
        raise NotImplementedError

    def write_calls(self, calls: list[tuple[str, dict]]) -> str:
        """The text of an assistant turn that made ``calls`` (name, arguments)."""
        raise NotImplementedError


class ToolReader:
    """Splits a reply into content and tool calls as it is written. ``feed`` takes the next
    text and returns (content to send now, calls completed now); ``finish`` the rest. The split
    depends only on the text, never on where it was cut: content held back is the part that may
    still become a call (a marker's first characters) or blanks next to a call."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        self.fmt, self.names = fmt, names
        self.buf = ""
        self.in_block = False
        self.pending_ws = ""  # blanks held back: dropped if they only sit beside calls
        self.decided: bool | None = None if fmt.whole_reply else False  # whole reply: is it a call?
        self.calls: list[ToolCall] = []

    def _content(self, text: str) -> str:
        """Text that is content: blanks at its end wait for what follows."""
        if not text:
            return ""
        text = self.pending_ws + text
        stripped = text.rstrip()
        self.pending_ws = text[len(stripped):]
        return stripped

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        self.buf += text
        fmt = self.fmt
        if fmt.whole_reply:
            if self.decided is None:
                self.decided = fmt.opens(self.buf, self.names)
            if self.decided is False:
                out, self.buf = self.buf, ""
                return self._content(out), []
            return "", []  # a call, or not known yet: wait for the end
        out: list[str] = []
        made: list[ToolCall] = []
        while True:
            if not self.in_block:
                k = self.buf.find(fmt.start)
                if k < 0:
                    keep = held_suffix(self.buf, (fmt.start,))
                    out.append(self._content(self.buf[: len(self.buf) - keep]))
                    self.buf = self.buf[len(self.buf) - keep:]
                    break
                out.append(self._content(self.buf[:k]))
                self.buf = self.buf[k:]
                self.in_block = True
            k = self.buf.find(fmt.end, len(fmt.start))
            if k < 0:
                break
            block, self.buf = self.buf[: k + len(fmt.end)], self.buf[k + len(fmt.end):]
            self.in_block = False
            calls = fmt.parse_block(block, self.names)
            if calls:
                self.pending_ws = ""
                made.extend(calls)
                self.calls.extend(calls)
            else:
                out.append(self._content(block))
        return "".join(out), made

    def partial(self) -> tuple[str, str] | None:
        """The call being written now (see ToolFormat.partial), or None."""
        return self.fmt.partial(self.buf) if self.in_block else None

    def finish(self) -> tuple[str, list[ToolCall]]:
        rest, self.buf = self.buf, ""
        fmt = self.fmt
        made: list[ToolCall] = []
        content = ""
        if fmt.whole_reply and self.decided is not False:
            calls = fmt.parse_block(rest, self.names) if rest.strip() else None
            if calls:
                made = calls
            else:
                content = self._content(rest)
        elif self.in_block:  # a block the reply ended inside: calls if it parses closed
            calls = fmt.parse_block(rest + fmt.end, self.names)
            if calls:
                made = calls
            else:
                content = self._content(rest)
        else:
            content = self._content(rest)
        self.calls.extend(made)
        tail, self.pending_ws = self.pending_ws, ""
        if not self.calls:
            content += tail
        return content, made

