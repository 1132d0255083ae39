"""gateway.yaml: typed, validated, every problem with file:line; `aiboxctl gateway` turns a bad
file into one line and exit 2."""

from __future__ import annotations

import pytest

from aiboxctl.datafile import DataFileError
from aiboxctl.gateway.config import gateway_config_from_text, load_gateway_config

GOOD = """\
port: 9000
internal_token_file: keys
queue_depth: 4
engines:
  - name: chat-0
    models: [smollm2]
    url: http://127.0.0.1:8101
  - name: chat-1
    models: [smollm2]
    url: http://[::1]:8102
  - name: embed-0
    role: embedding
    models: [bge]
    socket: /run/aibox/embed-0.sock
"""


def test_a_good_file_loads_with_relative_token_path(tmp_path):
    (tmp_path / "keys").write_text("# the engines' keys file\ngateway:s3cret\n")
    (tmp_path / "gateway.yaml").write_text(GOOD)
    cfg = load_gateway_config(tmp_path / "gateway.yaml")
    assert cfg.port == 9000 and cfg.queue_depth == 4 and cfg.host == "127.0.0.1"
    assert cfg.internal_token() == "s3cret"
    assert {m: [e.name for e in es] for m, es in cfg.models().items()} == {"smollm2": ["chat-0", "chat-1"],
                                                                           "bge": ["embed-0"]}
    assert cfg.engines[2].base_url == "http://localhost" and cfg.engines[0].replica_group == "smollm2"


@pytest.mark.parametrize("edit, needle", [
    (lambda t: t.replace("port: 9000", "port: 70000"), ":1: port:"),
    (lambda t: t.replace("queue_depth: 4", "queue_dept: 4"), ":3: queue_dept: unknown field"),
    (lambda t: t.replace("http://127.0.0.1:8101", "http://10.1.2.3:8101"), ":7: engines[0].url: engines listen on loopback"),
    (lambda t: t.replace("name: chat-1", "name: chat-0"), ":8: engines[1].name: duplicate engine name"),
    (lambda t: t.replace("    role: embedding\n    models: [bge]", "    role: embedding\n    models: [smollm2]"),
     "engines[2].role: model 'smollm2' is served as chat elsewhere"),
    (lambda t: t.replace("role: embedding", "role: vision"), "engines[2].role: Input should be"),
    (lambda t: t.replace("    socket: /run/aibox/embed-0.sock\n", ""), "engines[2]: give exactly one of url or socket"),
    (lambda t: t.replace("url: http://127.0.0.1:8101", "url: http://127.0.0.1:8101/v1"), "must be http://HOST:PORT"),
    (lambda t: t + "  - name: x\n", "engines[3].models: required field is missing"),
])
def test_every_mistake_names_file_line_and_field(edit, needle):
    with pytest.raises(DataFileError) as err:
        gateway_config_from_text(edit(GOOD), "gw.yaml")
    assert needle in str(err.value) and str(err.value).startswith("gw.yaml")


def test_cli_bad_config_is_one_line_exit_2(cli, tmp_path):
    (tmp_path / "gateway.yaml").write_text(GOOD.replace("port: 9000", "port: nine"))
    r = cli("gateway", "--config", str(tmp_path / "gateway.yaml"))
    assert r.code == 2, r
    assert r.stderr.count("\n") == 1 and "gateway.yaml:1: port:" in r.stderr and "Traceback" not in r.stderr
    r = cli("gateway", "--config", str(tmp_path / "missing.yaml"))
    assert r.code == 2 and "Gateway config not found" in r.stderr
    (tmp_path / "g2.yaml").write_text(GOOD)  # internal_token_file 'keys' does not exist there
    r = cli("--json", "gateway", "--config", str(tmp_path / "g2.yaml"), "--port", "1")
    assert r.code == 2 and r.json()["errors"][0]["message"].startswith("internal token file not found")


def test_access_files_resolve_against_the_file_and_need_a_keys_file(tmp_path):
    (tmp_path / "gateway.yaml").write_text(GOOD + "access_dir: access\nledger_file: /var/lib/x/usage.db\n"
                                           "audit_content: true\nsyslog: udp://siem:514\ntls_dir: tls\n")
    cfg = load_gateway_config(tmp_path / "gateway.yaml")
    s = cfg.access_settings()
    assert s.keys_file == tmp_path / "access/keys.json" and s.audit_file == tmp_path / "access/access-audit.jsonl"
    assert s.ledger_file.as_posix() == "/var/lib/x/usage.db" and s.secret_file == tmp_path / "access/box-secret"
    assert s.audit_content and s.syslog == "udp://siem:514"
    assert cfg.tls_dir == tmp_path / "tls" and cfg.scheme == "https"
    assert gateway_config_from_text(GOOD).access_settings() is None
    with pytest.raises(DataFileError) as err:
        gateway_config_from_text(GOOD + "audit_file: a.jsonl\n", "gw.yaml")
    assert "audit_file: needs keys_file or access_dir" in str(err.value)


def test_cli_missing_access_or_tls_files_are_one_line_exit_2(cli, tmp_path):
    (tmp_path / "keys").write_text("gateway:s3cret\n")
    (tmp_path / "g.yaml").write_text(GOOD + "keys_file: nokeys.json\n")
    r = cli("gateway", "--config", str(tmp_path / "g.yaml"), "--port", "1")
    assert r.code == 2 and "keys file not found" in r.stderr and "aiboxctl keys add" in r.stderr, r
    (tmp_path / "t.yaml").write_text(GOOD + "tls_dir: tls\n")
    r = cli("gateway", "--config", str(tmp_path / "t.yaml"), "--port", "1")
    assert r.code == 2 and "TLS file not found" in r.stderr and "aiboxctl tls init" in r.stderr, r
    assert "Traceback" not in r.stderr
