"""TLS on the orchestrator's HTTP and gRPC servers, and mutual TLS, with real processes.

Certificates are made up per test by a throwaway CA (tests/keys.py): one for the server at
127.0.0.1, and one a client may show.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import grpc
import pytest

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from tests.integration.conftest import ROOT, StartCluster, refused_orchestrator
from tests.keys import Certificates, encrypted_copy


def dagctl(server: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.dagctl", "get", "engines", "-o", "json"],
        env={**os.environ, "DAGCTL_SERVER": server, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def healthz(url: str, context: ssl.SSLContext | bool) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/healthz", ssl=context) as resp:
        return resp.status


async def test_with_a_certificate_both_servers_speak_tls_only(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    cluster = start_cluster(
        engines=1, TLS_CERT_FILE=str(certs.cert_file), TLS_KEY_FILE=str(certs.key_file)
    )
    port = cluster.orchestrator.http_port
    https = f"https://127.0.0.1:{port}"
    assert '"security": "TLS"' in cluster.orchestrator.log()
    assert await healthz(https, certs.client_context(with_cert=False)) == 200
    with pytest.raises(aiohttp.ClientError):
        await healthz(f"http://127.0.0.1:{port}", False)
    with pytest.raises(aiohttp.ClientError):  # a certificate nobody vouched for
        await healthz(https, ssl.create_default_context())
    secure = grpc.aio.secure_channel(
        cluster.orchestrator.grpc_address, certs.channel_credentials(with_cert=False)
    )
    async with secure:
        engines = await pb_grpc.OrchestratorStub(secure).ListEngines(
            pb.ListEnginesRequest(), timeout=10
        )
        assert [e.engine_id for e in engines.engines] == ["engine-0"]
    async with grpc.aio.insecure_channel(cluster.orchestrator.grpc_address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await pb_grpc.OrchestratorStub(plain).ListEngines(pb.ListEnginesRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # gRPC's core would log that refused handshake as a plain-text line among the JSON ones
    assert [line for line in cluster.orchestrator.log().splitlines() if line[:1] != "{"] == []
    # dagctl trusts the server through DAGCTL_CA_FILE
    trusted = dagctl(https, DAGCTL_CA_FILE=str(certs.ca_file))
    assert trusted.returncode == 0, trusted.stderr
    assert '"engine-0"' in trusted.stdout
    untrusted = dagctl(https)
    assert untrusted.returncode == 1
    assert "certificate verify failed" in untrusted.stderr
    assert "set DAGCTL_CA_FILE" in untrusted.stderr


async def test_with_a_ca_file_clients_must_show_a_certificate_it_signed(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    certs = Certificates(tmp_path)
    cluster = start_cluster(
        engines=1,
        TLS_CERT_FILE=str(certs.cert_file),
        TLS_KEY_FILE=str(certs.key_file),
        TLS_CA_FILE=str(certs.ca_file),
    )
    https = f"https://127.0.0.1:{cluster.orchestrator.http_port}"
    assert '"security": "mutual TLS"' in cluster.orchestrator.log()
    assert await healthz(https, certs.client_context(with_cert=True)) == 200
    with pytest.raises(aiohttp.ClientError):
        await healthz(https, certs.client_context(with_cert=False))
    for with_cert, works in ((True, True), (False, False)):
        channel = grpc.aio.secure_channel(
            cluster.orchestrator.grpc_address, certs.channel_credentials(with_cert=with_cert)
        )
        async with channel:
            call = pb_grpc.OrchestratorStub(channel).ListEngines(pb.ListEnginesRequest(), timeout=5)
            if works:
                assert len((await call).engines) == 1
            else:
                with pytest.raises(grpc.aio.AioRpcError):
                    await call
    shown = dagctl(
        https,
        DAGCTL_CA_FILE=str(certs.ca_file),
        DAGCTL_CERT_FILE=str(certs.client_cert),
        DAGCTL_KEY_FILE=str(certs.client_key),
    )
    assert shown.returncode == 0, shown.stderr
    assert dagctl(https, DAGCTL_CA_FILE=str(certs.ca_file)).returncode == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TLS_CERT_FILE": "/no/such/cert.pem", "TLS_KEY_FILE": "/no/such/key.pem"},
            "TLS_CERT_FILE /no/such/cert.pem: No such file or directory",
        ),
        ({"TLS_CERT_FILE": "/etc/hostname"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        (
            {"TLS_CA_FILE": "/etc/hostname"},
            "TLS_CA_FILE (client certificates) needs TLS_CERT_FILE and TLS_KEY_FILE too",
        ),
    ],
)
def test_unusable_tls_files_stop_start_up_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    proc = refused_orchestrator(tmp_path, env)
    assert proc.returncode == 2
    assert message in proc.stderr + proc.stdout
    assert not (tmp_path / "state.db").exists()  # nothing was touched


def test_an_encrypted_key_stops_start_up_without_asking_for_its_passphrase(
    tmp_path: Path,
) -> None:
    certs = Certificates(tmp_path)
    encrypted = encrypted_copy(certs.key_file.read_bytes(), tmp_path / "encrypted.key")
    proc = refused_orchestrator(
        tmp_path, {"TLS_CERT_FILE": str(certs.cert_file), "TLS_KEY_FILE": str(encrypted)}
    )
    assert proc.returncode == 2
    assert "TLS_KEY_FILE is an encrypted key" in proc.stderr + proc.stdout
    assert "pass phrase" not in proc.stderr + proc.stdout
    assert not (tmp_path / "state.db").exists()


class SecretVolume:
    """Files laid out as a Kubernetes Secret volume: ``tls.crt`` -> ``..data/tls.crt``, and an
    update swaps the ``..data`` symlink at once, as the kubelet (and cert-manager behind it)
    renews a certificate in a running pod."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.directory = directory
        self.versions = 0
        for name in ("tls.crt", "tls.key", "ca.crt"):
            (directory / name).symlink_to(f"..data/{name}")

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def served(self) -> dict[str, str]:
        """The settings that have a server (the orchestrator or an engine) serve what is here,
        to clients that show a certificate its CA signed."""
        return {
            "TLS_CERT_FILE": self.path("tls.crt"),
            "TLS_KEY_FILE": self.path("tls.key"),
            "TLS_CA_FILE": self.path("ca.crt"),
        }

    def write(self, certs: Certificates, *, key: Path | None = None) -> None:
        self.versions += 1
        version = self.directory / f"..v{self.versions}"
        version.mkdir()
        (version / "tls.crt").write_bytes(certs.cert_file.read_bytes())
        (version / "tls.key").write_bytes((key or certs.key_file).read_bytes())
        (version / "ca.crt").write_bytes(certs.ca_file.read_bytes())
        swap = self.directory / "..data_tmp"
        swap.symlink_to(version.name)
        swap.rename(self.directory / "..data")


