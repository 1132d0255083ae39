"""The bundle manifest: what an air-gapped bundle holds and which machine it is for.

``manifest.json`` is the first member of every bundle, so ``install --bundle`` can check the
target and the free space before it reads the rest. It lists every other member with its size
and sha256; nothing that is not listed is accepted. The sha256 of the manifest's own bytes is
the bundle id (printed by ``pack`` and by ``install --bundle``, for comparing out of band).
"""

from __future__ import annotations

import json
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from aiboxctl.errors import AiboxError, VerificationFailed

FORMAT = "aibox-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Said when a bundle holds what aiboxctl pack never writes.
FOREIGN_HINT = "do not install this file; make a new bundle with aiboxctl pack"

_MANYLINUX_RE = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


class BundleError(AiboxError):
    """A bundle that cannot be used here (wrong machine, no room); exit 1."""

    code = "bundle_error"


@dataclass(frozen=True)
class TargetPlatform:
    """The Python and platform the bundled wheels were chosen for."""

    python: str  # "3.11"
    platform: str  # a wheel platform tag: "manylinux_2_28_x86_64"
    implementation: str = "cp"

    @property
    def arch(self) -> str:
        m = _MANYLINUX_RE.match(self.platform)
        if m:
            return m.group(3)
        for legacy in _LEGACY_MANYLINUX:
            if self.platform.startswith(legacy + "_"):
                return self.platform[len(legacy) + 1:]
        return self.platform.split("_", 1)[1] if self.platform.startswith("linux_") else self.platform

    @property
    def abi(self) -> str:
        return f"{self.implementation}{self.python.replace('.', '')}"

    def describe(self) -> str:
        impl = "CPython" if self.implementation == "cp" else self.implementation
        return f"{impl} {self.python} on {self.platform}"

    def pip_platforms(self) -> list[str]:
        """Every platform tag a wheel for this target may carry, newest first.

        pip's ``--platform manylinux_2_28_x86_64`` matches only that exact tag, not the older
        manylinux tags a glibc 2.28 box also runs (PEP 600), so they are listed here; plus
        ``linux_<arch>`` for a llama-cpp-python wheel built locally (PyPI has only its sdist)."""
        m = _MANYLINUX_RE.match(self.platform)
        if m is None:
            return [self.platform]
        major, minor, arch = int(m.group(1)), int(m.group(2)), m.group(3)
        tags = []
        for mi in range(minor, 4, -1):
            tags.append(f"manylinux_{major}_{mi}_{arch}")
            for legacy, (lmaj, lmin) in _LEGACY_MANYLINUX.items():
                if (lmaj, lmin) == (major, mi):
                    tags.append(f"{legacy}_{arch}")
        tags.append(f"linux_{arch}")
        return tags

    def mismatch_here(self) -> str | None:
        """None when the running interpreter can install this target's wheels, else why not."""
        from packaging import tags

        here = {str(t) for t in tags.sys_tags()}
        wanted = f"{self.abi}-{self.abi}-{self.platform}"
        if wanted in here:
            return None
        impl = "CPython" if sys.implementation.name == "cpython" else sys.implementation.name
        libc = " ".join(x for x in platform.libc_ver() if x) or "unknown libc"
        return (f"bundle is for {self.describe()}; this machine runs {impl} "
                f"{sys.version_info.major}.{sys.version_info.minor} on {platform.machine()} ({libc})")

    @classmethod
    def here(cls) -> "TargetPlatform":
        """The running interpreter, with the newest manylinux tag it supports."""
        from packaging import tags

        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        best = next((t.platform for t in tags.sys_tags() if t.platform.startswith("manylinux_")),
                    f"linux_{platform.machine()}")
        return cls(python=py, platform=best)


@dataclass(frozen=True)
class Member:
    path: str  # posix, relative, no ".." (checked on load)
    size: int
    sha256: str
    mode: int = 0o644


@dataclass(frozen=True)
class BundleManifest:
    aiboxctl_version: str
    created: str  # ISO 8601 UTC
    target: TargetPlatform
    members: tuple[Member, ...]
    profile: str | None = None
    hardware: str | None = None
    model: dict = field(default_factory=dict)  # variant, quant, path (member), sha256, size, source
    engine_wheel: dict = field(default_factory=dict)  # path (member), build, cpu_variants
    compress: str = "none"
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def member(self, path: str) -> Member | None:
        return next((m for m in self.members if m.path == path), None)

    @property
    def total_size(self) -> int:
        return sum(m.size for m in self.members)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "format_version": self.format_version,
            "aiboxctl_version": self.aiboxctl_version,
            "created": self.created,
            "target": {"python": self.target.python, "implementation": self.target.implementation,
                       "platform": self.target.platform, "arch": self.target.arch},
            "profile": self.profile,
            "hardware": self.hardware,
            "model": dict(self.model),
            "engine_wheel": dict(self.engine_wheel),
            "compress": self.compress,
            "members": [{"path": m.path, "size": m.size, "sha256": m.sha256, "mode": m.mode}
                        for m in self.members],
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, raw: bytes, *, source: str = "manifest.json") -> "BundleManifest":
        try:
            doc = json.loads(raw.decode("utf-8"))
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, not {FORMAT!r}")
            if int(doc.get("format_version", 0)) > FORMAT_VERSION:
                raise BundleError(
                    f"{source}: bundle format {doc['format_version']} is newer than this aiboxctl "
                    f"understands ({FORMAT_VERSION})", code="bundle_too_new",
                    hint="install the aiboxctl version that made it (its wheel is in the bundle: run install.sh)")
            t = doc["target"]
            target = TargetPlatform(python=str(t["python"]), platform=str(t["platform"]),
                                    implementation=str(t.get("implementation", "cp")))
            members = tuple(Member(path=str(m["path"]), size=int(m["size"]), sha256=str(m["sha256"]).lower(),
                                   mode=int(m.get("mode", 0o644))) for m in doc["members"])
            manifest = cls(aiboxctl_version=str(doc["aiboxctl_version"]), created=str(doc["created"]),
                           target=target, members=members, profile=doc.get("profile"),
                           hardware=doc.get("hardware"), model=dict(doc.get("model") or {}),
                           engine_wheel=dict(doc.get("engine_wheel") or {}),
                           compress=str(doc.get("compress", "none")),
                           format_version=int(doc.get("format_version", FORMAT_VERSION)))
        except BundleError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as exc:
            raise VerificationFailed(f"{source} is not a valid aiboxctl bundle manifest: {exc}",
                                     code="bundle_bad_manifest") from None
        check_manifest_names(manifest, source)
        return manifest


