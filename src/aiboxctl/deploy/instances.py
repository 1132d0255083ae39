"""An installation of several engines behind the front door (issue 14): what a plan with more
than one instance (the chat model's replicas, the embedding and rerank companions) renders to.

Under ``etc/aibox``: ``engines/<name>.yaml`` (one engine config per replica, each on its own
loopback port, trusting only the internal token in ``engine-keys``), ``engines/<name>.env`` (the
vendor's visibility variable that pins it to its devices), ``gateway.yaml`` (the front door on the
service port); under the unit directory the systemd template ``aibox-engine@.service`` and
``aibox-gateway.service``, rendered from the single engine's hardened template. The built-in
supervisor runs the same set (:mod:`aiboxctl.deploy.supervisor` reads these files). Every file
goes through the one install transaction, so upgrade, rollback and uninstall treat the set as one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.env import Env
from aiboxctl.errors import UsageError
from aiboxctl.paths import InstallLayout

ENGINE_UNIT_TEMPLATE = "aibox-engine@.service"
GATEWAY_UNIT = "aibox-gateway.service"
GATEWAY_NAME = "gateway"  # `logs gateway`, `restart gateway`
_INSTANCE = "@INSTANCE@"  # rendered in place of systemd's %i (sd_quote would double a literal %)


def engines_dir(layout: InstallLayout) -> Path:
    return layout.etc / "engines"


def gateway_config_path(layout: InstallLayout) -> Path:
    return layout.etc / "gateway.yaml"


def internal_keys_path(layout: InstallLayout) -> Path:
    return layout.etc / "engine-keys"


def is_multi(layout: InstallLayout) -> bool:
    """Is the installation under ``layout`` a set of engines behind the front door?"""
    return gateway_config_path(layout).is_file()


def instance_names(layout: InstallLayout) -> list[str]:
    """The engine instances rendered under ``layout`` (their config files), sorted."""
    d = engines_dir(layout)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def engine_unit(name: str) -> str:
    return f"aibox-engine@{name}.service"


def units_for(names: list[str]) -> list[str]:
    """The systemd units of an installation whose engine instances are ``names``: aibox.service
    when there are none (one engine), else one per engine and the front door last."""
    from aiboxctl.deploy.spec import UNIT_NAME

    return [*map(engine_unit, names), GATEWAY_UNIT] if names else [UNIT_NAME]


def unit_names(layout: InstallLayout) -> list[str]:
    """The systemd units of the installation under ``layout`` (by its rendered files)."""
    return units_for(instance_names(layout) if is_multi(layout) else [])


def unit_of(layout: InstallLayout, name: str) -> str:
    if name == GATEWAY_NAME:
        return GATEWAY_UNIT
    require_instance(layout, name)
    return engine_unit(name)


def require_instance(layout: InstallLayout, name: str) -> None:
    known = instance_names(layout)
    if name != GATEWAY_NAME and name not in known:
        raise UsageError(f"no instance named {name!r} under {layout.root}",
                         hint=f"instances: {', '.join([*known, GATEWAY_NAME]) if known else 'none (a single engine)'}")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines of a rendered env file (POSIX shell quoting, # comments)."""
    import shlex

    out: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value)
        out[key.strip()] = words[0] if words else ""
    return out


def new_internal_keys() -> str:
    return ("# The front door's key: every engine of this box trusts only it (api_keys_file).\n"
            f"gateway:sk-aibox-internal-{secrets.token_urlsafe(32)}\n")


@dataclass(frozen=True)
class PlannedInstance:
    """One replica of a plan's instance, as install needs it."""

    name: str
    role: str
    variant: str
    quant: str
    engine: EngineSettings  # from the plan (model left empty)
    env: dict[str, str]
    devices: tuple[str, ...]
    local_file: str | None  # the GGUF when the plan names a file on this box
    cpu_pin: dict[str, Any] | None = None  # {"numa_node": 0, "cpus": "0-15"}: its devices' node


def planned_instances(plan: Any) -> list[PlannedInstance]:
    """Every replica of every instance of ``plan``, in order (chat replicas first)."""
    out: list[PlannedInstance] = []
    for inst in plan.instances:
        local = inst.file.file if inst.file.source == "local" else None
        for i, name in enumerate(inst.replica_names()):
            pin = inst.cpu_pins[i] if i < len(inst.cpu_pins) else None
            out.append(PlannedInstance(name, inst.role, inst.variant, inst.quant, inst.engine, inst.visible_env(i),
                                       inst.device_groups[i], local, pin.to_dict() if pin else None))
    return out


