"""Certificates and kubeconfigs of the local cluster: one CA, ECDSA P-256 throughout.

ECDSA P-256 keys are generated in milliseconds and accepted by every component. Identities follow
what kubeadm issues: ``system:masters`` for the admin, ``system:node:<name>`` in ``system:nodes``
for a kubelet (the Node authorizer and NodeRestriction key on it), ``system:kube-proxy``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .procs import ClusterStartError

LOCAL_CONTEXT = "paddle-sla-local"
SERVICE_IP = "10.96.0.1"
API_DNS_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _x509() -> Any:
    try:
        from cryptography import x509
    except ImportError as exc:  # installed by the [signing] extra, which `make setup` includes
        raise ClusterStartError(
            "the local cluster needs the `cryptography` package: pip install cryptography"
        ) from exc
    return x509


def _validity() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    return now, now + dt.timedelta(days=365)


def _save_key(pki: Path, key: Any, filename: str) -> None:
    from cryptography.hazmat.primitives import serialization

    (pki / filename).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(pki / filename, 0o600)


def _name(cn: str, org: str | None = None) -> Any:
    x509 = _x509()
    from cryptography.x509.oid import NameOID

    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def make_ca(pki: Path, filename: str, cn: str) -> None:
    """A self-signed CA as ``<filename>.crt`` / ``.key``."""
    x509 = _x509()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pki.mkdir(parents=True, exist_ok=True)
    key, subject = ec.generate_private_key(ec.SECP256R1()), _name(cn)
    start, end = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    (pki / f"{filename}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _save_key(pki, key, f"{filename}.key")


def issue(
    pki: Path,
    filename: str,
    cn: str,
    *,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    ca: str = "ca",
) -> None:
    """A leaf certificate signed by ``<ca>.crt``, as ``<filename>.crt`` / ``.key``."""
    x509 = _x509()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate((pki / f"{ca}.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / f"{ca}.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity()
    usages = [
        u
        for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client))
        if on
    ]
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    (pki / f"{filename}.crt").write_bytes(
        b.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    )
    _save_key(pki, key, f"{filename}.key")


def _write_pki(pki: Path, api_ips: Sequence[str] = ("127.0.0.1", SERVICE_IP)) -> None:
    """CA, API server serving cert, admin client cert (system:masters) and service-account keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    make_ca(pki, "ca", "paddle-sla-local-ca")
    # The front-proxy pair is what kubeadm sets up for the aggregation layer; with it the
    # controller-manager and scheduler find the requestheader CA they look for and stay quiet.
    make_ca(pki, "front-proxy-ca", "paddle-sla-local-front-proxy-ca")
    issue(pki, "front-proxy-client", "front-proxy-client", client=True, ca="front-proxy-ca")
    issue(pki, "apiserver", "kube-apiserver", server=True, dns=API_DNS_NAMES, ips=api_ips)
    issue(pki, "admin", "kubernetes-admin", org="system:masters", client=True)
    # The API server's identity towards kubelets (logs, exec, port-forward); kubelets authorise it
    # through a SubjectAccessReview, which system:masters passes.
    issue(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", org="system:masters", client=True)
    sa = ec.generate_private_key(ec.SECP256R1())
    _save_key(pki, sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(pki: Path, server: str, user: str = "admin") -> str:
    """A kubeconfig for ``server`` authenticating with ``<user>.crt`` / ``.key`` from ``pki``."""

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": LOCAL_CONTEXT,
                "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(f"{user}.crt"),
                    "client-key-data": b64(f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": LOCAL_CONTEXT, "context": {"cluster": LOCAL_CONTEXT, "user": user}}],
        "current-context": LOCAL_CONTEXT,
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is valid YAML; no yaml dependency here
