"""Key material for a federation over a real network: a private certificate authority and the server's
TLS certificate (``dprad federate certs``), and a hospital's node key pair (``dprad federate node-key``)
with which Flower's SuperLink admits its SuperNode.

These are for trying a federation out and for small private networks. A hospital's network should use
certificates from its own PKI: a private CA made here is only as safe as the place its key is kept.
Private keys are written owner-only (0600).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from pathlib import Path

from dprad import io
from dprad.errors import DpradError

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
NODE_KEY, NODE_PUB = "node.key", "node.pub"
WARNING = (
    "a private CA made by dprad: fine for a trial or a small private network; a hospital should use "
    "certificates from its own PKI, and keep ca.key off the server"
)


def _write_private(path: Path, data: bytes) -> None:
    def writer(tmp: Path) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    io.write_with(path, writer)


def _write_public(path: Path, data: bytes) -> None:
    def writer(tmp: Path) -> None:
        tmp.write_bytes(data)
        tmp.chmod(0o644)

    io.write_with(path, writer)


def make_certs(out: Path, server_name: str, *, days: int = 365) -> dict[str, Path]:
    """A private CA (``ca.crt``, ``ca.key``) and a server certificate for ``server_name`` (a host name or
    an IP address, its subject alternative name) signed by it (``server.pem``, ``server.key``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not server_name or any(c.isspace() for c in server_name):
        raise DpradError(f"--server-name {server_name!r}: give the host name or IP the hospitals connect to")
    if days < 1:
        raise DpradError(f"--days {days} must be at least 1")
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(server_name))
    except ValueError:
        san = x509.DNSName(server_name)
    # and the server's own loopback names: its `flwr run` reaches the SuperLink's control API locally
    local = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    sans = [san, *(x for x in local if x != san)]
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dprad federation private CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    private = {
        "format": serialization.PrivateFormat.PKCS8,
        "encryption_algorithm": serialization.NoEncryption(),
    }
    out.mkdir(parents=True, exist_ok=True)
    paths = {n: out / n for n in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    _write_private(paths[CA_KEY], ca_key.private_bytes(pem, **private))  # type: ignore[arg-type]
    _write_private(paths[SERVER_KEY], key.private_bytes(pem, **private))  # type: ignore[arg-type]
    _write_public(paths[CA_CERT], ca.public_bytes(pem))
    _write_public(paths[SERVER_CERT], cert.public_bytes(pem))
    return paths


def make_node_key(out: Path) -> tuple[Path, Path]:
    """A hospital's SuperNode key pair (NIST P-384, OpenSSH format, as Flower reads it): ``node.key``
    (owner-only; stays at the hospital) and ``node.pub`` (given to the server operator to admit)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    out.mkdir(parents=True, exist_ok=True)
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(out / NODE_KEY, priv)
    _write_public(out / NODE_PUB, pub + b"\n")
    return out / NODE_KEY, out / NODE_PUB


def fingerprint(public_key: bytes) -> str:
    """The SHA-256 fingerprint of a node's public key as Flower sends it (its DER / SEC1 bytes)."""
    return "SHA256:" + hashlib.sha256(public_key).hexdigest()[:32]


def public_key_bytes(path: Path) -> bytes:
    """A node's OpenSSH public key file as the bytes Flower identifies the node by."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except (OSError, ValueError) as err:
        raise DpradError(f"{path}: not a node public key (made by dprad federate node-key): {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DpradError(f"{path}: not an EC public key (made by dprad federate node-key)")
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def private_key_public_bytes(path: Path) -> bytes:
    """The public half of a node's OpenSSH private key file, as the bytes Flower identifies the node by."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
    except (OSError, ValueError) as err:
        raise DpradError(
            f"--node-key {path}: not a node private key (dprad federate node-key): {err}"
        ) from None
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


__all__ = ["WARNING", "fingerprint", "make_certs", "make_node_key", "public_key_bytes"]
