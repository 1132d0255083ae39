"""Service managers: systemd when PID 1 is systemd (and the prefix is /), else the built-in supervisor."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.deploy import supervisor
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
    def restart_one(self, name: str) -> None: ...
    def stop(self) -> bool: ...
    def disable(self) -> None: ...
    def state(self) -> ServiceState: ...


class SystemdManager(ServiceManager):
    name = "systemd"

    @property
    def units(self) -> list[str]:
        """aibox.service, or the front door and one aibox-engine@NAME.service per instance."""
        from aiboxctl.deploy.instances import unit_names

        return unit_names(self.layout)

    def _ctl(self, *args: str, check: bool = True, timeout: float = 120):
        r = run_command(["systemctl", *args], timeout=timeout)
        if check and not r.ok:
            raise AiboxError(f"systemctl {' '.join(args)} failed: {r.failure_reason()}", code="systemd_failed",
                             hint=f"journalctl -u {self.units[-1]} -n 50")
        return r

    def reload(self) -> None:
        self._ctl("daemon-reload")

    def _retire_single(self) -> None:
        """A set replacing a single engine: its aibox.service (unit file gone) must not keep the port."""
        if self.units != ["aibox.service"]:
            self._ctl("disable", "--now", "aibox.service", check=False)

    def enable_start(self) -> None:
        self._retire_single()
        self._ctl("enable", "--now", *self.units)

    def restart(self) -> None:
        self._retire_single()
        self._ctl("restart", *self.units)

    def restart_one(self, name: str) -> None:
        from aiboxctl.deploy.instances import unit_of

        self._ctl("restart", unit_of(self.layout, name))

    def stop(self) -> bool:
        was = self.state().active
        self._ctl("stop", *self.units, check=False)
        return was

    def disable(self) -> None:
        self._ctl("disable", "--now", *self.units, check=False)

    def state(self) -> ServiceState:
        """The set as one: active when every unit is; the front door's (last unit's) pid."""
        states = []
        for unit in self.units:
            r = self._ctl("show", unit, "--property=ActiveState,SubState,MainPID,NRestarts", check=False)
            states.append(dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line))
        props = states[-1]
        pid = int(props.get("MainPID", "0") or 0) or None
        down = [f"{u}: {p.get('ActiveState', '?')}" for u, p in zip(self.units, states) if p.get("ActiveState") != "active"]
        detail = f"{props.get('ActiveState', '?')} ({props.get('SubState', '?')})" if len(states) == 1 else \
            ("active (all units)" if not down else "; ".join(down))
        return ServiceState("systemd", not down, pid, detail,
                            sum(int(p.get("NRestarts", "0") or 0) for p in states))


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

    def restart_one(self, name: str) -> None:
        from aiboxctl.deploy.instances import require_instance

        require_instance(self.layout, name)
        if not supervisor.restart_child(self.layout, name):
            supervisor.spawn(self.layout, self.env)

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
    from aiboxctl.deploy.instances import gateway_config_path

    layout = InstallLayout.for_root(spec_dict["root"])
    config = gateway_config_path(layout) if spec_dict.get("instances") else layout.engine_config
    return {"AIBOX_HOME": spec_dict["state_home"], "AIBOX_CONFIG": str(config),
            "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def service_for(spec: Any) -> ServiceManager:
    """The service manager of an install spec, with the engine's environment."""
    return manager_for(spec.manager, spec.layout, service_env(spec.to_dict()))
