"""TLS for the front door: a local CA and a server certificate for the box's names and
addresses, or the organisation's certificate and key (checked: the key is the certificate's, the
certificate is valid now). ``cryptography`` does the work; nothing shells out to openssl.

Files (``TlsFiles``): ``ca.crt`` (give this to clients), ``ca.key`` (0600, signs renewals),
``server.crt`` (leaf + CA chain) and ``server.key`` (0600). Renewal reissues the server
certificate from the same CA, so clients that trust the CA keep working.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from aiboxctl.errors import AiboxError, UsageError

CA_DAYS = 3650
SERVER_DAYS = 397  # what public CAs may issue; renew before (docs/access.md)
RENEW_BEFORE_DAYS = 30


@dataclass(frozen=True)
class TlsFiles:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"


@dataclass(frozen=True)
class CertInfo:
    path: Path
    subject: str
    issuer: str
    not_before: float
    not_after: float
    names: tuple[str, ...]
    fingerprint_sha256: str
    ca_fingerprint_sha256: str | None = None
    ca_file: Path | None = None


def fingerprint(cert) -> str:
    from cryptography.hazmat.primitives import hashes

    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def box_names() -> tuple[str, ...]:
    """The names and addresses clients may use for this box: its host names, localhost and every
    address of its interfaces (psutil)."""
    import psutil

    names = ["localhost", socket.gethostname(), socket.getfqdn(), "127.0.0.1", "::1"]
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                names.append(a.address.split("%", 1)[0])
    return tuple(dict.fromkeys(n for n in names if n))


def _san(names: Iterable[str]):
    from cryptography import x509

    out = []
    for n in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(files: TlsFiles, *, name: str | None = None, now: float | None = None) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    start = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "aiboxctl"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name or f"aibox CA {socket.gethostname()}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5)).not_valid_after(start + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    files.dir.mkdir(parents=True, exist_ok=True)
    _write_private(files.ca_key, _key_pem(key))
    _write_public(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))


def issue_server_cert(files: TlsFiles, names: Iterable[str], *, now: float | None = None,
                      days: int = SERVER_DAYS) -> None:
    """A server certificate for ``names`` (host names and IP addresses), signed by the local CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    names = tuple(dict.fromkeys(names))
    if not names:
        raise UsageError("a server certificate needs at least one name or address", hint="--name HOST")
    ca_cert, ca_key = _load_ca(files)
    start = dt.datetime.fromtimestamp(now if now is not None else time.time(), dt.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start - dt.timedelta(minutes=5)).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(files.key, _key_pem(key))
    _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM)
                  + ca_cert.public_bytes(serialization.Encoding.PEM))


def _load_ca(files: TlsFiles):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if not files.ca_cert.exists() or not files.ca_key.exists():
        raise AiboxError(f"no local CA in {files.dir}", code="not_found", hint="aiboxctl tls init")
    return (x509.load_pem_x509_certificate(files.ca_cert.read_bytes()),
            serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None))


def init_local(files: TlsFiles, names: Iterable[str], *, now: float | None = None) -> CertInfo:
    """A CA (kept when there is one) and a fresh server certificate for ``names``."""
    if not files.ca_cert.exists():
        create_ca(files, now=now)
    issue_server_cert(files, names, now=now)
    return describe(files.cert, files.ca_cert)


def renew(files: TlsFiles, names: Iterable[str] | None = None, *, now: float | None = None) -> CertInfo:
    """Reissue the server certificate from the same CA, for the names it had (or ``names``)."""
    if names is None:
        names = describe(files.cert).names if files.cert.exists() else box_names()
    issue_server_cert(files, names, now=now)
    return describe(files.cert, files.ca_cert)


def describe(cert_path: Path, ca_path: Path | None = None) -> CertInfo:
    from cryptography import x509

    cert = _load_certs(cert_path)[0]
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        names = ()
    ca_fp = fingerprint(_load_certs(ca_path)[0]) if ca_path and ca_path.exists() else None
    return CertInfo(Path(cert_path), cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(), names,
                    fingerprint(cert), ca_fp, ca_path if ca_fp else None)


def _load_certs(path: Path):
    from cryptography import x509

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"certificate file not found: {path}", code="not_found") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        try:
            certs = [x509.load_der_x509_certificate(data)]
        except ValueError:
            raise UsageError(f"{path} holds no PEM or DER certificate", hint="--tls-cert the server certificate "
                             "(PEM, leaf first, then the chain)") from None
    return certs


def check_pair(cert_path: Path, key_path: Path, *, now: float | None = None) -> CertInfo:
    """The organisation's certificate and key: the key must be the certificate's, the certificate
    valid now. One line on what is wrong, exit 2."""
    from cryptography.hazmat.primitives import serialization

    cert = _load_certs(cert_path)[0]
    try:
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except FileNotFoundError:
        raise UsageError(f"key file not found: {key_path}", code="not_found") from None
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{key_path} is not an unencrypted PEM private key ({exc})",
                         hint="give the server's private key in PEM without a passphrase") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != cert.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise UsageError(f"the key {key_path} does not belong to the certificate {cert_path}",
                         hint="give the key the certificate was issued for")
    t = now if now is not None else time.time()
    if cert.not_valid_after_utc.timestamp() <= t:
        raise UsageError(f"the certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}",
                         hint="ask for a renewed certificate, or use the local CA (aiboxctl tls init)")
    if cert.not_valid_before_utc.timestamp() > t:
        raise UsageError(f"the certificate {cert_path} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} "
                         "UTC", hint="check the box's clock")
    return describe(cert_path)


def install_pair(files: TlsFiles, cert_path: Path, key_path: Path, *, now: float | None = None) -> CertInfo:
    """Check the organisation's pair, then copy it to where the front door reads it."""
    check_pair(cert_path, key_path, now=now)
    files.dir.mkdir(parents=True, exist_ok=True)
    _write_private(files.key, Path(key_path).read_bytes())
    _write_public(files.cert, Path(cert_path).read_bytes())
    return describe(files.cert)
