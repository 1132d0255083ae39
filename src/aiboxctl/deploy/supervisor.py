"""The built-in supervisor: runs ``aiboxctl serve`` where systemd is not PID 1 (containers, CI,
``--root`` installs).

``aiboxctl start`` spawns ``python -m aiboxctl.deploy.supervisor --root PREFIX`` in its own
session (a daemon: no terminal, stdin from /dev/null, output to the log file). The supervisor
writes ``run/aibox/supervisor.pid``, starts the engine, restarts it when it exits without being
asked to (backoff 1 s, 2 s, 4 s … 60 s; reset after 5 minutes of good health), and on SIGTERM stops
the engine (SIGTERM, then SIGKILL after a grace period) and removes its pidfile.

The engine dies with its supervisor, however that one ends: the kernel sends it SIGKILL when the
supervisor exits (``PR_SET_PDEATHSIG``). Its pid is in ``run/aibox/engine.pid``; ``stop`` and
``spawn`` also find an engine of this installation that outlived its supervisor anyway (by that
pidfile and by its command line, never by name alone) and stop it, so that the health a later
``start`` sees is always its own engine's.

Spawning a long-lived daemon is the one place that does not go through
``aiboxctl.system.run_command`` (which runs a program to completion).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiboxctl.env import Env
from aiboxctl.paths import InstallLayout

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_RUN_S = 300.0  # an engine that ran this long resets the backoff
STOP_GRACE_S = 20.0


def pidfile(layout: InstallLayout) -> Path:
    return layout.run / "supervisor.pid"


def statefile(layout: InstallLayout) -> Path:
    return layout.run / "supervisor.json"


def engine_pidfile(layout: InstallLayout) -> Path:
    return layout.run / "engine.pid"


def logfile(layout: InstallLayout) -> Path:
    return layout.log / "engine.log"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def running_pid(layout: InstallLayout) -> int | None:
    """The pid of this prefix's supervisor if it is alive (a stale pidfile, or a pid reused by
    another program, reads as not running)."""
    try:
        pid = int(pidfile(layout).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_supervisor_of(_cmdline(pid), str(layout.root)) and _alive(pid) else None


def _is_engine_of(argv: list[str], layout: InstallLayout) -> bool:
    """``aiboxctl serve --config <this prefix's engine.yaml>`` (or one of its engines/*.yaml), or
    ``aiboxctl gateway --config <its gateway.yaml>``, however it was started."""
    etc = str(layout.etc) + "/"

    def ours(config: str) -> bool:
        return config == str(layout.engine_config) or (config.startswith(etc) and config.endswith(".yaml"))

    return ("serve" in argv or "gateway" in argv) and any(
        (a == "--config" and i + 1 < len(argv) and ours(argv[i + 1])) or
        (a.startswith("--config=") and ours(a.split("=", 1)[1])) for i, a in enumerate(argv))


def _alive(pid: int) -> bool:
    """A live process (a zombie, exited and not yet reaped by its parent, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def engine_pids(layout: InstallLayout) -> list[int]:
    """Every live engine of this installation: the one in the engine pidfile and any process
    whose command line serves this prefix's engine.yaml (each checked by its command line)."""
    import psutil

    found: list[int] = []
    try:
        pid = int(engine_pidfile(layout).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid and _is_engine_of(_cmdline(pid), layout) and _alive(pid):
        found.append(pid)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        argv = proc.info.get("cmdline") or []
        if proc.info["pid"] not in found and _is_engine_of(argv, layout) and _alive(proc.info["pid"]):
            found.append(proc.info["pid"])
    return found


def supervisor_pids(layout: InstallLayout) -> list[int]:
    """Every live supervisor daemon of this prefix, by its command line (pidfile or not)."""
    import psutil

    me = os.getpid()
    root = str(layout.root)
    return [proc.info["pid"] for proc in psutil.process_iter(["pid", "cmdline"])
            if proc.info["pid"] != me and _is_supervisor_of(proc.info.get("cmdline") or [], root)
            and _alive(proc.info["pid"])]


def _is_supervisor_of(argv: list[str], root: str) -> bool:
    return "aiboxctl.deploy.supervisor" in argv and any(
        (a == "--root" and i + 1 < len(argv) and argv[i + 1] == root) or a == f"--root={root}"
        for i, a in enumerate(argv))


def unmanaged_engines(layout: InstallLayout) -> list[int]:
    """Engines of this installation that no running supervisor of it manages (they outlived it,
    or were started by hand): they hold the port and answer /health for nobody."""
    state = read_state(layout)
    managed = {state.engine_pid, *state.children.values()}
    return [pid for pid in engine_pids(layout) if pid not in managed]


def stop_engines(pids: list[int], timeout: float = STOP_GRACE_S) -> None:
    """SIGTERM (the engine's graceful stop), then SIGKILL after ``timeout``."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    while any(_alive(p) for p in pids) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


@dataclass(frozen=True)
class SupervisorState:
    pid: int | None
    engine_pid: int | None
    restarts: int
    last_exit: int | None
    started_at: float | None
    children: dict = field(default_factory=dict)  # several engines: instance name → pid (the gateway too)


def read_state(layout: InstallLayout) -> SupervisorState:
    pid = running_pid(layout)
    try:
        d = json.loads(statefile(layout).read_text())
    except (OSError, ValueError):
        d = {}
    return SupervisorState(pid, d.get("engine_pid") if pid else None, int(d.get("restarts", 0)),
                           d.get("last_exit"), d.get("started_at"), dict(d.get("children") or {}) if pid else {})


def restart_child(layout: InstallLayout, name: str) -> bool:
    """Ask the supervisor to restart one instance now (no backoff, not counted as a crash)."""
    state = read_state(layout)
    pid = state.children.get(name)
    if state.pid is None or pid is None:
        return False
    (layout.run / f"restart-{name}").write_text("")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    return True


def spawn(layout: InstallLayout, env: dict[str, str] | None = None) -> int:
    """Start the supervisor daemon for this prefix; returns its pid (the existing one if running).
    An engine of this prefix that no supervisor manages is stopped first: it holds the port."""
    existing = running_pid(layout)
    if existing:
        return existing
    stop_engines(unmanaged_engines(layout))
    layout.run.mkdir(parents=True, exist_ok=True)
    layout.log.mkdir(parents=True, exist_ok=True)
    with open(logfile(layout), "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiboxctl.deploy.supervisor", "--root", str(layout.root)],
            stdin=devnull, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            env={**os.environ, **(env or {})}, cwd="/",
        )
    # Wait for the pidfile so that a following `status`/`stop` sees the daemon. Interrupted
    # here (Ctrl-C, an error), the daemon we just started is ours to stop: the caller's
    # rollback cannot see one that has not written its pidfile yet.
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if running_pid(layout) == proc.pid:
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    except BaseException:
        stop_engines([proc.pid])
        raise
    if proc.poll() is not None:
        from aiboxctl.errors import ServiceDown

        raise ServiceDown(f"the supervisor exited at start (code {proc.returncode})",
                          hint=f"aiboxctl logs --root {layout.root}")
    return proc.pid


def stop(layout: InstallLayout, timeout: float = STOP_GRACE_S + 10) -> bool:
    """Stop the supervisor (and with it the engine), and any engine of this prefix that outlived
    its supervisor. Returns whether anything was running."""
    pid = running_pid(layout)
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while running_pid(layout) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        if running_pid(layout) is not None:
            # Killed, it cannot clean up after itself: its runtime files are stale now.
            os.kill(pid, signal.SIGKILL)
            statefile(layout).unlink(missing_ok=True)
            pidfile(layout).unlink(missing_ok=True)
    # A supervisor of this prefix that has not written (or lost) its pidfile: found by its
    # command line, so nothing started for this prefix outlives a stop or a rollback.
    others = [p for p in supervisor_pids(layout) if p != pid]
    stop_engines(others)
    strays = engine_pids(layout)
    stop_engines(strays)
    engine_pidfile(layout).unlink(missing_ok=True)
    return pid is not None or bool(others) or bool(strays)


# --- the daemon itself -----------------------------------------------------------------------

def child_identity(layout: InstallLayout) -> tuple[dict, str]:
    """Popen arguments that run the engine as the installation's service user, and a note.

    A system install (prefix /, as root) records a dedicated user; the supervisor, started by
    root, drops to it like the systemd unit's User= does, unless that user could not run this
    Python or read the model (a venv under /root): then the engine stays root and the note says why.
    """
    if os.geteuid() != 0:
        return {}, ""
    from aiboxctl.deploy.manifest import load_manifest

    manifest = load_manifest(layout)
    spec = manifest.spec if manifest else {}
    user, group = spec.get("service_user"), spec.get("service_group")
    if not spec.get("system_install") or not user or user == "root":
        return {}, ""
    from aiboxctl.deploy.users import model_files, user_can

    needs = [(Path(sys.executable), "x"), (Path(sys.prefix), "x"), *((p, "r") for p in model_files(spec))]
    try:
        blocked = [str(p) for p, bit in needs if not user_can(user, p, bit)]
    except (KeyError, OSError) as exc:
        return {}, f"engine runs as root: cannot check user {user} ({exc})"
    if blocked:
        return {}, f"engine runs as root: user {user} cannot use {', '.join(blocked)}"
    return {"user": user, "group": group, "extra_groups": []}, f"engine runs as user {user}"


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel SIGKILL the child when its parent exits (Linux
    ``prctl(PR_SET_PDEATHSIG)``; it fires when the parent *thread* ends, so spawn from the
    main thread). Runs in the child after its user is set, which would clear the setting."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call: nobody would signal us
            os._exit(1)

    return preexec


class _Daemon:
    def __init__(self, layout: InstallLayout) -> None:
        self.layout = layout
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.restarts = 0
        self.last_exit: int | None = None
        self.started_at = time.time()

    def log(self, message: str) -> None:
        sys.stdout.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [supervisor] {message}\n")
        sys.stdout.flush()

    def state_doc(self) -> dict:
        """What ``read_state`` reads back (supervisor.json)."""
        return {"pid": os.getpid(), "engine_pid": self.child.pid if self.child else None,
                "restarts": self.restarts, "last_exit": self.last_exit, "started_at": self.started_at}

    def save(self) -> None:
        tmp = statefile(self.layout).with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state_doc()))
        os.replace(tmp, statefile(self.layout))

    def on_term(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
        from aiboxctl.deploy.instances import is_multi

        if is_multi(self.layout):
            return _Several(self.layout).run()
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        pidfile(self.layout).write_text(f"{os.getpid()}\n")
        argv = [sys.executable, "-m", "aiboxctl.cli.app", "serve", "--config", str(self.layout.engine_config)]
        identity, note = child_identity(self.layout)
        if note:
            self.log(note)
        backoff = BACKOFF_START_S
        try:
            while not self.stopping:
                self.log(f"starting engine: {' '.join(argv)}")
                began = time.monotonic()
                self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd="/",
                                              preexec_fn=_die_with_parent(), **identity)
                engine_pidfile(self.layout).write_text(f"{self.child.pid}\n")
                self.save()
                if self.stopping:
                    # SIGTERM came while the engine was being started (on_term had no child to
                    # pass it to): pass it now, or this daemon waits for an engine nobody stops.
                    self.child.send_signal(signal.SIGTERM)
                while True:
                    try:
                        code = self.child.wait()
                        break
                    except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                        continue
                self.last_exit = code
                self.child = None
                engine_pidfile(self.layout).unlink(missing_ok=True)
                self.save()
                if self.stopping:
                    self.log(f"engine stopped (exit {code})")
                    break
                if time.monotonic() - began > HEALTHY_RUN_S:
                    backoff = BACKOFF_START_S
                self.restarts += 1
                self.save()
                self.log(f"engine exited with {code}; restart {self.restarts} in {backoff:.0f} s")
                deadline = time.monotonic() + backoff
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.2)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            if self.child and self.child.poll() is None:
                try:
                    self.child.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.child.kill()
                    self.child.wait()
            # The pidfile goes last: `stop` returns once it is gone, and nothing of this
            # daemon may be left behind by then.
            engine_pidfile(self.layout).unlink(missing_ok=True)
            statefile(self.layout).unlink(missing_ok=True)
            pidfile(self.layout).unlink(missing_ok=True)
        return 0


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen | None = None
    began: float = 0.0
    backoff: float = BACKOFF_START_S
    due: float = 0.0  # monotonic time of the next start


def _pinned(preexec: Callable[[], None] | None, cpus: str | None) -> Callable[[], None] | None:
    """``preexec`` plus pinning the child to ``cpus`` (the kernel's list format) before it runs,
    like systemd's CPUAffinity= (every thread the engine starts inherits it)."""
    if not cpus:
        return preexec
    from aiboxctl.hardware.cpu import parse_cpulist

    ids = set(parse_cpulist(cpus))

    def run() -> None:
        if preexec is not None:
            preexec()
        os.sched_setaffinity(0, ids)

    return run


class _Several(_Daemon):
    """One supervisor over a multi-instance installation: every engine (engines/<name>.yaml, its
    devices from engines/<name>.env) and the front door, each restarted on its own with backoff;
    each writes its own log (var/log/aibox/<name>.log)."""

    def children_of(self) -> list[_Child]:
        from aiboxctl.deploy.instances import (GATEWAY_NAME, engines_dir, gateway_config_path, instance_names,
                                               read_env_file)

        base = [sys.executable, "-m", "aiboxctl.cli.app"]
        out = [_Child(n, [*base, "serve", "--config", str(engines_dir(self.layout) / f"{n}.yaml")],
                      read_env_file(engines_dir(self.layout) / f"{n}.env"), self.layout.log / f"{n}.log")
               for n in instance_names(self.layout)]
        out.append(_Child(GATEWAY_NAME, [*base, "gateway", "--config", str(gateway_config_path(self.layout))], {},
                          self.layout.log / f"{GATEWAY_NAME}.log"))
        return out

    def state_doc(self) -> dict:
        """The front door's pid as the engine's (what answers /health), and every child's."""
        gw = next((c for c in self.kids if c.name == "gateway"), None)
        return {**super().state_doc(), "engine_pid": gw.proc.pid if gw and gw.proc else None,
                "children": {c.name: c.proc.pid for c in self.kids if c.proc}}

    def on_term(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True
        for c in self.kids:
            if c.proc and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)

    def start(self, c: _Child, identity: dict) -> None:
        self.log(f"starting {c.name}: {' '.join(c.argv)}")
        with open(c.log, "ab") as log:
            c.proc = subprocess.Popen(c.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/",
                                      env={**os.environ, **c.env},
                                      preexec_fn=_pinned(_die_with_parent(), c.env.get(Env.CPU_AFFINITY)),
                                      **identity)
        c.began = time.monotonic()

    def run(self) -> int:
        self.kids: list[_Child] = []
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        pidfile(self.layout).write_text(f"{os.getpid()}\n")
        identity, note = child_identity(self.layout)
        if note:
            self.log(note)
        self.kids = self.children_of()
        try:
            for c in self.kids:
                self.start(c, identity)
            self.save()
            while not self.stopping:
                now = time.monotonic()
                changed = False
                for c in self.kids:
                    if c.proc is not None:
                        code = c.proc.poll()
                        if code is None:
                            continue
                        c.proc = None
                        changed = True
                        asked = self.layout.run / f"restart-{c.name}"
                        if asked.exists():  # `aiboxctl restart NAME`: at once, not a crash
                            asked.unlink(missing_ok=True)
                            self.log(f"{c.name} restarted on request (exit {code})")
                            c.due = now
                            continue
                        self.last_exit = code
                        if now - c.began > HEALTHY_RUN_S:
                            c.backoff = BACKOFF_START_S
                        self.restarts += 1
                        self.log(f"{c.name} exited with {code}; restart in {c.backoff:.0f} s")
                        c.due = now + c.backoff
                        c.backoff = min(c.backoff * 2, BACKOFF_MAX_S)
                    elif now >= c.due and not self.stopping:
                        self.start(c, identity)
                        changed = True
                if changed:
                    self.save()
                time.sleep(0.2)
        finally:
            deadline = time.monotonic() + STOP_GRACE_S
            for c in self.kids:
                if c.proc and c.proc.poll() is None:
                    c.proc.send_signal(signal.SIGTERM)
            for c in self.kids:
                if c.proc is None:
                    continue
                try:
                    c.proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    c.proc.kill()
                    c.proc.wait()
                self.log(f"{c.name} stopped (exit {c.proc.returncode})")
            statefile(self.layout).unlink(missing_ok=True)
            pidfile(self.layout).unlink(missing_ok=True)  # last: `stop` returns once it is gone
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiboxctl-supervisor")
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    return _Daemon(InstallLayout.for_root(args.root)).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
