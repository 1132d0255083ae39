"""Service managers: systemd when PID 1 is systemd (and the prefix is /), else the built-in supervisor."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.deploy import supervisor
from aiboxctl.deploy.spec import UNIT_NAME
from aiboxctl.errors import AiboxError
from aiboxctl.paths import InstallLayout
from aiboxctl.system import run_command


def systemd_is_pid1() -> bool:
    # sd_booted(): the runtime directory exists only when systemd is the init system.
    return Path("/run/systemd/system").is_dir()


def systemd_version() -> int | None:
    r = run_command(["systemctl", "--version"], timeout=10)
    m = re.match(r"systemd (\d+)", r.stdout or "") if r.ok else None
    return int(m.group(1)) if m else None


def choose_manager(layout: InstallLayout) -> str:
    """systemd only for a real installation on a systemd box; a prefix is never the host's."""
    if str(layout.root) == "/" and systemd_is_pid1():
        return "systemd"
    return "supervisor"


@dataclass(frozen=True)
class ServiceState:
    manager: str
    active: bool
    pid: int | None
    detail: str
    restarts: int = 0


class ServiceManager:
    name = ""

    def __init__(self, layout: InstallLayout, env: dict[str, str] | None = None) -> None:
        self.layout = layout
        self.env = env or {}

    def reload(self) -> None: ...
    def enable_start(self) -> None: ...
    def restart(self) -> None: ...
    def stop(self) -> bool: ...
    def disable(self) -> None: ...
    def state(self) -> ServiceState: ...


class SystemdManager(ServiceManager):
    name = "systemd"

    def _ctl(self, *args: str, check: bool = True, timeout: float = 120):
        r = run_command(["systemctl", *args], timeout=timeout)
        if check and not r.ok:
            raise AiboxError(f"systemctl {' '.join(args)} failed: {r.failure_reason()}", code="systemd_failed",
                             hint=f"journalctl -u {UNIT_NAME} -n 50")
        return r

    def reload(self) -> None:
        self._ctl("daemon-reload")

    def enable_start(self) -> None:
        self._ctl("enable", "--now", UNIT_NAME)

    def restart(self) -> None:
        self._ctl("restart", UNIT_NAME)

    def stop(self) -> bool:
        was = self.state().active
        self._ctl("stop", UNIT_NAME, check=False)
        return was

    def disable(self) -> None:
        self._ctl("disable", "--now", UNIT_NAME, check=False)

    def state(self) -> ServiceState:
        r = self._ctl("show", UNIT_NAME, "--property=ActiveState,SubState,MainPID,NRestarts", check=False)
        props = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
        pid = int(props.get("MainPID", "0") or 0) or None
        return ServiceState("systemd", props.get("ActiveState") == "active", pid,
                            f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})",
                            int(props.get("NRestarts", "0") or 0))


class SupervisorManager(ServiceManager):
    name = "supervisor"

    def enable_start(self) -> None:
        supervisor.spawn(self.layout, self.env)

    def restart(self) -> None:
        supervisor.stop(self.layout)
        supervisor.spawn(self.layout, self.env)

    def stop(self) -> bool:
        return supervisor.stop(self.layout)

    def disable(self) -> None:
        supervisor.stop(self.layout)

    def state(self) -> ServiceState:
        s = supervisor.read_state(self.layout)
        detail = "running" if s.pid else "stopped"
        if s.pid and s.engine_pid is None:
            detail = f"restarting (engine exited {s.last_exit})"
        if s.pid is None:
            # An engine that outlived its supervisor may still answer /health: it is not the
            # service (nothing restarts it), so the state stays "not active" and says so.
            strays = supervisor.unmanaged_engines(self.layout)
            if strays:
                detail = (f"stopped; an engine no supervisor manages is still running (pid "
                          f"{', '.join(map(str, strays))}): `aiboxctl stop` ends it")
        return ServiceState("supervisor", s.pid is not None, s.engine_pid or s.pid, detail, s.restarts)


def manager_for(name: str, layout: InstallLayout, env: dict[str, str] | None = None) -> ServiceManager:
    if name == "systemd":
        return SystemdManager(layout, env)
    return SupervisorManager(layout, env)


def service_env(spec_dict: dict) -> dict[str, str]:
    """The environment the service runs with (the supervisor's copy of the unit's Environment=)."""
    layout = InstallLayout.for_root(spec_dict["root"])
    return {"AIBOX_HOME": spec_dict["state_home"], "AIBOX_CONFIG": str(layout.engine_config),
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def service_for(spec: Any) -> ServiceManager:
    """The service manager of an install spec, with the engine's environment."""
    return manager_for(spec.manager, spec.layout, service_env(spec.to_dict()))
