"""The files of governed access an installation behind the front door gets (issue 16): the key
file with the first admin key (a salted hash; the key itself shown once and kept for this box's
own tools in ``etc/aibox/admin-key``, 0600, root's), the box secret that signs the audit chain, and
TLS — a local CA and a server certificate for the box's names and addresses, or the
organisation's certificate and key (``--tls-cert/--tls-key``).

Everything is made in memory (through the access library, in a private temporary folder) and
handed to the install transaction as :class:`RenderedFile`\\ s, so the manifest lists them,
``uninstall`` removes them and a failed install puts the previous ones back. What is already on
disk is kept byte for byte (a re-run changes nothing; a CA stays the one clients trust); a
server certificate that no longer covers the address the front door binds is reissued from the
same CA.
"""

from __future__ import annotations

import ipaddress
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiboxctl.access.paths import AccessPaths
from aiboxctl.deploy.render import RenderedFile
from aiboxctl.paths import InstallLayout

ADMIN_KEY_NAME = "admin"


def admin_key_path(layout: InstallLayout) -> Path:
    """The first admin key in the api_keys format (``admin:sk-aibox-…``): ``chat``, ``bench`` and
    ``status`` read it; root only."""
    return layout.etc / "admin-key"


@dataclass(frozen=True)
class AccessFiles:
    files: tuple[RenderedFile, ...]
    admin_key_text: str | None  # the admin-key file's content (render_appliance writes it, root's)
    new_admin_key: str | None  # the key, when it was made by this run (shown once)
    ca_file: str | None  # what clients trust: the local CA, or None with the organisation's pair
    ca_fingerprint: str | None  # SHA-256 of the CA (or of the organisation's certificate)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _keys(layout: InstallLayout, work: Path) -> tuple[bytes, str, str | None]:
    """(keys.json, admin-key text, the new key or None): kept as they are when both exist and the
    admin key still opens the key file; else an admin key is added (or rotated) with the library."""
    from aiboxctl.access.keys import KeyLimits, KeyRing, KeyStore
    from aiboxctl.deploy.endpoint import first_key

    paths = AccessPaths.for_layout(layout)
    keys, admin = _read(paths.keys), _read(admin_key_path(layout))
    legacy = wave1_keys(layout)
    if legacy:  # the single engine's plaintext keys: kept working as named keys (salted hashes)
        if keys is not None:
            (work / "legacy.json").write_bytes(keys)
        store = KeyStore(work / "legacy.json")
        taken = {r.name for r in store.load()} | {ADMIN_KEY_NAME}
        for i, (name, token) in enumerate(legacy, 1):
            name = name if name not in taken and _valid_name(name) else f"wave1-{i}"
            if store.import_key(name, token, KeyLimits(), now=time.time()) is not None:
                taken.add(name)
        keys = _read(work / "legacy.json")
    if keys is not None and admin is not None:
        token = first_key(admin.decode("utf-8", "replace"))
        (work / "check.json").write_bytes(keys)
        try:
            if token and KeyRing(work / "check.json").authenticate(f"Bearer {token}").admin:
                return keys, admin.decode(), None
        except Exception:  # revoked, expired, unknown: make a new one below
            pass
    store = KeyStore(work / "keys.json")
    if keys is not None:
        (work / "keys.json").write_bytes(keys)
    now = time.time()
    existing = {r.name: r for r in store.load()} if keys is not None else {}
    if ADMIN_KEY_NAME in existing and existing[ADMIN_KEY_NAME].revoked_at is None:
        issued = store.rotate(ADMIN_KEY_NAME, now=now)
    else:
        issued = store.add(ADMIN_KEY_NAME, KeyLimits(admin=True), now=now)
    text = ("# aibox: the first admin key (made by install; shown once). Local tools (chat, bench, status) "
            "use it.\n" f"{ADMIN_KEY_NAME}:{issued.secret}\n")
    return (work / "keys.json").read_bytes(), text, issued.secret


