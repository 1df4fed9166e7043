"""``dagctl up`` and its secrets, with the real services: the engines it starts take calls only
with the ENGINE_TOKEN it made and hold none of the secrets they have no use for; with TLS set it
starts, reaching its orchestrator over https (mutual TLS too), or stops at once saying what is
missing. How ``up`` is run here is tests/integration/test_dagctl.py's way.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import sys
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import trustme

from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from orchestrator.dagctl import main as dagctl
from orchestrator.dagctl.launching import LaunchError, own_server_tls
from tests.integration.conftest import ROOT
from tests.integration.test_dagctl import Up, real_up_environ
from tests.integration.test_dagctl import start_up as start_dagctl_up
from tests.keys import encrypted_copy

pytestmark = pytest.mark.slow

API_TOKEN = "the-api-token-of-this-up"
HELLO = (ROOT / "examples" / "hello.yaml").read_text()


def start_up(cwd: Path, environ: dict[str, str], *, token: str | None = None) -> Up:
    """``up`` with the real services and this file's example, in a thread."""
    (cwd / "examples").mkdir(exist_ok=True)
    (cwd / "examples" / "hello.yaml").write_text(HELLO)
    return start_dagctl_up(cwd, sys.executable, environ, token=token)


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode().split("=", 1) for item in raw.split(b"\0") if b"=" in item)
    return dict(pairs)


def engines_in_banner(text: str) -> list[tuple[str, int]]:
    """(address, pid) of each engine, as the banner shows them."""
    found = re.findall(r"  engine-\d +(127\.0\.0\.1:\d+) +pid (\d+)", text)
    assert len(found) == 2, text
    return [(address, int(pid)) for address, pid in found]


