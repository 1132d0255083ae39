"""Crash safety with the real engine and the real SmolLM2-135M model under --root (issue 11, items 5
and 6): an installer whose output pipe closes, or that is SIGKILLed at any step, leaves a state that
`status` reports and that `uninstall` or a re-run repairs; a SIGKILLed supervisor takes its engine
with it, and an engine that no supervisor manages is found and stopped.

One model store (AIBOX_HOME) for the module; each scenario has its own prefix and port. The
`box` installation is shared by the last tests, which run in file order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from installprefix import EXE, InstallPrefix

pytestmark = pytest.mark.slow


def processes_under(root: Path) -> list[int]:
    """Supervisors and engines of this prefix (their command lines name it)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        argv = proc.info.get("cmdline") or []
        if proc.info.get("status") != psutil.STATUS_ZOMBIE and any(str(root) in a for a in argv):
            found.append(proc.info["pid"])
    return found


def wait_for(predicate, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class Prefix(InstallPrefix):
    def __init__(self, home: Path, root: Path):
        super().__init__(root, home)

    def install_args(self) -> list[str]:
        return ["install", "--profile", "demo", "--root", str(self.root), "--port", str(self.port), "--yes"]

    def status(self) -> tuple[int, dict]:
        return self.json("status", "--root", str(self.root))

    def files(self) -> list[str]:
        """Every file under the prefix but the service's log (kept by uninstall, like any log)."""
        return sorted(str(p) for p in self.root.rglob("*") if p.is_file() and "var/log/aibox" not in str(p))

    def health(self) -> int | None:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2, trust_env=False).status_code
        except httpx.HTTPError:
            return None

    def uninstall_leaves_nothing(self) -> None:
        code, doc = self.json("uninstall", "--root", str(self.root), "--yes")
        assert code == 0, doc
        wait_for(lambda: not processes_under(self.root), 30, "the supervisor and engine to be gone")
        assert self.files() == []
        code, doc = self.status()
        assert code == 1 and doc["errors"][0]["code"] == "not_installed", doc


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("crash-home")


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    made: list[Path] = []
    yield made
    # Never leave a daemon behind, whatever failed.
    for root in made:
        for pid in processes_under(root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def prefix(home, roots, tmp_path):
    p = Prefix(home, tmp_path / "root")
    roots.append(p.root)
    return p


def test_a_closed_output_pipe_does_not_stop_the_install(prefix):
    """`aiboxctl install … 2>&1 | head -3`: the progress lines after the third hit a closed pipe;
    the install still completes (or would roll back fully), and status agrees with its exit code."""
    line = " ".join([EXE, *prefix.install_args()]) + " 2>&1 | head -3; exit ${PIPESTATUS[0]}"
    proc = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=300, env=prefix.env,
                          stdin=subprocess.DEVNULL)
    assert len(proc.stdout.splitlines()) == 3
    assert proc.returncode == 0, proc.stdout
    code, doc = prefix.status()
    assert code == 0 and doc["data"]["healthy"], doc
    prefix.uninstall_leaves_nothing()


@pytest.mark.parametrize("point", ["journal", "after-file:2", "after-start", "commit"])
def test_an_install_killed_at_any_step_is_reported_and_uninstalled(prefix, point):
    proc = prefix.run(*prefix.install_args(), extra_env={"AIBOX_TEST_KILL_AT": point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    code, doc = prefix.status()
    assert code == 5 and doc["errors"][0]["code"] == "install_interrupted", doc
    assert "install incomplete (interrupted" in doc["errors"][0]["message"]
    assert "aiboxctl uninstall --root" in doc["errors"][0]["hint"]
    if point in ("after-start", "commit"):
        assert processes_under(prefix.root)  # the supervisor it started outlived it
    prefix.uninstall_leaves_nothing()


# --- one installation for the rest, in file order ---------------------------------------------

@pytest.fixture(scope="module")
def box(home, roots, tmp_path_factory):
    p = Prefix(home, tmp_path_factory.mktemp("box") / "root")
    roots.append(p.root)
    return p


def test_a_rerun_repairs_an_install_killed_while_serving(box):
    proc = box.run(*box.install_args(), extra_env={"AIBOX_TEST_KILL_AT": "smoke"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert box.status()[0] == 5
    code, doc = box.json(*box.install_args())
    assert code == 0, doc
    assert doc["data"]["generation"] == 1 and doc["data"]["service_action"] == "started"
    assert any("interrupted while running the smoke test" in n for n in doc["data"]["notes"])
    code, doc = box.status()
    assert code == 0 and doc["data"]["healthy"], doc


def test_an_engine_dies_with_its_sigkilled_supervisor(box):
    state = json.loads((box.root / "run/aibox/supervisor.json").read_text())
    engine = state["engine_pid"]
    os.kill(state["pid"], signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(engine) or psutil.Process(engine).status() == psutil.STATUS_ZOMBIE,
             30, "the engine to die with its supervisor")
    assert box.health() is None
    code, doc = box.status()
    assert code == 5 and doc["data"]["service"]["active"] is False
    code, doc = box.json("start", "--root", str(box.root), "--timeout", "180")
    assert code == 0 and doc["data"]["healthy"], doc
    assert box.status()[0] == 0
    state = json.loads((box.root / "run/aibox/supervisor.json").read_text())
    assert int((box.root / "run/aibox/engine.pid").read_text()) == state["engine_pid"] != engine


def start_unmanaged_engine(box: Prefix) -> subprocess.Popen:
    """An engine of this installation that no supervisor manages, as one that outlived its
    supervisor would be: its own session, the engine pidfile naming it, serving the port."""
    log = open(box.root / "var/log/aibox/unmanaged.log", "ab")
    proc = subprocess.Popen([EXE, "serve", "--config", str(box.root / "etc/aibox/engine.yaml")], env=box.env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    (box.root / "run/aibox").mkdir(parents=True, exist_ok=True)
    (box.root / "run/aibox/engine.pid").write_text(f"{proc.pid}\n")
    wait_for(lambda: box.health() == 200, 180, "the unmanaged engine to be healthy")
    return proc


def test_stop_ends_an_engine_that_no_supervisor_manages(box):
    code, doc = box.json("stop", "--root", str(box.root))
    assert code == 0 and doc["data"]["running"] is False
    orphan = start_unmanaged_engine(box)
    code, doc = box.status()
    assert code == 5 and doc["data"]["healthy"] is False
    assert f"pid {orphan.pid}" in doc["data"]["service"]["detail"]
    code, doc = box.json("stop", "--root", str(box.root))
    assert code == 0 and doc["data"]["was_running"] is True, doc
    assert orphan.wait(timeout=60) is not None
    assert box.health() is None


def test_start_replaces_an_engine_that_no_supervisor_manages(box):
    orphan = start_unmanaged_engine(box)
    code, doc = box.json("start", "--root", str(box.root), "--timeout", "180")
    assert code == 0 and doc["data"]["healthy"], doc
    assert orphan.wait(timeout=60) is not None  # stopped before the supervisor started its own
    state = json.loads((box.root / "run/aibox/supervisor.json").read_text())
    assert state["engine_pid"] != orphan.pid and psutil.pid_exists(state["engine_pid"])
    code, doc = box.status()
    assert code == 0 and doc["data"]["healthy"], doc
    box.uninstall_leaves_nothing()
