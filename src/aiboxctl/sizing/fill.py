"""The planner fills the box: once the chat model's configuration is chosen, the devices it left
go to more replicas of it, then to the knowledge-base engines; a device that stays idle says why.

A plan is then a set of :class:`Instance`: for each role the variant, quantization and engine
settings of one replica, how many replicas, and the device group each replica owns (an engine is
pinned to its group with the vendor's visibility variable, :func:`visible_devices_env`, and sees
it renumbered from 0).

* Replicas: the chosen configuration holds all layers on k accelerators of N. ``N // k`` copies
  fit (each group checked against the estimate), at most one per user (a replica beyond that
  serves nobody). llama.cpp splits layers, so spreading one copy over more devices never decodes
  faster; more copies do: the users are spread over them, and the per-user speed is the
  throughput model's at ``ceil(users / R)`` streams per replica. Each replica keeps the plan's
  slots and context, so when one fails the others can take its users (slower, not refused).
* Companions (embedding, rerank): planned on host memory beside the chat model
  (:mod:`~aiboxctl.sizing.knowledge_base`); each moves to a device the replicas left when its
  weights are legal there and it fits the device's budget.
* Idle: a device no instance uses, with the reason (no llama.cpp backend, the chat model runs
  on the CPU and why, fewer devices left than a replica needs, more replicas than users).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from aiboxctl.engine_settings import EngineSettings
from aiboxctl.hardware.backends import device_prefix, visible_devices_env
from aiboxctl.hardware.cpu import format_cpulist
from aiboxctl.jsonable import to_jsonable
from aiboxctl.models.catalog import Catalog, QuantFile, facts_for
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.box import Box, BoxDevice, Idle
from aiboxctl.sizing.configs import tensor_split
from aiboxctl.sizing.memory import EngineParams, MemoryEstimate, estimate_memory
from aiboxctl.sizing.profiles import UseCaseProfile
from aiboxctl.sizing.throughput import estimate_throughput

# Whether a backend can run a file's weights on its devices: None when it can, else why not.
BackendCheck = Callable[[QuantFile, tuple[BoxDevice, ...]], "str | None"]


@dataclass(frozen=True)
class CpuPin:
    """The NUMA node and CPUs one replica is pinned to (systemd CPUAffinity=/NUMAMask=, the
    built-in supervisor's sched_setaffinity)."""

    node: int
    cpus: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"numa_node": self.node, "cpus": format_cpulist(self.cpus)}


def numa_pins(box: Box, groups: list[tuple[BoxDevice, ...]]) -> tuple[CpuPin | None, ...]:
    """Per replica, the node its devices hang off and a share of that node's CPUs (replicas on
    one node split its CPUs round-robin, which keeps a core and its SMT sibling, numbered N
    apart, together when N is even); None for a replica on the CPU or over several nodes. ()
    on a one-node box or when the probe did not see the nodes."""
    if len(box.numa_cpus) < 2:
        return ()
    nodes: list[int | None] = []
    for g in groups:
        seen = {d.numa_node for d in g}
        node = next(iter(seen)) if len(seen) == 1 else None
        nodes.append(node if node is not None and 0 <= node < len(box.numa_cpus) else None)
    pins: list[CpuPin | None] = []
    for i, node in enumerate(nodes):
        if node is None:
            pins.append(None)
            continue
        sharing = [j for j, n in enumerate(nodes) if n == node]
        cpus = box.numa_cpus[node]
        share = cpus[sharing.index(i)::len(sharing)] if len(cpus) >= len(sharing) else cpus
        pins.append(CpuPin(node, share))
    return tuple(pins) if any(pins) else ()


