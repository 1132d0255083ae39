"""bench/device_check.py: the GPU check's CPU rehearsal end to end (small synthetic shapes, the
real engine, the real CPU llama-server from bench/anchor.py), so the script's logic is proven
before any device time is spent; and its carry list for the device."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "device_check.py"
STEPS = ("install", "probe", "synth-7b", "selftest", "speed", "plan", "sizing-7b", "synth-32b", "sizing-32b")


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-check-out")
    env = {**os.environ, "AIBOX_HOME": str(tmp_path_factory.mktemp("aibox-home"))}
    env.pop("OUT", None)
    # a cold run builds the CPU llama-server into the bench cache first (see docs/gpu.md)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out), "--budget", "1500"],
                          capture_output=True, text=True, env=env, timeout=3600)
    doc = json.loads((out / "device-check.json").read_text())
    return proc, doc, out


@pytest.mark.slow
def test_rehearsal_runs_every_step(rehearsal):
    proc, doc, out = rehearsal
    assert doc["mode"] == "cpu"
    assert tuple(doc["steps"]) == STEPS
    failed = {n: s["error"] for n, s in doc["steps"].items() if s["status"] != "ok"}
    assert not failed, (failed, proc.stderr[-3000:])
    assert proc.returncode == 0
    md = (out / "device-check.md").read_text()
    for heading in ("## sizing-7b", "## sizing-32b", "## speed", "## plan --profile gov-office", "## goals"):
        assert heading in md


@pytest.mark.slow
def test_rehearsal_compares_every_buffer(rehearsal):
    _, doc, _ = rehearsal
    for key in ("sizing-7b", "sizing-32b"):
        cells = doc["steps"][key]["data"]["cells"]
        assert len(cells) == 3
        for cell in cells:
            for src in ("estimate", "exact"):
                cmp_ = cell["compare"][src]
                assert set(cmp_["errors"]) == {"weights", "kv_cache", "compute", "output"}, (key, cell)
                assert all(_number(e) for e in cmp_["errors"].values()), cmp_
                assert all(_number(v) and v > 0 for v in cmp_["measured"].values() if not isinstance(v, str))
    s = doc["summary"]
    assert _number(s["sizing_worst_error"])
    assert "sizing ≤ 3 % and never under" in s["goals"]


@pytest.mark.slow
def test_rehearsal_measures_both_servers_and_the_plan(rehearsal):
    _, doc, _ = rehearsal
    speed = doc["steps"]["speed"]["data"]
    assert set(speed["ratios"]) == {"1", "4"}
    for n, r in speed["ratios"].items():
        assert _number(r["aggregate"]) and r["aggregate"] > 0
        ab = speed["servers"]["aiboxctl"]["levels"][n]
        assert _number(ab["host_us_per_token"]) and ab["host_us_per_token"] > 0  # from the engine's /metrics
    assert "speed ≥ 1.0× at 1 stream(s)" in doc["summary"]["goals"]
    plan = doc["steps"]["plan"]["data"]["synthetic_7b"]
    assert set(plan) == {"1", "4"}
    assert all(_number(v["predicted_aggregate"]) and _number(v["error"]) for v in plan.values())
    # like with like: the per-user prediction at the depth decoded against each stream's decode rate
    for n, v in plan.items():
        assert v["decode_depth"] == 10 + 16 // 2
        assert _number(v["predicted_per_user_at_depth"]) and _number(v["decode_error"]), v
        per_stream = speed["servers"]["aiboxctl"]["levels"][n]["per_stream"]
        assert v["measured_decode_per_stream"] == pytest.approx(per_stream * 15 / 16)
    assert set(doc["summary"]["decode_errors"]) == {"1", "4"}


def test_report_compares_like_with_like_and_says_what_the_gpu_counters_are():
    """The first device run (2026-11-30) set the plan's aggregate at depth 4096 against an
    aggregate over the wall time with prefill and admission in it (+25 %…+188 %): the report now
    puts the per-user prediction at the depth decoded beside each stream's decode rate, states
    what the aggregate is, and says that on CUDA the decode counter is launch time only."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    level = {"aggregate": 745.5, "wall": 1.37, "per_stream": 111.85, "ttft_p50": 0.227, "tokens": 1024,
             "host_us_per_token": 11.5, "decode_ms_per_step": 1.02}
    plan = {"exit_code": 0, "predicted_aggregate": 2054.79, "predicted_per_user": 256.85, "depth": 4096,
            "measured_aggregate": 745.5, "error": 1.756, "decode_depth": 74, "predicted_per_user_at_depth": 111.0,
            "predicted_aggregate_at_depth": 888.1, "bound_at_depth": "memory",
            "measured_decode_per_stream": 111.0, "decode_error": 0.0}
    doc = {"mode": "device", "started": "2026-11-30 22:41 UTC",
           "machine": {"host": "vm", "cores": 16, "loadavg": ["0.88"], "gpus": [{"name": "NVIDIA H200", "total": 2**37}]},
           "steps": {"speed": {"status": "ok", "seconds": 32.1, "data": {
               "streams": [8], "tokens": 128, "ratios": {"8": {"aggregate": 1.16}},
               "servers": {"aiboxctl": {"levels": {"8": level}}, "llama-server": {"levels": {"8": level}}},
               "notes": [device_check.GPU_COUNTERS_NOTE]}},
               "plan": {"status": "ok", "seconds": 3.9, "data": {"box": {"exit_code": 0}, "synthetic_7b": {"8": plan}}}},
           "summary": {"goals": {}, "sizing_under": []}}
    md = device_check.markdown(doc)
    assert "| 8 | 74 | 111.0 | 111.0 | +0.0% | 2054.8 (4096) | 745.5 | +175.6% |" in md
    assert "prefill and admission included" in md
    assert "decode_ms_per_step is launch time only" in md
    assert "| 8 | 745.5 | 745.5 | 1.160 | 227/227 | 111.0 | 11.5 |" in md  # 111.85 x 127/128


