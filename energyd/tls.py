"""TLS for energyd's client connections (MQTT brokers, HTTP sinks and webhooks): one place
decides how a context is built, so every connection verifies the same way."""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["client_context"]


def client_context(*, ca_file: str | Path | None = None, cert_file: str | Path | None = None,
                   key_file: str | Path | None = None, insecure: bool = False
                   ) -> ssl.SSLContext:
    """A client context that verifies the server against the system's CAs, or `ca_file`'s;
    with `cert_file` (and `key_file` when the key is apart) it also presents a client
    certificate. `insecure` skips only the host name check (a broker addressed by IP with
    a certificate for its name): the chain is still verified."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    if insecure:
        ctx.check_hostname = False
    return ctx
