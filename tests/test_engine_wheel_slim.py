"""The engine wheel slimmer (engine/build/slim.py): a llama-cpp-python wheel keeps exactly the
library names ctypes and the dynamic loader ask for, with a correct RECORD.

Two levels: a small wheel of real shared libraries compiled here with llama-cpp-python's layout
(names three times, a root ``lib/`` copy, ``$ORIGIN`` run paths, a backend module without one),
and the REAL portable CPU wheel (slow: compiled once per machine) — slimmed, checked with
``readelf``, installed into a fresh environment, self-tested, serving a chat answer through
``aiboxctl serve``, and uninstalled without leftovers."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from aiboxctl.engine.build.cache import CachedWheel, WheelCache
from aiboxctl.engine.build.slim import slim_wheel
from aiboxctl.errors import AiboxError
from engineenv import engine_wheel_cache_root, make_env

NAME = "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
DIST_INFO = "llama_cpp_python-0.3.36.dist-info"

needs_cc = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to make the small libraries")


def _cc(out: Path, src: str, *, soname: str | None, needed: tuple[str, ...] = (), origin: bool = True,
        libdir: Path | None = None) -> bytes:
    c = out.with_suffix(".c")
    c.write_text(src)
    cmd = ["cc", "-shared", "-fPIC", "-o", str(out), str(c)]
    if soname:
        cmd.append(f"-Wl,-soname,{soname}")
    if origin:
        cmd.append("-Wl,-rpath,$ORIGIN,--enable-new-dtags")
    if needed:
        cmd += [f"-L{libdir}", "-Wl,--no-as-needed", *[f"-l:{n}" for n in needed]]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def _llama_layout_wheel(tmp: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """A wheel laid out like llama-cpp-python's: every library under three names in
    ``llama_cpp/lib`` and again in ``lib/``, a CMake file beside them, a backend module in
    ``bin/``, and the two ctypes loaders' lines."""
    build = tmp / "build"
    build.mkdir(parents=True)
    base = _cc(build / "libggml-base.so.0", "int gb(void){return 1;}", soname="libggml-base.so.0")
    ggml = _cc(build / "libggml.so.0", "int gb(void); int g(void){return gb();}", soname="libggml.so.0",
               needed=("libggml-base.so.0",), libdir=build)
    llama = _cc(build / "libllama.so.0", "int g(void); int l(void){return g();}", soname="libllama.so.0",
                needed=("libggml.so.0", "libggml-base.so.0"), libdir=build)
    mtmd = _cc(build / "libmtmd.so.0", "int l(void); int m(void){return l();}", soname="libmtmd.so.0",
               needed=("libllama.so.0",), libdir=build)
    cpu = _cc(build / "libggml-cpu-x64.so", "int gb(void); int c(void){return gb();}", soname=None,
              needed=("libggml-base.so.0",), libdir=build, origin=False)
    gpu = _cc(build / "libggml-cuda.so", "int gb(void); int d(void){return gb();}", soname=None,
              needed=("libggml-base.so.0",), libdir=build, origin=False)
    members: dict[str, bytes] = {
        "llama_cpp/__init__.py": b"",
        "llama_cpp/llama_cpp.py": b'_lib_base_name = "llama"\n_lib = load_shared_library(_lib_base_name, p)\n',
        "llama_cpp/_ggml.py": b'libggml = ctypes_ext.load_shared_library("ggml", libggml_base_path)\n',
        "llama_cpp/mtmd_cpp.py": b'_libmtmd_base_name = "mtmd"\n',
        "llama_cpp/llava_cpp.py": b'_libllava_base_name = "llava"\n',  # not in the wheel: nothing kept
        "bin/libggml-cpu-x64.so": cpu,
        "bin/libggml-cuda.so": gpu,  # ggml loads the modules of the folder it is handed: bin/
        "llama_cpp/lib/libggml-cuda.so": gpu,  # ... so this copy is never loaded
        "lib/cmake/llama/llama-config.cmake": b"# points at lib/libllama.so\n",
        "include/llama.h": b"int l(void);\n",
    }
    for folder in ("llama_cpp/lib", "lib"):
        for stem, data, ver in (("libggml-base", base, "0.25.3"), ("libggml", ggml, "0.25.3"),
                                ("libllama", llama, "0.5.0"), ("libmtmd", mtmd, "0.5.0")):
            for name in (f"{stem}.so", f"{stem}.so.0", f"{stem}.so.{ver}"):
                members[f"{folder}/{name}"] = data
    members = {k: v for k, v in members.items() if k not in drop}
    members[f"{DIST_INFO}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-linux_x86_64\n"
    members[f"{DIST_INFO}/METADATA"] = b"Metadata-Version: 2.1\nName: llama_cpp_python\nVersion: 0.3.36\n"
    rows = [[n, "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode(), str(len(d))]
            for n, d in members.items()] + [[f"{DIST_INFO}/RECORD", "", ""]]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    members[f"{DIST_INFO}/RECORD"] = buf.getvalue().encode()
    wheel = tmp / "src" / NAME
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, (2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if name.endswith((".so", ".0", ".3")) else 0o644) << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return wheel


def _record_is_exact(wheel: Path) -> None:
    """RECORD lists every member once with its sha256 and size, and nothing else."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.StringIO(zf.read(record).decode())))
        assert sorted(r[0] for r in rows) == sorted(names)
        for path, digest, size in rows:
            if path == record:
                assert digest == size == ""
                continue
            data = zf.read(path)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)


def _readelf(path: Path) -> dict[str, list[str]]:
    out = subprocess.run(["readelf", "-d", str(path)], check=True, capture_output=True, text=True).stdout
    tags: dict[str, list[str]] = {}
    for tag, value in re.findall(r"\((\w+)\)\s+.*?\[(.*)\]", out):
        tags.setdefault(tag, []).append(value)
    return tags


def _loader_check(root: Path) -> list[str]:
    """readelf on every ELF file under ``root`` (an unpacked wheel): each needed name of the
    wheel's own libraries must be found through the file's run path or, for a library ctypes does
    not open itself (a backend module), be the soname of one it does. Returns the problems."""
    elves = {p: _readelf(p) for p in root.rglob("*") if p.is_file() and p.read_bytes()[:4] == b"\x7fELF"}
    own = {s for tags in elves.values() for s in tags.get("SONAME", [])}
    ctypes_sonames = {s for p, tags in elves.items() if p.parent == root / "llama_cpp" / "lib"
                      for s in tags.get("SONAME", [])}
    problems = []
    for path, tags in elves.items():
        runpath = [d.replace("$ORIGIN", str(path.parent)) for r in tags.get("RUNPATH", []) for d in r.split(":")]
        for name in tags.get("NEEDED", []):
            if name not in own:
                continue  # libc, libstdc++, libgomp, CUDA's libraries: the system's
            if any((Path(d) / name).is_file() for d in runpath):
                continue
            # ctypes opens its libraries first, so they find nothing loaded; a backend module
            # loaded after them is handed the loaded library of that soname
            if path.parent == root / "llama_cpp" / "lib" or name not in ctypes_sonames:
                problems.append(f"{path.relative_to(root)} needs {name}: not in its run path {runpath}")
    return problems


# --- the small wheel -------------------------------------------------------------------------

@needs_cc
def test_slim_keeps_the_names_ctypes_and_the_loader_ask_for(tmp_path):
    fat = _llama_layout_wheel(tmp_path)
    slim = tmp_path / "out" / NAME
    slim.parent.mkdir()
    res = slim_wheel(fat, slim)
    with zipfile.ZipFile(slim) as zf:
        names = set(zf.namelist())
        mode = zf.getinfo("llama_cpp/lib/libllama.so").external_attr >> 16
    # ctypes: lib<name>.so; the loader: libllama.so's and libmtmd.so's needed sonames through
    # $ORIGIN; the backend module finds libggml-base.so.0 loaded under that soname
    assert {n for n in names if "/lib/" in f"/{n}"} == {
        "llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml.so", "llama_cpp/lib/libmtmd.so",
        "llama_cpp/lib/libllama.so.0", "llama_cpp/lib/libggml.so.0", "llama_cpp/lib/libggml-base.so.0"}
    assert {"bin/libggml-cpu-x64.so", "bin/libggml-cuda.so", "include/llama.h"} <= names
    assert not any(n.startswith("lib/") for n in names)  # its CMake file went with its libraries
    assert mode == 0o755
    assert res.changed and res.slim_bytes == slim.stat().st_size < res.original_bytes == fat.stat().st_size
    assert "lib/libllama.so" in res.dropped and "llama_cpp/lib/libllama.so.0.5.0" in res.dropped
    assert "lib/cmake/llama/llama-config.cmake" in res.dropped and "llama_cpp/lib/libggml-cuda.so" in res.dropped
    _record_is_exact(slim)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(slim).extractall(unpacked)
    assert _loader_check(unpacked) == []
    # the real loader, in a child: ctypes opens the three libraries by the names llama_cpp uses,
    # then the backend module, whose libggml-base.so.0 is the one already loaded
    lib = unpacked / "llama_cpp" / "lib"
    probe = (f"import ctypes; ctypes.CDLL({str(lib / 'libllama.so')!r}); ctypes.CDLL({str(lib / 'libggml.so')!r}); "
             f"m = ctypes.CDLL({str(lib / 'libmtmd.so')!r}); c = ctypes.CDLL({str(unpacked / 'bin' / 'libggml-cpu-x64.so')!r}); "
             f"d = ctypes.CDLL({str(unpacked / 'bin' / 'libggml-cuda.so')!r}); print(m.m() + c.c() + d.d())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr

    # slimming a slim wheel changes nothing, and leaves the file as it was
    before = slim.read_bytes()
    again = slim_wheel(slim)
    assert not again.changed and slim.read_bytes() == before


@needs_cc
def test_the_safety_net_refuses_a_kept_library_losing_a_run_path_name(tmp_path):
    """libllama.so finds libggml.so.0 through $ORIGIN; keeping libggml.so (same soname) instead
    does not do: ctypes opens libllama.so before anything else is loaded."""
    from aiboxctl.engine.build.slim import _check, read_elf

    fat = _llama_layout_wheel(tmp_path)
    with zipfile.ZipFile(fat) as zf:
        elves = {n: read_elf(n, zf.read(n)) for n in zf.namelist() if n.startswith("llama_cpp/lib/libggml")
                 or n.startswith("llama_cpp/lib/libllama")}
    kept = dict.fromkeys(["llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml.so", "llama_cpp/lib/libggml-base.so.0"])
    with pytest.raises(AiboxError, match="would lose libggml.so.0, which llama_cpp/lib/libllama.so needs"):
        _check(elves, kept, set(elves))
    _check(elves, {**kept, "llama_cpp/lib/libggml.so.0": None}, set(elves))


def test_slim_leaves_a_wheel_without_the_llama_cpp_layout_alone(tmp_path):
    wheel = tmp_path / NAME
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/lib/libx.so", b"\x7fELF" + b"\0" * 100)
        zf.writestr("other/lib/libx.so.0", b"\x7fELF" + b"\0" * 100)
    before = wheel.read_bytes()
    res = slim_wheel(wheel)
    assert not res.changed and wheel.read_bytes() == before


@needs_cc
def test_the_cache_slims_what_it_adds_and_records_both_sizes(tmp_path):
    fat = _llama_layout_wheel(tmp_path)
    cache = WheelCache(tmp_path / "wheels")
    stored = cache.add(fat, CachedWheel(fat, "0.3.36", "cpu-portable", "cpu", build_seconds=7.0))
    meta = json.loads((stored.path.parent / "build.json").read_text())
    assert meta["original_size_bytes"] == fat.stat().st_size > meta["size_bytes"] == stored.path.stat().st_size
    assert "lib/libllama.so" in meta["slim_dropped"] and meta["build_seconds"] == 7.0
    assert not list(stored.path.parent.glob("*partial*"))
    hit = cache.find("0.3.36", "cpu-portable")
    assert hit is not None and hit.original_size_bytes == fat.stat().st_size and hit.sha256 == stored.sha256


@needs_cc
def test_an_entry_cached_before_slimming_is_slimmed_in_place(tmp_path):
    fat = _llama_layout_wheel(tmp_path)
    cache = WheelCache(tmp_path / "wheels")
    folder = cache.dir_for("0.3.36", "cpu-portable")
    folder.mkdir(parents=True)
    shutil.copyfile(fat, folder / NAME)  # what an older aiboxctl left: a fat wheel and its record
    (folder / "build.json").write_text(json.dumps({"file": NAME, "version": "0.3.36", "key": "cpu-portable",
                                                   "backend": "cpu", "origin": "built", "build_seconds": 420.0,
                                                   "created": "2026-11-30T18:11:00Z"}))
    old = cache.find("0.3.36", "cpu-portable")
    assert old is not None and old.original_size_bytes is None
    new = cache.slim(old)
    assert new.original_size_bytes == fat.stat().st_size > new.size_bytes
    assert (new.build_seconds, new.created, new.origin) == (420.0, "2026-11-30T18:11:00Z", "built")
    assert cache.slim(cache.find("0.3.36", "cpu-portable")).sha256 == new.sha256  # once only


# --- the real portable CPU wheel -------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_real_portable_wheel_slims_installs_serves_and_uninstalls(tmp_path):
    import httpx

    from aiboxctl.engine.build.compile import build_wheel
    from aiboxctl.engine.build.install import install_engine
    from aiboxctl.engine.build.specs import build_spec
    from test_engine_support import smollm2_path

    built = build_wheel(build_spec("auto", []), cache=WheelCache(engine_wheel_cache_root() / "llama-cpp-python"),
                        progress=print)  # compiled once per machine; cached fat or (built now) slim
    slim = tmp_path / "slim" / built.path.name
    slim.parent.mkdir()
    res = slim_wheel(built.path, slim)
    with zipfile.ZipFile(slim) as zf:
        names = set(zf.namelist())
    assert {n for n in names if n.startswith("llama_cpp/lib/")} == {
        "llama_cpp/lib/libllama.so", "llama_cpp/lib/libggml.so", "llama_cpp/lib/libmtmd.so",
        "llama_cpp/lib/libllama.so.0", "llama_cpp/lib/libggml.so.0", "llama_cpp/lib/libggml-base.so.0"}
    assert not any(n.startswith("lib/") for n in names)
    assert len([n for n in names if n.startswith("bin/libggml-cpu-")]) >= 10
    print(f"portable wheel {res.original_bytes / 2**20:.1f} MiB -> {res.slim_bytes / 2**20:.1f} MiB")
    _record_is_exact(slim)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(slim).extractall(unpacked)
    assert _loader_check(unpacked) == []

    env_py = make_env(tmp_path / "env")
    site = Path(subprocess.run([str(env_py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    result = install_engine("cpu", python=str(env_py), cache=WheelCache(tmp_path / "wheels"), accelerators=[],
                            wheel=slim)
    assert result.selftest["ok"] and len(result.engine["cpu_variants"]) >= 10
    pip = [sys.executable, "-m", "pip", "--python", str(env_py)]
    check = subprocess.run([*pip, "show", "-f", "llama-cpp-python"], capture_output=True, text=True)
    assert check.returncode == 0 and "lib/libllama.so.0.5.0" not in check.stdout

    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(env_py), "-m", "aiboxctl.cli.app", "serve", "--model", str(smollm2_path()),
                             "--port", str(port), "--threads", "1"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0})
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"].strip()
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()

    gone = subprocess.run([*pip, "uninstall", "-y", "llama-cpp-python"], capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert not (site / "llama_cpp").exists() and not list(site.glob("bin/libggml-*"))