def test_on_a_gpu_the_host_compute_buffer_is_compared_too():
    """llama.cpp reports the host's compute buffer beside the GPU's (CUDA_Host): the 2026-11-30
    runs estimated it at 15.00 MiB where 22.01 were logged (7B shape, 8192 cells) and no goal saw
    it, because only the accelerator's buffers were compared. Figures of that cell."""
    from types import SimpleNamespace

    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    gpu = {"weights": 4370558976, "kv_cache": 469762048, "compute": 318767104, "output": 0, "total": 5763067904}
    cell = {"ctx": 8192, "parallel": 1, "kv": "f16", "nvml_used": 5715591168,
            "estimate": {"host": {"compute": 15728640}, "GPU0": {**gpu, "total": 5777747968}},
            "exact": {"host": {"compute": 23079158}, "CUDA0": gpu},
            "measured": {"host": {"weights": 306561679, "output": 608174, "compute": 23079158},
                         "CUDA0": {"weights": 4370559140, "kv_cache": 469762048, "compute": 318767104}}}
    cmp_ = device_check.compare(SimpleNamespace(mode=SimpleNamespace(cpu=False)), cell)
    assert cmp_["estimate"]["errors"][device_check.HOST_COMPUTE] == pytest.approx(15728640 / 23079158 - 1)
    assert cmp_["exact"]["errors"][device_check.HOST_COMPUTE] == 0.0
    assert cmp_["estimate"]["measured"][device_check.HOST_COMPUTE] == 23079158
    cell["compare"] = cmp_
    doc = {"mode": "device", "started": "2026-11-30 22:57 UTC",
           "machine": {"host": "vm", "cores": 16, "loadavg": ["1.85"], "gpus": []},
           "steps": {"sizing-7b": {"status": "ok", "seconds": 17.2, "data": {"cells": [cell]}}},
           "summary": {"goals": {}, "sizing_under": []}}
    md = device_check.markdown(doc)
    assert "| host_compute est/exact | total est/exact |" in md
    assert "| 8192 | 1 | f16 | +0.0% / +0.0% | +0.0% / +0.0% | +0.0% / +0.0% | - / - | -31.8% / +0.0% |" in md