def instance_entries(layout: InstallLayout, planned: list[PlannedInstance], model_paths: dict[str, str],
                     service_port: int) -> tuple[dict[str, Any], ...]:
    """The install spec's record of each engine: its pinned settings (model file, loopback port,
    internal key) and environment. Ports follow the service port: service+1, service+2, …"""
    entries = []
    for i, p in enumerate(planned):
        engine = p.engine.replace(model=Path(model_paths[p.name]), model_name=p.variant, host="127.0.0.1",
                                  port=service_port + 1 + i, api_keys_file=internal_keys_path(layout),
                                  audit_log=None, audit_content=False)
        entries.append({"name": p.name, "role": p.role, "model_variant": p.variant, "quant": p.quant,
                        "engine": engine.to_dict(), "env": dict(p.env), "devices": list(p.devices),
                        **({"cpu_pin": dict(p.cpu_pin)} if p.cpu_pin else {})})
    return tuple(entries)


def gateway_document(spec: Any) -> dict[str, Any]:
    layout = spec.layout
    engines = []
    for e in spec.instances:
        s = e["engine"]
        group = e["name"].rsplit("-", 1)[0] if e["role"] == "chat" and "-" in e["name"] else e["name"]
        engines.append({"name": e["name"], "role": e["role"], "models": [s["model_name"]],
                        "url": f"http://127.0.0.1:{s['port']}", "group": group})
    doc: dict[str, Any] = {"host": spec.engine.host, "port": spec.engine.port,
                           "internal_token_file": str(internal_keys_path(layout)), "engines": engines}
    from aiboxctl.access.paths import AccessPaths

    paths = AccessPaths.for_layout(layout)
    if spec.access:  # governed access (docs/access.md): the files access_files.py made
        doc.update({"keys_file": str(paths.keys), "ledger_file": str(paths.ledger), "secret_file": str(paths.secret)})
        if spec.engine.audit_log:  # the profile's audit_log: the hash-chained audit at the front door
            doc.update({"audit_file": str(paths.audit), "audit_content": bool(spec.engine.audit_content)})
    if spec.tls:  # HTTPS for the LAN; plain HTTP on 127.0.0.1 for this box's own tools (docs/access.md)
        from aiboxctl.gateway.config import default_loopback_port

        doc["tls_dir"] = str(paths.tls_dir)
        doc["loopback_port"] = default_loopback_port(spec.engine.port)
    return doc