def wave1_keys(layout: InstallLayout) -> list[tuple[str, str]]:
    """(name, key) of every key the single-engine install kept in plain text: the file its
    engine.yaml names as ``api_keys_file`` (``id:key`` or bare ``key`` lines). Upgraded to the front
    door they become named keys in keys.json, and the plaintext file is no longer rendered."""
    import yaml

    try:
        cfg = yaml.safe_load(layout.engine_config.read_text(encoding="utf-8")) or {}
        text = Path(str(cfg.get("api_keys_file"))).read_text(encoding="utf-8") if cfg.get("api_keys_file") else ""
    except (FileNotFoundError, yaml.YAMLError, AttributeError):
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, token = line.partition(":")
            name, token = (name.strip(), token.strip()) if sep else ("", line)
            if token:
                out.append((name, token))
    return out


def _valid_name(name: str) -> bool:
    from aiboxctl.access.keys import _NAME

    return bool(_NAME.match(name))


def cert_names(host: str) -> tuple[str, ...]:
    """The box's names and addresses, and the address bound when it is a specific one."""
    from aiboxctl.access.tls import box_names

    names = list(box_names())
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return tuple(dict.fromkeys(names))


def _covers(cert_pem: bytes, host: str) -> bool:
    from cryptography import x509

    if host in ("0.0.0.0", "::", ""):
        return True
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in san.get_values_for_type(x509.DNSName)


def _tls(layout: InstallLayout, host: str, work: Path, tls_cert: str | None, tls_key: str | None):
    """{file name: bytes} for the TLS folder, the CA file clients trust (or None) and the fingerprint."""
    from aiboxctl.access import tls

    target = tls.TlsFiles(AccessPaths.for_layout(layout).tls_dir)
    files = tls.TlsFiles(work / "tls")
    if tls_cert:
        info = tls.install_pair(files, Path(tls_cert), Path(tls_key or ""))
        out = {"server.crt": files.cert.read_bytes(), "server.key": files.key.read_bytes()}
        return out, None, info.fingerprint_sha256
    files.dir.mkdir(parents=True, exist_ok=True)
    have = {name: _read(target.dir / name) for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    if have["ca.crt"] and have["ca.key"]:
        for name in ("ca.crt", "ca.key"):
            (files.dir / name).write_bytes(have[name])
        if have["server.crt"] and have["server.key"] and _covers(have["server.crt"], host) \
                and tls.describe(target.cert).issuer == tls.describe(target.ca_cert).subject:
            info = tls.describe(target.cert, target.ca_cert)
            return dict(have), str(target.ca_cert), info.ca_fingerprint_sha256
    info = tls.init_local(files, cert_names(host))
    out = {name: (files.dir / name).read_bytes() for name in ("ca.crt", "ca.key", "server.crt", "server.key")}
    return out, str(target.ca_cert), info.ca_fingerprint_sha256


def access_files(spec: Any, *, tls_cert: str | None = None, tls_key: str | None = None) -> AccessFiles:
    """What ``spec`` (behind the front door) needs beyond the rendered configs."""
    layout = spec.layout
    paths = AccessPaths.for_layout(layout)
    svc = (spec.service_user, spec.service_group) if spec.system_install else (None, None)
    root_owned = ("root", "root") if spec.system_install else (None, None)
    out: list[RenderedFile] = []
    admin_text = new_key = ca_file = fp = None
    with tempfile.TemporaryDirectory(prefix="aibox-access-") as tmp:
        work = Path(tmp)
        if spec.access:
            keys, admin_text, new_key = _keys(layout, work)
            out.append(RenderedFile(str(paths.keys), keys, 0o600, *svc, secret=True))
            secret = _read(paths.secret) or (secrets.token_bytes(32).hex() + "\n").encode()
            out.append(RenderedFile(str(paths.secret), secret, 0o600, *svc, secret=True))
        if spec.tls:
            tls_bytes, ca_file, fp = _tls(layout, spec.engine.host, work, tls_cert, tls_key)
            modes = {"ca.crt": (0o644, root_owned), "ca.key": (0o600, root_owned),
                     "server.crt": (0o644, root_owned), "server.key": (0o600, svc)}
            for name, data in tls_bytes.items():
                mode, owner = modes[name]
                out.append(RenderedFile(str(paths.tls_dir / name), data, mode, *owner, secret=name.endswith(".key")))
    return AccessFiles(tuple(out), admin_text, new_key, ca_file, fp)
