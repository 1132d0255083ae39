"""``install --bundle``: check a bundle completely, then unpack it onto this box, offline.

Order, and why:
1. read the manifest (first member): refuse a bundle for another Python/architecture, and
   refuse when the disks lack room, before anything is read further or written;
2. a read-only pass over the whole archive: every member's name, type, size and sha256 —
   nothing on the system is touched until every member checked out;
3. a second pass writes the members where they belong (weights straight into the model store,
   wheels into a scratch folder), hashing again on the way so a bundle that changed between the
   passes is still caught; each file is renamed into place only after its hash matched;
4. ``pip install --no-index`` of the bundled aiboxctl into the running environment (nothing to
   do when install.sh already made it from the same wheels).
The install transaction (render, start, smoke test) then runs with the bundled model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.bundle.archive import check_free_space, read_manifest, scan_bundle
from aiboxctl.bundle.manifest import BundleError, BundleManifest
from aiboxctl.errors import AiboxError
from aiboxctl.system import run_command

# Variables that keep every library we run from reaching for a network.
OFFLINE_ENV = {
    "PIP_NO_INDEX": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


@dataclass(frozen=True)
class CheckedBundle:
    """A bundle whose manifest fits this machine and whose members all verified."""

    path: Path
    bundle_id: str
    manifest: BundleManifest
    members: int
    bytes: int


@dataclass(frozen=True)
class UnpackedBundle:
    checked: CheckedBundle
    model_path: Path | None  # the weights, now in the model store
    scratch: Path | None  # wheels, plan and configs from the bundle (removed by cleanup())
    plan: dict | None
    pip: str  # what pip did

    def cleanup(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def check_bundle(bundle: Path, *, needs: dict[Path, int] | None = None,
                 progress=None) -> CheckedBundle:
    """Steps 1 and 2: target, free space (``needs`` maps folders to bytes; computed by the
    caller from the manifest via :func:`space_needed`), then every member's checksum."""
    bundle = Path(bundle)
    if not bundle.is_file():
        raise BundleError(f"no such bundle: {bundle}", code="not_found")
    manifest, bundle_id = read_manifest(bundle)
    why = manifest.target.mismatch_here()
    if why:
        raise BundleError(why, code="bundle_wrong_target",
                          hint=f"pack again for this machine: aiboxctl pack --python "
                               f"{sys.version_info.major}.{sys.version_info.minor} --platform ...")
    if needs:
        check_free_space(needs, what=f"unpacking {bundle.name}")
    result = scan_bundle(bundle, manifest, progress=progress)
    return CheckedBundle(path=bundle, bundle_id=bundle_id, manifest=manifest, members=result.members,
                         bytes=result.bytes)


def space_needed(manifest: BundleManifest, *, store: Path, scratch: Path) -> dict[Path, int]:
    model_member = manifest.model.get("path")
    model = sum(m.size for m in manifest.members if m.path == model_member)
    # The engine wheel unpacks to about 3x its size in site-packages; the rest is small.
    wheels = sum(m.size for m in manifest.members if m.path.startswith("wheels/"))
    return {store: model, scratch: wheels * 4}


def unpack(checked: CheckedBundle, *, store: Path, scratch: Path, install_wheels: bool = True,
           progress=None) -> UnpackedBundle:
    """Steps 3 and 4 for a checked bundle."""
    manifest = checked.manifest
    model_member = manifest.model.get("path")
    scratch_dir = scratch / f"bundle-{checked.bundle_id[:12]}"
    plan: dict | None = None

    def sink(member):
        if member.path == model_member:
            return store / Path(member.path).name
        return scratch_dir / member.path  # wheels, plan, configs, install.sh

    scan_bundle(checked.path, manifest, sink=sink, progress=progress)
    model_path = store / Path(model_member).name if model_member else None
    plan_file = scratch_dir / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    pip_summary = "skipped"
    if install_wheels and any(m.path.startswith("wheels/") for m in manifest.members):
        pip_summary = install_bundled_wheels(scratch_dir / "wheels", manifest)
    return UnpackedBundle(checked=checked, model_path=model_path, scratch=scratch_dir, plan=plan, pip=pip_summary)


def install_bundled_wheels(wheels: Path, manifest: BundleManifest) -> str:
    """``pip install --no-index`` of the bundle's aiboxctl into the running environment."""
    extra = "[zstd]" if manifest.compress == "zstd" else ""
    env = {**os.environ, **OFFLINE_ENV}
    res = run_command([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
                       "--disable-pip-version-check", f"aiboxctl{extra}=={manifest.aiboxctl_version}"],
                      timeout=1800, env=env)
    if not res.ok:
        raise AiboxError(f"installing the bundled wheels failed: {res.failure_reason()}", code="pip_offline_failed",
                         hint="the bundle may lack a wheel for this machine: pack it with the target's "
                              "--python and --platform")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("Successfully installed")]
    return lines[-1] if lines else "already installed"
