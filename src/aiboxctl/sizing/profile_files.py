"""Which YAML file a profile argument means: a shipped profile by name, or any file by path.

Shared by the use-case profiles (profiles/*.yaml) and the hardware profiles
(profiles/hardware/*.yaml); validating the text is :mod:`aiboxctl.datafile`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiboxctl.errors import UsageError


def shipped_names(folder: Any, *, exclude: tuple[str, ...] = ()) -> list[str]:
    """The profile names (file stems) of the ``*.yaml`` files in a shipped folder."""
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir()
                  if p.name.endswith(".yaml") and p.name not in exclude)


def profile_text(name_or_path: str | Path, folder: Any, label: str, *, kind: str, hint: str,
                 exclude: tuple[str, ...] = ()) -> tuple[str, str]:
    """(YAML text, name for messages) of a profile given by name (shipped in ``folder``, shown as
    ``label/NAME.yaml``) or as a path to any YAML file of the same shape."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        path = Path(text).expanduser()
        if not path.is_file():
            raise UsageError(f"No such {kind} file: {path}", hint="aiboxctl plan --help")
        return path.read_text(encoding="utf-8"), str(path)
    names = shipped_names(folder, exclude=exclude)
    if text not in names:
        raise UsageError(f"Unknown {kind} {text!r}; known: {', '.join(names)}", hint=hint)
    return (folder / f"{text}.yaml").read_text(encoding="utf-8"), f"{label}/{text}.yaml"
