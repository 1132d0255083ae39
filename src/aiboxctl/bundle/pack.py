"""``aiboxctl pack``: one archive with everything an offline box needs.

Layout of a bundle (members in this order; ``manifest.json`` first so a reader can check the
target and the free space before reading on, the weights last)::

    manifest.json       every other member's path, size, sha256; version, target, creation time
    install.sh          for a box without aiboxctl: venv from the wheels, then install --bundle
    SHA256SUMS          the same checksums in sha256sum(1) format (install.sh checks the wheels)
    plan.json           the plan made for the target hardware profile
    config/...          the files install will render there (engine.yaml, unit, env, logrotate)
    wheels/*.whl        aiboxctl and every dependency for the target Python/platform
    models/<file>.gguf  the weights, streamed from the store (never copied on the way)
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiboxctl import __version__
from aiboxctl.bundle.archive import BundleWriter, check_free_space, zstd_available
from aiboxctl.hub.verify import sha256_file
from aiboxctl.bundle.manifest import BundleError, BundleManifest, Member, TargetPlatform, check_manifest_names
from aiboxctl.errors import UsageError, VerificationFailed


@dataclass(frozen=True)
class Entry:
    """One member to write: from a file (streamed) or from bytes."""

    name: str
    source: Path | None = None
    data: bytes | None = None
    mode: int = 0o644
    expected_sha256: str | None = None  # a file must hash to this (verified weights)

    @property
    def size(self) -> int:
        return self.source.stat().st_size if self.source is not None else len(self.data or b"")


@dataclass(frozen=True)
class WrittenBundle:
    path: Path
    bundle_id: str
    size: int
    members: int
    manifest: BundleManifest


@dataclass(frozen=True)
class PackResult:
    bundle: Path
    bundle_id: str
    size: int
    members: int
    target: TargetPlatform
    profile: str
    hardware: str
    model: dict
    engine_wheel: dict
    wheels: int
    compress: str
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _hash_entry(entry: Entry) -> Member:
    if entry.source is not None and entry.expected_sha256:
        # Weights: the store's sha256 (computed when they were pulled) goes into the manifest
        # unread; the writer hashes them while streaming and fails the pack on a mismatch, so
        # a big model is read once, not twice.
        return Member(path=entry.name, size=entry.source.stat().st_size, sha256=entry.expected_sha256.lower(),
                      mode=entry.mode)
    if entry.source is not None:
        size, digest = entry.source.stat().st_size, sha256_file(entry.source)
    else:
        data = entry.data or b""
        size, digest = len(data), hashlib.sha256(data).hexdigest()
    return Member(path=entry.name, size=size, sha256=digest, mode=entry.mode)


def sha256sums(members: list[Member]) -> bytes:
    """sha256sum(1)'s format (two spaces, text mode), so the box can check with coreutils alone."""
    return "".join(f"{m.sha256}  {m.path}\n" for m in members).encode()


def write_bundle(output: Path, entries: list[Entry], *, target: TargetPlatform, compress: str = "none",
                 profile: str | None = None, hardware: str | None = None, model: dict | None = None,
                 engine_wheel: dict | None = None, created: str | None = None,
                 sums_file: bool = True) -> WrittenBundle:
    """Hash every entry (verifying the ones with an expected sha256), check the free space,
    then stream manifest and members into ``output`` (atomically, via ``output.partial``)."""
    output = Path(output)
    if compress not in ("none", "zstd"):
        raise UsageError(f"unknown compression {compress!r}", hint="use --compress none or --compress zstd")
    if compress == "zstd" and not zstd_available():
        raise BundleError("--compress zstd needs the zstandard package", code="zstd_unavailable",
                          hint="pip install 'aiboxctl[zstd]', or pack with --compress none")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate bundle member names: {names}")
    members = [_hash_entry(e) for e in entries]
    if sums_file:
        sums = sha256sums(members)
        entries = [*entries[:1], Entry("SHA256SUMS", data=sums), *entries[1:]]
        members = [*members[:1], _hash_entry(entries[1]), *members[1:]]
    manifest = BundleManifest(aiboxctl_version=__version__, created=created or _utc_now(), target=target,
                              members=tuple(members), profile=profile, hardware=hardware,
                              model=dict(model or {}), engine_wheel=dict(engine_wheel or {}), compress=compress)
    try:  # the box refuses a manifest with names that are not plain: so does pack, before writing
        check_manifest_names(manifest, "pack")
    except VerificationFailed as exc:
        raise UsageError(exc.message.replace("; refusing the bundle", ""),
                         hint="give the profile (and model) plain names: letters, digits and ._+-") from None
    # Tar adds 512 bytes of header per member plus padding; PAX headers for long names.
    check_free_space({output.parent: manifest.total_size + 2048 * (len(members) + 2)},
                     what=f"the bundle {output.name}")
    writer = BundleWriter(output, manifest, mtime=time.time())
    try:
        for entry in entries:
            if entry.source is not None:
                writer.add_file(entry.name, entry.source)
            else:
                writer.add_bytes(entry.name, entry.data or b"")
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return WrittenBundle(path=output, bundle_id=writer.bundle_id, size=output.stat().st_size,
                         members=len(members) + 1, manifest=manifest)


