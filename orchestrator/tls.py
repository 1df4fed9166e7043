"""TLS for the orchestrator's HTTP and gRPC servers, from ``TLS_CERT_FILE``, ``TLS_KEY_FILE``
and ``TLS_CA_FILE``.

With a certificate and key, both servers speak TLS only. With a CA file as well, they also
require every client to present a certificate that CA signed (mutual TLS). The files are read
once, at start-up, so a missing or unreadable one stops the orchestrator with a line that
names the variable, like any other bad setting.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from orchestrator.settings import Settings, SettingsError


@dataclass(frozen=True)
class ServerTls:
    http: ssl.SSLContext
    grpc: grpc.ServerCredentials
    mutual: bool


def server_tls(settings: Settings) -> ServerTls | None:
    """The servers' TLS, or None when no certificate is set; SettingsError naming the file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    cert = _read("TLS_CERT_FILE", settings.tls_cert_file)
    key = _read("TLS_KEY_FILE", settings.tls_key_file)
    ca = _read("TLS_CA_FILE", settings.tls_ca_file) if settings.tls_ca_file else None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        # A callback rather than OpenSSL's default, which would stop start-up on a tty
        # prompt for the passphrase.
        context.load_cert_chain(
            settings.tls_cert_file, settings.tls_key_file, password=_no_passphrase
        )
    except ssl.SSLError as exc:
        raise SettingsError(
            f"TLS_CERT_FILE and TLS_KEY_FILE are not a PEM certificate and its key: {exc}"
        ) from exc
    if ca is not None:
        try:
            context.load_verify_locations(cadata=ca.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise SettingsError(f"TLS_CA_FILE is not PEM certificates: {exc}") from exc
        context.verify_mode = ssl.CERT_REQUIRED
    credentials = grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
    return ServerTls(context, credentials, mutual=ca is not None)


def _no_passphrase() -> bytes:
    raise SettingsError(
        "TLS_KEY_FILE is an encrypted key: give the key without a passphrase"
        " (a Kubernetes Secret keeps it safe at rest)"
    )


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable} {path}: {exc.strerror or exc}") from exc
