"""Streaming GGUF header reader: metadata and tensor infos, never tensor data.

Works over any seekable byte source (a local file, or an HTTP(S) URL read with Range requests,
see :mod:`aiboxctl.models.source`). Big arrays (the 262k-entry tokenizer of gemma-3) are walked
to be skipped and kept only as a count; small numeric arrays (per-layer head counts, SWA
patterns) are kept whole. Every count and length is checked against the bytes that remain and
against fixed caps, so a hostile or truncated header fails with one :class:`GGUFError` in
bounded time and memory.

Type tables (value types, ggml types, block sizes) come from the ``gguf`` package's
``constants`` module, loaded on its own: ``import gguf`` would pull in numpy and the whole
writer (≈0.3 s), more than the parse itself.
"""

from __future__ import annotations

import importlib.util
import re
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from aiboxctl.errors import AiboxError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
GGML_MAX_DIMS = 4

# Caps that bound time and memory on hostile input. Real headers are far below them: the
# biggest tokenizers have ~260k entries, chat templates are tens of KiB.
MAX_KEY_LENGTH = 65_536
MAX_STRING_LENGTH = 16 * 1024 * 1024
MAX_KV_COUNT = 1_000_000
MAX_TENSOR_COUNT = 1_000_000
MAX_ARRAY_NESTING = 4
MAX_HEADER_BYTES = 256 * 1024 * 1024
# Arrays up to this many elements are kept (per-layer arrays, small lists); longer ones keep
# only their count (string arrays are never kept: tokens, merges).
KEEP_ARRAY_MAX = 4096

SPLIT_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(AiboxError):
    """The file is not a GGUF we can read (bad magic, version, truncated, absurd sizes)."""

    code = "bad_gguf"


