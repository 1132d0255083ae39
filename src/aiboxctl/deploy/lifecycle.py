"""Lifecycle of an installation, read from its manifest: status, start/stop/restart, logs,
uninstall, upgrade and rollback."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.deploy import manifest as mf
from aiboxctl.deploy.install import (DEFAULT_HEALTH_TIMEOUT_S, InstallResult, _alive_check, _noop,
                                     after_start_notes, apply_spec, install)
from aiboxctl.deploy.recovery import install_lock, recover_interrupted
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.deploy.services import ServiceManager, service_for
from aiboxctl.deploy.spec import InstallSpec, install_layout, root_flag
from aiboxctl.deploy.transaction import check_not_interrupted, plan_changes
from aiboxctl.errors import AiboxError, UsageError, VerificationFailed
from aiboxctl.paths import InstallLayout
from aiboxctl.system import run_command

Progress = Callable[[str], None]


def _installed(root: str | Path | None) -> tuple[InstallLayout, mf.InstallManifest, InstallSpec, ServiceManager]:
    layout = install_layout(root)
    check_not_interrupted(layout)  # an install killed half way is reported, never taken for one
    manifest = mf.require_manifest(layout)
    spec = InstallSpec.from_dict(manifest.spec)
    return layout, manifest, spec, service_for(spec)


@dataclass(frozen=True)
class StatusResult:
    root: str
    healthy: bool
    service: dict[str, Any]
    health: dict[str, Any]
    profile: str
    model_variant: str
    model_path: str
    generation: int
    endpoint: str
    api_key_file: str | None
    plan: dict[str, Any]
    memory_rss_bytes: int | None
    log_file: str
    model_state: str = "unknown"  # verified | unmanaged | changed | quarantined | missing
    problems: tuple[str, ...] = ()  # why it is not healthy beyond /health (the model, mostly)
    warnings: tuple[str, ...] = ()  # healthy, but not as planned (a self-test fallback) or not lasting
    instances: tuple[dict[str, Any], ...] = ()  # several engines behind the front door: each one's state


def _rss(pid: int | None) -> int | None:
    if not pid:
        return None
    try:
        import psutil

        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            total += child.memory_info().rss
        return total
    except Exception:  # noqa: BLE001 - gone or not ours: unknown
        return None


def status(root: str | Path | None = None) -> StatusResult:
    from aiboxctl.client.api import fallback_note, health, served_changes
    from aiboxctl.deploy.endpoint import endpoint_from_install
    from aiboxctl.deploy import modelcheck

    layout, manifest, spec, service = _installed(root)
    state = service.state()
    endpoint = endpoint_from_install(layout.root)
    code, body = health(endpoint) if state.active else (None, {})
    # /health speaks for the engine; whether what it serves is the verified model is ours to say.
    model = modelcheck.inspect_model(manifest.model_path)
    problems = [model.problem] if model.problem else []
    if state.active and modelcheck.engine_has_other_model(state.pid, manifest.model_path):
        problems.append("the engine serves an earlier copy of its model file (replaced since it started)")
    if problems:
        problems[-1] += f": {_reinstall_hint(layout, spec)}"
    problems += [str(p) for p in body.get("problems") or ()]  # the front door's: a ledger it cannot write
    e = spec.engine.to_dict()
    plan = {k: e.get(k) for k in ("n_ctx", "parallel", "n_batch", "threads", "cache_type_k", "cache_type_v",
                                  "flash_attn", "n_gpu_layers", "repack")}
    plan["predicted"] = spec.predicted
    # What runs, not only what was planned: a self-test fallback (repack off on a CPU whose AMX
    # faults) shows in the plan's settings, with the planned values kept beside them.
    served = served_changes(body)
    if served:
        plan["planned"] = {k: plan.get(k) for k in served if k in plan}
        plan.update({k: v for k, v in served.items() if k in plan})
        plan["fallback"] = body.get("fallback")
    plan["predicted_for"] = "the plan"
    if body.get("fallback"):
        plan["planned_predicted"] = dict(spec.predicted)
        record = manifest.served
        if record.get("fallback") == body["fallback"] and record.get("predicted"):
            plan["predicted"] = dict(record["predicted"])
            plan["predicted_for"] = f"the self-test fallback '{body['fallback']}' ({record.get('basis', '')})"
        else:  # fell back after install (or install could not re-estimate): say the figures are the plan's
            plan["predicted_for"] = (f"the planned settings, not the fallback '{body['fallback']}' that runs "
                                     f"({record.get('error') or 'no re-estimate recorded for it'})")
    warnings = [w for w in (fallback_note(body),) if w]
    if spec.manager == "supervisor":
        from aiboxctl.deploy.boot import boot_hook

        warnings.append(boot_hook(root_flag(layout)).note())
    instances = ()
    if spec.instances:
        from aiboxctl.deploy import supervisor
        from aiboxctl.deploy.instances import instance_status

        kids = supervisor.read_state(layout).children if spec.manager == "supervisor" else {}
        instances = instance_status(spec, kids)
        problems += [f"instance {i['name']} is not healthy (HTTP {i['http_status']})" for i in instances
                     if state.active and not i["healthy"]]
    slow, down = front_door_replicas(body)
    warnings += slow
    problems += down
    return StatusResult(
        instances=instances, root=str(layout.root), healthy=code == 200 and not problems, service=vars(state) | {},
        health={"http_status": code, **body}, profile=manifest.profile, model_variant=manifest.model_variant,
        model_path=manifest.model_path, generation=manifest.generation, endpoint=f"{endpoint.url}/v1",
        api_key_file=e.get("api_keys_file"), plan=plan, memory_rss_bytes=_rss(state.pid),
        log_file=str(layout.log / "engine.log"), model_state=model.state, problems=tuple(problems),
        warnings=tuple(warnings),
    )


def front_door_replicas(body: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(warnings, problems) from the front door's /health: a replica it counts as slow (its
    health checks time out, it still serves) and one it has taken out, each with its reason.
    An engine's own /health has no ``models``: nothing."""
    models = body.get("models")
    slow, down = [], []
    for model, m in (models.items() if isinstance(models, dict) else ()):
        if not isinstance(m, dict):
            continue
        slow += [f"the front door counts {name} ({model}) as slow: {why}" for name, why in (m.get("slow") or {}).items()]
        down += [f"the front door took {name} ({model}) out: {why}" for name, why in (m.get("down") or {}).items()]
    return slow, down