# --- install.sh --------------------------------------------------------------------------------


def _comment_safe(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9._:+@/ -]", "?", str(value))


def render_install_sh(*, target: TargetPlatform, profile: str, model: str, compress: str, created: str) -> bytes:
    import jinja2

    from aiboxctl.resources import data_dir

    text = (data_dir("templates") / "install.sh.j2").read_text()
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    requirement = f"aiboxctl[zstd]=={__version__}" if compress == "zstd" else f"aiboxctl=={__version__}"
    return env.from_string(text).render(
        version=__version__, created=created, profile=_comment_safe(profile), model=_comment_safe(model),
        python=target.python, platform=target.platform, arch=target.arch, compress=compress,
        requirement=requirement,
    ).encode()


# --- the pipeline ------------------------------------------------------------------------------

DEFAULT_PLATFORM = "manylinux_2_28_{arch}"
_PY_RE = re.compile(r"^3\.\d{1,2}$")
_PLATFORM_RE = re.compile(r"^(manylinux_\d+_\d+|manylinux1|manylinux2010|manylinux2014)_(x86_64|aarch64|ppc64le|s390x|i686)$")


def target_for(python: str | None, platform_tag: str | None, *, arch: str | None = None,
               box: str | None = None) -> TargetPlatform:
    """The target's Python and wheel platform. ``arch`` is the target box's CPU architecture
    (the hardware profile's ``cpu.arch``): the default platform is built on it, and a
    ``--platform`` of another architecture is refused (its wheels would not run there)."""
    import platform as _platform

    here = TargetPlatform.here()
    py = python or here.python
    plat = platform_tag or DEFAULT_PLATFORM.format(arch=arch or _platform.machine())
    if not _PY_RE.match(py):
        raise UsageError(f"--python {py!r} is not a Python version like 3.11", hint="aiboxctl pack --help")
    if not _PLATFORM_RE.match(plat):
        raise UsageError(f"--platform {plat!r} is not a manylinux wheel platform tag",
                         hint="e.g. --platform manylinux_2_28_x86_64 (glibc 2.28+) or manylinux_2_28_aarch64")
    target = TargetPlatform(python=py, platform=plat)
    if arch and target.arch != arch:
        raise UsageError(f"--platform {plat} is for {target.arch}, but {box or 'the target box'} has an {arch} CPU",
                         hint=f"drop --platform (the default is {DEFAULT_PLATFORM.format(arch=arch)}), "
                              f"or give an {arch} platform tag")
    return target


def _noop(_: str) -> None:
    pass


def _plan_summary(plan: Any) -> dict[str, Any]:
    """Contract 6: the plan's variant, quant and engine parameters, whatever their nesting."""
    from aiboxctl.jsonable import to_jsonable

    d = to_jsonable(plan)
    choice = d.get("choice") or d
    variant = choice.get("variant")
    name = variant.get("name") if isinstance(variant, dict) else variant
    engine = d.get("engine") or d.get("params") or d.get("engine_params") or {}
    return {"variant": name, "quant": choice.get("quant"), "engine": engine, "doc": d}


