"""``aiboxctl chat``: a REPL, or one-shot ``chat -p "…"`` (or stdin) for scripts."""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from aiboxctl.cli import output
from aiboxctl.cli.options import JsonOpt, RootOpt
from aiboxctl.env import Env

UrlOpt = Annotated[Optional[str], typer.Option("--url", help="Service base URL (default: the installed config's).")]
KeyOpt = Annotated[Optional[str], typer.Option("--api-key", envvar=Env.API_KEY,
                                               help="API key (default: the installed key file).")]


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)


def chat(
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="One-shot: print only the answer. '-' reads stdin.")] = None,
    system: Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Answer length cap (0: the service's own cap).")] = 512,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (default: 0 for -p/stdin, so scripts get stable answers; the service's own in the REPL).")] = None,
    show_reasoning: Annotated[bool, typer.Option("--show-reasoning", help="One-shot: print a thinking model's reasoning (between <think> and </think>) before the answer; --json always carries it as 'reasoning'.")] = False,
    root: RootOpt = None,
    url: UrlOpt = None,
    api_key: KeyOpt = None,
    json_: JsonOpt = False,
) -> int:
    """Chat with the installed model: streaming REPL (/reset, /system, /exit), or one-shot with -p or stdin."""
    from aiboxctl.deploy.endpoint import endpoint_from_install
    from aiboxctl.client.chat import ChatSession, repl

    endpoint = endpoint_from_install(root, url=url, api_key=api_key)
    session = ChatSession(endpoint, system=system, max_tokens=max_tokens or None, temperature=temperature)
    if prompt == "-" or (prompt is None and (not sys.stdin.isatty() or output.STATE.json)):
        prompt = sys.stdin.read()
    if prompt is not None:
        if temperature is None:
            session.temperature = 0.0
        if not prompt.strip():
            from aiboxctl.errors import UsageError

            raise UsageError("empty prompt", hint='aiboxctl chat -p "your question"')
        return _one_shot(session, prompt, show_reasoning=show_reasoning)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def info(text: str) -> None:
        output.stderr_console().print(f"[dim]{text}[/dim]", highlight=False)

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover
        pass
    return repl(session, read=input, write=write, info=info, think=_ThinkingFold())


class _ThinkingFold:
    """A thinking model's reasoning in the REPL, folded: while it streams, one dim line on
    stderr shows its latest words (rewritten in place on a terminal); when the answer starts the
    line becomes a summary, and /thinking prints the whole of it."""

    def __init__(self) -> None:
        self.console = output.stderr_console()
        self.text = ""
        self.started = 0.0

    def __call__(self, piece: str | None) -> None:
        import time

        live = self.console.is_terminal
        if piece is not None:
            if not self.text:
                self.started = time.monotonic()
            self.text += piece
            if live:
                width = max(20, self.console.width - 14)
                tail = " ".join(self.text.split())[-width:]
                dim, plain = ("", "") if self.console.no_color else ("\x1b[2m", "\x1b[0m")
                self.console.file.write(f"\r\x1b[2K{dim}thinking… {tail}{plain}")
                self.console.file.flush()
            return
        seconds = time.monotonic() - self.started
        summary = f"▸ thought for {seconds:.1f} s ({len(self.text)} characters; /thinking shows them)"
        if live:
            self.console.file.write("\r\x1b[2K")
        self.console.print(f"[dim]{summary}[/dim]", highlight=False)
        self.text = ""


def _one_shot(session: Any, prompt: str, *, show_reasoning: bool = False) -> int:
    streamed = not output.STATE.json
    opened = False

    def write(text: str) -> None:
        nonlocal opened
        if streamed:
            if opened:  # the answer starts: close the shown thinking
                sys.stdout.write("\n</think>\n\n")
                opened = False
            sys.stdout.write(text)
            sys.stdout.flush()

    def think(text: str) -> None:
        nonlocal opened
        if streamed and show_reasoning:
            if not opened:
                sys.stdout.write("<think>\n")
                opened = True
            sys.stdout.write(text)
            sys.stdout.flush()

    from aiboxctl.client.api import chat_once

    outcome = chat_once(session.endpoint, session.messages(prompt), on_text=write, on_reasoning=think,
                        max_tokens=session.max_tokens, temperature=session.temperature)
    if streamed:
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    return output.emit({"answer": outcome.answer, "reasoning": outcome.reasoning or None,
                        "finish_reason": outcome.finish_reason, "usage": outcome.usage,
                        "timings": outcome.timings, "model": session.endpoint.model,
                        "endpoint": session.endpoint.url}, essential=True)
