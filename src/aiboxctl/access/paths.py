"""Where an installation's access files live (under its ``InstallLayout``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aiboxctl.paths import InstallLayout


@dataclass(frozen=True)
class AccessPaths:
    keys: Path  # etc/aibox/keys.json (0600, the service user's)
    secret: Path  # etc/aibox/box-secret (0600): signs audit checkpoints
    tls_dir: Path  # etc/aibox/tls/: ca.crt, ca.key, server.crt, server.key
    ledger: Path  # var/lib/aibox/usage.db (+ -wal, -shm)
    audit: Path  # var/log/aibox/access-audit.jsonl (+ .1, .2, … and .head)

    @classmethod
    def for_layout(cls, layout: InstallLayout) -> "AccessPaths":
        return cls(keys=layout.etc / "keys.json", secret=layout.etc / "box-secret", tls_dir=layout.etc / "tls",
                   ledger=layout.state / "usage.db", audit=layout.log / "access-audit.jsonl")
