"""DICOM TLS (PS3.15 Annex B): SSL contexts for the Storage SCP and for our SCUs.

TLS 1.2 or later, the ssl module's default (secure) cipher list. The server presents our
certificate and, when configured, requires and verifies the client's; a client verifies the
destination's certificate against the configured CA bundle and may present its own.
"""

from __future__ import annotations

import ssl

from gateway.config import ClientTls, ServerTls


def server_context(tls: ServerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    if tls.ca_certificates is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_certificates))
    if tls.require_client_certificate:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif tls.ca_certificates is not None:
        ctx.verify_mode = ssl.CERT_OPTIONAL  # a certificate presented must verify
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(tls: ClientTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.verify_server and tls.check_hostname
    if tls.verify_server:
        ctx.load_verify_locations(cafile=str(tls.ca_certificates))
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx.verify_mode = ssl.CERT_NONE
    if tls.certificate is not None:
        ctx.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return ctx
