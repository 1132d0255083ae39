"""Chat with the appliance: a session with history (the REPL's core) and the REPL loop itself."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiboxctl.client.api import ChatOutcome, Endpoint, empty_reply, stream_chat
from aiboxctl.errors import VerificationFailed


@dataclass
class ChatSession:
    endpoint: Endpoint
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    last_reasoning: str = ""  # the thinking behind the last answer (/thinking shows it)

    def messages(self, prompt: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return [*head, *self.history, {"role": "user", "content": prompt}]

    def reset(self) -> None:
        self.history.clear()

    def ask(self, prompt: str, on_text: Callable[[str], None],
            on_reasoning: Callable[[str | None], None] | None = None) -> ChatOutcome:
        """Stream one answer. A thinking model's reasoning goes to ``on_reasoning`` piece by
        piece, then ``on_reasoning(None)`` once when the thinking is over (the answer starts or
        the reply ends). KeyboardInterrupt while streaming closes the request (the server
        cancels the generation) and returns what arrived, marked interrupted; the exchange is
        kept in the history only when it completed, and only its answer (thinking is not sent back)."""
        stream = stream_chat(self.endpoint, self.messages(prompt), max_tokens=self.max_tokens,
                             temperature=self.temperature)
        parts: list[str] = []
        thoughts: list[str] = []
        thinking = False
        outcome: ChatOutcome | None = None

        def end_thinking() -> None:
            nonlocal thinking
            if thinking and on_reasoning is not None:
                on_reasoning(None)
            thinking = False

        try:
            for event in stream:
                if event.reasoning:
                    thoughts.append(event.reasoning)
                    thinking = True
                    if on_reasoning is not None:
                        on_reasoning(event.reasoning)
                if event.text:
                    end_thinking()
                    parts.append(event.text)
                    on_text(event.text)
                if event.done:
                    outcome = event.outcome
        except KeyboardInterrupt:
            stream.close()
            end_thinking()
            self.last_reasoning = "".join(thoughts)
            return ChatOutcome("".join(parts), "interrupted", {}, {}, interrupted=True, reasoning=self.last_reasoning)
        end_thinking()
        assert outcome is not None
        self.last_reasoning = outcome.reasoning
        if not outcome.answer.strip():
            raise empty_reply(outcome, self.endpoint)
        self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": outcome.answer}]
        return outcome


HELP = ("/reset clears the history, /system TEXT sets the system prompt, /thinking shows the last answer's "
        "thinking, /exit quits (Ctrl-C stops an answer)")


def repl(session: ChatSession, *, read: Callable[[str], str], write: Callable[[str], None],
         info: Callable[[str], None], think: Callable[[str | None], None] | None = None) -> int:
    """The interactive loop. ``read`` raises EOFError at end of input (Ctrl-D). ``think`` shows a
    thinking model's reasoning as it streams (folded: the CLI keeps it to one dim line) and is
    called with None when the thinking is over; without it the thinking is not shown."""
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
        if text == "/thinking":
            info(session.last_reasoning or "(the last answer came without thinking)")
            continue
        if text in ("/help", "/?"):
            info(HELP)
            continue
        if text.startswith("/"):
            info(f"unknown command {text.split()[0]} — {HELP}")
            continue
        try:
            outcome = session.ask(text, write, think)
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
