"""The one TLS builder: every port (inference and admin) gets its server context from here.

TLS is on when ``tls_cert_file`` and ``tls_key_file`` are both set, off when neither is.  One
without the other, a missing file or a certificate that does not load is a start-up error
(:class:`~.errors.ConfigError`) naming the setting, never a silent fall back to plain HTTP.
"""

from __future__ import annotations

import os
import ssl

from .errors import ConfigError
from .settings import ENV_PREFIX, RuntimeSettings


def server_ssl_context(settings: RuntimeSettings) -> ssl.SSLContext | None:
    """A server TLS context (TLS 1.2+) from the settings, or None when TLS is off."""
    cert, key = settings.tls_cert_file, settings.tls_key_file
    if not cert and not key:
        return None
    if not (cert and key):
        given, missing = ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        raise ConfigError(f"{given} is set but {missing} ({ENV_PREFIX}{missing.upper()}) is empty: "
                          f"TLS needs both the certificate and its private key")
    for name, path in (("tls_cert_file", cert), ("tls_key_file", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{name} {path} does not exist")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from exc
    return ctx
