"""TLS on the link between the orchestrator and its engines, and on any server that serves
certificates from files: both ends of it, as ``engine.authenticating`` is for ENGINE_TOKEN.

``ServerTls`` serves a certificate and key (and, with a CA file, requires every client to show a
certificate that CA signed: mutual TLS). The engine serves its gRPC port with it; the
orchestrator builds its HTTP and gRPC servers' TLS on it (``orchestrator.tls``). At start-up a
missing or unreadable file raises ``SettingsError`` naming the variable, like any other bad
setting.

The files are read again when they change, so a certificate renewed in place (cert-manager
rewriting a Secret's volume, a script replacing the files) is served from the next handshake on,
without a restart: a renewed certificate would otherwise be ignored until the old one expired
under running clients. Each handshake compares the files' stat stamps, a few microseconds; a
change that does not load (a key that is not the certificate's, a file caught half written) keeps
the pair being served and is logged once, naming the problem, until the files change again.
Whether clients must show a certificate is fixed at start: a CA file's contents may change, not
its being set.

``ClientTls`` is what the orchestrator connects to its engines with: the CA it trusts, the name
their certificates must carry, and the client certificate it shows. It is read once, at start.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, NamedTuple, cast

import grpc

from engine.core.envparse import SettingsError

log = logging.getLogger(__name__)


class TlsNames(NamedTuple):
    """The variables a set of TLS files comes from, as errors name them."""

    cert: str
    key: str
    ca: str


SERVER_NAMES: Final = TlsNames("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE")
"""Both services serve with the files these name."""
ENGINE_LINK_NAMES: Final = TlsNames(
    "ENGINE_TLS_CERT_FILE", "ENGINE_TLS_KEY_FILE", "ENGINE_TLS_CA_FILE"
)
"""The orchestrator connects to its engines with the files these name."""

_Stamp = tuple[tuple[int, int, int, int], ...]
"""Per file: device, inode, modification time (ns) and size. A Secret volume's update swaps a
symlink, which gives new inodes; a file rewritten in place gets a new time or size."""


@dataclass(frozen=True)
class Loaded:
    """One load of the files: the context they make (which checked them), and gRPC's form."""

    context: ssl.SSLContext
    grpc_config: grpc.ServerCertificateConfiguration


