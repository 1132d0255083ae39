"""Throwaway environments for engine tests: a virtualenv that sees every package of the running
environment except llama-cpp-python (or other packages a test must not see), so a test installs,
breaks and restores its own engine without touching the shared one."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


ENGINE_PACKAGES = ("llama_cpp", "llama-cpp")


def make_env(root: Path, without: tuple[str, ...] = ENGINE_PACKAGES) -> Path:
    """A venv that sees every package of the running environment except those whose names start
    with ``without`` (by default llama-cpp-python: its only one is the one a test installs).
    Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    farm = root / "shared-site"
    farm.mkdir()
    for entry in _site_packages().iterdir():
        low = entry.name.lower()
        if low.startswith(without) or low == "bin":
            continue
        (farm / entry.name).symlink_to(entry)
    py = root / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "zz_shared.pth").write_text(f"import site; site.addsitedir({str(farm)!r})\n")
    return py


def drop_from_wheel(src: Path, dest: Path, predicate) -> Path:
    """A copy of a wheel without the members ``predicate`` picks (RECORD left as is: pip
    installs what is there)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if not predicate(item.filename):
                zout.writestr(item, zin.read(item.filename))
    return dest


def engine_wheel_cache_root() -> Path:
    """Where engine tests keep the real portable build between runs: ``$AIBOX_TEST_ENGINE_CACHE``
    or the user's cache folder. It lives outside the checkout because CI clones afresh for every
    run; on the same machine only the first run compiles (minutes), like pip's own wheel cache."""
    import os

    from aiboxctl.env import Env

    explicit = os.environ.get(Env.TEST_ENGINE_CACHE)
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "aiboxctl-tests" / "engine-wheels"