def render_set(spec: Any, internal_keys: str, unit_context: dict[str, Any], common: dict[str, Any],
               owner: str | None, group: str | None, svc_owner: tuple[str | None, str | None]) -> list:
    """The files of a multi-instance installation beyond aibox.env and logrotate (spec.py's)."""
    import yaml

    from aiboxctl.deploy.render import RenderedFile, render_template, safe_path, sh_quote
    from aiboxctl.engine_settings import sections
    from aiboxctl.gateway.config import gateway_config_from_text

    layout = spec.layout
    root_owned = ("root", "root") if spec.system_install else (None, None)
    files = []
    for e in spec.instances:
        engine = EngineSettings.from_mapping(e["engine"], source=f"instance {e['name']} of the install spec")
        files.append(RenderedFile(str(engines_dir(layout) / f"{e['name']}.yaml"), render_template(
            "engine.yaml.j2", {**common, "model_name": engine.model_name, "engine_sections": sections(engine)}).encode(),
            0o640, owner, group))
        env_lines = [f"# aiboxctl {common['version']}: the devices engine {e['name']} may see "
                     f"({', '.join(e['devices']) or 'none: it runs on the CPU'})."]
        env_lines += [f"{k}={sh_quote(v)}" for k, v in sorted(e["env"].items())]
        pin = e.get("cpu_pin")
        if pin:  # the NUMA node of its devices: the supervisor reads this line, systemd the drop-in
            env_lines.append(f"{Env.CPU_AFFINITY}={sh_quote(pin['cpus'])}")
            files.append(RenderedFile(str(layout.unit_dir / f"{engine_unit(e['name'])}.d" / "numa.conf"), (
                f"# aiboxctl {common['version']}: engine {e['name']} on NUMA node {pin['numa_node']}, "
                "the node of its devices.\n"
                f"[Service]\nCPUAffinity={pin['cpus']}\nNUMAPolicy=bind\nNUMAMask={pin['numa_node']}\n").encode(),
                0o644, *root_owned))
        files.append(RenderedFile(str(engines_dir(layout) / f"{e['name']}.env"), ("\n".join(env_lines) + "\n").encode(),
                                  0o644, *root_owned))
    files.append(RenderedFile(str(internal_keys_path(layout)), internal_keys.encode(), 0o600, *svc_owner, secret=True))
    text = (f"# aiboxctl {common['version']}: the front door over this box's engines (profile {spec.profile}).\n"
            "# Rendered by `aiboxctl install`; edits are overwritten by `aiboxctl upgrade`.\n"
            + yaml.safe_dump(gateway_document(spec), sort_keys=False, allow_unicode=True))
    gateway_config_from_text(text, "the rendered gateway.yaml")  # never install one the gateway refuses
    files.append(RenderedFile(str(gateway_config_path(layout)), text.encode(), 0o640, owner, group))
    engine_cfg = str(engines_dir(layout) / f"{_INSTANCE}.yaml")
    safe_path(str(engines_dir(layout)))
    engine_text = render_template("aiboxctl.service.j2", {
        **unit_context,
        "description": f"aiboxctl engine {_INSTANCE} ({spec.profile})",
        "engine_config": engine_cfg, "engine_log": str(layout.log / f"{_INSTANCE}.log"),
        "extra_env_files": [str(engines_dir(layout) / f"{_INSTANCE}.env")],
        "exec_argv": [*spec.exec_argv, "serve", "--config", engine_cfg],
        # an engine on accelerators needs their device nodes; the CPU-only ones do not
        "private_devices": all(not e["devices"] for e in spec.instances),
    }).replace(_INSTANCE, "%i")
    files.append(RenderedFile(str(layout.unit_dir / ENGINE_UNIT_TEMPLATE), engine_text.encode(), 0o644, *root_owned))
    gw_cfg = str(gateway_config_path(layout))
    gateway_unit = render_template("aiboxctl.service.j2", {
        **unit_context,
        "description": f"aiboxctl front door ({spec.profile})",
        "engine_config": gw_cfg, "engine_log": str(layout.log / "gateway.log"), "extra_env_files": [],
        "exec_argv": [*spec.exec_argv, "gateway", "--config", gw_cfg],
        "mlock": False, "private_devices": True,
    })
    files.append(RenderedFile(str(layout.unit_dir / GATEWAY_UNIT), gateway_unit.encode(), 0o644, *root_owned))
    return files


def instance_status(spec: Any, supervised: dict[str, int] | None = None) -> tuple[dict[str, Any], ...]:
    """Every engine of the set as ``status`` shows it: role, model, devices, health, slots busy
    (each engine's own /health on its loopback port, with the internal key)."""
    from aiboxctl.client.api import health

    layout = spec.layout
    token = _internal_token(layout)
    out = []
    for e in spec.instances:
        s = e["engine"]
        code, body = health(_engine_endpoint(e, token))
        out.append({"name": e["name"], "role": e["role"], "model": e["model_variant"], "devices": list(e["devices"]),
                    "port": s["port"], "healthy": code == 200, "http_status": code,
                    "slots_busy": body.get("slots_busy"), "slots_free": body.get("slots_free"),
                    "pid": (supervised or {}).get(e["name"]), "log_file": str(layout.log / f"{e['name']}.log")})
    return tuple(out)


def _internal_token(layout: InstallLayout) -> str | None:
    from aiboxctl.gateway.config import read_token

    try:
        return read_token(internal_keys_path(layout))
    except (UsageError, OSError):
        return None


def _engine_endpoint(entry: dict[str, Any], token: str | None) -> Any:
    """One engine of the set on its loopback port, with the internal key."""
    from aiboxctl.client.api import Endpoint

    return Endpoint(f"http://127.0.0.1:{entry['engine']['port']}", token)


def wait_instance(spec: Any, name: str, timeout: float) -> None:
    """Until instance ``name`` (or the front door) answers /health 200 again after a restart
    (that one alone is asked)."""
    import time

    from aiboxctl.client.api import health
    from aiboxctl.errors import ServiceDown

    if name == GATEWAY_NAME:
        from aiboxctl.deploy.endpoint import endpoint_from_install

        endpoint = endpoint_from_install(spec.root)
    else:
        endpoint = _engine_endpoint(next(e for e in spec.instances if e["name"] == name), _internal_token(spec.layout))
    time.sleep(0.5)  # the old process's last answers are not the new one's
    deadline = time.monotonic() + timeout
    while True:
        code, _ = health(endpoint)
        if code == 200:
            return
        if time.monotonic() >= deadline:
            raise ServiceDown(f"instance {name} did not become healthy within {timeout:.0f} s",
                              hint=f"aiboxctl logs {name}")
        time.sleep(0.25)
