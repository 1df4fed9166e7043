"""Keys and certificates for TLS tests: a throwaway CA (trustme) with a certificate for a server
and one a client may show, as the PEM files the services are given, and a PEM private key
encrypted with a passphrase, which every part of the system must refuse in one line rather than
prompt for on the terminal."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import trustme
from cryptography.hazmat.primitives import serialization


class Certificates:
    """A new CA in ``directory`` (``ca.pem``), a certificate it signs for the server name
    ``server`` (``server.pem`` and ``server.key``), and one for the client ``client``
    (``client.pem`` and ``client.key``), each file with its whole chain."""

    def __init__(
        self, directory: Path, *, server: str = "127.0.0.1", client: str = "dagctl@example.com"
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file, self.key_file = self._issue(directory, "server", server)
        self.client_cert, self.client_key = self._issue(directory, "client", client)

    def _issue(self, directory: Path, stem: str, name: str) -> tuple[Path, Path]:
        issued = self.ca.issue_cert(name)
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def client_context(self, *, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if with_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def channel_credentials(self, *, with_cert: bool) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes(),
            private_key=self.client_key.read_bytes() if with_cert else None,
            certificate_chain=self.client_cert.read_bytes() if with_cert else None,
        )


def encrypted_copy(pem: bytes, path: Path, passphrase: bytes = b"secret") -> Path:
    """Write the unencrypted PEM key ``pem`` to ``path``, encrypted; return ``path``."""
    key = serialization.load_pem_private_key(pem, password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )
    return path
