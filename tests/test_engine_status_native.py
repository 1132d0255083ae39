"""`engine status` says what differs instead of "The engine matches this box" right under "box
needs … portable CPU build" (issue 19). The shared test environment's engine is the one pip
built from source: a native build (no runtime-selected CPU variants)."""

from __future__ import annotations

import pytest

from aiboxctl.engine.build.status import engine_status
from aiboxctl.engine.build.verify import inspect_engine


def test_a_native_build_where_the_portable_one_is_needed_is_named(cli):
    import sys

    engine = inspect_engine(sys.executable)["engine"]
    if engine.get("cpu_variants"):
        pytest.skip("this environment's engine is the portable build (test_engine_build_portable covers it)")
    status = engine_status(accelerators=[])
    assert "portable" in status.needed_reason
    assert not status.matches and status.next_command == "aiboxctl engine install --backend cpu"
    assert any("native" in d and "portable" in d for d in status.differences)
    r = cli("engine", "status")
    assert "The engine matches this box" not in r.stdout
    assert "does not match this box: the installed build is native" in " ".join(r.stdout.split())
