"""The service user: who the engine runs as, creating it, and whether it can reach what it
must run and read (checked by the mode bits before anything is written)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiboxctl.deploy.spec import InstallSpec
from aiboxctl.errors import AiboxError, UsageError
from aiboxctl.system import run_command


def service_user(profile: Any, system: bool) -> tuple[str, str]:
    if system:
        user = str(profile.service.user)
        return user, user
    import grp
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def user_exists(user: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(user)
        return True
    except KeyError:
        return False


def ensure_user(user: str, home: Path) -> bool:
    """Create the dedicated system user if missing; True when created."""
    import pwd

    try:
        pwd.getpwnam(user)
        return False
    except KeyError:
        pass
    nologin = next((p for p in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false") if os.path.exists(p)), "/bin/false")
    r = run_command(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", str(home),
                     "--shell", nologin, "--comment", "aibox LLM service", user], timeout=30)
    if not r.ok:
        raise AiboxError(f"could not create the service user {user}: {r.failure_reason()}", code="useradd_failed")
    return True


def user_can(user: str, path: Path, bit: str) -> bool:
    """Can ``user`` traverse to ``path`` and read (``r``) or execute (``x``) it, by the mode bits?"""
    import grp
    import pwd
    import stat

    pw = pwd.getpwnam(user)
    gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}

    def allowed(st: os.stat_result, want: str) -> bool:
        shift = 6 if st.st_uid == pw.pw_uid else (3 if st.st_gid in gids else 0)
        mask = (stat.S_IROTH if want == "r" else stat.S_IXOTH) << shift
        return bool(st.st_mode & mask)

    target = path.resolve()
    for parent in reversed(target.parents):
        if not allowed(parent.stat(), "x"):
            return False
    return allowed(target.stat(), bit)


def model_files(spec: dict[str, Any]) -> list[Path]:
    """Every model file the service reads (an install spec as a dict): the engine's, and behind
    the front door each engine's own (the embedding and rerank companions' too)."""
    paths = [spec["engine"]["model"], *(i["engine"]["model"] for i in spec.get("instances") or ())]
    return [Path(p) for p in dict.fromkeys(str(p) for p in paths)]


def check_service_user_access(spec: InstallSpec) -> None:
    """The hardened unit runs as the service user: it must be able to run this aiboxctl and read
    every model. A venv under /root is the usual trap; say so before writing anything."""
    import sys

    user = spec.service_user
    needs = [(Path(spec.exec_argv[0]), "x"), (Path(sys.prefix), "x"),
             *((p, "r") for p in model_files(spec.to_dict()))]
    for path, bit in needs:
        if path.exists() and not user_can(user, path, bit):
            raise UsageError(
                f"the service user {user} cannot {'read' if bit == 'r' else 'run'} {path}",
                hint="install aiboxctl where every user can read it (e.g. python3 -m venv /opt/aibox), "
                     "or keep the model store under /var/lib/aibox")
