"""TLS on the link between the orchestrator and its engines, with real processes.

An engine with TLS_CERT_FILE and TLS_KEY_FILE serves gRPC over TLS only (with TLS_CA_FILE, only
to callers showing a certificate that CA signed); an orchestrator with ENGINE_TLS_CA_FILE
connects to it trusting that CA, checking ENGINE_TLS_SERVER_NAME in its certificate (engine pods
are found by IP, and their certificates carry the Service's name), and showing
ENGINE_TLS_CERT_FILE. A link whose TLS fails leaves the engine not ready, with a reason that
says TLS and what to fix, in ``/readyz``, ``/api/v1/engines`` and the log (once).

Certificates are made up per test by a throwaway CA (tests/keys.py), as in test_tls.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.api import get, register, start, wait_end, wait_for
from tests.integration.conftest import ROOT, StartCluster, StartEngine, refused_orchestrator
from tests.integration.test_tls import a_renewal
from tests.keys import Certificates, encrypted_copy

pytestmark = pytest.mark.slow

SERVICE = "workflow-engines.default.svc"
TOKEN = "engine-token-for-the-tls-tests-0123456789"
TWICE = """
id: twice
version: 1.0.0
nodes:
  - id: double
    lua: return { n = inputs.n * 2 }
"""


class Link(Certificates):
    """A CA, an engine certificate for the Service's name, and a client certificate."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, server=SERVICE, client="orchestrator")

    def engine_env(self, *, mutual: bool = False) -> dict[str, str]:
        env = {"TLS_CERT_FILE": str(self.cert_file), "TLS_KEY_FILE": str(self.key_file)}
        return {**env, "TLS_CA_FILE": str(self.ca_file)} if mutual else env

    def orchestrator_env(self, *, with_cert: bool = False, name: bool = True) -> dict[str, str]:
        env = {"ENGINE_TLS_CA_FILE": str(self.ca_file)}
        if name:
            env["ENGINE_TLS_SERVER_NAME"] = SERVICE
        if with_cert:
            env["ENGINE_TLS_CERT_FILE"] = str(self.client_cert)
            env["ENGINE_TLS_KEY_FILE"] = str(self.client_key)
        return env


async def health(channel: grpc.aio.Channel) -> bool:
    """Whether the engine behind ``channel`` answers its health check."""
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError:
        return False
    return True


async def secure_health(address: str, credentials: grpc.ChannelCredentials) -> bool:
    options = [("grpc.ssl_target_name_override", SERVICE)]
    async with grpc.aio.secure_channel(address, credentials, options=options) as channel:
        return await health(channel)