async def test_up_engines_take_calls_only_with_its_token_and_hold_no_other_secret(
    tmp_path: Path,
) -> None:
    environ = {
        **real_up_environ(),
        "API_TOKEN": API_TOKEN,
        "DAGCTL_TOKEN": API_TOKEN,
        "DAGCTL_CA_FILE": "/dev/null",  # unused: no TLS here
    }
    environ.pop("ENGINE_TOKEN", None)
    up = start_up(tmp_path, environ, token=API_TOKEN)
    try:
        up.wait_for("Ctrl-C stops everything.")
        text = up.out.getvalue()
        assert "Examples registered: hello@1.0.0" in text
        url = re.search(r"HTTP API   (http://127\.0\.0\.1:\d+)", text)
        assert url is not None
        tokens = set()
        for address, pid in engines_in_banner(text):
            env = environment_of(pid)
            assert "API_TOKEN" not in env and "DAGCTL_TOKEN" not in env, sorted(env)
            assert not [k for k in env if k.startswith(("DAGCTL_", "TLS_"))], sorted(env)
            tokens.add(env["ENGINE_TOKEN"])
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.EngineStub(channel)
                # what a local user who found the port would try: run Lua, read others' runs
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    spec = json.dumps(
                        {"id": "x", "version": "1.0.0", "nodes": [{"id": "a", "lua": "return 1"}]}
                    )
                    await stub.Execute(pb.ExecuteRequest(spec=spec)).read()
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.ListExecutions(pb.ListExecutionsRequest())
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                bearer = (("authorization", f"Bearer {env['ENGINE_TOKEN']}"),)
                info = await stub.GetInfo(pb.GetInfoRequest(), metadata=bearer)
                assert info.state == "serving"
        (token,) = tokens  # one for the lot, made by this up
        assert len(token) >= 40
        # the orchestrator has it too: a run goes through
        request = urllib.request.Request(
            f"{url.group(1)}/trigger/hello",
            data=json.dumps({"inputs": {"name": "Ada"}, "wait": True}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {API_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            done = json.loads(answer.read())
        assert done["outputs"] == {"greet": {"message": "Hello, Ada!"}}, done
    finally:
        up.stop.set()
        code = up.finish()
    assert code == 0, up.err.getvalue()


class Certificates:
    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        server = ca.issue_cert("127.0.0.1")
        self.cert_file, self.key_file = directory / "server.pem", directory / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert_file))
        server.private_key_pem.write_to_path(str(self.key_file))
        client = ca.issue_cert("dagctl@example.org")
        self.client_cert, self.client_key = directory / "client.pem", directory / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))
        # not for 127.0.0.1: up, which checks no name, still reaches the server that has it
        other = ca.issue_cert("example.org")
        self.other_cert, self.other_key = directory / "other.pem", directory / "other.key"
        other.cert_chain_pems[0].write_to_path(str(self.other_cert))
        other.private_key_pem.write_to_path(str(self.other_key))


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_up_with_tls_starts_and_answers_over_https(
    tmp_path: Path, mutual: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = Certificates(tmp_path)
    environ = {
        **real_up_environ(),
        "TLS_CERT_FILE": str(certs.cert_file),
        "TLS_KEY_FILE": str(certs.key_file),
    }
    client = {"DAGCTL_CA_FILE": str(certs.ca_file)}
    if mutual:
        environ["TLS_CA_FILE"] = str(certs.ca_file)
        client.update(
            DAGCTL_CERT_FILE=str(certs.client_cert), DAGCTL_KEY_FILE=str(certs.client_key)
        )
        environ.update(client)
    up = start_up(tmp_path, environ)
    try:
        up.wait_for("Ctrl-C stops everything.")
        text = up.out.getvalue()
        assert "Examples registered: hello@1.0.0" in text
        found = re.search(r"HTTP API   (https://127\.0\.0\.1:(\d+))", text)
        assert found is not None, text
        url = found.group(1)
        assert "http://127.0.0.1" not in text
        assert f"curl -X POST {url}/trigger/hello" in text and '--cacert "$DAGCTL_CA_FILE"' in text
        assert ('--cert "$DAGCTL_CERT_FILE"' in text) == mutual
        # how to trust it, unless DAGCTL_CA_FILE is set already (here, with mutual TLS)
        assert ("set DAGCTL_CA_FILE to the CA that signed" in text) == (not mutual)
        # dagctl, given the CA, reaches it over https; plain HTTP gets nothing
        capsys.readouterr()
        assert dagctl(["get", "engines", "-o", "json"], {"DAGCTL_SERVER": url, **client}) == 0
        engines = json.loads(capsys.readouterr().out)["engines"]
        assert [e["state"] for e in engines] == ["ready", "ready"]
        with pytest.raises(OSError):  # URLError, or the server closing on a plain request
            urllib.request.urlopen(f"http://127.0.0.1:{found.group(2)}/readyz", timeout=5)
    finally:
        up.stop.set()
        code = up.finish()
    assert code == 0, up.err.getvalue()


def test_up_with_mutual_tls_and_no_certificate_of_its_own_stops_at_once(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    environ = {
        **real_up_environ(),
        "TLS_CERT_FILE": str(certs.cert_file),
        "TLS_KEY_FILE": str(certs.key_file),
        "TLS_CA_FILE": str(certs.ca_file),
    }
    for name in ("DAGCTL_CERT_FILE", "DAGCTL_KEY_FILE"):
        environ.pop(name, None)
    up = start_up(tmp_path, environ)
    assert up.finish() == 2
    assert up.err.getvalue() == (
        "dagctl: TLS_CA_FILE makes the orchestrator ask every client for a certificate: set "
        "DAGCTL_CERT_FILE and DAGCTL_KEY_FILE to one that CA signed, for dagctl up to reach it\n"
    )
    assert up.out.getvalue() == ""
    assert not (tmp_path / ".dagengine").exists()  # nothing started, no log rotated


# -- what up trusts ---------------------------------------------------------------------------


def reach(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """A TLS handshake with a server of ``cert``, through ``context``; SSLError when refused."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(str(cert), str(key))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        errors: list[BaseException] = []

        def accept() -> None:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError) as exc:
                errors.append(exc)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                pass
        finally:
            thread.join(10)


def test_up_trusts_the_servers_own_certificate_and_nothing_else(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    assert own_server_tls({}) is None
    # the leaf alone, signed by a CA up is not told of, for another name: trusted
    context = own_server_tls({"TLS_CERT_FILE": f" {certs.other_cert} "})
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname
    assert context.verify_flags & ssl.VERIFY_X509_PARTIAL_CHAIN
    assert context.cert_store_stats()["x509"] == 1  # that one: not the system's CAs
    reach(context, certs.other_cert, certs.other_key)
    # another server, though the same CA signed it: not
    with pytest.raises(ssl.SSLCertVerificationError):
        reach(context, certs.cert_file, certs.key_file)


def test_up_names_the_file_it_cannot_use(tmp_path: Path) -> None:
    certs = Certificates(tmp_path)
    with pytest.raises(LaunchError, match=r"^TLS_CERT_FILE .*missing\.pem: "):
        own_server_tls({"TLS_CERT_FILE": str(tmp_path / "missing.pem")})
    mutual = {"TLS_CERT_FILE": str(certs.cert_file), "TLS_CA_FILE": str(certs.ca_file)}
    with pytest.raises(LaunchError, match="set DAGCTL_CERT_FILE and DAGCTL_KEY_FILE"):
        own_server_tls({**mutual, "DAGCTL_CERT_FILE": str(certs.client_cert)})
    with pytest.raises(LaunchError, match=r"^DAGCTL_CERT_FILE .* / DAGCTL_KEY_FILE .*: "):
        own_server_tls(
            {
                **mutual,
                "DAGCTL_CERT_FILE": str(certs.client_cert),
                "DAGCTL_KEY_FILE": str(tmp_path / "missing.key"),
            }
        )
    # as dagctl itself: an encrypted key is refused, not prompted for on the terminal
    locked = encrypted_copy(certs.client_key.read_bytes(), tmp_path / "locked.key")
    with pytest.raises(LaunchError, match=r"^DAGCTL_KEY_FILE .*locked\.key is encrypted"):
        own_server_tls(
            {**mutual, "DAGCTL_CERT_FILE": str(certs.client_cert), "DAGCTL_KEY_FILE": str(locked)}
        )