def _reinstall_hint(layout: InstallLayout, spec: InstallSpec) -> str:
    profile = (spec.inputs or {}).get("profile") or spec.profile
    return f"aiboxctl install --profile {profile}{root_flag(layout)} --yes (pulls it again, restarts the service)"


def _require_model(layout: InstallLayout, spec: InstallSpec, service: ServiceManager) -> None:
    """Never (re)start on a model that fails verification; and a running engine on one is
    stopped (it maps those very bytes)."""
    from aiboxctl.deploy import modelcheck

    try:
        modelcheck.require_model(str(spec.engine.model), hint=_reinstall_hint(layout, spec))
    except VerificationFailed as exc:
        if service.stop():
            exc.message += "; the service is stopped"
        raise


@dataclass(frozen=True)
class ServiceActionResult:
    root: str
    action: str
    manager: str
    was_running: bool
    running: bool
    healthy: bool | None


def start(root: str | Path | None = None, *, wait: bool = True,
          timeout: float = DEFAULT_HEALTH_TIMEOUT_S) -> ServiceActionResult:
    from aiboxctl.client.api import wait_healthy
    from aiboxctl.deploy.endpoint import endpoint_from_install

    layout, _, spec, service = _installed(root)
    _require_model(layout, spec, service)
    was = service.state().active
    if not was:
        service.enable_start()
    if wait:
        wait_healthy(endpoint_from_install(layout.root), timeout, _alive_check(service))
    return ServiceActionResult(str(layout.root), "start", spec.manager, was, True, True if wait else None)


def stop(root: str | Path | None = None) -> ServiceActionResult:
    layout, _, spec, service = _installed(root)
    was = service.stop()
    return ServiceActionResult(str(layout.root), "stop", spec.manager, was, service.state().active, None)


def restart(root: str | Path | None = None, *, wait: bool = True,
            timeout: float = DEFAULT_HEALTH_TIMEOUT_S, instance: str | None = None) -> ServiceActionResult:
    """``instance``: one engine of a multi-instance install (or ``gateway``), the rest untouched."""
    from aiboxctl.client.api import wait_healthy
    from aiboxctl.deploy.endpoint import endpoint_from_install

    layout, _, spec, service = _installed(root)
    _require_model(layout, spec, service)
    was = service.state().active
    if instance is not None and was:
        from aiboxctl.deploy.instances import wait_instance

        service.restart_one(instance)
        if wait:
            wait_instance(spec, instance, timeout)
    else:
        service.restart() if was else service.enable_start()
    if wait:
        wait_healthy(endpoint_from_install(layout.root), timeout, _alive_check(service))
    return ServiceActionResult(str(layout.root), "restart", spec.manager, was, True, True if wait else None)


