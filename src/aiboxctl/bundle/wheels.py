"""Collect the wheels a box needs to run aiboxctl offline, for a target Python and platform.

* aiboxctl's own wheel is built with ``pip wheel --no-deps`` from the source it was installed
  from (PEP 610 ``direct_url.json``: a checkout, editable or not), or taken from the wheel cache.
* llama-cpp-python has only an sdist on PyPI, so its wheel must come from a local build: the
  state wheel cache (where ``aiboxctl engine build`` keeps builds; a portable build with
  runtime-dispatched CPU variants is preferred) or pip's own wheel cache, or ``--engine-wheel``.
* every other dependency: ``pip download --only-binary=:all:`` for the target tags, resolving
  aiboxctl's wheel itself, so the set is exactly what ``pip install --no-index`` will ask for.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

from aiboxctl.bundle.manifest import TargetPlatform
from aiboxctl.errors import AiboxError
from aiboxctl.system import run_command

ENGINE_DIST = "llama_cpp_python"
_PIP_TIMEOUT_S = 1800.0
_VARIANT_RE = re.compile(r"(?:^|/)libggml-cpu-([a-z0-9_]+)\.so$")


class WheelError(AiboxError):
    code = "wheels_failed"


@dataclass(frozen=True)
class EngineWheel:
    path: Path
    build: str  # "portable" (runtime-dispatched CPU variants) | "native" (built for one CPU)
    cpu_variants: tuple[str, ...]
    origin: str  # where it was found

    def to_dict(self) -> dict:
        return {"file": self.path.name, "build": self.build, "cpu_variants": list(self.cpu_variants),
                "origin": self.origin}


@dataclass(frozen=True)
class WheelSet:
    folder: Path
    wheels: tuple[Path, ...]
    engine: EngineWheel
    warnings: tuple[str, ...] = ()


def _pip(*args: str, timeout: float = _PIP_TIMEOUT_S):
    return run_command([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], timeout=timeout)


def _wheel_tags(path: Path) -> tuple[str, str, str]:
    """(python, abi, platform) tags of a wheel file name (compressed tag sets kept dotted)."""
    parts = path.name[:-4].split("-")
    return parts[-3], parts[-2], parts[-1]


def _wheel_version(path: Path) -> str:
    return path.name.split("-")[1]


def describe_engine_wheel(path: Path, origin: str) -> EngineWheel:
    """A build with ``GGML_CPU_ALL_VARIANTS`` ships one ``libggml-cpu-<variant>.so`` per CPU
    generation and picks one at run time; a native build ships a single ``libggml-cpu.so``."""
    with zipfile.ZipFile(path) as zf:
        variants = sorted({m.group(1) for n in zf.namelist() if (m := _VARIANT_RE.search(n))})
    return EngineWheel(path=path, build="portable" if variants else "native", cpu_variants=tuple(variants),
                       origin=origin)


def required_engine_version() -> str | None:
    """The llama-cpp-python version aiboxctl pins (its metadata says ``==X``)."""
    for req in metadata.requires("aiboxctl") or ():
        m = re.match(r"\s*llama[-_.]cpp[-_.]python\s*==\s*([\w.]+)\s*(;.*)?$", req, re.I)
        if m and not (m.group(2) and "extra" in m.group(2)):
            return m.group(1)
    return None


def _arch_ok(path: Path, target: TargetPlatform) -> bool:
    platforms = set(_wheel_tags(path)[2].split("."))
    return bool(platforms & set(target.pip_platforms())) or platforms == {"any"}


def target_engine_key(accelerators) -> tuple[str, str]:
    """(wheel-cache key, why) of the llama.cpp build the target needs (``aiboxctl engine``'s rules):
    ``cpu-portable`` for a CPU box, else the accelerator's backend and architectures."""
    from aiboxctl.engine.build.specs import build_spec

    spec = build_spec("auto", list(accelerators or ()))
    return spec.key, spec.reason


def find_engine_wheel(target: TargetPlatform, *, explicit: Path | None = None, key: str = "cpu-portable",
                      cache_root: Path | None = None) -> EngineWheel:
    """The llama-cpp-python wheel to bundle: ``explicit``; else the build for the target's
    backend (``key``) from the engine wheel cache (where ``aiboxctl engine install`` keeps its
    builds); else, for a CPU target, pip's own wheel cache (a native build: warned about)."""
    from aiboxctl.engine.build.cache import WheelCache

    version = required_engine_version()
    if explicit is not None:
        explicit = Path(explicit)
        if not explicit.is_file() or not explicit.name.startswith(ENGINE_DIST + "-"):
            raise WheelError(f"--engine-wheel {explicit} is not a llama_cpp_python wheel", code="usage")
        if not _arch_ok(explicit, target):
            raise WheelError(f"--engine-wheel {explicit.name} is not for {target.platform}", code="usage")
        return describe_engine_wheel(explicit, "given")
    cache = WheelCache(cache_root)
    for entry in cache.entries():
        if entry.key == key and (version is None or entry.version == version) and _arch_ok(entry.path, target):
            return describe_engine_wheel(entry.path, f"engine wheel cache ({key})")
    if key != "cpu-portable":
        raise WheelError(
            f"the target needs a {key} build of llama-cpp-python {version or ''} and the engine wheel cache "
            f"({cache.root}) has none", code="engine_wheel_missing",
            hint=f"build it on a machine with that toolkit: aiboxctl engine install --backend {key.split('-')[0]}, "
                 "then pack there, or pass --engine-wheel")
    res = _pip("cache", "list", "--format=abspath", ENGINE_DIST, timeout=60)
    candidates = [describe_engine_wheel(Path(line.strip()), "pip wheel cache")
                  for line in (res.stdout.splitlines() if res.ok else [])
                  if line.strip().endswith(".whl") and Path(line.strip()).is_file()]
    usable = [c for c in candidates if (version is None or _wheel_version(c.path) == version) and _arch_ok(c.path, target)]
    if not usable:
        raise WheelError(
            f"no llama-cpp-python {version or ''} wheel for {target.platform} was found "
            "(PyPI ships only its source; it must be built once)", code="engine_wheel_missing",
            hint=("aiboxctl engine install --backend cpu (builds the portable wheel into the cache), "
                  "or pass --engine-wheel") if target.arch == platform.machine() else
                 (f"build it on an {target.arch} machine (aiboxctl engine install --backend cpu there) "
                  "and pass its wheel with --engine-wheel"))
    usable.sort(key=lambda c: (c.build != "portable", -c.path.stat().st_mtime))
    return usable[0]


def _source_dir() -> Path | None:
    """Where the installed aiboxctl came from, when it was a local folder (PEP 610)."""
    try:
        raw = metadata.distribution("aiboxctl").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not raw:
        return None
    doc = json.loads(raw)
    url = urlparse(doc.get("url", ""))
    if url.scheme != "file" or "dir_info" not in doc:
        return None
    path = Path(unquote(url.path))
    return path if (path / "pyproject.toml").is_file() else None


def build_self_wheel(dest: Path, *, cache_dir: Path | None = None) -> Path:
    """aiboxctl's own wheel, of the installed version."""
    from aiboxctl import __version__

    dest.mkdir(parents=True, exist_ok=True)
    source = _source_dir()
    if source is not None:
        res = _pip("wheel", "--no-deps", "--quiet", "-w", str(dest), str(source))
        built = dest / f"aiboxctl-{__version__}-py3-none-any.whl"
        if not res.ok or not built.is_file():
            raise WheelError(f"could not build aiboxctl's wheel from {source}: {res.failure_reason()}",
                             hint=f"try it by hand: pip wheel --no-deps -w /tmp {source}")
        return built
    cached = cache_dir / f"aiboxctl-{__version__}-py3-none-any.whl" if cache_dir else None
    if cached is not None and cached.is_file():
        return Path(shutil.copy2(cached, dest / cached.name))
    raise WheelError(
        "cannot find aiboxctl's source to build its own wheel (it was not installed from a folder)",
        code="self_wheel_missing",
        hint=f"put aiboxctl-{__version__}-py3-none-any.whl into {cache_dir or 'the wheel cache'}, "
             "or install aiboxctl from its source folder")


def collect_wheels(target: TargetPlatform, dest: Path, *, engine: EngineWheel,
                   extra_requirements: tuple[str, ...] = (), cache_dir: Path | None = None) -> WheelSet:
    """Fill ``dest`` with every wheel ``pip install --no-index aiboxctl`` needs on the target,
    ``engine`` (from :func:`find_engine_wheel`) as its llama-cpp-python."""
    dest.mkdir(parents=True, exist_ok=True)
    warnings = []
    if engine.build != "portable":
        warnings.append(
            f"the bundled llama-cpp-python wheel ({engine.path.name}, from the {engine.origin}) is a native "
            "build of the machine that built it: it may stop with SIGILL on an older CPU; build the portable "
            "one (GGML_NATIVE=OFF, GGML_BACKEND_DL, GGML_CPU_ALL_VARIANTS) with `aiboxctl engine install "
            "--backend cpu`, or pass --engine-wheel")
    local_engine = dest / engine.path.name
    if engine.path.resolve() != local_engine.resolve():
        shutil.copyfile(engine.path, local_engine)
    self_wheel = build_self_wheel(dest, cache_dir=cache_dir)
    argv = ["download", "--only-binary=:all:", "--python-version", target.python,
            "--implementation", target.implementation, "--dest", str(dest), "--find-links", str(dest)]
    for plat in target.pip_platforms():
        argv += ["--platform", plat]
    res = _pip(*argv, str(self_wheel), *extra_requirements)
    if not res.ok:
        tail = [ln for ln in (res.stderr + res.stdout).splitlines()
                if ln.startswith("ERROR") or "conflict is caused" in ln or "depends on" in ln]
        raise WheelError(
            f"pip could not collect wheels for {target.describe()}: "
            f"{'; '.join(tail[:3]) or res.failure_reason()}",
            hint="check access to PyPI (or PIP_INDEX_URL), and that every dependency ships a wheel for the target")
    engines = sorted(dest.glob(f"{ENGINE_DIST}-*.whl"))
    if [p.name for p in engines] != [engine.path.name]:
        raise WheelError(f"expected exactly the chosen llama-cpp-python wheel in {dest}, found {[p.name for p in engines]}")
    engine = EngineWheel(path=local_engine, build=engine.build, cpu_variants=engine.cpu_variants, origin=engine.origin)
    return WheelSet(folder=dest, wheels=tuple(sorted(dest.glob("*.whl"))), engine=engine, warnings=tuple(warnings))