class ServerTls:
    """A server's TLS from ``cert_file`` and ``key_file`` (and ``ca_file``: mutual), with the
    files read again when they change. ``grpc`` asks at every handshake for the files as they
    are now; ``current()`` gives the SSL context of the same files, for other servers."""

    def __init__(
        self,
        cert_file: str,
        key_file: str,
        ca_file: str | None = None,
        *,
        names: TlsNames = SERVER_NAMES,
    ) -> None:
        self._files = (cert_file, key_file) + ((ca_file,) if ca_file else ())
        self._names = names
        self.mutual = ca_file is not None
        self._lock = threading.Lock()  # gRPC asks from its own threads, HTTP from the loop
        self._stamp = _stamp(self._files, names)
        self._loaded = self.load()
        self._refused: _Stamp | None = None
        self._told: str | None = None
        self._grpc_seen: Loaded | None = self._loaded
        self.grpc = grpc.dynamic_ssl_server_credentials(
            self._loaded.grpc_config,
            # the stubs leave out that a fetcher returns None to keep what is served
            cast("Callable[[], grpc.ServerCertificateConfiguration]", self._grpc_config),
            require_client_authentication=self.mutual,
        )

    @property
    def security(self) -> str:
        """What a client of this server gets, as the start-up line says it."""
        return "mutual TLS" if self.mutual else "TLS"

    def current(self) -> ssl.SSLContext:
        """The context of the files as they are now (or of the last pair that loaded)."""
        with self._lock:
            try:
                stamp = _stamp(self._files, self._names)
                if stamp != self._stamp and stamp != self._refused:
                    try:
                        loaded = self.load()
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

    def _grpc_config(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher: a new configuration when the files changed, else None (keep)."""
        self.current()
        with self._lock:
            if self._grpc_seen is self._loaded:
                return None
            self._grpc_seen = self._loaded
            return self._loaded.grpc_config

    def load(self) -> Loaded:
        """The files as they are now, checked; SettingsError naming the variable."""
        names = self._names
        cert_file, key_file = self._files[0], self._files[1]
        ca_file = self._files[2] if self.mutual else None
        cert = read_file(names.cert, cert_file)
        key = read_file(names.key, key_file)
        ca = read_file(names.ca, ca_file) if ca_file is not None else None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        load_pair(context, cert_file, key_file, names)
        if ca is not None:
            load_ca(context, ca, names.ca)
            context.verify_mode = ssl.CERT_REQUIRED
        config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
        return Loaded(context, config)


def load_pair(context: ssl.SSLContext, cert_file: str, key_file: str, names: TlsNames) -> None:
    """Load a certificate (chain) and its key into ``context``; SettingsError naming them."""
    try:
        # A callback rather than OpenSSL's default, which would stop start-up on a tty
        # prompt for the passphrase.
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase(names.key))
    except ssl.SSLError as exc:
        raise SettingsError(
            f"{names.cert} and {names.key} are not a PEM certificate and its key: {exc}"
        ) from exc
    except OSError as exc:  # replaced between the caller's read and this one
        raise SettingsError(f"{names.cert} {cert_file}: {exc.strerror or exc}") from exc


def load_ca(context: ssl.SSLContext, ca: bytes, variable: str) -> None:
    """Trust the PEM certificates ``ca`` in ``context``; SettingsError naming ``variable``."""
    try:
        context.load_verify_locations(cadata=ca.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise SettingsError(f"{variable} is not PEM certificates: {exc}") from exc


def read_file(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"{variable} {path}: {exc.strerror or exc}") from exc


def _stamp(files: tuple[str, ...], names: TlsNames) -> _Stamp:
    stamps = []
    for variable, path in zip(names, files, strict=False):
        try:
            st = os.stat(path)
        except OSError as exc:
            raise SettingsError(f"{variable} {path}: {exc.strerror or exc}") from exc
        stamps.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


def _no_passphrase(variable: str) -> Callable[[], bytes]:
    def refuse() -> bytes:
        raise SettingsError(
            f"{variable} is an encrypted key: give the key without a passphrase"
            " (a Kubernetes Secret keeps it safe at rest)"
        )

    return refuse


# -- the orchestrator's end -------------------------------------------------------------------

_DNS_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)


@dataclass(frozen=True)
class ClientTls:
    """How the orchestrator connects to its engines over TLS: trusting ``ca`` (PEM), checking
    ``server_name`` in every engine's certificate (None: the host of the engine's address), and
    showing ``cert`` and ``key`` when given (for engines that require a client certificate)."""

    ca: bytes = field(repr=False)
    server_name: str | None = None
    cert: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    cert_file: str | None = None
    key_file: str | None = None
    """Where ``cert`` and ``key`` were read: a TLS probe of an engine (``orchestrator.tls``)
    shows them too."""

    @classmethod
    def from_files(
        cls,
        ca_file: str,
        cert_file: str | None = None,
        key_file: str | None = None,
        server_name: str | None = None,
        *,
        names: TlsNames = ENGINE_LINK_NAMES,
    ) -> ClientTls:
        """The files read and checked now; SettingsError naming the variable."""
        # checked as gRPC will use them, which it would only do at the first handshake
        ca = read_file(names.ca, ca_file)
        load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca, names.ca)
        cert = key = None
        if cert_file is not None and key_file is not None:
            cert, key = read_file(names.cert, cert_file), read_file(names.key, key_file)
            load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert_file, key_file, names)
        return cls(ca, server_name, cert, key, cert_file, key_file)

    @property
    def mutual(self) -> bool:
        return self.cert is not None

    @property
    def security(self) -> str:
        return "mutual TLS" if self.mutual else "TLS"

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """The channel options that check ``server_name`` instead of the address's host."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def server_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name checked in an engine's certificate, or None."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return None
    if _DNS_NAME.fullmatch(name.lower()) is None:
        return "is not a DNS name (such as workflow-engines.default.svc) or an IP address"
    return None
