"""The client TLS context every transport builds from a sink's ``tls`` options."""

from __future__ import annotations

import ssl

from eventsinkd.config.options import TlsConfig


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx
