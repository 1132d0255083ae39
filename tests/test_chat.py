"""``aiboxctl chat`` against a loopback OpenAI-compatible server (the network edge), and the REPL.

The real engine answers in tests/test_install_e2e.py; here the server is scripted so that empty
replies, refused keys and what the client sends can be checked exactly.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aiboxctl.client.api import Endpoint
from aiboxctl.client.chat import ChatSession, repl

from test_engine_support import free_port


class FakeOpenAI:
    def __init__(self, pieces=("Hello", ", ", "world", "!"), key: str | None = None, thoughts=()):
        self.pieces = list(pieces)
        self.thoughts = list(thoughts)  # reasoning_content deltas sent before the answer
        self.key = key
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "ok"}')

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                if outer.key and self.headers.get("Authorization") != f"Bearer {outer.key}":
                    self.send_response(401)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for thought in outer.thoughts:  # a thinking model, as the DeepSeek API streams it
                    chunk = {"choices": [{"index": 0, "delta": {"content": None, "reasoning_content": thought},
                                          "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                for piece in outer.pieces:
                    chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": len(outer.pieces),
                                  "total_tokens": 7 + len(outer.pieces)}}
                self.wfile.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(**kw):
        s = FakeOpenAI(**kw)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def installed_root(tmp_path: Path, port: int, key: str | None) -> Path:
    """The two files chat reads from an installation: engine.yaml and the API key file."""
    etc = tmp_path / "etc" / "aibox"
    etc.mkdir(parents=True)
    keys = etc / "api_keys"
    if key:
        keys.write_text(f"# keys\nadmin:{key}\n")
        keys.chmod(0o600)
    (etc / "engine.yaml").write_text(
        f'model: "/m.gguf"\nmodel_name: "smollm2-135m-instruct"\nhost: "127.0.0.1"\nport: {port}\n'
        f'api_keys_file: {json.dumps(str(keys)) if key else "null"}\n')
    return tmp_path


def test_one_shot_prints_only_the_answer_with_the_installed_key(cli, fake, tmp_path):
    server = fake(key="sk-aibox-test")
    root = installed_root(tmp_path, server.port, "sk-aibox-test")
    r = cli("chat", "-p", "你好", "--root", str(root))
    assert r.code == 0, r.stderr
    assert r.stdout == "Hello, world!\n"
    req = server.requests[-1]
    assert req["auth"] == "Bearer sk-aibox-test"
    assert req["body"]["messages"] == [{"role": "user", "content": "你好"}]
    assert req["body"]["model"] == "smollm2-135m-instruct" and req["body"]["stream"] is True
    assert req["body"]["temperature"] == 0.0  # one-shot answers are stable by default


def test_one_shot_json_has_answer_usage_timings(cli, fake, tmp_path):
    server = fake()
    root = installed_root(tmp_path, server.port, None)
    doc = cli("chat", "-p", "hi", "--root", str(root), "--json").json()
    assert doc["ok"] is True
    data = doc["data"]
    assert data["answer"] == "Hello, world!"
    assert data["usage"]["completion_tokens"] == 4
    assert data["timings"]["ttft_s"] >= 0 and data["timings"]["total_s"] >= data["timings"]["ttft_s"]


def test_stdin_prompt_and_url_and_key_override(cli_proc, fake):
    server = fake(key="sk-override")
    r = cli_proc("chat", "--url", server.url, "--api-key", "sk-override", input_text="question from stdin\n")
    assert r.code == 0, r.stderr
    assert r.stdout == "Hello, world!\n"
    assert server.requests[-1]["body"]["messages"][-1]["content"] == "question from stdin\n"


def test_empty_reply_is_exit_4(cli, fake, tmp_path):
    server = fake(pieces=())
    r = cli("chat", "-p", "hi", "--url", server.url, "--json")
    assert r.code == 4
    assert r.json()["errors"][0]["code"] == "empty_reply"


def test_service_down_is_exit_5_naming_status(cli_proc, tmp_path):
    root = installed_root(tmp_path, free_port(), None)
    r = cli_proc("chat", "-p", "hi", "--root", str(root))
    assert r.code == 5
    assert r.stdout == ""
    assert "aiboxctl status" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_refused_key_says_what_to_do(cli, fake, tmp_path):
    server = fake(key="right")
    r = cli("chat", "-p", "hi", "--url", server.url, "--api-key", "wrong", "--json")
    assert r.code == 1
    err = r.json()["errors"][0]
    assert err["code"] == "unauthorized" and "--api-key" in err["hint"]


def test_not_installed_and_no_url(cli, tmp_path):
    r = cli("chat", "-p", "hi", "--root", str(tmp_path / "nothing"), "--json")
    assert r.code == 5 and "aiboxctl install" in r.json()["errors"][0]["hint"]


def test_repl_history_system_reset_exit(fake):
    server = fake()
    session = ChatSession(Endpoint(server.url, model="m"))
    script = iter(["first question", "/system Be brief.", "second", "third", "/reset", "fourth", "/exit", "never"])
    out: list[str] = []
    info: list[str] = []
    assert repl(session, read=lambda _: next(script), write=out.append, info=info.append) == 0
    sent = [r["body"]["messages"] for r in server.requests]
    assert sent[0] == [{"role": "user", "content": "first question"}]
    # /system sets the system prompt and starts a new conversation
    assert sent[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "second"}]
    # history: the previous exchange goes along
    assert sent[2] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "second"},
                       {"role": "assistant", "content": "Hello, world!"}, {"role": "user", "content": "third"}]
    assert sent[3] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "fourth"}]
    assert len(sent) == 4  # /exit stopped before "never"
    assert "".join(out).count("Hello, world!") == 4
    stats = [line for line in info if "tok/s" in line]
    assert len(stats) == 4 and stats[0].startswith("4 tokens")


def test_ctrl_c_stops_the_answer_not_the_repl(fake):
    server = fake(pieces=["a"] * 50)
    session = ChatSession(Endpoint(server.url))
    script = iter(["long answer please", "again", "/exit"])
    seen: list[str] = []
    info: list[str] = []

    def write(text: str) -> None:
        seen.append(text)
        if len(server.requests) == 1 and text == "a":
            raise KeyboardInterrupt  # Ctrl-C during the first answer

    assert repl(session, read=lambda _: next(script), write=write, info=info.append) == 0
    assert "[stopped]" in info
    assert len(server.requests) == 2
    # the interrupted exchange is not part of the history
    assert server.requests[1]["body"]["messages"] == [{"role": "user", "content": "again"}]


def test_loopback_service_is_reached_despite_proxy_variables(cli, fake, tmp_path, monkeypatch):
    # A box behind a corporate proxy, with no NO_PROXY: the local appliance must not be sent
    # through the proxy (here a closed port, which would fail the request).
    server = fake()
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(var, dead_proxy)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    r = cli("chat", "-p", "hi", "--url", server.url.replace("127.0.0.1", "localhost"))
    assert r.code == 0, r.stderr
    assert r.stdout == "Hello, world!\n"


THOUGHTS = ("The user greets me", " in Chinese.")


def test_one_shot_keeps_thinking_out_unless_asked(cli, fake, tmp_path):
    server = fake(thoughts=THOUGHTS)
    r = cli("chat", "-p", "你好", "--url", server.url)
    assert r.code == 0 and r.stdout == "Hello, world!\n"
    r = cli("chat", "-p", "你好", "--url", server.url, "--show-reasoning")
    assert r.code == 0 and r.stdout == "<think>\nThe user greets me in Chinese.\n</think>\n\nHello, world!\n"
    data = cli("chat", "-p", "你好", "--url", server.url, "--json").json()["data"]
    assert data["answer"] == "Hello, world!" and data["reasoning"] == "The user greets me in Chinese."
    plain = fake()
    assert cli("chat", "-p", "hi", "--url", plain.url, "--json").json()["data"]["reasoning"] is None


def test_thinking_without_an_answer_says_so(cli, fake):
    server = fake(pieces=(), thoughts=THOUGHTS)
    r = cli("chat", "-p", "hi", "--url", server.url, "--json")
    assert r.code == 4
    err = r.json()["errors"][0]
    assert err["code"] == "empty_reply" and "still thinking" in err["message"] and "--max-tokens" in err["hint"]


def test_repl_folds_thinking_and_shows_it_on_request(fake):
    server = fake(thoughts=THOUGHTS)
    session = ChatSession(Endpoint(server.url, model="m"))
    script = iter(["你好", "/thinking", "again", "/exit"])
    out: list[str] = []
    info: list[str] = []
    folded: list[str | None] = []
    assert repl(session, read=lambda _: next(script), write=out.append, info=info.append,
                think=folded.append) == 0
    assert "".join(out).count("Hello, world!") == 2 and "greets" not in "".join(out)
    assert folded == [*THOUGHTS, None, *THOUGHTS, None]  # each thinking ends before its answer
    assert "The user greets me in Chinese." in info
    # the second question carries the first answer, not its thinking
    assert server.requests[1]["body"]["messages"][1] == {"role": "assistant", "content": "Hello, world!"}


def test_the_cli_fold_is_one_summary_line_off_a_terminal(cli_proc, fake):
    server = fake(thoughts=THOUGHTS)
    r = cli_proc("chat", "--url", server.url, input_text="你好\n")  # stdin not a TTY: one-shot
    assert r.stdout == "Hello, world!\n"
    from aiboxctl.cli.chat import _ThinkingFold
    import io

    fold = _ThinkingFold()
    fold.console.file = io.StringIO()
    for piece in (*THOUGHTS, None):
        fold(piece)
    shown = fold.console.file.getvalue()
    assert shown.startswith("▸ thought for") and "30 characters" in shown and "greets" not in shown