def test_device_mode_without_carry_records_the_failure_and_writes_the_report(tmp_path):
    """A step that fails is recorded (one line, no traceback on stdout) and the report is still
    written; the steps that need it say so."""
    out = tmp_path / "out"
    env = {**os.environ, "AIBOX_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--carry", str(tmp_path / "nothing"), "--out", str(out),
                           "--budget", "60"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    doc = json.loads((out / "device-check.json").read_text())
    assert doc["mode"] == "device"
    assert doc["steps"]["install"]["status"] == "failed"
    assert "--prepare" in doc["steps"]["install"]["error"]
    assert {s["status"] for n, s in doc["steps"].items() if n != "install"} == {"skipped"}
    assert "| install | failed |" in (out / "device-check.md").read_text()


def test_prepare_carries_what_the_device_lacks():
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    missing = device_check.missing_requirements()
    for name in ("fastapi", "uvicorn", "pydantic", "pydantic-core", "gguf", "typer", "starlette"):
        assert name in missing, name
    for name in ("numpy", "httpx", "jinja2", "rich", "llama-cpp-python"):
        assert name not in missing, name


def test_steps_option_runs_the_named_steps_and_refuses_unknown_ones(tmp_path):
    """``--steps`` runs only the named steps plus install and what they need; the front door is
    not in the default plan; an unknown name is one line and exit 2, before anything runs."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    assert device_check.DEFAULT_STEPS == STEPS
    assert device_check.select_steps(None) == STEPS
    assert device_check.select_steps("front-door") == ("install", "synth-7b", "front-door")
    assert device_check.select_steps("sizing-32b,speed") == ("install", "synth-7b", "speed", "synth-32b", "sizing-32b")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--steps", "front-door,frontdoor", "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown step frontdoor" in lines[0] and "front-door" in lines[0], proc.stderr
    assert not out.exists()


def test_front_door_figures_from_rounds():
    """Medians over rounds, the ratio of the medians and the spread of the paired ratios, TTFT
    p50 over every stream of every round, and the gateway's CPU per relayed token less its idle
    rate (here 0.01 cores over 6 s of its side's wall: 0.06 s of its 0.66 s)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    def rnd(agg, ttfts, gw_cpu):
        return {"aggregate": agg, "ttfts": ttfts, "tokens": 1000, "wall": 2.0, "gateway_cpu": gw_cpu,
                "engine_cpu": 0.5}

    rounds = {"direct": [rnd(100.0, [0.010, 0.020], 0.02), rnd(110.0, [0.030], 0.02), rnd(90.0, [0.040], 0.02)],
              "gateway": [rnd(99.0, [0.012, 0.022], 0.22), rnd(104.5, [0.032], 0.22), rnd(95.0, [0.042], 0.22)]}
    v = device_check.front_door_level(rounds, idle_cores=0.01)
    assert v["direct"]["aggregate"] == 100.0 and v["gateway"]["aggregate"] == 99.0
    assert v["ratio"] == pytest.approx(0.99)
    assert v["ratio_range"] == pytest.approx([0.95, 95 / 90])
    assert v["direct"]["ttft_p50_ms"] == pytest.approx(25.0) and v["ttft_added_ms"] == pytest.approx(2.0)
    assert v["gateway_cpu_us_per_token"] == pytest.approx(0.6 * 1e6 / 3000)
    assert v["gateway_cores"] == pytest.approx(0.1)
    doc = {"mode": "device", "started": "2026-11-30 23:30 UTC",
           "machine": {"host": "vm", "cores": 16, "loadavg": ["1.0"], "gpus": []},
           "steps": {"front-door": {"status": "ok", "seconds": 60.0, "data": {
               "tokens": 128, "rounds": 3, "levels": {"64": v}, "gateway_cpu_us_per_token": 200.0,
               "gateway_idle_cores": 0.01, "gateway_peak_rss": 90 * 2**20, "event_loop": "uvloop",
               "http_parser": "h11", "notes": []}}},
           "summary": {"goals": {}, "sizing_under": []}}
    md = device_check.markdown(doc)
    assert "| 64 | 100.0 | 99.0 | 0.990 | 0.950–1.056 | 25.0/27.0 | +2.0 | 200 | 0.100 |" in md
    assert "peak RSS 90.0 MiB; uvloop event loop" in md


def test_front_door_figures_from_rounds_with_governed_access():
    """A third side, the gateway with governed access on: its median against the plain
    gateway's (not the engine's), the spread of the access/gateway round ratios, the TTFT it adds
    to the gateway's, and its own CPU per relayed token less its own idle rate; issue 16's goals
    at 16 and 64 streams only, the ledger's rows against the requests made, audit verify's exit."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    def rnd(agg, ttfts, access_cpu):
        return {"aggregate": agg, "ttfts": ttfts, "tokens": 1000, "wall": 2.0, "gateway_cpu": 0.02,
                "access_cpu": access_cpu, "engine_cpu": 0.5}

    rounds = {"direct": [rnd(100.0, [0.010], 0.04), rnd(110.0, [0.030], 0.04), rnd(90.0, [0.040], 0.04)],
              "gateway": [rnd(100.0, [0.012], 0.04), rnd(100.0, [0.032], 0.04), rnd(100.0, [0.042], 0.04)],
              "access": [rnd(97.0, [0.013], 0.34), rnd(99.0, [0.034], 0.34), rnd(98.0, [0.043], 0.34)]}
    v = device_check.front_door_level(rounds, idle_cores=0.01, access_idle_cores=0.02)
    assert v["rounds"] == 3 and v["access"]["aggregate"] == 98.0
    assert v["ratio"] == pytest.approx(1.0)  # the gateway against the engine, as before
    assert v["access_ratio"] == pytest.approx(0.98) and v["access_ratio_range"] == pytest.approx([0.97, 0.99])
    assert v["access"]["ttft_p50_ms"] == pytest.approx(34.0) and v["access_ttft_added_ms"] == pytest.approx(2.0)
    # 1.02 s of its CPU over 6 s of its side's wall, less 0.02 cores × 6 s: 0.9 s for 3000 tokens
    assert v["access_cpu_us_per_token"] == pytest.approx(0.9 * 1e6 / 3000)
    assert v["access_cores"] == pytest.approx(0.15)
    two = device_check.front_door_level({k: rounds[k] for k in ("direct", "gateway")}, idle_cores=0.01)
    assert "access" not in two and "access_ratio" not in two

    access = {"on": True, "missing": None, "error": None, "requests": 1 + 3 * (1 + 16 + 64), "ledger_rows": 244,
              "audit_verify_exit": 0, "audit_records": 250, "audit_errors": [], "idle_cores": 0.02,
              "cpu_us_per_token": 300.0, "peak_rss": 80 * 2**20}
    slow = {**v, "access_ratio": 0.95, "access_ttft_added_ms": 4.0}
    data = {"tokens": 128, "rounds": 3, "levels": {"1": slow, "16": v, "64": slow}, "gateway_cpu_us_per_token": 200.0,
            "gateway_idle_cores": 0.01, "gateway_peak_rss": 90 * 2**20, "event_loop": "uvloop",
            "http_parser": "h11", "notes": [], "access": access}
    s: dict = {}
    goals = device_check.access_goals(s, data)
    assert goals == {"governed access measured": True,
                     "governed access ≥ 0.98× the gateway at 16 streams": True,
                     "governed access adds ≤ 3 ms TTFT p50 at 16 streams": True,
                     "governed access ≥ 0.98× the gateway at 64 streams": False,
                     "governed access adds ≤ 3 ms TTFT p50 at 64 streams": False,
                     "usage ledger: one row per request made": True, "aiboxctl audit verify passes": True}
    assert s["access"]["16"]["ratio"] == pytest.approx(0.98)
    assert not device_check.access_goals({}, {**data, "access": {**access, "ledger_rows": 243}})[
        "usage ledger: one row per request made"]
    assert not device_check.access_goals({}, {**data, "access": {**access, "audit_verify_exit": 4}})[
        "aiboxctl audit verify passes"]
    assert device_check.access_goals({}, {"levels": {"64": two}}) == {}  # a report from before access
    missing = {"on": False, "missing": "filelock (No module named 'filelock')", "error": None, "requests": 0}
    assert device_check.access_goals({}, {"levels": {"64": two}, "access": missing}) == {
        "governed access measured": False}

    doc = {"mode": "device", "started": "2026-11-30 23:30 UTC",
           "machine": {"host": "vm", "cores": 16, "loadavg": ["1.0"], "gpus": []},
           "steps": {"front-door": {"status": "ok", "seconds": 80.0, "data": data}},
           "summary": {"goals": goals, "sizing_under": []}}
    md = device_check.markdown(doc)
    assert "## governed access" in md
    assert "| 16 | 100.0 | 98.0 | 0.980 | 0.970–0.990 | 32.0/34.0 | +2.0 | 300 | 0.150 |" in md
    assert "usage ledger: 244 rows for 244 requests made (warm-up included); `aiboxctl audit verify`: exit 0" in md
    assert "peak RSS 80.0 MiB" in md
    doc["steps"]["front-door"]["data"] = {**data, "levels": {"64": two}, "access": missing}
    md = device_check.markdown(doc)
    assert "governed access not measured: this python cannot import filelock" in md and "requests made (warm-up" not in md


def test_access_missing_names_what_does_not_import():
    """The step says which of governed access's imports this python lacks instead of crashing;
    here (the venv) everything it needs imports, cryptography not among them."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check

    assert device_check.access_missing() is None
    assert "cryptography" not in device_check.ACCESS_IMPORTS
    gone = device_check.access_missing(("aiboxctl.access.gate", "aiboxctl_no_such_module"))
    assert gone.startswith("aiboxctl_no_such_module (") and "aiboxctl.access.gate" not in gone


@pytest.fixture(scope="module")
def front_door_rehearsal(tmp_path_factory):
    out = tmp_path_factory.mktemp("device-check-front-door")
    env = {**os.environ, "AIBOX_HOME": str(tmp_path_factory.mktemp("aibox-home"))}
    env.pop("OUT", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--steps", "front-door", "--out", str(out),
                           "--budget", "600"], capture_output=True, text=True, env=env, timeout=900)
    return proc, json.loads((out / "device-check.json").read_text()), out


@pytest.mark.slow
def test_rehearsal_front_door(front_door_rehearsal):
    """``--cpu --steps front-door``: the engine on the small 7B shape and ``aiboxctl gateway``
    over it, direct and through the front door at each level, every figure in the report."""
    proc, doc, out = front_door_rehearsal
    assert tuple(doc["steps"]) == ("install", "synth-7b", "front-door"), proc.stderr[-3000:]
    fd = doc["steps"]["front-door"]
    assert fd["status"] == "ok", (fd["error"], fd["data"].get("notes"), proc.stderr[-3000:])
    assert proc.returncode == 0
    data = fd["data"]
    assert set(data["levels"]) == {"1", "4"} and not data["notes"]
    for n, v in data["levels"].items():
        assert v["rounds"] == 3
        for side in ("direct", "gateway"):
            assert _number(v[side]["aggregate"]) and v[side]["aggregate"] > 0
            assert v[side]["tokens"] == 3 * int(n) * 16  # ignore_eos: every token of every stream came back
            assert _number(v[side]["ttft_p50_ms"]) and v[side]["ttft_p50_ms"] > 0
        assert _number(v["ratio"]) and v["ratio"] > 0
        assert v["ratio_range"][0] <= v["ratio_range"][1]
        assert _number(v["ttft_added_ms"]) and _number(v["gateway_cpu_us_per_token"])
    assert _number(data["gateway_cpu_us_per_token"]) and data["gateway_cpu_us_per_token"] > 0
    assert data["gateway_peak_rss"] > 10 * 2**20
    assert "front door ≥ 0.97× at 4 stream(s)" in doc["summary"]["goals"]
    assert "front door adds ≤ 5 ms TTFT p50 at 1 stream(s)" in doc["summary"]["goals"]
    assert "## front door" in (out / "device-check.md").read_text()
    # the third side: the gateway with governed access on, authenticated with a key made for it
    access = data["access"]
    assert access["on"] and not access["missing"] and not access["error"], access
    for n, v in data["levels"].items():
        assert v["access"]["tokens"] == 3 * int(n) * 16
        assert _number(v["access_ratio"]) and v["access_ratio"] > 0
        assert v["access_ratio_range"][0] <= v["access_ratio_range"][1]
        assert _number(v["access_ttft_added_ms"]) and _number(v["access_cpu_us_per_token"])
    assert access["requests"] == 1 + 3 * (1 + 4)  # the warm-up and every stream of every round
    assert access["ledger_rows"] == access["requests"]
    assert access["audit_verify_exit"] == 0 and access["audit_records"] >= access["requests"], access
    assert _number(access["cpu_us_per_token"]) and access["peak_rss"] > 10 * 2**20
    goals = doc["summary"]["goals"]
    assert goals["governed access measured"] and goals["usage ledger: one row per request made"]
    assert goals["aiboxctl audit verify passes"]
    assert "## governed access" in (out / "device-check.md").read_text()


def test_a_level_whose_streams_fail_says_so():
    """run_level (the speed step's and, through streams_level, the front door's) names the failed
    streams in one RuntimeError, where a stream that died left a hole its figures tripped on."""
    sys.path.insert(0, str(ROOT / "bench"))
    import device_check
    from serve_throughput import free_port, run_level

    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RuntimeError, match=r"^2 of 2 streams failed against http://127\.0\.0\.1:\d+ \(ConnectError: .*refused\)$"):
        run_level(base, 2, 4)
    with pytest.raises(RuntimeError, match="1 of 1 streams failed"):
        device_check.streams_level(base, 1, 4, {"Authorization": "Bearer x"})
