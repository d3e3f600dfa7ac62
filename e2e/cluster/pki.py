"""Certificates and kubeconfigs of the local cluster: one CA, ECDSA P-256 throughout."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from pathlib import Path

from .procs import ClusterStartError

LOCAL_CONTEXT = "paddle-sla-local"
SERVICE_IP = "10.96.0.1"


def _write_pki(pki: Path) -> None:
    """CA, API server serving cert, admin client cert (system:masters) and service-account keys.

    ECDSA P-256 throughout: generated in milliseconds and accepted by every component.
    """
    try:
        from cryptography import x509
    except ImportError as exc:  # installed by the [signing] extra, which `make setup` includes
        raise ClusterStartError(
            "the local cluster needs the `cryptography` package: pip install cryptography"
        ) from exc
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    later = now + dt.timedelta(days=365)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def save_key(k: ec.EllipticCurvePrivateKey, name: str) -> None:
        (pki / name).write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        os.chmod(pki / name, 0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    def make_ca(filename: str, cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Name]:
        k, subject = key(), name(cn)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(k, hashes.SHA256())
        )
        (pki / f"{filename}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        save_key(k, f"{filename}.key")
        return k, subject

    def leaf(
        filename: str,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
        ca: tuple[ec.EllipticCurvePrivateKey, x509.Name],
    ) -> None:
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca[1])
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(later)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        (pki / f"{filename}.crt").write_bytes(
            b.sign(ca[0], hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        save_key(k, f"{filename}.key")

    ca = make_ca("ca", "paddle-sla-local-ca")
    # The front-proxy pair is what kubeadm sets up for the aggregation layer; with it the
    # controller-manager and scheduler find the requestheader CA they look for and stay quiet.
    front_proxy_ca = make_ca("front-proxy-ca", "paddle-sla-local-front-proxy-ca")
    leaf(
        "front-proxy-client", name("front-proxy-client"), ExtendedKeyUsageOID.CLIENT_AUTH, [], front_proxy_ca
    )

    import ipaddress

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    leaf(
        "apiserver",
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [x509.DNSName(d) for d in dns]
        + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ("127.0.0.1", SERVICE_IP)],
        ca,
    )
    leaf("admin", name("kubernetes-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH, [], ca)

    sa = key()
    save_key(sa, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def _kubeconfig(pki: Path, server: str) -> str:
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
                "name": "admin",
                "user": {"client-certificate-data": b64("admin.crt"), "client-key-data": b64("admin.key")},
            }
        ],
        "contexts": [{"name": LOCAL_CONTEXT, "context": {"cluster": LOCAL_CONTEXT, "user": "admin"}}],
        "current-context": LOCAL_CONTEXT,
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is valid YAML; no yaml dependency here
