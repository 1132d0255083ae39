"""TLS: the local CA and server certificate (cryptography), the organisation's pair checked, and
the real openai client talking HTTPS to uvicorn with the CA file — refused without it."""

from __future__ import annotations

import threading
import time

import pytest

from aiboxctl.access.tls import TlsFiles, check_pair, describe, init_local, renew
from aiboxctl.errors import UsageError

from test_engine_support import free_port

DAY = 86400.0


def test_local_ca_and_server_cert(tmp_path):
    files = TlsFiles(tmp_path / "tls")
    info = init_local(files, ["box.example", "127.0.0.1", "::1", "localhost"])
    assert set(info.names) == {"box.example", "127.0.0.1", "::1", "localhost"}
    assert len(info.ca_fingerprint_sha256.split(":")) == 32
    assert oct(files.ca_key.stat().st_mode & 0o777) == "0o600" and oct(files.key.stat().st_mode & 0o777) == "0o600"
    assert check_pair(files.cert, files.key).names == info.names
    renewed = renew(files)
    assert renewed.ca_fingerprint_sha256 == info.ca_fingerprint_sha256  # same CA: clients keep trusting
    assert renewed.fingerprint_sha256 != info.fingerprint_sha256 and renewed.names == info.names


def test_org_pair_key_mismatch_and_expiry(tmp_path):
    a, b = TlsFiles(tmp_path / "a"), TlsFiles(tmp_path / "b")
    now = time.time()
    init_local(a, ["a.example"], now=now)
    init_local(b, ["b.example"], now=now)
    with pytest.raises(UsageError, match="does not belong"):
        check_pair(a.cert, b.key)
    with pytest.raises(UsageError, match="expired"):
        check_pair(a.cert, a.key, now=now + 400 * DAY)
    with pytest.raises(UsageError, match="not valid before"):
        check_pair(a.cert, a.key, now=now - 2 * DAY)
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(UsageError, match="no PEM or DER"):
        check_pair(tmp_path / "junk.pem", a.key)
    with pytest.raises(UsageError, match="not an unencrypted PEM"):
        check_pair(a.cert, a.cert)
    assert describe(a.cert, a.ca_cert).ca_fingerprint_sha256


@pytest.fixture
def https_server(tmp_path):
    import uvicorn
    from fastapi import FastAPI

    files = TlsFiles(tmp_path / "tls")
    init_local(files, ["localhost", "127.0.0.1"])
    app = FastAPI()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "aibox"}]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(files.cert), ssl_keyfile=str(files.key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield files, port
    server.should_exit = True
    thread.join(10)


def test_openai_client_with_the_ca_talks_https_and_without_is_refused(https_server):
    import ssl

    import httpx
    import openai

    files, port = https_server
    with httpx.Client(verify=ssl.create_default_context(cafile=str(files.ca_cert))) as http:
        client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="x", http_client=http)
        assert [m.id for m in client.models.list()] == ["m"]
    with httpx.Client() as http:  # the system's trust store only
        client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="x", http_client=http, max_retries=0)
        with pytest.raises(openai.APIConnectionError) as exc:
            client.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in repr(exc.value.__cause__)
