"""The llama-cpp-python wheel cache: ``$AIBOX_HOME/cache/wheels/llama-cpp-python/<version>/<key>/``
holds one wheel and its ``build.json`` (key = backend + architectures, or ``given-…`` /
``snapshot-…``), so a reinstall takes seconds and ``pack`` can bundle what was built."""

from __future__ import annotations

import json
import os
import platform
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiboxctl.hub.verify import sha256_file
from aiboxctl.paths import StatePaths

DIST = "llama-cpp-python"
WHEEL_PREFIX = "llama_cpp_python-"
FALLBACK_VERSION = "0.3.36"


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
    """The accelerator backend a llama-cpp-python wheel carries, from its libggml-<key>.so files
    (the buildable backends, :data:`~aiboxctl.engine.build.specs.BACKENDS`; "cpu" when it has none)."""
    import re

    from aiboxctl.engine.build.specs import BACKENDS

    with zipfile.ZipFile(wheel) as zf:
        found = {m.group(1) for name in zf.namelist() if (m := re.search(r"(?:^|/)libggml-(\w+)\.so", name))}
    return next((b for b in BACKENDS if b != "cpu" and b in found), "cpu")


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
    # the wheel as built or given, before :mod:`.slim` dropped the library copies nothing asks
    # for (None: not slimmed by this cache, e.g. an entry written before slimming existed)
    original_size_bytes: int | None = None
    slim_dropped: tuple[str, ...] = ()

    def meta(self) -> dict[str, Any]:
        return {"file": self.path.name, "version": self.version, "key": self.key, "backend": self.backend,
                "architectures": list(self.architectures), "cmake_args": list(self.cmake_args),
                "origin": self.origin, "build_seconds": self.build_seconds, "size_bytes": self.size_bytes,
                "sha256": self.sha256, "created": self.created, "original_size_bytes": self.original_size_bytes,
                "slim_dropped": list(self.slim_dropped)}


class WheelCache:
    """``<root>/<version>/<key>/<wheel>`` plus ``build.json``; ``<root>/sdist/`` keeps the source."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else StatePaths.from_env().wheels / DIST

    def dir_for(self, version: str, key: str) -> Path:
        return self.root / version / key

    @property
    def sdist_dir(self) -> Path:
        return self.root / "sdist"

    def load_folder(self, folder: Path) -> CachedWheel | None:
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
            sha256=meta.get("sha256") or "", created=meta.get("created") or "",
            original_size_bytes=meta.get("original_size_bytes"), slim_dropped=tuple(meta.get("slim_dropped") or ()))

    def find(self, version: str, key: str) -> CachedWheel | None:
        folder = self.dir_for(version, key)
        return self.load_folder(folder) if folder.is_dir() else None

    def entries(self) -> list[CachedWheel]:
        out = []
        if self.root.is_dir():
            for version_dir in sorted(self.root.iterdir()):
                if version_dir.name == "sdist" or not version_dir.is_dir():
                    continue
                for key_dir in sorted(version_dir.iterdir()):
                    entry = self.load_folder(key_dir) if key_dir.is_dir() else None
                    if entry:
                        out.append(entry)
        return out

    def add(self, wheel: Path, entry: CachedWheel) -> CachedWheel:
        """Copy ``wheel`` in under ``entry``'s version and key (replacing what was there),
        slimmed (:func:`~aiboxctl.engine.build.slim.slim_wheel`): its size before and the
        members dropped are recorded in ``build.json``."""
        from aiboxctl.engine.build.slim import slim_wheel

        folder = self.dir_for(entry.version, entry.key)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / wheel.name
        if wheel.resolve() != target.resolve():
            for old in folder.glob(f"{WHEEL_PREFIX}*.whl"):
                old.unlink()
            tmp = target.with_suffix(".partial")
            try:
                slim = slim_wheel(wheel, tmp)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        else:
            slim = slim_wheel(target)
        dropped = slim.dropped or entry.slim_dropped
        original = entry.original_size_bytes or slim.original_bytes
        stored = replace(entry, path=target, size_bytes=target.stat().st_size, sha256=sha256_file(target),
                         created=entry.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         original_size_bytes=original, slim_dropped=dropped)
        (folder / "build.json").write_text(json.dumps(stored.meta(), indent=2) + "\n")
        return stored

    def slim(self, entry: CachedWheel) -> CachedWheel:
        """Slim a wheel already in the cache (one stored before slimming existed), in place;
        its record keeps what it had (origin, build time, creation) and gains the sizes."""
        if entry.original_size_bytes is not None:
            return entry
        return self.add(entry.path, replace(entry, original_size_bytes=entry.path.stat().st_size))

