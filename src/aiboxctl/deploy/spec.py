"""What an installation is: the pinned inputs (:class:`InstallSpec`) and the files they render to."""

from __future__ import annotations

import ipaddress
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiboxctl import __version__
from aiboxctl.deploy.render import RenderedFile, render_template
from aiboxctl.engine_settings import EngineSettings, sections
from aiboxctl.errors import UsageError
from aiboxctl.paths import InstallLayout

UNIT_NAME = "aibox.service"

@dataclass(frozen=True)
class InstallSpec:
    """Everything the rendered files depend on. Two equal specs render identical bytes."""

    root: str
    profile: str
    description: str
    model_variant: str
    quant: str | None
    engine: EngineSettings  # with the model file: what engine.yaml says
    manager: str  # "systemd" | "supervisor"
    service_user: str
    service_group: str
    exec_argv: tuple[str, ...]
    state_home: str  # AIBOX_HOME the service sees
    system_install: bool  # root prefix "/" as root: create the user, chown files
    restart_steps: bool = False  # systemd >= 254 knows RestartSteps=/RestartMaxDelaySec=
    predicted: dict[str, Any] = field(default_factory=dict)
    # What `install` was asked (profile name or file, --model, --port, --bind): `upgrade` asks again.
    inputs: dict[str, Any] = field(default_factory=dict)
    # Several engines behind the front door (deploy/instances.py): one record per engine (name,
    # role, model_variant, quant, engine settings, env, devices). Empty: one engine, aibox.service;
    # else ``engine`` is the front door's view (service host/port, the chat model).
    instances: tuple[dict[str, Any], ...] = ()
    # Behind the front door (issue 16): ``access`` — keys, limits, usage ledger and audit chain at
    # the front door (the profile asks for an API key); ``tls`` — it serves HTTPS (deploy/access_files.py).
    access: bool = False
    tls: bool = False

    @property
    def layout(self) -> InstallLayout:
        return InstallLayout.for_root(self.root)

    @property
    def url(self) -> str:
        """The service's URL as this box's clients reach it (``/v1`` included)."""
        host = f"[{self.engine.host}]" if ":" in self.engine.host else self.engine.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.engine.port}/v1"

    @property
    def api_key_required(self) -> bool:
        return bool(self.engine.api_keys_file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root, "profile": self.profile, "description": self.description,
            "model_variant": self.model_variant, "quant": self.quant, "engine": self.engine.to_dict(),
            "manager": self.manager, "service_user": self.service_user, "service_group": self.service_group,
            "exec_argv": list(self.exec_argv), "state_home": self.state_home,
            "system_install": self.system_install, "restart_steps": self.restart_steps,
            "predicted": dict(self.predicted), "inputs": dict(self.inputs),
            **({"instances": [dict(i) for i in self.instances]} if self.instances else {}),
            **({"access": True} if self.access else {}), **({"tls": True} if self.tls else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "InstallSpec":
        engine = EngineSettings.from_mapping(d["engine"], source="the install manifest's engine settings")
        return cls(**{**d, "exec_argv": tuple(d["exec_argv"]), "engine": engine,
                      "predicted": dict(d.get("predicted") or {}), "inputs": dict(d.get("inputs") or {}),
                      "instances": tuple(dict(i) for i in d.get("instances") or ())})


def install_layout(root: str | Path | None = None) -> InstallLayout:
    """Where an installation lives: ``--root`` when given; else ``/`` for root, and for anyone
    else a prefix in their own state dir (``$AIBOX_HOME/appliance``), so that the quick start
    works without sudo. Every install and lifecycle command resolves it the same way."""
    if root is not None:
        return InstallLayout.for_root(root)
    if os.geteuid() == 0:
        return InstallLayout.for_root("/")
    from aiboxctl.paths import StatePaths

    return InstallLayout.for_root(StatePaths.from_env().home / "appliance")


def root_flag(layout: InstallLayout) -> str:
    """The ``--root`` a follow-up command needs (none for the default installation)."""
    return "" if layout.root == install_layout(None).root else f" --root {layout.root}"


def service_command() -> tuple[str, ...]:
    """The program the service runs: this installation's aiboxctl (same interpreter, same venv)."""
    script = Path(sys.executable).with_name("aiboxctl")
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(Path(sys.executable)), "-m", "aiboxctl.cli.app")


def check_bind(host: str, api_key_required: bool, *, from_flag: bool = False) -> None:
    """Security default: an API key is required whenever the service listens beyond loopback.
    ``from_flag``: the address came from ``--bind`` (the hint names what the user typed)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        where = "--bind" if from_flag else "set security.bind in the profile to"
        raise UsageError(f"bind address {host!r} is not an IP address",
                         hint=f"{where} 127.0.0.1, 0.0.0.0 or an address of this box") from exc
    if not addr.is_loopback and not api_key_required:
        raise UsageError(f"refusing to listen on {host} without an API key",
                         hint="set security.api_key: true in the profile (required beyond loopback)")


def _protect_home(paths: list[str]) -> str:
    # The venv or the model store may live in a home directory (pip install --user, AIBOX_HOME=~):
    # then the service needs to read there, never write.
    homes = ("/home/", "/root/", "/run/user/")
    return "read-only" if any(p.startswith(homes) for p in paths) else "yes"


def render_appliance(spec: InstallSpec, api_keys: str | None, internal_keys: str | None = None,
                     access: tuple[RenderedFile, ...] = ()) -> tuple[RenderedFile, ...]:
    """The files of one installation, in the order they are written. ``api_keys`` is the key
    file's content (kept across re-installs), None when the profile needs no key;
    ``internal_keys`` the front door's key the engines of a multi-instance install trust;
    ``access`` the front door's key file, box secret and TLS files (deploy/access_files.py)."""
    layout = spec.layout
    engine = spec.engine
    check_bind(engine.host, bool(engine.api_keys_file), from_flag=bool((spec.inputs or {}).get("bind")))
    owner, group = (("root", spec.service_group) if spec.system_install else (None, None))
    svc_owner = (spec.service_user, spec.service_group) if spec.system_install else (None, None)
    common = {"version": __version__, "profile": spec.profile, "model_name": engine.model_name}
    env_file = layout.etc / "aibox.env"
    engine_log = layout.log / "engine.log"
    if spec.instances:
        from aiboxctl.deploy.instances import gateway_config_path

        config = gateway_config_path(layout)
    else:
        config = layout.engine_config
    files = [] if spec.instances else [
        RenderedFile(str(layout.engine_config),
                     render_template("engine.yaml.j2", {**common, "engine_sections": sections(engine)}).encode(),
                     0o640, owner, group)]
    files.append(RenderedFile(str(env_file), render_template("aibox.env.j2", {
        **common, "state_home": spec.state_home, "engine_config": str(config),
    }).encode(), 0o644, "root" if spec.system_install else None, "root" if spec.system_install else None))
    if spec.instances and bool(api_keys) != spec.access:
        raise UsageError("behind the front door a client key is the access library's (keys.json): "
                         "the install spec and the admin key disagree")
    if spec.instances and spec.access and not any(f.path.endswith("/keys.json") for f in access):
        raise UsageError("the front door checks keys but no key file was prepared (deploy/access_files.py)")
    files.extend(access)
    if api_keys is not None:
        if not engine.api_keys_file:
            raise UsageError("an API key was generated but the engine config names no api_keys_file")
        # behind the front door the key is for this box's own tools (the gateway reads keys.json): root's
        key_owner = ("root", "root") if spec.instances and spec.system_install else svc_owner
        files.append(RenderedFile(str(engine.api_keys_file), api_keys.encode(), 0o600, *key_owner,
                                  secret=True))
    unit_context = {
        **common,
        "description": f"aiboxctl LLM service ({spec.profile}: {engine.model_name})",
        "user": spec.service_user, "group": spec.service_group,
        "state_home": spec.state_home, "engine_config": str(layout.engine_config),
        "env_file": str(env_file), "engine_log": str(engine_log),
        "exec_argv": [*spec.exec_argv, "serve", "--config", str(layout.engine_config)],
        "restart_steps": spec.restart_steps, "mlock": engine.mlock,
        "protect_home": _protect_home([*spec.exec_argv, str(engine.model), spec.state_home,
                                       *(str(i["engine"].get("model")) for i in spec.instances)]),
        "read_write_paths": [str(layout.state), str(layout.log)],
        "private_devices": engine.n_gpu_layers == 0,
    }
    if spec.instances:
        from aiboxctl.deploy.instances import render_set

        files.extend(render_set(spec, internal_keys or "", unit_context, common, owner, group, svc_owner))
    else:
        files.append(RenderedFile(str(layout.unit_dir / UNIT_NAME),
                                  render_template("aiboxctl.service.j2", unit_context).encode(), 0o644,
                                  "root" if spec.system_install else None, "root" if spec.system_install else None))
    files.append(RenderedFile(str(layout.logrotate_dir / "aibox"), render_template("logrotate.j2", {
        **common, "log_dir": str(layout.log), "user": spec.service_user if spec.system_install else "root",
        "group": spec.service_group if spec.system_install else "root",
    }).encode(), 0o644, "root" if spec.system_install else None, "root" if spec.system_install else None))
    return tuple(files)
