"""engine.yaml → EngineConfig (contract 4)."""

from __future__ import annotations

import pytest

from aiboxctl.engine.config import EngineConfig, load_engine_config
from aiboxctl.errors import UsageError


def test_full_yaml_round_trips(tmp_path):
    (tmp_path / "engine.yaml").write_text(
        "model: models/m.gguf\nmodel_name: demo\nport: 9000\nn_ctx: 2048\nparallel: 2\n"
        "kv_unified: false\nthreads: 2\ncache_type_k: q8_0\nflash_attn: off\ntensor_split: [3, 1]\n"
        "repack: false\napi_keys_file: keys.txt\naudit_log: null\nchat_template: null\n"
    )
    cfg = load_engine_config(tmp_path / "engine.yaml")
    assert cfg.model == tmp_path / "models" / "m.gguf"  # relative to the config's folder
    assert cfg.api_keys_file == tmp_path / "keys.txt"
    assert (cfg.served_name, cfg.port, cfg.parallel, cfg.kv_unified) == ("demo", 9000, 2, False)
    assert cfg.flash_attn == "off"  # YAML's bare off is a boolean; the loader maps it back
    assert cfg.tensor_split == (3.0, 1.0) and cfg.repack is False and cfg.cache_type_k == "q8_0"
    assert cfg.slot_ctx == 1024
    again = EngineConfig(**{**cfg.to_dict(), "model": cfg.model, "tensor_split": tuple(cfg.tensor_split),
                            "api_keys_file": cfg.api_keys_file})
    assert again == cfg


def test_defaults_and_served_name(tmp_path):
    (tmp_path / "e.yaml").write_text(f"model: {tmp_path}/SmolLM2.Q4_1.gguf\n")
    cfg = load_engine_config(tmp_path / "e.yaml")
    assert cfg.served_name == "SmolLM2.Q4_1"
    assert (cfg.n_ctx, cfg.parallel, cfg.repack, cfg.selftest, cfg.threads) == (4096, 4, True, True, None)
    assert cfg.effective_threads >= 1


@pytest.mark.parametrize("text, needle", [
    ("parallel: 2\n", "'model'"),
    ("model: m.gguf\nparalel: 2\n", "unknown key(s): paralel"),
    ("model: m.gguf\nparallel: two\n", "parallel must be an integer"),
    ("model: m.gguf\ncache_type_k: q3\n", "cache_type_k must be one of"),
    ("model: m.gguf\nn_ubatch: 1024\nn_batch: 512\n", "n_ubatch must be ≤ n_batch"),
    ("model: m.gguf\nport: [1\n", "not valid YAML"),
])
def test_bad_config_is_a_usage_error(tmp_path, text, needle):
    (tmp_path / "e.yaml").write_text(text)
    with pytest.raises(UsageError) as err:
        load_engine_config(tmp_path / "e.yaml")
    assert needle in err.value.message


def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_engine_config(tmp_path / "nope.yaml")


def test_a_folder_or_binary_file_is_one_line_and_exit_2(tmp_path):
    """`aiboxctl serve --config` on a folder or a file that is not text: one line naming it, exit 2
    (it was 'Internal error', exit 1)."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "bin.yaml").write_bytes(b"model: \xd0\x00\xff\n")
    exe = Path(sys.executable).with_name("aiboxctl")
    for target, needle in ((tmp_path, "cannot be read"), (tmp_path / "bin.yaml", "not UTF-8 text")):
        with pytest.raises(UsageError, match=needle):
            load_engine_config(target)
        r = subprocess.run([str(exe), "serve", "--config", str(target)], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(target) in lines[0] and needle in lines[0], r.stderr
