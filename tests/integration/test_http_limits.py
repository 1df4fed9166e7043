"""What a careless or hostile client's connections can take from the orchestrator's HTTP
server: a real orchestrator process on loopback, and raw sockets held open."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import aiohttp
import pytest

from tests.integration.conftest import Cluster, StartCluster

pytestmark = pytest.mark.slow

LIMIT = 16  # the smallest MAX_CONNECTIONS takes (one below is refused at start)


@contextmanager
def held(cluster: Cluster, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections, open and idle, as a client that keeps them would."""
    with ExitStack() as stack:
        conns = []
        for _ in range(count):
            conn = stack.enter_context(
                socket.create_connection(("127.0.0.1", cluster.orchestrator.http_port), 5)
            )
            conns.append(conn)
        yield conns


def raw_get(cluster: Cluster, path: str, extra: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", cluster.orchestrator.http_port), 5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n")
        conn.settimeout(5)
        got = b""
        while b"\r\n\r\n" not in got or not got.endswith((b"}", b"}\n")):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


async def test_connections_past_the_limit_get_503_and_those_open_carry_on(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1, MAX_CONNECTIONS=str(LIMIT))
    async with aiohttp.ClientSession() as http:
        # one connection of the limit is this session's, kept alive
        async with http.get(f"{cluster.url}/healthz") as resp:
            assert resp.status == 200
        with held(cluster, LIMIT - 1):
            await asyncio.sleep(0.2)  # accepted and counted
            answer = await asyncio.to_thread(raw_get, cluster, "/healthz")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503"), answer
            assert b"Retry-After: 5" in head
            error = json.loads(body)["error"]
            assert error["code"] == "too_many_connections"
            assert error["message"] == (
                f"the server has {LIMIT} connections open, as many as it takes at once "
                "(MAX_CONNECTIONS, or fewer when its open-file limit leaves room for fewer): "
                "try again shortly"
            )
            # the connection it already had is served as before
            async with http.get(f"{cluster.url}/healthz") as resp:
                assert resp.status == 200
        # once they close, new connections are taken again
        deadline = time.monotonic() + 10
        while b"200 OK" not in (answer := await asyncio.to_thread(raw_get, cluster, "/healthz")):
            assert time.monotonic() < deadline, answer
            await asyncio.sleep(0.1)
    log = cluster.orchestrator.log()
    assert log.count("refusing new HTTP connections") == 1, log  # once a minute at most


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_a_request_with_too_many_or_too_long_headers_is_refused(
    start_cluster: StartCluster,
) -> None:
    cluster = start_cluster(engines=1)
    many = b"".join(f"X-H{i}: v\r\n".encode() for i in range(40))
    answer = await asyncio.to_thread(raw_get, cluster, "/healthz", many)
    assert status(answer) == 400 and answer.endswith(b"Too many headers received"), answer
    long = b"X-Long: " + b"v" * (20 * 1024) + b"\r\n"
    answer = await asyncio.to_thread(raw_get, cluster, "/healthz", long)
    assert status(answer) == 400 and b"16384" in answer, answer[-300:]
    # a few of ordinary size are fine
    fine = b"".join(f"X-H{i}: v\r\n".encode() for i in range(20))
    answer = await asyncio.to_thread(raw_get, cluster, "/healthz", fine)
    assert status(answer) == 200, answer[:200]
