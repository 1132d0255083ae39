"""The endpoint and API key of an installation, read from its engine config and key file:
what ``status``, the smoke test, ``chat`` and ``bench`` talk to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiboxctl.client.api import Endpoint
from aiboxctl.errors import AiboxError, ServiceDown


def first_key(text: str) -> str | None:
    """First key of an api_keys file's text (lines ``key`` or ``id:key``; # comments)."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.split(":", 1)[1] if ":" in line else line
    return None


def read_api_key(path: str | Path) -> str | None:
    return first_key(Path(path).read_text(encoding="utf-8"))


def endpoint_from_install(root: str | Path | None = None, *, url: str | None = None,
                          api_key: str | None = None) -> Endpoint:
    """The endpoint and key of the installation under ``root`` (``--url``/``--api-key`` win)."""
    import yaml

    from aiboxctl.deploy.instances import gateway_config_path
    from aiboxctl.deploy.spec import install_layout, root_flag

    layout = install_layout(root)
    cfg: dict[str, Any] = {}
    scheme, ca_file, pinned = "http", None, False
    gateway = gateway_config_path(layout)  # several engines: the front door is the endpoint
    try:
        if gateway.is_file() and not layout.engine_config.exists():
            doc = yaml.safe_load(gateway.read_text(encoding="utf-8")) or {}
            chat = [e for e in doc.get("engines") or () if e.get("role", "chat") == "chat"]
            cfg = {"host": doc.get("host"), "port": doc.get("port"),
                   "model_name": (chat[0].get("models") or [None])[0] if chat else None}
            if doc.get("keys_file"):  # governed access: this box's tools use the admin key install made
                from aiboxctl.deploy.access_files import admin_key_path

                cfg["api_keys_file"] = str(admin_key_path(layout))
            from aiboxctl.gateway.config import LOOPBACK_HOST, effective_loopback_port

            plain = effective_loopback_port(int(doc.get("port") or 8080), bool(doc.get("tls_dir")),
                                            doc.get("loopback_port"))
            if plain is not None:  # beside HTTPS, plain HTTP on loopback for this box's own tools
                cfg.update(host=LOOPBACK_HOST, port=plain)
            elif doc.get("tls_dir"):  # HTTPS; the local CA when there is one, else the system's trust
                scheme = "https"
                ca = Path(doc["tls_dir"]) / "ca.crt"
                if ca.is_file():
                    ca_file = str(ca)
                else:  # the organisation's pair: this box's tools trust the very certificate served
                    ca_file, pinned = str(Path(doc["tls_dir"]) / "server.crt"), True
        else:
            cfg = yaml.safe_load(layout.engine_config.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        if url is None:
            hint = "aiboxctl install --profile demo" + ("" if root is None else f" --root {layout.root}")
            raise ServiceDown(f"no aibox installation under {layout.root} (and no --url)", hint=hint) from None
    if url is None:
        host = str(cfg.get("host") or "127.0.0.1")
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        url = f"{scheme}://{host}:{int(cfg.get('port') or 8080)}"
    key_file = cfg.get("api_keys_file")
    if api_key is None and key_file:
        try:
            api_key = read_api_key(key_file)
        except PermissionError as exc:
            raise AiboxError(f"cannot read the API key file {key_file}", code="permission_denied",
                             hint="run as root, or pass --api-key KEY") from exc
        except FileNotFoundError:
            api_key = None
    return Endpoint(url.rstrip("/"), api_key, cfg.get("model_name"), key_file, root_flag(layout),
                    ca_file if url.startswith("https://") else None, pinned and url.startswith("https://"))
