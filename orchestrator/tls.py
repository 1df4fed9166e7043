"""TLS for the orchestrator's HTTP and gRPC servers, from ``TLS_CERT_FILE``, ``TLS_KEY_FILE``
and ``TLS_CA_FILE``.

With a certificate and key, both servers speak TLS only. With a CA file as well, they also
require every client to present a certificate that CA signed (mutual TLS). At start-up a
missing or unreadable file stops the orchestrator with a line that names the variable, like any
other bad setting.

The files are read again when they change, so a certificate renewed in place (cert-manager
rewriting a Secret's volume, a script replacing the files) is served from the next handshake on,
without a restart: a renewed certificate would otherwise be ignored until the old one expired
under running clients. Each handshake compares the files' stat stamps, a few microseconds; a
change that does not load (a key that is not the certificate's, a file caught half written) keeps
the pair being served and is logged once, naming the problem, until the files change again.
Whether clients must show a certificate is fixed at start: a CA file's contents may change, not
its being set.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc

from orchestrator.settings import Settings, SettingsError

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int, int], ...]
"""Per file: device, inode, modification time (ns) and size. A Secret volume's update swaps a
symlink, which gives new inodes; a file rewritten in place gets a new time or size."""


@dataclass(frozen=True)
class _Loaded:
    context: ssl.SSLContext
    grpc_config: grpc.ServerCertificateConfiguration


class ServerTls:
    """The servers' TLS, with the files read again when they change.

    ``http`` is the context aiohttp serves with; its ``sni_callback`` hands every handshake to
    the context of the files as they are now. ``grpc`` asks at every handshake the same."""

    def __init__(self, settings: Settings) -> None:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        self._files = (settings.tls_cert_file, settings.tls_key_file) + (
            (settings.tls_ca_file,) if settings.tls_ca_file else ()
        )
        self.mutual = len(self._files) == 3
        self._lock = threading.Lock()  # gRPC asks from its own threads, HTTP from the loop
        self._stamp = _stamp(self._files)
        self._loaded = self._load()
        self._refused: _Stamp | None = None
        self._told: str | None = None
        self._grpc_seen: _Loaded | None = self._loaded
        self.http = self._load().context
        self.http.sni_callback = self._hand_over
        self.grpc = grpc.dynamic_ssl_server_credentials(
            self._loaded.grpc_config,
            # the stubs leave out that a fetcher returns None to keep what is served
            cast("Callable[[], grpc.ServerCertificateConfiguration]", self._grpc_config),
            require_client_authentication=self.mutual,
        )

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now (or of the last pair that loaded)."""
        with self._lock:
            try:
                stamp = _stamp(self._files)
                if stamp != self._stamp and stamp != self._refused:
                    try:
                        loaded = self._load()
                    except SettingsError:
                        self._refused = stamp  # not tried again until the files change
                        raise
                    self._stamp, self._loaded = stamp, loaded
                    self._refused = self._told = None
                    log.info(
                        "TLS certificate files changed: serving the new certificate",
                        extra={"event": "tls_reloaded"},
                    )
            except SettingsError as exc:
                if str(exc) != self._told:
                    self._told = str(exc)
                    log.warning(
                        "TLS certificate files changed but cannot be used, so the certificate"
                        " loaded before is still served: %s",
                        exc,
                        extra={"event": "tls_reload_failed"},
                    )
            return self._loaded.context

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        # called for every handshake, with or without a server name
        connection.context = self.current()

    def _grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        self.current()
        with self._lock:
            if self._grpc_seen is self._loaded:
                return None
            self._grpc_seen = self._loaded
            return self._loaded.grpc_config

    def _load(self) -> _Loaded:
        cert_file, key_file = self._files[0], self._files[1]
        ca_file = self._files[2] if self.mutual else None
        cert = _read("TLS_CERT_FILE", cert_file)
        key = _read("TLS_KEY_FILE", key_file)
        ca = _read("TLS_CA_FILE", ca_file) if ca_file is not None else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            # A callback rather than OpenSSL's default, which would stop start-up on a tty
            # prompt for the passphrase.
            context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
        except ssl.SSLError as exc:
            raise SettingsError(
                f"TLS_CERT_FILE and TLS_KEY_FILE are not a PEM certificate and its key: {exc}"
            ) from exc
        except OSError as exc:  # replaced between the read above and this one
            raise SettingsError(f"TLS_CERT_FILE {cert_file}: {exc.strerror or exc}") from exc
        if ca is not None:
            try:
                context.load_verify_locations(cadata=ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError) as exc:
                raise SettingsError(f"TLS_CA_FILE is not PEM certificates: {exc}") from exc
            context.verify_mode = ssl.CERT_REQUIRED
        config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        return _Loaded(context, config)


def server_tls(settings: Settings) -> ServerTls | None:
    """The servers' TLS, or None when no certificate is set; SettingsError naming the file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return ServerTls(settings)


def _stamp(files: tuple[str, ...]) -> _Stamp:
    stamps = []
    for variable, path in zip(
        ("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"), files, strict=False
    ):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SettingsError(f"{variable} {path}: {exc.strerror or exc}") from exc
        stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


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
