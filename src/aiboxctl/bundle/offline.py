"""``aiboxctl install --bundle``: check, unpack, then the normal install transaction, all offline."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiboxctl import __version__
from aiboxctl.bundle.manifest import BundleError
from aiboxctl.bundle.unpack import OFFLINE_ENV, check_bundle, model_in_store, space_needed, unpack

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class BundleInstallResult:
    bundle: str
    bundle_id: str
    target: str
    created: str
    members_verified: int
    bytes_verified: int
    model_path: str
    pip: str
    install: Any  # deploy.install.InstallResult
    steps: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # what differs from the hardware the bundle was made for

    def to_dict(self) -> dict[str, Any]:
        from aiboxctl.jsonable import to_jsonable

        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "install"}
        d["install"] = to_jsonable(self.install)
        return d


def go_offline() -> None:
    """From here on nothing this process or its children start may reach for an index or hub."""
    for key, value in OFFLINE_ENV.items():
        os.environ[key] = value
    # The health check and smoke test talk to the service on loopback: never through a proxy
    # (httpx sends even 127.0.0.1 to HTTP_PROXY unless NO_PROXY says otherwise).
    for key in ("NO_PROXY", "no_proxy"):
        have = [h for h in os.environ.get(key, "").split(",") if h.strip()]
        os.environ[key] = ",".join(dict.fromkeys([*have, "127.0.0.1", "localhost", "::1"]))


def _profile_argument(manifest: Any, scratch: Path, keep_dir: Path) -> str:
    """The shipped profile's name when the bundle carries exactly it; else a kept copy of the
    bundled profile file (a custom profile made on the packing machine)."""
    bundled = scratch / "profile.yaml"
    name = manifest.profile or ""
    if not bundled.is_file():
        return name
    from aiboxctl.resources import data_dir

    shipped = data_dir("profiles") / f"{name}.yaml"
    try:
        if "/" not in name and shipped.is_file() and shipped.read_bytes() == bundled.read_bytes():
            return name
    except OSError:
        pass
    keep_dir.mkdir(parents=True, exist_ok=True)
    kept = keep_dir / f"{name or 'profile'}.yaml"
    shutil.copyfile(bundled, kept)
    return str(kept)


def _continue_with_bundled_aiboxctl(version: str) -> None:
    """The bundled aiboxctl was just installed over this one: the rest of the install must run
    the new code, so the same command starts again in it (it finds the wheels installed and the
    weights in the store, and goes on). Only a console-script run can be restarted."""
    if Path(sys.argv[0]).name == "aiboxctl" and "--bundle" in sys.argv:
        os.execv(sys.executable, [sys.executable, "-m", "aiboxctl.cli.app", *sys.argv[1:]])
    raise BundleError(f"installed aiboxctl {version} from the bundle over {__version__}; "
                      "run the same command again to continue with it", code="bundle_rerun",
                      hint="aiboxctl install --bundle BUNDLE ...")


def install_from_bundle(bundle: Path, *, root: str | Path | None = None, port: int | None = None,
                        bind: str | None = None, health_timeout: float = 300.0, progress: Progress = _noop,
                        confirm: Callable[[str], None] | None = None, warn: Progress = _noop) -> BundleInstallResult:
    from aiboxctl.bundle.archive import read_manifest
    from aiboxctl.bundle.hostcheck import bundle_hardware_warnings
    from aiboxctl.hardware.probe import probe_box
    from aiboxctl.deploy.install import install as run_install
    from aiboxctl.paths import StatePaths

    go_offline()
    steps: dict[str, float] = {}
    bundle = Path(bundle).absolute()
    state = StatePaths.from_env()
    scratch = state.cache / "bundles"
    t = time.perf_counter()
    if not bundle.is_file():
        raise BundleError(f"no such bundle: {bundle}", code="not_found")
    manifest, bundle_id = read_manifest(bundle)
    progress(f"checking every member of {bundle.name} ({manifest.total_size / (1 << 20):.0f} MiB)")
    present = model_in_store(manifest, state.models, bundle_id)
    checked = check_bundle(bundle, needs=space_needed(manifest, store=state.models, scratch=scratch,
                                                      model_present=present))
    steps["verify_s"] = round(time.perf_counter() - t, 3)
    if not manifest.model.get("variant"):
        raise BundleError(f"{bundle.name} carries no model", code="bundle_without_model")
    # Said before asking: the person decides knowing the box is not the one the bundle is for.
    warnings = tuple(bundle_hardware_warnings(manifest.hardware, probe_box()))
    for w in warnings:
        warn(w)
    if confirm is not None:
        confirm(f"Install {manifest.profile} ({manifest.model['variant']}) from {bundle.name} "
                f"under {root or '/'}?")
    t = time.perf_counter()
    progress("unpacking: weights into the model store, wheels offline")
    unpacked = unpack(checked, store=state.models, scratch=scratch, progress=None)
    steps["unpack_s"] = round(time.perf_counter() - t, 3)
    if manifest.aiboxctl_version != __version__:
        unpacked.cleanup()
        _continue_with_bundled_aiboxctl(manifest.aiboxctl_version)
    try:
        profile = _profile_argument(manifest, unpacked.scratch, state.home / "bundles" / checked.bundle_id[:12])
        t = time.perf_counter()
        result = run_install(profile, model=manifest.model["variant"], root=root, port=port, bind=bind,
                             health_timeout=health_timeout, progress=progress, confirm=None)
        steps["install_s"] = round(time.perf_counter() - t, 3)
    finally:
        unpacked.cleanup()
    return BundleInstallResult(
        bundle=str(bundle), bundle_id=checked.bundle_id, target=manifest.target.describe(),
        created=manifest.created, members_verified=checked.members, bytes_verified=checked.bytes,
        model_path=str(unpacked.model_path), pip=unpacked.pip, install=result, steps=steps, warnings=warnings)
