"""The built-in supervisor: runs ``aiboxctl serve`` where systemd is not PID 1 (containers, CI,
``--root`` installs).

``aiboxctl start`` spawns ``python -m aiboxctl.deploy.supervisor --root PREFIX`` in its own
session (a daemon: no terminal, stdin from /dev/null, output to the log file). The supervisor
writes ``run/aibox/supervisor.pid``, starts the engine, restarts it when it exits without being
asked to (backoff 1 s, 2 s, 4 s … 60 s; reset after 5 minutes of good health), and on SIGTERM stops
the engine (SIGTERM, then SIGKILL after a grace period) and removes its pidfile.

Spawning a long-lived daemon is the one place that does not go through
``aiboxctl.system.run_command`` (which runs a program to completion).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aiboxctl.paths import InstallLayout

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 60.0
HEALTHY_RUN_S = 300.0  # an engine that ran this long resets the backoff
STOP_GRACE_S = 20.0


def pidfile(layout: InstallLayout) -> Path:
    return layout.run / "supervisor.pid"


def statefile(layout: InstallLayout) -> Path:
    return layout.run / "supervisor.json"


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
    argv = _cmdline(pid)
    if "aiboxctl.deploy.supervisor" in argv and str(layout.root) in argv:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        # A zombie (exited, not yet reaped by its parent) is not running.
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except (OSError, IndexError):
            pass
        return pid
    return None


@dataclass(frozen=True)
class SupervisorState:
    pid: int | None
    engine_pid: int | None
    restarts: int
    last_exit: int | None
    started_at: float | None


def read_state(layout: InstallLayout) -> SupervisorState:
    pid = running_pid(layout)
    try:
        d = json.loads(statefile(layout).read_text())
    except (OSError, ValueError):
        d = {}
    return SupervisorState(pid, d.get("engine_pid") if pid else None, int(d.get("restarts", 0)),
                           d.get("last_exit"), d.get("started_at"))


def spawn(layout: InstallLayout, env: dict[str, str] | None = None) -> int:
    """Start the supervisor daemon for this prefix; returns its pid (the existing one if running)."""
    existing = running_pid(layout)
    if existing:
        return existing
    layout.run.mkdir(parents=True, exist_ok=True)
    layout.log.mkdir(parents=True, exist_ok=True)
    with open(logfile(layout), "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aiboxctl.deploy.supervisor", "--root", str(layout.root)],
            stdin=devnull, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            env={**os.environ, **(env or {})}, cwd="/",
        )
    # Wait for the pidfile so that a following `status`/`stop` sees the daemon.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if running_pid(layout) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        from aiboxctl.errors import ServiceDown

        raise ServiceDown(f"the supervisor exited at start (code {proc.returncode})",
                          hint=f"aiboxctl logs --root {layout.root}")
    return proc.pid


def stop(layout: InstallLayout, timeout: float = STOP_GRACE_S + 10) -> bool:
    """Stop the supervisor (and with it the engine). Returns whether one was running."""
    pid = running_pid(layout)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_pid(layout) is None:
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    engine = read_state(layout).engine_pid
    if engine:
        try:
            os.kill(engine, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pidfile(layout).unlink(missing_ok=True)
    return True


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
    from aiboxctl.deploy.install import _user_can

    needs = [(Path(sys.executable), "x"), (Path(sys.prefix), "x"), (Path(str(spec["engine"]["model"])), "r")]
    try:
        blocked = [str(p) for p, bit in needs if not _user_can(user, p, bit)]
    except (KeyError, OSError) as exc:
        return {}, f"engine runs as root: cannot check user {user} ({exc})"
    if blocked:
        return {}, f"engine runs as root: user {user} cannot use {', '.join(blocked)}"
    return {"user": user, "group": group, "extra_groups": []}, f"engine runs as user {user}"


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

    def save(self) -> None:
        tmp = statefile(self.layout).with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "engine_pid": self.child.pid if self.child else None,
                                   "restarts": self.restarts, "last_exit": self.last_exit,
                                   "started_at": self.started_at}))
        os.replace(tmp, statefile(self.layout))

    def on_term(self, signum, frame) -> None:  # noqa: ARG002
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def run(self) -> int:
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
                self.child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, cwd="/", **identity)
                self.save()
                while True:
                    try:
                        code = self.child.wait()
                        break
                    except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                        continue
                self.last_exit = code
                self.child = None
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
            pidfile(self.layout).unlink(missing_ok=True)
            statefile(self.layout).unlink(missing_ok=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="aiboxctl-supervisor")
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    return _Daemon(InstallLayout.for_root(args.root)).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
