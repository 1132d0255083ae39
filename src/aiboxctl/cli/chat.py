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
        return _one_shot(session, prompt)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def info(text: str) -> None:
        output.stderr_console().print(f"[dim]{text}[/dim]", highlight=False)

    try:
        import readline  # noqa: F401 - line editing and history for input()
    except ImportError:  # pragma: no cover
        pass
    return repl(session, read=input, write=write, info=info)


def _one_shot(session: Any, prompt: str) -> int:
    streamed = not output.STATE.json

    def write(text: str) -> None:
        if streamed:
            sys.stdout.write(text)
            sys.stdout.flush()

    from aiboxctl.client.api import chat_once

    outcome = chat_once(session.endpoint, session.messages(prompt), on_text=write,
                        max_tokens=session.max_tokens, temperature=session.temperature)
    if streamed:
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0
    return output.emit({"answer": outcome.answer, "finish_reason": outcome.finish_reason, "usage": outcome.usage,
                        "timings": outcome.timings, "model": session.endpoint.model,
                        "endpoint": session.endpoint.url}, essential=True)
