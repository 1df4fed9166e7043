"""TLS for the orchestrator's HTTP and gRPC servers, from ``TLS_CERT_FILE``, ``TLS_KEY_FILE``
and ``TLS_CA_FILE``, and what a failed TLS handshake with an engine means.

With a certificate and key, both servers speak TLS only. With a CA file as well, they also
require every client to present a certificate that CA signed (mutual TLS). The files are read
again when they change, as ``engine.tls.ServerTls`` (which the engines serve with too) says;
this module adds the HTTP side: an ``ssl.SSLContext`` whose ``sni_callback`` hands every
handshake to the context of the files as they are now.

``link_problem`` turns a failed call to an engine into what an operator must fix when TLS on
the link is the cause: gRPC tells a wrong CA or name in its own words, but an engine that closes
the connection (a plain orchestrator at a TLS engine, a client certificate missing or refused)
reads as "Socket closed", so the engine is asked once more with a TLS handshake of our own.
"""

from __future__ import annotations

import asyncio
import re
import ssl

import grpc

from engine import tls
from engine.core.envparse import bare_host
from engine.tls import ClientTls
from orchestrator.settings import Settings

__all__ = ["ServerTls", "link_problem", "server_tls"]


class ServerTls(tls.ServerTls):
    """The servers' TLS, with the files read again when they change.

    ``http`` is the context aiohttp serves with; its ``sni_callback`` hands every handshake to
    the context of the files as they are now. ``grpc`` asks at every handshake the same."""

    def __init__(self, settings: Settings) -> None:
        assert settings.tls_cert_file is not None and settings.tls_key_file is not None
        super().__init__(settings.tls_cert_file, settings.tls_key_file, settings.tls_ca_file)
        self.http = self.load().context
        self.http.sni_callback = self._hand_over

    def _hand_over(self, connection: ssl.SSLObject, server_name: str | None, _: object) -> None:
        # called for every handshake, with or without a server name
        connection.context = self.current()


def server_tls(settings: Settings) -> ServerTls | None:
    """The servers' TLS, or None when no certificate is set; SettingsError naming the file."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return ServerTls(settings)


# -- the link to engines ----------------------------------------------------------------------

_TLS_WORDS = re.compile(r"tls|ssl|handshake|certificate|hostname verification", re.IGNORECASE)
_CLOSED = "Socket closed"
_PROBE_READ = 9  # an HTTP/2 frame header: a gRPC server's SETTINGS comes first


async def link_problem(
    address: str, error: grpc.aio.AioRpcError, engine_tls: ClientTls | None, timeout: float
) -> str | None:
    """What is wrong with TLS on the link to the engine at ``address``, when ``error`` (a call
    to it that failed) comes from TLS, in an operator's words; else None."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None  # gRPC fails a connection, TLS included, as UNAVAILABLE
    details = f"{error.details() or ''} {error.debug_error_string() or ''}"
    if engine_tls is not None and _TLS_WORDS.search(details):
        return _handshake_failure(details, engine_tls)
    if _CLOSED not in details:
        return None
    # closed at once: a TLS engine hanging up on a plain client, or on a client certificate
    # it does not take, looks like an engine that went away; a handshake of our own tells
    found = await _probe(address, engine_tls, timeout)
    if found is None:
        return None
    if engine_tls is None:
        return (
            "TLS: the engine serves TLS (its TLS_CERT_FILE is set) and this orchestrator"
            " connects in plain text: set ENGINE_TLS_CA_FILE to the CA that signed the"
            " engine's certificate"
        )
    if found == "closed":
        if engine_tls.mutual:
            return (
                "TLS: the engine refuses the client certificate this orchestrator shows"
                " (ENGINE_TLS_CERT_FILE): it takes only certificates signed by the CA in"
                " its TLS_CA_FILE"
            )
        return (
            "TLS: the engine requires a client certificate (its TLS_CA_FILE is set) and this"
            " orchestrator shows none: set ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE"
        )
    return None


def _handshake_failure(details: str, engine_tls: ClientTls) -> str:
    name = (
        f"ENGINE_TLS_SERVER_NAME {engine_tls.server_name}"
        if engine_tls.server_name
        else "the host of its address (set ENGINE_TLS_SERVER_NAME to the name it carries)"
    )
    if "WRONG_VERSION_NUMBER" in details or "wrong version number" in details:
        what = (
            "the engine does not speak TLS (set its TLS_CERT_FILE and TLS_KEY_FILE), and"
            " ENGINE_TLS_CA_FILE makes this orchestrator connect with TLS"
        )
    elif "Hostname Verification" in details or "Peer name" in details:
        what = f"the engine's certificate is not for {name}"
    elif "CERTIFICATE_VERIFY_FAILED" in details or "certificate verify failed" in details:
        reason = details.partition("CERTIFICATE_VERIFY_FAILED")[2].strip(": ")
        reason = reason.split(":")[0].strip() if reason else ""
        what = "the engine's certificate is not signed by the CA in ENGINE_TLS_CA_FILE" + (
            f" ({reason})" if reason else ""
        )
    else:
        what = "the handshake with the engine failed"
    return f"TLS: {what}"


def _probe_context(engine_tls: ClientTls | None) -> ssl.SSLContext:
    """A context that asks whether an engine speaks TLS and takes this orchestrator's client
    certificate, not whether the engine is trusted: gRPC's own handshake says that."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if engine_tls is not None and engine_tls.cert_file and engine_tls.key_file:
        # a key encrypted since the start fails here rather than prompting on a terminal
        context.load_cert_chain(engine_tls.cert_file, engine_tls.key_file, password=b"")
    return context


async def _probe(address: str, engine_tls: ClientTls | None, timeout: float) -> str | None:
    """Whether the engine at ``address`` speaks TLS: "answers" (it took our handshake and
    speaks HTTP/2 after it), "closed" (it took the handshake, then hung up: our client
    certificate, or its lack, was refused), or None (no TLS, or no answer at all)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return None
    writer: asyncio.StreamWriter | None = None
    try:
        context = _probe_context(engine_tls)  # the client files may be gone since the start
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(bare_host(host), int(port), ssl=context)
            try:
                data = await reader.read(_PROBE_READ)
            except (ssl.SSLError, ConnectionError):
                return "closed"
            return "answers" if data else "closed"
    except (OSError, TimeoutError):
        return None  # ssl.SSLError is an OSError: the engine did not speak TLS
    finally:
        if writer is not None:
            # at once: a TLS close waits for the engine's close_notify, up to 30 s
            writer.transport.abort()