Certs = TypeVar("Certs", bound=Certificates)


def a_renewal(tmp_path: Path, make: Callable[[Path], Certs]) -> tuple[Certs, Certs, SecretVolume]:
    """The first certificates, served from a Secret volume, and the renewed ones to write there
    (of a new CA, as a rotation of it)."""
    first, renewed = make(tmp_path / "first"), make(tmp_path / "renewed")
    volume = SecretVolume(tmp_path / "secret")
    volume.write(first)
    return first, renewed, volume


async def answers(https: str, grpc_address: str, certs: Certificates) -> bool:
    """Whether both servers take a client that trusts only ``certs``' CA and shows its cert."""
    try:
        await healthz(https, certs.client_context(with_cert=True))
    except aiohttp.ClientError:
        http_ok = False
    else:
        http_ok = True
    channel = grpc.aio.secure_channel(grpc_address, certs.channel_credentials(with_cert=True))
    async with channel:
        try:
            await pb_grpc.OrchestratorStub(channel).ListEngines(pb.ListEnginesRequest(), timeout=5)
        except grpc.aio.AioRpcError:
            grpc_ok = False
        else:
            grpc_ok = True
    assert http_ok is grpc_ok, (http_ok, grpc_ok)
    return http_ok


async def test_certificates_renewed_in_place_are_served_without_a_restart(
    start_cluster: StartCluster, tmp_path: Path
) -> None:
    first, renewed, volume = a_renewal(tmp_path, Certificates)
    cluster = start_cluster(engines=1, **volume.served())
    https = f"https://127.0.0.1:{cluster.orchestrator.http_port}"
    address = cluster.orchestrator.grpc_address
    assert await answers(https, address, first)
    assert not await answers(https, address, renewed)
    volume.write(renewed)
    # before: the first certificate until a restart, past its expiry
    assert await answers(https, address, renewed)
    assert not await answers(https, address, first)
    assert '"event": "tls_reloaded"' in cluster.orchestrator.log()
    # a key that is not the certificate's: what was served goes on being served, told once
    volume.write(first, key=renewed.key_file)
    for _ in range(3):
        assert await answers(https, address, renewed)
    records = [json.loads(line) for line in cluster.orchestrator.log().splitlines()]
    refusals = [r["message"] for r in records if r.get("event") == "tls_reload_failed"]
    assert len(refusals) == 1, refusals
    assert "TLS_CERT_FILE and TLS_KEY_FILE are not a PEM certificate and its key" in refusals[0]
    volume.write(first)
    assert await answers(https, address, first)
