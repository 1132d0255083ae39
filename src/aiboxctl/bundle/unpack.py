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
from aiboxctl.errors import AiboxError, VerificationFailed
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
    missing = [f["path"] for f in model_files(manifest, bundle_id) if manifest.member(f["path"]) is None]
    if missing:
        raise VerificationFailed(f"{bundle.name}: the manifest names weights it does not list: {missing[0]}",
                                 code="bundle_bad_manifest")
    if needs:
        check_free_space(needs, what=f"unpacking {bundle.name}")
    result = scan_bundle(bundle, manifest, progress=progress)
    return CheckedBundle(path=bundle, bundle_id=bundle_id, manifest=manifest, members=result.members,
                         bytes=result.bytes)


def model_files(manifest: BundleManifest, bundle_id: str) -> list[dict]:
    """The weight members (one per shard) with the store repo/file each goes under: the same as
    on the packing machine."""
    rec = manifest.model
    if not rec.get("path"):
        return []
    repo = rec.get("repo") or f"bundle:{bundle_id[:12]}"
    files = rec.get("files") or [{"path": rec["path"], "file": rec.get("file") or Path(rec["path"]).name}]
    return [{"shard": None, "shards": None, **f, "repo": f.get("repo") or repo,
             "file": f.get("file") or Path(f["path"]).name} for f in files]


def model_destination(manifest: BundleManifest, store_root: Path, bundle_id: str) -> Path | None:
    """Where the bundled weights (their first shard) go in this box's store."""
    from aiboxctl.hub.store import ModelStore

    files = model_files(manifest, bundle_id)
    return ModelStore(store_root).path_for(files[0]["repo"], files[0]["file"]) if files else None


def model_in_store(manifest: BundleManifest, store_root: Path, bundle_id: str) -> bool:
    """The bundled weights are already in this store, recorded with the same sha256 (a re-run,
    or a box that pulled the same files): they are then verified but not written again."""
    from aiboxctl.hub.store import ModelStore

    store = ModelStore(store_root)
    files = model_files(manifest, bundle_id)
    for f in files:
        member = manifest.member(f["path"])
        found = store.present(f["repo"], f["file"], member.sha256) if member else None
        if found is None or found.size != member.size:
            return False
    return bool(files)


def space_needed(manifest: BundleManifest, *, store: Path, scratch: Path, model_present: bool = False) -> dict[Path, int]:
    weights = {f["path"] for f in model_files(manifest, "0" * 12)}
    model = 0 if model_present else sum(m.size for m in manifest.members if m.path in weights)
    # The engine wheel unpacks to about 3x its size in site-packages; the rest is small.
    rest = sum(m.size for m in manifest.members if m.path not in weights)
    return {store: model, scratch: rest * 4}


def unpack(checked: CheckedBundle, *, store: Path, scratch: Path, install_wheels: bool = True,
           progress=None) -> UnpackedBundle:
    """Steps 3 and 4 for a checked bundle: the weights go straight to their place in the model
    store (and are recorded there), everything else to a scratch folder."""
    import time

    from aiboxctl.hub.store import ModelStore, StoredFile

    manifest = checked.manifest
    scratch_dir = scratch / f"bundle-{checked.bundle_id[:12]}"
    store_api = ModelStore(store)
    weights = {f["path"]: f for f in model_files(manifest, checked.bundle_id)}
    model_path = model_destination(manifest, store, checked.bundle_id)
    present = model_in_store(manifest, store, checked.bundle_id)
    plan: dict | None = None

    def sink(member):
        f = weights.get(member.path)
        if f is not None:  # present: hashed again, not rewritten
            return None if present else store_api.path_for(f["repo"], f["file"])
        return scratch_dir / member.path  # wheels, plan, configs, install.sh

    scan_bundle(checked.path, manifest, sink=sink, progress=progress)
    if not present:
        rec, now = manifest.model, time.time()
        for f in weights.values():
            member = manifest.member(f["path"])
            store_api.add(StoredFile(
                path=store_api.path_for(f["repo"], f["file"]), repo=f["repo"], file=f["file"], size=member.size,
                sha256=member.sha256, source=rec.get("source") or "bundle", endpoint=f"bundle:{checked.path.name}",
                revision=rec.get("revision"), variant=rec.get("variant"), quant=rec.get("quant"),
                shard=f.get("shard"), shards=f.get("shards"), expected_sha256_from="bundle",
                pulled_at=now, verified_at=now))
    plan_file = scratch_dir / "plan.json"
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text())
    pip_summary = "skipped"
    if install_wheels and any(m.path.startswith("wheels/") for m in manifest.members):
        pip_summary = install_bundled_wheels(scratch_dir / "wheels", manifest)
    return UnpackedBundle(checked=checked, model_path=model_path, scratch=scratch_dir, plan=plan, pip=pip_summary)


def _already_installed(wheels: Path) -> bool:
    """True when every bundled wheel's distribution is installed here at the same version
    (install.sh has just made this venv from them): pip would only say so, slowly."""
    from importlib import metadata

    from packaging.utils import canonicalize_name, parse_wheel_filename

    installed = {canonicalize_name(d.metadata["Name"] or ""): d.version for d in metadata.distributions()}
    for whl in wheels.glob("*.whl"):
        name, version, _, _ = parse_wheel_filename(whl.name)
        if installed.get(canonicalize_name(name)) != str(version):
            return False
    return True


def install_bundled_wheels(wheels: Path, manifest: BundleManifest) -> str:
    """``pip install --no-index`` of the bundle's aiboxctl into the running environment."""
    if _already_installed(wheels):
        return "already installed"
    extra = "[zstd]" if manifest.compress == "zstd" else ""
    # No pip configuration either: a configured mirror or find-links URL would be a network call.
    env = {**os.environ, **OFFLINE_ENV, "PIP_CONFIG_FILE": os.devnull}
    res = run_command([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels),
                       "--disable-pip-version-check", f"aiboxctl{extra}=={manifest.aiboxctl_version}"],
                      timeout=1800, env=env)
    if not res.ok:
        raise AiboxError(f"installing the bundled wheels failed: {res.failure_reason()}", code="pip_offline_failed",
                         hint="the bundle may lack a wheel for this machine: pack it with the target's "
                              "--python and --platform")
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("Successfully installed")]
    return lines[-1] if lines else "already installed"