@cache
def gguf_constants() -> ModuleType:
    """``gguf.constants`` without executing ``gguf/__init__`` (which imports numpy)."""
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a declared dependency
        raise AiboxError("the 'gguf' package is not installed", hint="pip install gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    mod_spec = importlib.util.spec_from_file_location("_aiboxctl_gguf_constants", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class ArrayValue:
    """A GGUF array: its element type, its length and, when small, its values."""

    elem_type: str  # gguf value type name: "UINT32", "STRING", ...
    count: int
    values: tuple | None = None  # None when the array was skipped (too long, or strings)

    def to_dict(self) -> dict:
        return {"type": "array", "elem_type": self.elem_type, "count": self.count,
                "values": list(self.values) if self.values is not None else None}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    type_name: str
    shape: tuple[int, ...]  # ne[0..n_dims), ggml order (row length first)
    offset: int  # relative to the shard's data section
    n_bytes: int
    shard: int = 0

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFHeader:
    """Everything a GGUF says about itself except tensor data (all shards of a split model)."""

    source: str
    version: int
    metadata: Mapping[str, Any]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_offset: int  # of the first shard
    file_size: int | None  # sum over shards when known
    shards: tuple[str, ...] = ()
    requests: int = 0  # byte-range reads issued (HTTP requests for a URL)
    _by_name: Mapping[str, TensorInfo] = field(default_factory=dict, repr=False, compare=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "") or "")

    def arch_key(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    def tensor(self, name: str) -> TensorInfo | None:
        return self._by_name.get(name)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    def to_dict(self) -> dict:
        return {"source": self.source, "version": self.version, "alignment": self.alignment,
                "data_offset": self.data_offset, "file_size": self.file_size,
                "shards": list(self.shards), "n_tensors": len(self.tensors),
                "tensor_bytes": self.tensor_bytes}


class _Cursor:
    """Sequential reads over a byte source with a growing read-ahead window."""

    def __init__(self, source: Any, limit: int | None) -> None:
        self.src = source
        self.limit = limit  # total size when known
        self.pos = 0
        self.buf = b""
        self.buf_start = 0

    def remaining(self) -> int | None:
        return None if self.limit is None else self.limit - self.pos

    def _fill(self, n: int) -> None:
        end = self.pos + n
        if end > MAX_HEADER_BYTES:
            raise GGUFError(f"header larger than {MAX_HEADER_BYTES // 2**20} MiB: not a GGUF we accept")
        if self.limit is not None and end > self.limit:
            raise GGUFError(f"truncated: needs {end} bytes, the file has {self.limit}")
        have_end = self.buf_start + len(self.buf)
        if self.buf_start <= self.pos and end <= have_end:
            return
        kept = self.buf[self.pos - self.buf_start:] if self.buf_start <= self.pos < have_end else b""
        start = self.pos + len(kept)
        want = max(end - start, self.src.read_ahead(start))
        if self.limit is not None:
            want = min(want, self.limit - start)
        chunk = self.src.read_at(start, want)
        if len(chunk) < end - start:
            raise GGUFError(f"truncated: needs {end} bytes, got {start + len(chunk)}")
        self.buf = kept + chunk
        self.buf_start = self.pos

    def take(self, n: int) -> memoryview:
        self._fill(n)
        off = self.pos - self.buf_start
        self.pos += n
        return memoryview(self.buf)[off:off + n]

    def skip(self, n: int) -> None:
        if self.limit is not None and self.pos + n > self.limit:
            raise GGUFError(f"truncated: needs {self.pos + n} bytes, the file has {self.limit}")
        self.pos += n


_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Parser:
    def __init__(self, cursor: _Cursor) -> None:
        c = gguf_constants()
        self.cur = cursor
        self.VT = c.GGUFValueType
        self.quant_sizes = {int(k): v for k, v in c.GGML_QUANT_SIZES.items()}
        self.type_names = {int(t): t.name for t in c.GGMLQuantizationType}
        vt = self.VT
        self.scalar = {
            vt.UINT8: struct.Struct("<B"), vt.INT8: struct.Struct("<b"), vt.UINT16: struct.Struct("<H"),
            vt.INT16: struct.Struct("<h"), vt.UINT32: struct.Struct("<I"), vt.INT32: struct.Struct("<i"),
            vt.FLOAT32: struct.Struct("<f"), vt.BOOL: struct.Struct("<?"), vt.UINT64: struct.Struct("<Q"),
            vt.INT64: struct.Struct("<q"), vt.FLOAT64: struct.Struct("<d"),
        }

    def u32(self) -> int:
        return _U32.unpack(self.cur.take(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self.cur.take(8))[0]

    def string(self, cap: int, what: str) -> str:
        n = self.u64()
        if n > cap:
            raise GGUFError(f"{what}: string length {n} exceeds the limit of {cap} bytes")
        return bytes(self.cur.take(n)).decode("utf-8", errors="replace")

    def value_type(self, raw: int, what: str) -> Any:
        try:
            return self.VT(raw)
        except ValueError:
            raise GGUFError(f"{what}: unknown value type {raw}") from None

    def value(self, vtype: Any, key: str, depth: int = 0) -> Any:
        vt = self.VT
        if vtype == vt.STRING:
            return self.string(MAX_STRING_LENGTH, key)
        if vtype == vt.ARRAY:
            return self.array(key, depth)
        st = self.scalar[vtype]
        return st.unpack(self.cur.take(st.size))[0]

    def array(self, key: str, depth: int) -> ArrayValue:
        if depth >= MAX_ARRAY_NESTING:
            raise GGUFError(f"{key}: arrays nested deeper than {MAX_ARRAY_NESTING}")
        etype = self.value_type(self.u32(), key)
        count = self.u64()
        vt = self.VT
        min_elem = 8 if etype in (vt.STRING, vt.ARRAY) else self.scalar[etype].size
        left = self.cur.remaining()
        if (left is not None and count * min_elem > left) or count * min_elem > MAX_HEADER_BYTES:
            raise GGUFError(f"{key}: array of {count} elements does not fit in the file")
        if etype == vt.STRING:
            self._skip_strings(count, key)
            return ArrayValue(etype.name, count)
        if etype == vt.ARRAY:
            for _ in range(count):
                self.array(key, depth + 1)
            return ArrayValue(etype.name, count)
        st = self.scalar[etype]
        if count <= KEEP_ARRAY_MAX:
            raw = self.cur.take(st.size * count)
            values = struct.unpack(f"<{count}{st.format[-1]}", raw)
            return ArrayValue(etype.name, count, tuple(values))
        self.cur.skip(st.size * count)
        return ArrayValue(etype.name, count)

    def _skip_strings(self, count: int, key: str) -> None:
        # The hot loop of a header parse (262k tokenizer strings): walk the length prefixes
        # inside the buffered window without creating a str per entry. unpack_from raises
        # struct.error once a prefix leaves the window; a hostile length just moves the cursor
        # past the end of the file, which the next read reports as truncation.
        cur = self.cur
        unpack_from = _U64.unpack_from
        done = 0
        while done < count:
            cur._fill(8)
            buf = cur.buf
            p = cur.pos - cur.buf_start
            i = done
            try:
                for i in range(done, count):  # noqa: B007 - i is read after the loop
                    p += 8 + unpack_from(buf, p)[0]
                i = count
            except (struct.error, OverflowError):  # left the window (or a length beyond 2**63)
                pass
            done = i
            pos = cur.buf_start + p
            if cur.limit is not None and pos > cur.limit:
                raise GGUFError(f"{key}: string {done} runs past the end of the file")
            if pos > MAX_HEADER_BYTES:
                raise GGUFError(f"{key}: header larger than {MAX_HEADER_BYTES // 2**20} MiB")
            cur.pos = pos

    def parse(self, source_name: str, shard: int = 0) -> tuple[int, dict, list[TensorInfo], int, int]:
        magic = bytes(self.cur.take(4))
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{source_name}: not a GGUF file (magic {magic!r})")
        version = self.u32()
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{source_name}: unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors = self.u64()
        n_kv = self.u64()
        if n_kv > MAX_KV_COUNT:
            raise GGUFError(f"{source_name}: absurd metadata count {n_kv}")
        if n_tensors > MAX_TENSOR_COUNT:
            raise GGUFError(f"{source_name}: absurd tensor count {n_tensors}")
        left = self.cur.remaining()
        if left is not None and (n_kv * 13 + n_tensors * 28) > left:
            raise GGUFError(f"{source_name}: {n_kv} metadata entries and {n_tensors} tensors do not fit in the file")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string(MAX_KEY_LENGTH, "metadata key")
            vtype = self.value_type(self.u32(), key)
            meta[key] = self.value(vtype, key)
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(f"{source_name}: bad general.alignment {alignment!r}")
        tensors = []
        for _ in range(n_tensors):
            name = self.string(MAX_KEY_LENGTH, "tensor name")
            n_dims = self.u32()
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise GGUFError(f"{source_name}: tensor {name!r} has {n_dims} dimensions")
            shape = tuple(self.u64() for _ in range(n_dims))
            gtype = self.u32()
            offset = self.u64()
            if gtype not in self.quant_sizes:
                raise GGUFError(f"{source_name}: tensor {name!r} has unknown ggml type {gtype}")
            block, type_size = self.quant_sizes[gtype]
            n_el = 1
            for d in shape:
                if d <= 0 or d >= 2**62:
                    raise GGUFError(f"{source_name}: tensor {name!r} has a bad shape {shape}")
                n_el *= d
            if shape[0] % block:
                raise GGUFError(f"{source_name}: tensor {name!r} row of {shape[0]} is not a multiple of "
                                f"the {self.type_names[gtype]} block ({block})")
            n_bytes = n_el // block * type_size
            if n_bytes >= 2**62 or offset >= 2**62:
                raise GGUFError(f"{source_name}: tensor {name!r} is absurdly large")
            tensors.append(TensorInfo(name, gtype, self.type_names[gtype], shape, offset, n_bytes, shard))
        data_offset = -(-self.cur.pos // alignment) * alignment
        return version, meta, tensors, alignment, data_offset


def _check_data_bounds(name: str, tensors: list[TensorInfo], data_offset: int, size: int | None) -> None:
    if size is None:
        return
    for t in tensors:
        if data_offset + t.offset + t.n_bytes > size:
            raise GGUFError(f"{name}: tensor {t.name!r} lies past the end of the file "
                            f"({data_offset + t.offset + t.n_bytes} > {size} bytes)")


def _parse_one(location: str | Path, client: Any = None, shard: int = 0):
    from aiboxctl.models.source import open_source

    with open_source(location, client=client) as src:
        cur = _Cursor(src, src.size)
        version, meta, tensors, alignment, data_offset = _Parser(cur).parse(str(location), shard)
        _check_data_bounds(str(location), tensors, data_offset, src.size)
        return version, meta, tensors, alignment, data_offset, src.size, src.requests


def shard_locations(location: str, count: int) -> list[str]:
    """All shard names of a split GGUF given the name of any one of them."""
    head, sep, name = location.rpartition("/")
    query = ""
    if "?" in name:
        name, query = name.split("?", 1)
        query = "?" + query
    m = SPLIT_RE.match(name)
    if not m:
        raise GGUFError(f"{location}: split.count is {count} but the name is not '*-00001-of-{count:05d}.gguf'")
    return [f"{head}{sep}{m['stem']}-{i:05d}-of-{count:05d}.gguf{query}" for i in range(1, count + 1)]


def read_header(location: str | Path, *, client: Any = None) -> GGUFHeader:
    """Parse the header of a local GGUF file or an HTTP(S) URL (every shard of a split model).

    ``client`` is an optional ``httpx.Client`` for URLs (headers, auth, proxies).
    """
    loc = str(location)
    version, meta, tensors, alignment, data_offset, size, requests = _parse_one(loc, client)
    shards = (loc,)
    count = meta.get("split.count", 0)
    if isinstance(count, int) and count > 1:
        if count > 10_000:
            raise GGUFError(f"{loc}: absurd split.count {count}")
        names = shard_locations(loc, count)
        total = size
        all_tensors = []
        for i, name in enumerate(names):
            if name == loc:
                part, part_size = tensors, size
                part = [TensorInfo(t.name, t.ggml_type, t.type_name, t.shape, t.offset, t.n_bytes, i) for t in part]
            else:
                _, _, part, _, _, part_size, reqs = _parse_one(name, client, i)
                requests += reqs
                total = None if total is None or part_size is None else total + part_size
            all_tensors.extend(part)
        expected = meta.get("split.tensors.count")
        if isinstance(expected, int) and expected != len(all_tensors):
            raise GGUFError(f"{loc}: split.tensors.count says {expected} tensors, the shards hold {len(all_tensors)}")
        tensors, size, shards = all_tensors, total, tuple(names)
    by_name = {t.name: t for t in tensors}
    return GGUFHeader(loc, version, MappingProxyType(meta), tuple(tensors), alignment, data_offset, size,
                      shards, requests, MappingProxyType(by_name))
