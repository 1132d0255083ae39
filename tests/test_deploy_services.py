"""The systemd service manager drives a real `systemctl` executable found on PATH (here a recording
fake: this VM's PID 1 is not systemd)."""

from __future__ import annotations

import os
from pathlib import Path

from aiboxctl.deploy.services import SystemdManager, choose_manager, systemd_version
from aiboxctl.paths import InstallLayout

FAKE = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  --version) echo "systemd 256 (256.7-1)"; echo "+PAM +AUDIT" ;;
  show) printf 'ActiveState=active\\nSubState=running\\nMainPID=4242\\nNRestarts=3\\n' ;;
esac
exit 0
"""


def fake_systemctl(tmp_path: Path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    exe = bin_dir / "systemctl"
    exe.write_text(FAKE.format(log=log))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def test_systemd_manager_commands_and_state(tmp_path, monkeypatch):
    log = fake_systemctl(tmp_path, monkeypatch)
    m = SystemdManager(InstallLayout.for_root("/"))
    m.reload()
    m.enable_start()
    m.restart()
    state = m.state()
    m.stop()
    m.disable()
    calls = log.read_text().splitlines()
    assert calls[:3] == ["daemon-reload", "enable --now aibox.service", "restart aibox.service"]
    assert calls[3].startswith("show aibox.service --property=")
    assert "stop aibox.service" in calls and calls[-1] == "disable --now aibox.service"
    assert (state.active, state.pid, state.restarts, state.detail) == (True, 4242, 3, "active (running)")
    assert systemd_version() == 256


def test_prefix_installs_use_the_supervisor(tmp_path):
    assert choose_manager(InstallLayout.for_root(tmp_path)) == "supervisor"


def test_supervisor_drops_to_the_service_user_only_when_it_can_run(tmp_path, monkeypatch):
    import json
    import sys

    from aiboxctl.deploy.supervisor import child_identity

    monkeypatch.setattr("os.geteuid", lambda: 0)  # as root, whoever runs the test
    layout = InstallLayout.for_root(tmp_path)
    layout.state.mkdir(parents=True)

    def write(system: bool, user: str, model: str) -> None:
        layout.manifest.write_text(json.dumps({
            "manifest_version": 1, "generation": 1, "aiboxctl_version": "0", "root": str(tmp_path),
            "profile": "demo", "model_variant": "m", "files": [],
            "spec": {"system_install": system, "service_user": user, "service_group": user,
                     "engine": {"model": model}}}))

    write(False, "nobody", sys.executable)
    assert child_identity(layout) == ({}, "")  # not a system install: runs as whoever started it
    write(True, "nobody", str(tmp_path / "private-model.gguf"))
    (tmp_path / "private-model.gguf").write_bytes(b"x")
    kwargs, note = child_identity(layout)
    # pytest's tmp dirs sit under a 0700 parent: "nobody" cannot read the model there, so the engine stays root
    assert kwargs == {} and "cannot use" in note and "private-model.gguf" in note
    monkeypatch.setattr("aiboxctl.deploy.users.user_can", lambda user, path, bit: True)
    kwargs, note = child_identity(layout)
    assert kwargs == {"user": "nobody", "group": "nobody", "extra_groups": []} and "nobody" in note


def _daemons_of(root: Path) -> list[int]:
    import psutil

    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if "aiboxctl.deploy.supervisor" in (p.info["cmdline"] or []) and str(root) in (p.info["cmdline"] or [])]


def test_an_interrupted_spawn_leaves_no_supervisor(tmp_path, monkeypatch):
    """Ctrl-C while spawn waits for the new daemon's pidfile: the caller's rollback cannot see a
    daemon without a pidfile, so spawn itself must take it down (it once survived an interrupted
    install and served the rolled-back engine.yaml)."""
    import time as real_time

    import pytest

    from aiboxctl.deploy import supervisor

    layout = InstallLayout.for_root(tmp_path / "root")
    sleeps = []
    sleep = real_time.sleep

    def interrupted_sleep(seconds):  # the first wait is interrupted (Ctrl-C), later ones sleep
        sleeps.append(seconds)
        if len(sleeps) == 1:
            raise KeyboardInterrupt
        sleep(seconds)

    monkeypatch.setattr(supervisor.time, "sleep", interrupted_sleep)
    try:
        with pytest.raises(KeyboardInterrupt):
            supervisor.spawn(layout)
    finally:
        monkeypatch.setattr(supervisor.time, "sleep", sleep)
    assert sleeps, "spawn never waited for the daemon"
    assert _daemons_of(layout.root) == []


def test_stop_finds_a_supervisor_without_its_pidfile(tmp_path):
    import subprocess
    import sys
    import time

    from aiboxctl.deploy import supervisor

    layout = InstallLayout.for_root(tmp_path / "root")
    layout.run.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-m", "aiboxctl.deploy.supervisor", "--root", str(layout.root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not supervisor.pidfile(layout).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        supervisor.pidfile(layout).unlink()  # lost, or not written yet
        assert supervisor.stop(layout) is True
        proc.wait(30)
        assert _daemons_of(layout.root) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_every_engine_model_of_a_set_is_checked_for_the_service_user(tmp_path, monkeypatch):
    """Behind the front door each engine reads its own model (the embedding companion's too): the
    service user must be able to read every one, or the supervisor keeps the engines root and
    install refuses before writing, rather than an engine failing at start."""
    import dataclasses
    import json
    import sys

    import pytest

    from aiboxctl.deploy.supervisor import child_identity
    from aiboxctl.deploy.users import check_service_user_access
    from aiboxctl.errors import UsageError
    from test_install_instances import multi_spec

    monkeypatch.setattr("os.geteuid", lambda: 0)
    # "nobody" can use everything but the embedding model
    monkeypatch.setattr("aiboxctl.deploy.users.user_can", lambda user, path, bit: "bge" not in str(path))
    spec = multi_spec(tmp_path, user="nobody")
    for i in spec.instances:  # the models exist (the check skips a path that is not there yet)
        model = Path(i["engine"]["model"])
        i["engine"]["model"] = str(tmp_path / model.name)
        (tmp_path / model.name).write_bytes(b"x")
    spec = dataclasses.replace(spec, system_install=True, exec_argv=(sys.executable,),
                               engine=spec.engine.replace(model=tmp_path / "q.gguf"))
    with pytest.raises(UsageError, match="cannot read .*bge.gguf"):
        check_service_user_access(spec)
    layout = spec.layout
    layout.state.mkdir(parents=True)
    layout.manifest.write_text(json.dumps({
        "manifest_version": 1, "generation": 1, "aiboxctl_version": "0", "root": str(tmp_path),
        "profile": "demo", "model_variant": "m", "files": [], "spec": spec.to_dict()}))
    kwargs, note = child_identity(layout)
    assert kwargs == {} and "bge.gguf" in note
