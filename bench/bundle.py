#!/usr/bin/env python3
"""Time and peak disk use of ``aiboxctl pack`` and ``aiboxctl install --bundle`` for the demo model.

Anchors, measured in the same run on the same bytes:
* pack            vs ``tar -cf`` of the bundle's own members (already unpacked: no planning, no
                  wheel resolution, no hashing) — what a hand-made archive costs;
* install's check+unpack (steps verify_s + unpack_s) vs ``tar -xf`` of the same bundle — what
  extracting without verifying costs (aiboxctl reads the archive twice: once to verify, once
  to unpack while re-hashing).
Peak disk = the most bytes of files that did not exist before the step, summed over the folders
the step writes (its AIBOX_HOME, the output folder, the install root), sampled every 50 ms; a
hardlink to an older file (the store linking an installed package's model) counts nothing.
CPU seconds (children's user+sys) are printed beside wall time: on a shared VM the wall clock
follows other people's load.

    .venv/bin/python bench/bundle.py [--profile demo] [--hardware cpu-32g] [--dir /tmp] [--engine-wheel W]

install --bundle runs the whole transaction under a temporary --root (start, health, smoke
test) with pip and the hub offline, then stops the service.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

AIBOXCTL = str(Path(sys.executable).with_name("aiboxctl"))


class PeakDisk:
    """Samples the bytes of new files (inodes not present at start) under some folders."""

    def __init__(self, *folders: Path) -> None:
        self.folders = folders
        self.start = time.time() - 1
        self.baseline = {ino for ino, _ in self._scan()}
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _scan(self):
        seen = set()
        for folder in self.folders:
            for dirpath, _, files in os.walk(folder):
                for name in files:
                    try:
                        st = os.lstat(os.path.join(dirpath, name))
                    except OSError:
                        continue
                    key = (st.st_dev, st.st_ino)
                    # A hardlink to data older than the step (the store linking an installed
                    # package's model) takes no new space.
                    if st.st_nlink > 1 and st.st_mtime < self.start:
                        continue
                    if key not in seen:
                        seen.add(key)
                        yield key, st.st_blocks * 512

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(b for ino, b in self._scan() if ino not in self.baseline))
            self._stop.wait(0.05)

    def __enter__(self) -> "PeakDisk":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, sum(b for ino, b in self._scan() if ino not in self.baseline))


def timed(argv: list[str], env: dict, *folders: Path) -> tuple[float, float, int, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with PeakDisk(*folders) as disk:
        t = time.perf_counter()
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, disk.peak, proc


def mib(n: float) -> str:
    return f"{n / (1 << 20):8.1f} MiB"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--hardware", default="cpu-32g")
    ap.add_argument("--dir", default=None, help="work folder (default: a temp dir)")
    ap.add_argument("--engine-wheel", default=None, help="llama-cpp-python wheel for pack (default: pack's choice)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="aibox-bench-bundle-", dir=args.dir))
    pack_home, box_home, out_dir, root = work / "pack-home", work / "box-home", work / "out", work / "root"
    for d in (pack_home, box_home, out_dir):
        d.mkdir()
    bundle = out_dir / "bundle.tar"
    base_env = {**os.environ, "NO_COLOR": "1"}
    try:
        # 1. pack
        env = {**base_env, "AIBOX_HOME": str(pack_home)}
        wall, cpu, peak, proc = timed([AIBOXCTL, "pack", "--profile", args.profile, "--hardware", args.hardware,
                                       "-o", str(bundle), "--json",
                                       *(["--engine-wheel", args.engine_wheel] if args.engine_wheel else [])],
                                      env, pack_home, out_dir)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            return 1
        packed = json.loads(proc.stdout)["data"]
        size = bundle.stat().st_size
        model_size = packed["model"]["size"]

        # anchor: tar -cf of the same members, from an unpacked copy
        members = work / "members"
        members.mkdir()
        subprocess.run(["tar", "-xf", str(bundle), "-C", str(members)], check=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(["tar", "-cf", str(work / "anchor.tar"), "-C", str(members), "."], check=True)
        tar_cf = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tar_cf_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        (work / "anchor.tar").unlink()

        # anchor: tar -xf of the bundle (no verification)
        shutil.rmtree(members)
        members.mkdir()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run(["tar", "-xf", str(bundle), "-C", str(members)], check=True)
        tar_xf = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        tar_xf_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        shutil.rmtree(members)

        # 2. install --bundle, offline
        closed = f"http://127.0.0.1:{free_port()}"
        env = {k: v for k, v in base_env.items() if not k.upper().startswith("PIP_")}
        env.update({"AIBOX_HOME": str(box_home), "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1",
                    **{k: closed for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}})
        root.mkdir()
        i_wall, i_cpu, i_peak, iproc = timed([AIBOXCTL, "install", "--bundle", str(bundle), "--root", str(root),
                                              "--port", str(free_port()), "--yes", "--json"], env, box_home, root)
        subprocess.run([AIBOXCTL, "stop", "--root", str(root)], env=env, capture_output=True)
        if iproc.returncode != 0:
            print(iproc.stdout[-2000:], iproc.stderr[-2000:], file=sys.stderr)
            return 1
        installed = json.loads(iproc.stdout)["data"]
        steps = installed["steps"]
        unpack_s = steps["verify_s"] + steps["unpack_s"]

        print(f"bundle: {args.profile} on {args.hardware}: {mib(size)} ({packed['members']} members, "
              f"{packed['wheels']} wheels, weights {mib(model_size).strip()}, engine wheel "
              f"{packed['engine_wheel']['build']})")
        print(f"{'step':34s} {'wall s':>8s} {'cpu s':>7s} {'peak disk':>13s}")
        print(f"{'pack':34s} {wall:8.2f} {cpu:7.2f} {mib(peak):>13s}")
        for key, label in (("plan_s", "plan"), ("model_s", "weights from the store"),
                           ("wheels_s", "wheels (pip download, own wheel)"), ("write_s", "hash + stream members")):
            print(f"{'  ' + label:34s} {packed['steps'][key]:8.2f}")
        print(f"{'  anchor: tar -cf same members':34s} {tar_cf:8.2f} {tar_cf_cpu:7.2f}")
        print(f"{'install --bundle (whole)':34s} {i_wall:8.2f} {i_cpu:7.2f} {mib(i_peak):>13s}")
        print(f"{'  verify (read 1, no writes)':34s} {steps['verify_s']:8.2f}")
        print(f"{'  unpack (read 2 + write, pip)':34s} {steps['unpack_s']:8.2f}")
        print(f"{'  install transaction':34s} {steps['install_s']:8.2f}")
        print(f"{'  anchor: tar -xf bundle':34s} {tar_xf:8.2f} {tar_xf_cpu:7.2f}")
        print()
        print(f"pack / tar -cf (wall)             {wall / tar_cf:6.1f}x")
        print(f"pack hash+stream / tar -cf (wall) {packed['steps']['write_s'] / tar_cf:6.1f}x")
        print(f"pack peak disk / bundle size      {peak / size:6.2f}x")
        print(f"verify+unpack / tar -xf (wall)    {unpack_s / tar_xf:6.1f}x")
        print(f"install peak disk / bundle size   {i_peak / size:6.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
