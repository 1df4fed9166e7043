"""Keys for TLS tests: a PEM private key encrypted with a passphrase, which every part of the
system must refuse in one line rather than prompt for on the terminal."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization


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
