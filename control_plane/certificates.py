"""Certificates for TLS between devices, the broker and the control plane: a private CA and
one server certificate it signs, made by ``edgefleet certs create`` (never committed).

The CA's certificate goes to every device (agent ``tls_ca_file``, ``edgefleet agent enroll
--ca-file``); the server certificate and key go to mosquitto's TLS listener (``certfile``,
``keyfile``) and to the control plane's HTTPS (``tls_certfile``, ``tls_keyfile``). ECDSA
P-256 keys: what every TLS 1.2/1.3 stack on a device speaks, and small.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


CA_NAME = _name("edgefleet CA")


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _builder(
    subject: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(CA_NAME)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime, days: int) -> x509.Certificate:
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        _builder(CA_NAME, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def create_certificates(out: Path, hosts: list[str], days: int = 825) -> list[Path]:
    """A CA and a server certificate for ``hosts`` (DNS names or IP addresses: every name
    clients use to reach the broker and the control plane) in ``out``. Existing files are
    never overwritten (``FileExistsError``, and nothing is written)."""
    if not hosts:
        raise ValueError("at least one host name or address")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    if existing := [p for p in paths if p.exists()]:
        raise FileExistsError(f"{existing[0]} exists: certificates are never overwritten")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_certificate(ca_key, now, days)
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        _builder(_name(hosts[0]), key.public_key(), now, days)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    contents = (
        (ca.public_bytes(pem), 0o644),
        (_key_pem(ca_key), 0o600),
        (server.public_bytes(pem), 0o644),
        (_key_pem(key), 0o600),
    )
    for path, (data, mode) in zip(paths, contents, strict=True):
        _write_new(path, data, mode)
    return paths
