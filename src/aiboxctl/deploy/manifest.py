"""The install manifest: what ``uninstall``, ``upgrade`` and ``rollback`` read.

Every file (path, mode, owner, sha256), the directories and users the install created, the
service it enabled, and the pinned :class:`InstallSpec` it was rendered from. Generations are
kept under ``var/lib/aibox/generations/<n>/`` (the manifest plus a copy of every file) so that
``rollback`` can put the previous one back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import grp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiboxctl.errors import AiboxError
from aiboxctl.paths import InstallLayout

MANIFEST_VERSION = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def owner_names(st: os.stat_result) -> tuple[str, str]:
    try:
        user = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        user = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return user, group


@dataclass(frozen=True)
class FileEntry:
    path: str  # absolute path on this machine (under the prefix)
    mode: str  # octal, e.g. "0640"
    owner: str
    group: str
    sha256: str
    secret: bool = False


@dataclass(frozen=True)
class InstallManifest:
    generation: int
    aiboxctl_version: str
    root: str
    profile: str
    model_variant: str
    files: tuple[FileEntry, ...]
    directories: tuple[str, ...] = ()  # created by the install (removed by uninstall when empty)
    users_created: tuple[str, ...] = ()
    services_enabled: tuple[dict, ...] = ()  # {"manager": "systemd"|"supervisor", "name": ...}
    spec: dict[str, Any] = field(default_factory=dict)  # InstallSpec.to_dict()
    inputs_fingerprint: str = ""
    model_path: str = ""
    created_at: str = ""
    # What the engine serves when its self-test fell back, and the plan's prediction re-estimated
    # for it (sizing/served.py); {} when it serves the plan
    served: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest_version": MANIFEST_VERSION,
            "generation": self.generation,
            "aiboxctl_version": self.aiboxctl_version,
            "root": self.root,
            "profile": self.profile,
            "model_variant": self.model_variant,
            "model_path": self.model_path,
            "created_at": self.created_at,
            "inputs_fingerprint": self.inputs_fingerprint,
            "files": [vars(f) | {} for f in self.files],
            "directories": list(self.directories),
            "users_created": list(self.users_created),
            "services_enabled": [dict(s) for s in self.services_enabled],
            "spec": self.spec,
            **({"served": self.served} if self.served else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InstallManifest":
        if d.get("manifest_version") != MANIFEST_VERSION:
            raise AiboxError(f"install manifest version {d.get('manifest_version')} is not supported by this aiboxctl",
                             code="manifest_version")
        return cls(
            generation=int(d["generation"]), aiboxctl_version=d["aiboxctl_version"], root=d["root"],
            profile=d["profile"], model_variant=d["model_variant"],
            files=tuple(FileEntry(**f) for f in d["files"]),
            directories=tuple(d.get("directories", ())), users_created=tuple(d.get("users_created", ())),
            services_enabled=tuple(d.get("services_enabled", ())), spec=d.get("spec", {}),
            inputs_fingerprint=d.get("inputs_fingerprint", ""), model_path=d.get("model_path", ""),
            created_at=d.get("created_at", ""), served=dict(d.get("served") or {}),
        )

    def file(self, path: str | Path) -> FileEntry | None:
        for f in self.files:
            if f.path == str(path):
                return f
        return None


def encode(manifest: InstallManifest) -> bytes:
    return (json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n").encode()


def load_manifest(layout: InstallLayout) -> InstallManifest | None:
    """The current installation under this prefix, or None when there is none."""
    try:
        raw = layout.manifest.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return InstallManifest.from_dict(json.loads(raw))
    except (ValueError, KeyError, TypeError) as exc:
        raise AiboxError(f"install manifest {layout.manifest} is unreadable: {exc}", code="manifest_corrupt",
                         hint="restore it from var/lib/aibox/generations/ or reinstall") from exc


def require_manifest(layout: InstallLayout) -> InstallManifest:
    manifest = load_manifest(layout)
    if manifest is None:
        from aiboxctl.deploy.spec import root_flag
        from aiboxctl.deploy.transaction import check_not_interrupted

        check_not_interrupted(layout)  # none committed, but one was begun: say so
        raise AiboxError(f"no aibox installation under {layout.root}", code="not_installed",
                         hint=f"aiboxctl install --profile demo{root_flag(layout)}")
    return manifest


def generations_dir(layout: InstallLayout) -> Path:
    return layout.state / "generations"


def generation_path(layout: InstallLayout, generation: int) -> Path:
    return generations_dir(layout) / f"{generation:04d}"


def list_generations(layout: InstallLayout) -> list[int]:
    base = generations_dir(layout)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "manifest.json").is_file())


def load_generation(layout: InstallLayout, generation: int) -> tuple[InstallManifest, dict[str, bytes]]:
    """A kept generation: its manifest and the bytes of each of its files."""
    base = generation_path(layout, generation)
    manifest = InstallManifest.from_dict(json.loads((base / "manifest.json").read_text(encoding="utf-8")))
    contents = {}
    for index, entry in enumerate(manifest.files):
        data = (base / "files" / str(index)).read_bytes()
        if sha256_bytes(data) != entry.sha256:
            raise AiboxError(f"generation {generation} copy of {entry.path} is corrupt", code="generation_corrupt")
        contents[entry.path] = data
    return manifest, contents
