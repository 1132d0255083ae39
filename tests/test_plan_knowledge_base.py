"""Knowledge-base profiles plan an embedding model and a reranker beside the chat model (issue
15): in the profile's order, on the host memory the chat model leaves, sized as pooled engines;
a role nothing fits is a note; the profile's lists are checked against the catalog's roles."""

from __future__ import annotations

import dataclasses

import pytest

from aiboxctl.datafile import DataFileError
from aiboxctl.models.catalog import load_catalog
from aiboxctl.resources import data_dir
from aiboxctl.sizing.hardware_profiles import load_hardware_profile
from aiboxctl.sizing.knowledge_base import plan_companions
from aiboxctl.sizing.planner import plan
from aiboxctl.sizing.profiles import load_use_case

GiB = 1024 ** 3


def test_gov_office_plans_chat_embedding_and_rerank_engines():
    p = plan(load_use_case("gov-office"), load_hardware_profile("cpu-256g"))
    assert [(c.role, c.variant) for c in p.companions] == [("embedding", "bge-m3"), ("rerank", "bge-reranker-v2-m3")]
    for c in p.companions:
        assert c.engine.role == c.role and c.engine.model_name == c.variant
        assert c.engine.n_batch == c.engine.n_ubatch == c.engine.n_ctx == 8192 and c.engine.parallel == 64
        host = c.memory.host
        assert host.kv_cache == 0 and host.weights <= host.total < 2 * GiB  # an encoder keeps no KV cache
    assert sum(c.memory.total for c in p.companions) <= p.devices[0].headroom
    data = p.to_dict()["companions"]
    assert [c["engine"]["role"] for c in data] == ["embedding", "rerank"]


def test_a_chat_only_profile_plans_no_companions():
    p = plan(load_use_case("demo"), load_hardware_profile("cpu-32g"))
    assert p.companions == () and p.to_dict()["companions"] == []


def test_smaller_models_or_a_note_when_memory_is_short():
    profile = load_use_case("gov-office")
    catalog = load_catalog()
    nothing, notes = plan_companions(profile, catalog, 64 * 1024 ** 2)
    assert nothing == () and len(notes) == 2
    assert notes[0].startswith("no embedding model fits beside the chat model: the smallest needs")
    some, notes = plan_companions(profile, catalog, int(0.6 * GiB))
    assert some and some[0].role == "embedding" and some[0].variant != "bge-m3"
    assert sum(c.memory.total for c in some) <= 0.6 * GiB


def test_profile_roles_and_model_lists_are_checked(tmp_path):
    base = (data_dir("profiles") / "gov-office.yaml").read_text()
    bad_roles = tmp_path / "a.yaml"
    bad_roles.write_text(base.replace("roles: [chat, embedding, rerank]", "roles: [embedding]"))
    with pytest.raises(DataFileError, match="a.yaml:17: roles: roles lists chat"):
        load_use_case(bad_roles)
    wrong_list = tmp_path / "b.yaml"
    wrong_list.write_text(base.replace("rerank_models: [bge-reranker-v2-m3", "rerank_models: [bge-m3"))
    with pytest.raises(DataFileError, match=r"rerank_models\[0\]: 'bge-m3' is not a catalog rerank variant"):
        load_use_case(wrong_list)
    assert dataclasses.replace(load_use_case("gov-office"), roles=("chat",)).embedding_models


def test_companions_are_sized_for_the_box_cpu_and_its_repack_verdict():
    """The pooled engines run on the same CPU as the chat model: on an AMX Xeon llama.cpp's AMX
    buffer copies their F16 matrices too, and where the probe saw repacking fault they run with
    it off like the chat model (an AVX2 CPU assumed, or repack left on, under-counts or crashes)."""
    from aiboxctl.sizing.box import as_box

    box = as_box(load_hardware_profile("cpu-xeon-amx-512g"))
    p = plan(load_use_case("gov-office"), box)
    assert p.companions
    for c in p.companions:
        assert not any("CPU not given" in n for n in c.memory.notes)
        assert c.engine.repack and c.memory.host.repack > 0  # the AMX copy of the F16 weights
    faulting = plan(load_use_case("gov-office"), dataclasses.replace(box, repack_ok=False))
    assert faulting.companions
    for c in faulting.companions:
        assert not c.engine.repack and c.memory.host.repack == 0
