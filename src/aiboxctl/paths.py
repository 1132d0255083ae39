"""Where aiboxctl keeps things.

Two roots:
* the *state root* (``AIBOX_HOME``): model store, caches, the record of what was built. Default
  ``/var/lib/aibox`` for root, else ``$XDG_DATA_HOME/aibox`` (``~/.local/share/aibox``).
* the *install prefix* (``--root PREFIX``, default ``/``): where ``install`` writes the FHS
  layout of an appliance (/etc/aibox, /var/lib/aibox, /var/log/aibox, the systemd unit).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.env import Env


def _default_home() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/aibox")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "aibox"


@dataclass(frozen=True)
class StatePaths:
    home: Path
    models: Path
    cache: Path
    wheels: Path
    engine: Path  # records of engine builds / self-tests

    @classmethod
    def from_env(cls) -> "StatePaths":
        home = Path(os.environ.get(Env.HOME) or _default_home()).expanduser()
        models = Path(os.environ.get(Env.MODELS) or home / "models").expanduser()
        cache = home / "cache"
        return cls(home=home, models=models, cache=cache, wheels=cache / "wheels", engine=home / "engine")


@dataclass(frozen=True)
class InstallLayout:
    """The files of one installed appliance under a prefix."""

    root: Path
    etc: Path
    state: Path
    log: Path
    run: Path
    unit_dir: Path
    logrotate_dir: Path

    @classmethod
    def for_root(cls, root: str | Path | None = None) -> "InstallLayout":
        r = Path(root or "/").expanduser().resolve()
        return cls(
            root=r,
            etc=r / "etc" / "aibox",
            state=r / "var" / "lib" / "aibox",
            log=r / "var" / "log" / "aibox",
            run=r / "run" / "aibox",
            unit_dir=r / "etc" / "systemd" / "system",
            logrotate_dir=r / "etc" / "logrotate.d",
        )

    @property
    def engine_config(self) -> Path:
        return self.etc / "engine.yaml"

    @property
    def manifest(self) -> Path:
        return self.state / "install-manifest.json"
