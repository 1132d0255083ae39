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
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiboxctl import __version__
from aiboxctl.bundle.archive import BundleWriter, check_free_space, sha256_file, zstd_available
from aiboxctl.bundle.manifest import BundleError, BundleManifest, Member, TargetPlatform
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
    warnings: tuple[str, ...] = field(default_factory=tuple)


def _utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _hash_entry(entry: Entry) -> Member:
    if entry.source is not None:
        size = entry.source.stat().st_size
        digest = sha256_file(entry.source)
        if entry.expected_sha256 and digest != entry.expected_sha256.lower():
            raise VerificationFailed(
                f"{entry.source} does not match its recorded sha256 (expected {entry.expected_sha256}, "
                f"got {digest}); refusing to pack it", code="checksum_mismatch",
                hint="pull the model again: aiboxctl pull --force ...")
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