@dataclass(frozen=True)
class Instance:
    """One role's engine: the settings of one replica, the replicas and each one's devices."""

    name: str  # "chat", "embedding", "rerank": replicas are name-0, name-1, … when more than one
    role: str  # chat | embedding | rerank
    variant: str
    quant: str
    file: QuantFile
    engine: EngineSettings  # one replica, its devices numbered from 0 (model left empty)
    device_groups: tuple[tuple[str, ...], ...]  # per replica, the box's device names; () on the CPU
    backend: str = "cpu"  # ggml backend key of the devices
    per_user_tok_s: float | None = None  # chat: with the users spread over the replicas
    aggregate_tok_s: float | None = None
    streams_per_replica: int | None = None
    cpu_pins: tuple[CpuPin | None, ...] = ()  # per replica; () = none pinned

    @property
    def replicas(self) -> int:
        return len(self.device_groups)

    def replica_names(self) -> tuple[str, ...]:
        return (self.name,) if self.replicas == 1 else tuple(f"{self.name}-{i}" for i in range(self.replicas))

    def visible_env(self, replica: int) -> dict[str, str]:
        """The environment that pins replica ``replica`` to its devices (empty on the CPU)."""
        group = self.device_groups[replica]
        if not group:
            return {}
        prefix = device_prefix(self.backend)
        return visible_devices_env(self.backend, [int(name[len(prefix):]) for name in group])

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "variant": self.variant, "quant": self.quant,
                "file": to_jsonable(self.file), "engine": self.engine.to_dict(), "replicas": self.replicas,
                "replica_names": list(self.replica_names()), "backend": self.backend,
                "device_groups": [list(g) for g in self.device_groups],
                "visible_env": [self.visible_env(i) for i in range(self.replicas)],
                "per_user_tok_s": None if self.per_user_tok_s is None else round(self.per_user_tok_s, 2),
                "aggregate_tok_s": None if self.aggregate_tok_s is None else round(self.aggregate_tok_s, 2),
                "streams_per_replica": self.streams_per_replica,
                "cpu_pins": [p.to_dict() if p else None for p in self.cpu_pins]}


@dataclass(frozen=True)
class Fill:
    instances: tuple[Instance, ...]
    idle: tuple[Idle, ...]
    notes: tuple[str, ...] = ()


def _fits_group(estimate: MemoryEstimate, group: tuple[BoxDevice, ...]) -> bool:
    """Does one replica's per-device memory (the estimate's accelerators, in order) fit ``group``?"""
    return all(dm.total <= dev.budget for dm, dev in zip(estimate.devices[1:], group))


def replica_groups(estimate: MemoryEstimate, devices: tuple[BoxDevice, ...] | list[BoxDevice], k: int,
                   users: int) -> list[tuple[BoxDevice, ...]]:
    """The device groups of the copies of a configuration with all layers on ``k`` devices: the
    first on ``devices[:k]``, then one per further group of ``k`` that fits, at most one per user."""
    groups, rest = [tuple(devices[:k])], list(devices[k:]) if k else []
    while k and len(rest) >= k and len(groups) < max(users, 1) and _fits_group(estimate, tuple(rest[:k])):
        groups.append(tuple(rest[:k]))
        rest = rest[k:]
    return groups


def copies_that_fit(estimate: MemoryEstimate, devices: tuple[BoxDevice, ...], k: int, users: int) -> int:
    """How many copies the box holds (:func:`replica_groups`, which :func:`fill_box` makes): the
    model search judges speed with the users spread over them (docs/planning.md "Copies in the
    search")."""
    return len(replica_groups(estimate, devices, k, users))


