"""What keeps one client's connections from taking the HTTP server down.

aiohttp serves every connection it accepts, for as long as it stays open, with no cap on how
many: idle keep-alive connections held by the thousand exhaust the process's file descriptors,
and then nothing is served (and asyncio logs every failed accept, thousands of lines a second).
Each connection part-way through its headers may also hold up to ``max_headers`` times
``max_field_size`` bytes. So the server takes at most ``limit`` connections at once: past
that, a new one gets a short 503 and is closed at once, and the ones open carry on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from typing import Any, Final

from aiohttp import web

from orchestrator.settings import MIN_CONNECTIONS

log = logging.getLogger(__name__)

RESERVED_FDS: Final = 256
"""File descriptors kept for everything but HTTP clients: the state database, gRPC clients and
engines, discovery, logs."""

_WARN_EVERY: Final = 60.0


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one (containers often start at 1,024);
    returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass  # kept as it is: the cap below follows whatever it is
    return soft


def connection_cap(wanted: int, fd_limit: int) -> int:
    """The connections the server takes at once: ``wanted`` (MAX_CONNECTIONS), within the file
    descriptors there are once ``RESERVED_FDS`` are kept aside (never fewer than
    ``MIN_CONNECTIONS``, below which the setting itself is refused). Called once at start;
    lowering the setting is logged, since the 503 then names a number the variable does not
    hold."""
    cap = max(MIN_CONNECTIONS, min(wanted, fd_limit - RESERVED_FDS))
    if cap < wanted:
        log.warning(
            "MAX_CONNECTIONS=%d lowered to %d: the process may open %d files, and %d are kept "
            "for the state database, engines and logs",
            wanted,
            cap,
            fd_limit,
            RESERVED_FDS,
        )
    return cap


def refusal(limit: int) -> bytes:
    """The whole answer a connection past the cap gets, before it is closed. ``limit`` is
    MAX_CONNECTIONS, or less when the file descriptors did not leave room for it (logged at
    start), so the message says both."""
    body = json.dumps(
        {
            "error": {
                "code": "too_many_connections",
                "message": f"the server has {limit} connections open, as many as it takes at "
                "once (MAX_CONNECTIONS, or fewer when its open-file limit leaves room for "
                "fewer): try again shortly",
                "details": {"limit": limit},
            }
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json\r\n"
        "Retry-After: 5\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Refused(asyncio.Protocol):
    """A connection past the cap: one 503, then closed, without reading what it sent."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self._answer)
        transport.close()


class CappedSite(web.TCPSite):
    """``web.TCPSite`` whose listener takes at most ``limit`` connections at once."""

    def __init__(self, runner: web.BaseRunner, *args: Any, limit: int, **kwargs: Any) -> None:
        super().__init__(runner, *args, **kwargs)
        self.limit = limit
        self.refused = 0
        self._answer = refusal(limit)
        self._warned = 0.0

    async def start(self) -> None:
        # TCPSite.start, with the runner's server behind a factory that counts
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) < self.limit:
                return server()
            self._refuse(len(server.connections))
            return _Refused(self._answer)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port

    def _refuse(self, open_now: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning(
                "refusing new HTTP connections: %d are open, the limit (MAX_CONNECTIONS, or "
                "what the open-file limit left room for at start); %d refused so far",
                open_now,
                self.refused,
            )


class AcceptFailures(logging.Filter):
    """asyncio logs every accept that fails for want of file descriptors, with a traceback:
    with many clients waiting, thousands of lines a second. One line a minute says as much."""

    def __init__(self) -> None:
        super().__init__()
        self._last = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "socket.accept() out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self._last < _WARN_EVERY:
            self._dropped += 1
            return False
        self._last = now
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} more like it in the last minute)"
            self._dropped = 0
        record.exc_info = None  # the traceback says nothing the line does not
        return True