def log_path(root: str | Path | None = None, instance: str | None = None) -> Path:
    """The service's log; ``instance``: one engine of a multi-instance install (or ``gateway``)."""
    layout = install_layout(root)
    if instance is not None:
        from aiboxctl.deploy.instances import require_instance

        mf.require_manifest(layout)
        require_instance(layout, instance)
        return layout.log / f"{instance}.log"
    path = layout.log / "engine.log"
    if not path.exists():
        mf.require_manifest(layout)
    return path


def tail_lines(path: Path, n: int) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = min(size, max(8192, n * 400))
            fh.seek(size - block)
            data = fh.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    lines = data.splitlines()
    return lines[-n:] if n > 0 else []


def follow(path: Path, poll: float = 0.25) -> Iterator[str]:
    """Lines appended to the log from now on (survives copytruncate rotation)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        buf = b""
        while True:
            chunk = fh.read()
            if chunk:
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode(errors="replace")
            else:
                if os.fstat(fh.fileno()).st_size < fh.tell():  # truncated by logrotate
                    fh.seek(0)
                time.sleep(poll)


@dataclass(frozen=True)
class UninstallResult:
    root: str
    removed_files: tuple[str, ...]
    removed_dirs: tuple[str, ...]
    removed_users: tuple[str, ...]
    kept: tuple[str, ...]
    purged_models: tuple[str, ...]
    service_stopped: bool


def uninstall(root: str | Path | None = None, *, purge: bool = False) -> UninstallResult:
    """Stop and disable the service, remove exactly the files, directories and users the manifest
    lists (and the manifest and its generations). Logs and the model are kept unless ``purge``.
    An install, upgrade or rollback that was interrupted is undone first (what it started is
    stopped, what it wrote removed): a first install interrupted that way leaves nothing else."""
    layout = install_layout(root)
    with install_lock(layout):
        recovered = recover_interrupted(layout)
        manifest = mf.load_manifest(layout) if recovered is not None else mf.require_manifest(layout)
        if manifest is None:
            kept = tuple(str(p) for p in sorted(layout.log.iterdir())) if layout.log.is_dir() else ()
            if purge:
                shutil.rmtree(layout.log, ignore_errors=True)
            return UninstallResult(str(layout.root), recovered.removed_files, (), recovered.removed_users,
                                   () if purge else kept, (), recovered.service_stopped)
        spec = InstallSpec.from_dict(manifest.spec)
        return _uninstall(layout, manifest, spec, service_for(spec), purge)


def _uninstall(layout: InstallLayout, manifest: mf.InstallManifest, spec: InstallSpec, service: ServiceManager,
               purge: bool) -> UninstallResult:
    stopped = service.stop()
    service.disable()
    if spec.manager == "systemd":
        run_command(["systemctl", "daemon-reload"], timeout=60)
    removed: list[str] = []
    for entry in manifest.files:
        p = Path(entry.path)
        if p.exists() or p.is_symlink():
            p.unlink()
            removed.append(entry.path)
    shutil.rmtree(mf.generations_dir(layout), ignore_errors=True)
    layout.manifest.unlink(missing_ok=True)
    kept: list[str] = []
    purged: list[str] = []
    # Governed access: the key file's lock goes with it; the usage ledger is a record, like the
    # logs (the access audit chain is one of them): kept unless purged.
    from aiboxctl.access.paths import AccessPaths

    access = AccessPaths.for_layout(layout)
    Path(str(access.keys) + ".lock").unlink(missing_ok=True)
    for p in (access.ledger, *(access.ledger.with_name(access.ledger.name + s) for s in ("-wal", "-shm"))):
        if p.exists():
            if purge:
                p.unlink()
            else:
                kept.append(str(p))
    if layout.log.is_dir():
        for p in sorted(layout.log.iterdir()):
            if purge:
                p.unlink() if p.is_file() else shutil.rmtree(p)
            else:
                kept.append(str(p))
    if purge and manifest.model_path and Path(manifest.model_path).is_file():
        # Through the store, so that its index forgets the file too (all shards of it).
        from aiboxctl.hub.store import ModelStore
        from aiboxctl.paths import StatePaths

        try:
            purged.extend(str(r.path) for r in ModelStore(StatePaths.from_env().models).remove(str(manifest.model_path)))
        except AiboxError:
            pass  # not in the store's index
        if Path(manifest.model_path).is_file():  # not a store file (a --model path)
            Path(manifest.model_path).unlink()
            purged.append(manifest.model_path)
    for runtime in (layout.run / "supervisor.pid", layout.run / "supervisor.json"):
        runtime.unlink(missing_ok=True)
    removed_dirs: list[str] = []
    candidates = [*manifest.directories, str(layout.run)]
    for d in sorted(set(candidates), key=lambda s: s.count("/"), reverse=True):
        try:
            Path(d).rmdir()
            removed_dirs.append(d)
        except OSError:
            pass
    users: list[str] = []
    for user in manifest.users_created:
        r = run_command(["userdel", user], timeout=30)
        if r.ok:
            users.append(user)
    return UninstallResult(str(layout.root), tuple(removed), tuple(removed_dirs), tuple(users), tuple(kept),
                           tuple(purged), stopped)


def upgrade(root: str | Path | None = None, *, model: str | None = None, dry_run: bool = False,
            health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S, progress: Progress = _noop,
            confirm: Callable[[str], None] | None = None) -> InstallResult:
    """Re-plan and re-render the installed profile (new aiboxctl, or ``--model``); the current
    generation stays in var/lib/aibox/generations for ``rollback``."""
    layout = install_layout(root)
    manifest = mf.require_manifest(layout)
    spec = InstallSpec.from_dict(manifest.spec)
    asked = spec.inputs or {"profile": spec.profile, "port": spec.engine.port, "bind": spec.engine.host}
    if not dry_run and confirm is not None:
        # Ask (or, with no person and no --yes, refuse) before planning, pulling or building:
        # asking after a download wastes it. The answer covers the whole upgrade.
        target = f"model {model}" if model else f"a fresh plan for profile {spec.profile} (now {spec.model_variant})"
        confirm(f"Upgrade aibox under {layout.root} to {target}: pull or build what it needs, rewrite the "
                "configuration and restart the service (generation kept for rollback)?")
        confirm = _already_confirmed
    return install(asked["profile"], model=model or asked.get("model"), root=layout.root, port=asked.get("port"),
                   bind=asked.get("bind"), dry_run=dry_run, replan=True, health_timeout=health_timeout,
                   progress=progress, confirm=confirm, sizing=asked.get("sizing"),
                   tls_cert=asked.get("tls_cert"), tls_key=asked.get("tls_key"))


def _already_confirmed(_question: str) -> None:
    """The upgrade was agreed to up front: the install steps inside it do not ask again."""


def rollback(root: str | Path | None = None, *, to: int | None = None, dry_run: bool = False,
             health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S, progress: Progress = _noop,
             confirm: Callable[[str], None] | None = None) -> InstallResult:
    """Put back a kept generation (default: the one before the current) byte for byte, as a
    new generation, restart and verify it."""
    layout, manifest, _, _ = _installed(root)
    kept = [g for g in mf.list_generations(layout) if g != manifest.generation]
    older = [g for g in kept if g < manifest.generation]
    target = to if to is not None else (older[-1] if older else None)
    if target is None or target not in kept:
        raise UsageError(f"no earlier generation to roll back to (kept: {', '.join(map(str, kept)) or 'none'})",
                         hint=f"aiboxctl status{root_flag(layout)}")
    old, contents = mf.load_generation(layout, target)
    spec = InstallSpec.from_dict(old.spec)
    files = tuple(RenderedFile(e.path, contents[e.path], int(e.mode, 8),
                               e.owner if spec.system_install else None,
                               e.group if spec.system_install else None, e.secret) for e in old.files)
    steps: dict[str, float] = {}
    pinned = spec.engine.to_dict()
    common = dict(root=str(layout.root), profile=spec.profile, model_variant=spec.model_variant, quant=spec.quant,
                  model_path=str(spec.engine.model), manager=spec.manager,
                  endpoint=spec.url,
                  api_key_file=pinned["api_keys_file"], audit_log=pinned["audit_log"],
                  engine=pinned, predicted=dict(spec.predicted), reused_plan=True,
                  next_commands=(f"aiboxctl status{root_flag(layout)}",))
    if dry_run:
        changes = plan_changes(files, manifest)
        return InstallResult(dry_run=True, changed=sum(c.changed for c in changes), changes=changes,
                             generation=manifest.generation, service_action="would-restart", smoke={},
                             steps=steps, notes=(f"would roll back to generation {target}",), **common)
    if confirm is not None:
        confirm(f"Roll back {layout.root} from generation {manifest.generation} to {target}?")
    changes, generation, action, smoke = apply_spec(
        layout, spec, files, manifest, fingerprint=old.inputs_fingerprint,
        progress=progress, health_timeout=health_timeout, steps=steps, force_restart=True)
    return InstallResult(dry_run=False, changed=sum(c.changed for c in changes), changes=changes,
                         generation=generation, service_action=action, smoke=smoke, steps=steps,
                         notes=(f"rolled back to the files of generation {target}",
                                *after_start_notes(layout, spec, smoke)), **common)