def fill_box(*, profile: UseCaseProfile, box: Box, catalog: Catalog, variant: str, quant: str, file: QuantFile,
             facts: ModelFacts, engine: EngineSettings, estimate: MemoryEstimate, placement: str, k: int,
             used: tuple[BoxDevice, ...], active_params: float, companions: tuple = (),
             cpu_why: str | None = None, backend_check: BackendCheck | None = None) -> Fill:
    """The instances of a plan whose chat model runs ``engine`` (the chosen configuration:
    ``placement`` with all layers on the first ``k`` of ``used``, or on the CPU when ``used`` is
    empty), and the devices left idle with why."""
    idle = list(box.idle_accelerators)
    notes: list[str] = []
    devices = box.accelerators
    users = max(profile.users, 1)
    if not used:  # the chat model runs on the CPU
        groups: list[tuple[BoxDevice, ...]] = [()]
        free = list(devices)
        free_why = f"the chat model runs on the CPU ({cpu_why})" if cpu_why else "the chat model runs on the CPU"
    elif placement != "full":  # partial offload: every accelerator and the host hold layers of one copy
        groups, free, free_why = [tuple(used)], [], ""
    else:
        groups = replica_groups(estimate, used, k, users)
        free = list(used[k * len(groups):])
        if len(groups) == users and len(free) >= k:
            free_why = f"the profile's {users} users already have a replica each ({len(groups)} replicas)"
        elif free and len(free) >= k:
            free_why = f"another replica does not fit in {free[0].name}'s memory"
        else:
            free_why = f"a replica needs {k} device(s); {len(free)} left over" if free else ""
    replica_engine = engine
    backend = groups[0][0].backend if groups[0] else "cpu"
    if groups[0]:
        # Each replica sees its own group renumbered from 0: its split is over k devices only.
        replica_engine = engine.replace(tensor_split=tensor_split(groups[0], len(groups[0])), main_gpu=0)
    pins = numa_pins(box, groups)
    if pins:
        # The engine's threads match the cores of its share (logical CPUs x cores per thread).
        logical = sum(len(n) for n in box.numa_cpus)
        cores = min(len(p.cpus) for p in pins if p) * max(box.cpu_cores, 1) // max(logical, 1)
        replica_engine = replica_engine.replace(threads=max(cores, 1), threads_batch=max(cores, 1))
        notes.append("pinned to their devices' NUMA node: " + ", ".join(
            f"{'chat' if len(groups) == 1 else f'chat-{i}'} node {p.node} CPUs {format_cpulist(p.cpus)}"
            for i, p in enumerate(pins) if p))
    elif len(box.numa_cpus) > 1 and not groups[0]:
        notes.append(f"the chat model on the CPU spans all {len(box.numa_cpus)} NUMA nodes (one copy, every "
                     "socket's memory bandwidth); it is not pinned")
    replicas = len(groups)
    streams = math.ceil(users / replicas)
    # The planner's own speed test (fit.judge) for ceil(users / R) streams: the same figure with one replica.
    tp = estimate_throughput(facts, estimate, box.speeds(used), active_params=active_params, streams=streams,
                             depth=profile.context_per_request // 2, cpu=box.cpu_buffers)
    if replicas > 1:
        notes.append(f"{replicas} replicas of {variant} on {k} device(s) each: {users} users spread "
                     f"{streams} per replica, {tp.per_user_tok_s:.1f} tok/s per user")
    chat = Instance("chat", "chat", variant, quant, file, replica_engine,
                    tuple(tuple(d.name for d in g) for g in groups), backend, tp.per_user_tok_s,
                    tp.per_user_tok_s * users, streams, pins)
    instances = [chat]
    for c in companions:
        placed = _on_device(c, free[0], catalog, box, backend_check) if free else None
        if placed is not None:
            free.pop(0)
        instances.append(placed or Instance(c.role, c.role, c.variant, c.quant, c.file, c.engine, ((),)))
        if placed is not None:
            notes.append(f"{c.role} model {c.variant} on {placed.device_groups[0][0]} (a device the chat replicas left)")
    if free:  # (the box's own idle accelerators are in its notes already)
        notes.append(f"idle: {', '.join(d.name for d in free)}: {free_why}")
    idle += [Idle(d.name, free_why) for d in free]
    return Fill(tuple(instances), tuple(idle), tuple(notes))


def _on_device(c, dev: BoxDevice, catalog: Catalog, box: Box, backend_check: BackendCheck | None) -> Instance | None:
    """Companion ``c`` with all its layers on ``dev``, when its weights run there and it fits."""
    if backend_check is not None and backend_check(c.file, (dev,)) is not None:
        return None
    from aiboxctl.sizing.knowledge_base import ENCODER_ARCHS

    v = catalog.variant(c.variant)
    facts = facts_for(v, c.file)
    if v.architecture.arch in ENCODER_ARCHS:
        facts = replace(facts, causal=False)
    settings = c.engine.replace(n_gpu_layers=facts.n_layer + 1)
    est = estimate_memory(facts, EngineParams.of(settings), accelerators=(dev.name,), cpu=box.cpu_buffers)
    if not _fits_group(est, (dev,)):
        return None
    return Instance(c.role, c.role, c.variant, c.quant, c.file, settings, ((dev.name,),), dev.backend)