def _model_files(variant: str, quant: str | None, progress) -> list[tuple[Path, str | None, dict[str, Any]]]:
    """[(local path, expected sha256, store record)] of the planned weights, one per shard, from
    the model store when present, else pulled into it. The record (repo, file, source, shard)
    lets the box file the weights under the same names in its own store."""
    from aiboxctl.hub.store import ModelStore
    from aiboxctl.paths import StatePaths

    store = ModelStore(StatePaths.from_env().models)

    def complete(records) -> bool:
        shards = max((r.shards or 1) for r in records) if records else 0
        return bool(records) and len({r.shard or 1 for r in records}) == shards

    found = [r for r in store.find_all(variant, quant) if Path(r.path).is_file()]
    if not complete(found):
        from aiboxctl.hub.pull import pull

        progress(f"pulling {variant} ({quant or 'planned quant'})")
        pull(variant, quant=quant)
        found = [r for r in store.find_all(variant, quant) if Path(r.path).is_file()]
    if not complete(found):
        raise BundleError(f"{variant} {quant or ''} is not (completely) in the model store after pulling it",
                          code="model_unavailable", hint=f"aiboxctl pull {variant}")
    # One file per shard: the newest record of each.
    by_shard: dict[int, Any] = {}
    for r in sorted(found, key=lambda r: r.pulled_at):
        by_shard[r.shard or 1] = r
    return [(Path(r.path), r.sha256, {"repo": r.repo, "file": r.file, "source": r.source, "revision": r.revision,
                                      "variant": r.variant or variant, "quant": r.quant or quant,
                                      "shard": r.shard, "shards": r.shards})
            for _, r in sorted(by_shard.items())]


def _rendered_configs(profile: Any, summary: dict[str, Any], model_record: dict[str, Any]) -> list[Entry]:
    """The files ``install`` will write on the target (for review; install renders them again
    on the box after its own exact memory check). Secrets are never bundled."""
    import dataclasses

    from aiboxctl.deploy.install import build_spec
    from aiboxctl.deploy.spec import render_appliance
    from aiboxctl.engine_settings import EngineSettings
    from aiboxctl.paths import InstallLayout

    from aiboxctl.hub.store import ModelStore

    layout = InstallLayout.for_root("/")
    # Where the box's store (AIBOX_HOME=/var/lib/aibox as root) will file the weights.
    model_on_box = ModelStore(layout.state / "models").path_for(model_record["repo"], model_record["file"])
    engine = EngineSettings.from_mapping(summary["engine"], source="the plan's engine settings")
    facts = {"variant": summary["variant"], "quant": summary["quant"], "predicted": {}}
    spec = build_spec(layout=layout, profile=profile, facts=facts,
                      model_path=str(model_on_box), engine=engine,
                      port=None, bind=None, system=False)
    spec = dataclasses.replace(spec, manager="systemd", system_install=True, state_home=str(layout.state),
                               service_user=str(profile.service.user), service_group=str(profile.service.user),
                               exec_argv=("/opt/aibox/venv/bin/aiboxctl",))
    keys = "# generated on the box at install\n" if spec.engine.api_keys_file else None
    return [Entry("config" + f.path, data=f.content, mode=f.mode & 0o755)
            for f in render_appliance(spec, keys) if not f.secret]


def _profile_source(name_or_path: str) -> bytes:
    """The profile file itself, so the box installs exactly what was planned (also a custom one)."""
    from aiboxctl.resources import data_dir

    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return Path(text).expanduser().read_bytes()
    return (data_dir("profiles") / f"{text}.yaml").read_bytes()


def _profile_with_sizing(name_or_path: str, profile: Any, sizing: dict[str, Any]) -> bytes:
    """The profile as planned: with --users/--target-tok-s/--ctx, the overridden profile written
    out whole, so the box's install (and its upgrades) plan with the same inputs."""
    if not sizing:
        return _profile_source(name_or_path)
    import yaml

    from aiboxctl.jsonable import to_jsonable

    head = f"# {name_or_path} with {', '.join(f'{k}: {v}' for k, v in sizing.items())} (aiboxctl pack overrides)\n"
    return (head + yaml.safe_dump(to_jsonable(profile), allow_unicode=True, sort_keys=False)).encode()


