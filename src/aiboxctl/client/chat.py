"""Chat with the appliance: a session with history (the REPL's core) and the REPL loop itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiboxctl.client.api import ChatOutcome, Endpoint, stream_chat
from aiboxctl.errors import VerificationFailed


@dataclass
class ChatSession:
    endpoint: Endpoint
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": prompt}]

    def reset(self) -> None:
        self.history.clear()

    def ask(self, prompt: str, on_text: Callable[[str], None]) -> ChatOutcome:
        """Stream one answer. KeyboardInterrupt while streaming closes the request (the server
        cancels the generation) and returns what arrived, marked interrupted; the exchange is
        kept in the history only when it completed."""
        stream = stream_chat(self.endpoint, self.messages(prompt), max_tokens=self.max_tokens,
                             temperature=self.temperature)
        parts: list[str] = []
        outcome: ChatOutcome | None = None
        try:
            for event in stream:
                if event.text:
                    parts.append(event.text)
                    on_text(event.text)
                if event.done:
                    outcome = event.outcome
        except KeyboardInterrupt:
            stream.close()
            return ChatOutcome("".join(parts), "interrupted", {}, {}, interrupted=True)
        assert outcome is not None
        if not outcome.answer.strip():
            raise VerificationFailed("the service returned an empty answer", code="empty_reply", hint="aiboxctl logs")
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": outcome.answer}]
        return outcome


HELP = "/reset clears the history, /system TEXT sets the system prompt, /exit quits (Ctrl-C stops an answer)"


def repl(session: ChatSession, *, read: Callable[[str], str], write: Callable[[str], None],
         info: Callable[[str], None]) -> int:
    """The interactive loop. ``read`` raises EOFError at end of input (Ctrl-D)."""
    info(f"chat with {session.endpoint.model or 'the model'} at {session.endpoint.url} — {HELP}")
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            write("\n")
            return 0
        except KeyboardInterrupt:
            write("\n")
            info("(type /exit to quit)")
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            session.reset()
            info("history cleared")
            continue
        if text.startswith("/system"):
            session.system = text[len("/system"):].strip() or None
            session.reset()
            info(f"system prompt {'set' if session.system else 'cleared'}; history cleared")
            continue
        if text in ("/help", "/?"):
            info(HELP)
            continue
        if text.startswith("/"):
            info(f"unknown command {text.split()[0]} — {HELP}")
            continue
        try:
            outcome = session.ask(text, write)
        except VerificationFailed as exc:
            write("\n")
            info(f"error: {exc.message}")
            continue
        write("\n")
        if outcome.interrupted:
            info("[stopped]")
            continue
        tokens = int(outcome.usage.get("completion_tokens") or outcome.chunks)
        rate = outcome.timings.get("decode_tok_s") or outcome.timings.get("tok_s") or 0.0
        info(f"{tokens} tokens, {rate:.1f} tok/s, first token {outcome.timings.get('ttft_s', 0.0):.2f} s")
