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
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VerificationFailed(f"{source} is not a valid aiboxctl bundle manifest: {exc}",
                                     code="bundle_bad_manifest") from None
        for m in manifest.members:
            check_member_name(m.path)
            if not re.fullmatch(r"[0-9a-f]{64}", m.sha256) or m.size < 0:
                raise VerificationFailed(f"{source}: entry {m.path!r} has no valid sha256/size",
                                         code="bundle_bad_manifest")
        return manifest


def check_member_name(name: str) -> None:
    """A member name must stay inside the folder it is extracted to."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or name.startswith("/") or "\\" in name \
            or "\x00" in name:
        raise VerificationFailed(f"bundle member {name!r} points outside the bundle; refusing it",
                                 code="bundle_unsafe_member",
                                 hint=FOREIGN_HINT)