def pack(profile_name: str, hardware_name: str, *, output: Path, model: str | None = None,
         python: str | None = None, platform_tag: str | None = None, compress: str = "none",
         engine_wheel: Path | None = None, progress=_noop, sizing: dict[str, Any] | None = None) -> PackResult:
    """Plan for the target hardware profile, get and verify the weights, collect the wheels,
    render the configs and install.sh, and stream it all into one archive."""
    import json

    from aiboxctl.bundle.wheels import collect_wheels
    from aiboxctl.hub.local import local_model_file
    from aiboxctl.jsonable import to_jsonable
    from aiboxctl.paths import StatePaths
    from aiboxctl.sizing.hardware_profiles import load_hardware_profile
    from aiboxctl.sizing.planner import plan as make_plan
    from aiboxctl.sizing.profiles import load_use_case

    t0 = time.perf_counter()
    output = Path(output).absolute()
    if compress == "zstd" and not zstd_available():
        raise BundleError("--compress zstd needs the zstandard package", code="zstd_unavailable",
                          hint="pip install 'aiboxctl[zstd]', or pack with --compress none")
    if not output.parent.is_dir():
        raise UsageError(f"output folder {output.parent} does not exist")
    sizing = {k: v for k, v in (sizing or {}).items() if v is not None}
    profile = load_use_case(profile_name).with_overrides(**sizing)
    hardware = load_hardware_profile(hardware_name)
    # The wheels are for the box's CPU (a Kunpeng 920 is aarch64), whatever this machine is.
    target = target_for(python, platform_tag, arch=hardware.cpu.arch, box=hardware.name)
    steps: dict[str, float] = {}
    t = time.perf_counter()
    progress(f"planning {profile.name} for {hardware_name}")
    plan = make_plan(profile, hardware, model=model, local_file=local_model_file)
    summary = _plan_summary(plan)
    from aiboxctl.bundle.wheels import find_engine_wheel, target_engine_key

    # The engine build the target needs must exist before any weights are pulled.
    engine_key, engine_why = target_engine_key(getattr(hardware, "accelerators", ()))
    engine = find_engine_wheel(target, explicit=engine_wheel, key=engine_key, why=engine_why, box=hardware.name)
    if not summary["variant"]:
        raise BundleError("the plan names no model variant", code="plan_without_model")
    steps["plan_s"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    weights = _model_files(summary["variant"], summary["quant"], progress)
    model_path, _, record = weights[0]
    steps["model_s"] = round(time.perf_counter() - t, 3)
    # Room for the weights and the wheels before anything is downloaded or written.
    check_free_space({output.parent: sum(p.stat().st_size for p, _, _ in weights) + (200 << 20)},
                     what=f"the bundle {output.name}")
    created = _utc_now()
    cache_dir = StatePaths.from_env().wheels
    with tempfile.TemporaryDirectory(prefix=".aibox-pack-", dir=output.parent) as tmp:
        t = time.perf_counter()
        progress(f"collecting wheels for {target.describe()}")
        wheels = collect_wheels(target, Path(tmp) / "wheels", engine=engine, cache_dir=cache_dir,
                                extra_requirements=("zstandard>=0.23,<1",) if compress == "zstd" else ())
        steps["wheels_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        model_member = f"models/{model_path.name}"
        entries = [
            Entry("install.sh", data=render_install_sh(target=target, profile=profile.name,
                                                       model=summary["variant"], compress=compress,
                                                       created=created), mode=0o755),
            Entry("profile.yaml", data=_profile_with_sizing(profile_name, profile, sizing)),
            Entry("plan.json", data=(json.dumps(to_jsonable(plan), indent=2, ensure_ascii=False) + "\n").encode()),
            *_rendered_configs(profile, summary, record),
            *(Entry(f"wheels/{w.name}", source=w) for w in wheels.wheels),
            *(Entry(f"models/{path.name}", source=path, expected_sha256=sha) for path, sha, _ in weights),
        ]
        progress(f"writing {output.name} (verifying {model_path.name} on the way)")
        written = write_bundle(
            output, entries, target=target, compress=compress, profile=profile.name, hardware=hardware.name,
            model={**{k: v for k, v in record.items() if k not in ("shard", "shards")},
                   "variant": summary["variant"], "quant": record.get("quant") or summary["quant"],
                   "path": model_member,
                   "files": [{"path": f"models/{path.name}", "file": rec["file"], "shard": rec.get("shard"),
                              "shards": rec.get("shards")} for path, _, rec in weights]},
            engine_wheel={"path": f"wheels/{wheels.engine.path.name}", **wheels.engine.to_dict(),
                          "target_key": engine_key, "target_build": engine_why},
            created=created)
    steps["write_s"] = round(time.perf_counter() - t, 3)  # hash every member, then stream them
    model_rec = written.manifest.member(model_member)
    model_size = sum(written.manifest.member(f["path"]).size for f in written.manifest.model["files"])
    return PackResult(
        bundle=output, bundle_id=written.bundle_id, size=written.size, members=written.members, target=target,
        profile=profile.name, hardware=hardware_name,
        model={**written.manifest.model, "size": model_size, "sha256": model_rec.sha256},
        engine_wheel=dict(written.manifest.engine_wheel), wheels=len(wheels.wheels), compress=compress,
        seconds=round(time.perf_counter() - t0, 2), steps=steps, warnings=wheels.warnings)