async def run_twice(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        await wait_for("the engine ready", lambda: _ready(http, url), timeout=30)
        await register(http, url, TWICE)
        doc = await wait_end(http, url, await start(http, url, "twice", {"n": 21}))
    assert doc["status"] == "succeeded", doc
    assert doc["outputs"] == {"double": {"n": 42}}


async def _ready(http: aiohttp.ClientSession, url: str) -> bool:
    engines = (await get(http, f"{url}/api/v1/engines"))["engines"]
    return bool(engines) and all(e["state"] == "ready" for e in engines)


def serving_line(log: str) -> dict[str, Any]:
    (line,) = [r for r in map(json.loads, log.splitlines()) if r.get("event") == "serving"]
    return line


# -- links that work --------------------------------------------------------------------------


async def test_a_run_goes_over_a_tls_link_checked_by_the_service_name(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    link = Link(tmp_path / "link")
    cluster = start_cluster(engines=1, engine_env=link.engine_env(), **link.orchestrator_env())
    (engine,) = cluster.engines
    assert serving_line(engine.log())["security"] == "TLS"
    assert ", TLS (capacity" in serving_line(engine.log())["message"]
    await run_twice(cluster.url)
    # TLS only: a plain caller is refused, one trusting the CA is answered
    async with grpc.aio.insecure_channel(engine.address) as plain:
        assert not await health(plain)
    assert await secure_health(engine.address, link.channel_credentials(with_cert=False))
    # gRPC's core would write refused handshakes as plain-text lines among the JSON ones
    assert [line for line in engine.log().splitlines() if line[:1] != "{"] == []


async def test_a_run_goes_over_mutual_tls_with_engine_token_on_top(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    link = Link(tmp_path / "link")
    cluster = start_cluster(
        engines=1,
        engine_env={**link.engine_env(mutual=True), "ENGINE_TOKEN": TOKEN},
        ENGINE_TOKEN=TOKEN,
        **link.orchestrator_env(with_cert=True),
    )
    (engine,) = cluster.engines
    assert serving_line(engine.log())["security"] == "mutual TLS"
    await run_twice(cluster.url)
    assert await secure_health(engine.address, link.channel_credentials(with_cert=True))
    assert not await secure_health(engine.address, link.channel_credentials(with_cert=False))
    assert "engine.refused" not in engine.log()  # the token went along on the TLS channel


# -- links that do not ------------------------------------------------------------------------


MISMATCHES = {
    "plain orchestrator, TLS engine": (
        {"tls": True},
        {},
        "TLS: the engine serves TLS (its TLS_CERT_FILE is set) and this orchestrator connects"
        " in plain text: set ENGINE_TLS_CA_FILE",
    ),
    "TLS orchestrator, plain engine": (
        {},
        {"tls": True},
        "TLS: the engine does not speak TLS",
    ),
    "another CA": (
        {"tls": True},
        {"tls": True, "other_ca": True},
        "TLS: the engine's certificate is not signed by the CA in ENGINE_TLS_CA_FILE",
    ),
    "no server name": (
        {"tls": True},
        {"tls": True, "name": False},
        "TLS: the engine's certificate is not for the host of its address (set"
        " ENGINE_TLS_SERVER_NAME",
    ),
    "no client certificate": (
        {"tls": True, "mutual": True},
        {"tls": True},
        "TLS: the engine requires a client certificate (its TLS_CA_FILE is set) and this"
        " orchestrator shows none: set ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE",
    ),
    "a client certificate another CA signed": (
        {"tls": True, "mutual": True},
        {"tls": True, "foreign_cert": True},
        "TLS: the engine refuses the client certificate this orchestrator shows"
        " (ENGINE_TLS_CERT_FILE): it takes only certificates signed by the CA in its TLS_CA_FILE",
    ),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
async def test_a_link_whose_tls_fails_shows_the_engine_not_ready_saying_why(
    start_cluster: StartCluster, tmp_path: Path, case: str
) -> None:
    engine_side, orchestrator_side, said = MISMATCHES[case]
    link = Link(tmp_path / "link")
    other = Link(tmp_path / "other")
    engine_env = link.engine_env(mutual=bool(engine_side.get("mutual"))) if engine_side else {}
    env = (
        (other if orchestrator_side.get("other_ca") else link).orchestrator_env(
            name=bool(orchestrator_side.get("name", True))
        )
        if orchestrator_side
        else {}
    )
    if orchestrator_side.get("foreign_cert"):
        env["ENGINE_TLS_CERT_FILE"] = str(other.client_cert)
        env["ENGINE_TLS_KEY_FILE"] = str(other.client_key)
    cluster = start_cluster(engines=1, engine_env=engine_env, **env)
    url = cluster.url
    async with aiohttp.ClientSession() as http:

        async def refused() -> Any:
            (engine,) = (await get(http, f"{url}/api/v1/engines"))["engines"]
            return engine if said in (engine["last_error"] or "") else None

        engine = await wait_for(f"the engine's last error to say {said!r}", refused)
        assert engine["state"] == "unhealthy", engine
        async with http.get(f"{url}/readyz") as resp:
            readiness = await resp.json()
        assert "0 engine(s) ready" in readiness["reason"], readiness
        assert said in readiness["reason"], readiness
        # a few more checks: still told once
        await wait_for("more health checks", _checks_after(http, url, engine["checked_at"]))
    records = [json.loads(line) for line in cluster.orchestrator.log().splitlines()]
    told = [r["message"] for r in records if r.get("event") == "engine.tls_failed"]
    assert len(told) == 1 and said in told[0], told
    for log in (cluster.orchestrator.log(), cluster.engines[0].log()):
        assert "Traceback" not in log
        assert [line for line in log.splitlines() if line[:1] != "{"] == []


def _checks_after(http: aiohttp.ClientSession, url: str, checked_at: str) -> Any:
    seen: list[str] = []

    async def probe() -> bool:
        (engine,) = (await get(http, f"{url}/api/v1/engines"))["engines"]
        if engine["checked_at"] != checked_at and engine["checked_at"] not in seen:
            seen.append(engine["checked_at"])
        return len(seen) >= 3

    return probe


async def test_dagctl_get_engines_shows_the_tls_reason(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    link = Link(tmp_path / "link")
    cluster = start_cluster(engines=1, engine_env=link.engine_env())
    said = "TLS: the engine serves TLS"

    async def shown() -> str | None:
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.dagctl", "get", "engines"],
            env={**os.environ, "DAGCTL_SERVER": cluster.url},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout if said in out.stdout else None

    table = await wait_for("dagctl to show the TLS reason", shown)
    assert "unhealthy" in table, table


# -- settings that cannot work ----------------------------------------------------------------


def engine_refusals(link: Link, tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    encrypted = encrypted_copy(link.key_file.read_bytes(), tmp_path / "encrypted.key")
    return [
        (
            {"TLS_CERT_FILE": "/no/such/cert.pem", "TLS_KEY_FILE": str(link.key_file)},
            "TLS_CERT_FILE /no/such/cert.pem: No such file or directory",
        ),
        (
            {"TLS_CERT_FILE": str(link.cert_file)},
            "TLS_CERT_FILE and TLS_KEY_FILE must be set together",
        ),
        (
            {"TLS_CA_FILE": str(link.ca_file)},
            "TLS_CA_FILE (client certificates) needs TLS_CERT_FILE and TLS_KEY_FILE too",
        ),
        (
            {"TLS_CERT_FILE": str(link.cert_file), "TLS_KEY_FILE": str(encrypted)},
            "TLS_KEY_FILE is an encrypted key: give the key without a passphrase",
        ),
        (
            {"TLS_CERT_FILE": str(link.cert_file), "TLS_KEY_FILE": str(link.client_key)},
            "TLS_CERT_FILE and TLS_KEY_FILE are not a PEM certificate and its key",
        ),
    ]


def test_an_engine_with_unusable_tls_settings_stops_at_start_naming_them(
    start_engine: StartEngine, tmp_path: Path
) -> None:
    link = Link(tmp_path / "link")
    for env, message in engine_refusals(link, tmp_path):
        engine = start_engine(wait=False, **env)
        assert engine.wait() == 2, engine.log()
        assert message in engine.log(), engine.log()
        assert "Traceback" not in engine.log()
        assert "pass phrase" not in engine.log()


def test_an_orchestrator_with_unusable_engine_tls_settings_stops_at_start_naming_them(
    tmp_path: Path,
) -> None:
    link = Link(tmp_path / "link")
    cases = [
        (
            {"ENGINE_TLS_CA_FILE": "/no/such/ca.pem"},
            "ENGINE_TLS_CA_FILE /no/such/ca.pem: No such file or directory",
        ),
        (
            {"ENGINE_TLS_SERVER_NAME": SERVICE},
            "ENGINE_TLS_SERVER_NAME needs ENGINE_TLS_CA_FILE",
        ),
        (
            {
                "ENGINE_TLS_CA_FILE": str(link.ca_file),
                "ENGINE_TLS_CERT_FILE": str(link.client_cert),
            },
            "ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE must be set together",
        ),
    ]
    for env, message in cases:
        proc = refused_orchestrator(tmp_path, env)
        assert proc.returncode == 2, proc.stderr
        assert message in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # one line, no traceback
        assert not (tmp_path / "state.db").exists()


# -- renewal ----------------------------------------------------------------------------------


async def test_the_engine_serves_its_renewed_certificate_without_a_restart(
    start_engine: StartEngine, tmp_path: Path
) -> None:
    first, renewed, volume = a_renewal(tmp_path, Link)
    engine = start_engine(**volume.served())
    assert await secure_health(engine.address, first.channel_credentials(with_cert=True))
    assert not await secure_health(engine.address, renewed.channel_credentials(with_cert=True))
    volume.write(renewed)
    assert await secure_health(engine.address, renewed.channel_credentials(with_cert=True))
    assert not await secure_health(engine.address, first.channel_credentials(with_cert=True))
    assert '"event": "tls_reloaded"' in engine.log()