# One rule for every name a manifest carries that could reach a path, a file name or a command
# line: a plain name (letters, digits, ``._+-``; not starting with a dot or dash; no ``..``), or,
# for member paths and repo/file names, ``/``-separated plain names. No separators elsewhere,
# no NUL, nothing absolute, nothing longer than a file name may be.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]{0,199}")
_MAX_PATH = 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Free text that is shown, never used as a name (why a build was chosen, where a wheel came from).
_LABEL = re.compile(r"[^\x00-\x1f\x7f]{0,300}")


def is_plain_name(value: object) -> bool:
    return isinstance(value, str) and bool(_PLAIN_NAME.fullmatch(value)) and ".." not in value


def _is_plain_path(value: object, separators: str = "/") -> bool:
    if not isinstance(value, str) or not value or len(value) > _MAX_PATH:
        return False
    return all(is_plain_name(part) for part in re.split(f"[{re.escape(separators)}]", value))


def check_member_name(name: str) -> None:
    """A member name must stay inside the folder it is extracted to."""
    if not _is_plain_path(name):
        raise VerificationFailed(f"bundle member {name!r} points outside the bundle; refusing it",
                                 code="bundle_unsafe_member",
                                 hint=FOREIGN_HINT)


def _unsafe(source: str, field: str, value: object) -> VerificationFailed:
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
    return VerificationFailed(f"{source}: {field} {shown} is not a plain name; refusing the bundle",
                              code="bundle_unsafe_name", hint=FOREIGN_HINT)


def check_manifest_names(manifest: BundleManifest, source: str = MANIFEST_NAME) -> None:
    """Every name in the manifest is data, never a path: checked here, once, at load time, so
    nothing downstream (the store, the scratch folder, the kept profile, pip) sees another."""

    def name(field: str, value: object, *, optional: bool = True) -> None:
        if value is None and optional:
            return
        if not is_plain_name(value):
            raise _unsafe(source, field, value)

    def path(field: str, value: object, *, separators: str = "/", optional: bool = True) -> None:
        if value is None and optional:
            return
        if not _is_plain_path(value, separators):
            raise _unsafe(source, field, value)

    def label(field: str, value: object) -> None:
        if value is not None and not (isinstance(value, str) and _LABEL.fullmatch(value)):
            raise _unsafe(source, field, value)

    def count(field: str, value: object) -> None:
        if value is not None and not (type(value) is int and 0 < value < 100_000):
            raise _unsafe(source, field, value)

    for m in manifest.members:
        check_member_name(m.path)
        if not _SHA256.fullmatch(m.sha256) or m.size < 0:
            raise VerificationFailed(f"{source}: entry {m.path!r} has no valid sha256/size",
                                     code="bundle_bad_manifest")
        if not 0 <= m.mode <= 0o777:
            raise _unsafe(source, f"mode of {m.path}", oct(m.mode) if isinstance(m.mode, int) else m.mode)
    if not re.fullmatch(r"\d{1,2}\.\d{1,3}", manifest.target.python):
        raise _unsafe(source, "target python", manifest.target.python)
    name("target platform", manifest.target.platform, optional=False)
    name("target implementation", manifest.target.implementation, optional=False)
    name("aiboxctl version", manifest.aiboxctl_version, optional=False)
    label("created", manifest.created)
    name("profile", manifest.profile)
    name("hardware", manifest.hardware)
    if manifest.compress not in ("none", "zstd"):
        raise _unsafe(source, "compress", manifest.compress)
    model = manifest.model
    for key in ("variant", "quant", "source", "revision"):
        name(f"model {key}", model.get(key))
    path("model repo", model.get("repo"), separators="/:")
    for key in ("file", "path"):
        path(f"model {key}", model.get(key))
    files = model.get("files")
    if files is not None and not isinstance(files, list):
        raise _unsafe(source, "model files", files)
    for i, f in enumerate(files or ()):
        if not isinstance(f, dict):
            raise _unsafe(source, f"model files[{i}]", f)
        path(f"model files[{i}] path", f.get("path"), optional=False)
        path(f"model files[{i}] file", f.get("file"))
        path(f"model files[{i}] repo", f.get("repo"), separators="/:")
        count(f"model files[{i}] shard", f.get("shard"))
        count(f"model files[{i}] shards", f.get("shards"))
    wheel = manifest.engine_wheel
    path("engine wheel path", wheel.get("path"))
    for key in ("file", "build"):
        name(f"engine wheel {key}", wheel.get(key))
    for key in ("origin", "target_key", "target_build"):
        label(f"engine wheel {key}", wheel.get(key))
    variants = wheel.get("cpu_variants")
    if variants is not None and not isinstance(variants, list):
        raise _unsafe(source, "engine wheel cpu_variants", variants)
    for v in variants or ():
        name("engine wheel cpu variant", v)
