"""Every environment variable aiboxctl reads, in one place."""

from __future__ import annotations


class Env:
    HOME = "AIBOX_HOME"  # state/config root (models, cache, installs' default prefix data)
    MODELS = "AIBOX_MODELS"  # model store override
    DEBUG = "AIBOX_DEBUG"  # 1: show tracebacks
    SYSFS_ROOT = "AIBOX_SYSFS_ROOT"  # tests: a fake /sys
    # an engine instance's CPUs (engines/<name>.env; systemd pins with CPUAffinity=, the built-in
    # supervisor with sched_setaffinity before the engine starts)
    CPU_AFFINITY = "AIBOX_CPU_AFFINITY"
    PROC_ROOT = "AIBOX_PROC_ROOT"  # tests: a fake /proc
    TOOL_TIMEOUT = "AIBOX_TOOL_TIMEOUT"  # seconds for a vendor tool
    HF_ENDPOINT = "HF_ENDPOINT"
    HF_TOKEN = "HF_TOKEN"
    HF_HUB_OFFLINE = "HF_HUB_OFFLINE"
    MODELSCOPE_ENDPOINT = "MODELSCOPE_ENDPOINT"
    PROBE_TIMEOUT = "AIBOX_PROBE_TIMEOUT"  # pull: seconds a source gets to answer its first request (default 3)
    # tests: make `aiboxctl install` fail at a named point (after-file:N, before-start, after-start,
    # smoke) to prove the rollback
    INJECT_FAILURE = "AIBOX_INJECT_FAILURE"
    # tests: SIGKILL `aiboxctl install` at a named point (the same points, plus journal and
    # commit) to prove that an interrupted install is seen by status and repaired
    TEST_KILL_AT = "AIBOX_TEST_KILL_AT"
    API_KEY = "AIBOX_API_KEY"  # chat/bench: the key to send (default: the installed key file)
    # tests: make the engine self-test child crash (SIGSEGV) while the named risky options are
    # on, e.g. "repack" or "repack,flash_attn" — proves the fallback path on any machine
    SELFTEST_FAULT = "AIBOX_SELFTEST_FAULT"
    # tests: make the serving decode loop fail on its first decode step, to prove the watchdog:
    # "loop-crash" (the step raises, the loop thread dies) or "loop-stall" (the step never returns)
    ENGINE_FAULT = "AIBOX_ENGINE_FAULT"
    # tests/bench: where the real llama-cpp-python builds are cached across runs (default
    # ~/.cache/aiboxctl-tests/engine-wheels): the portable CPU build takes minutes, so it is built once
    TEST_ENGINE_CACHE = "AIBOX_TEST_ENGINE_CACHE"
