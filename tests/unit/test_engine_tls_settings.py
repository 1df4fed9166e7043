"""TLS on the link to engines, as each service's settings read it: the engine's TLS_* files
(checked as the orchestrator's own), the orchestrator's ENGINE_TLS_* (read and checked at
start), and how a failed call reads when TLS is its cause."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from engine.settings import Settings as EngineSettings
from engine.settings import SettingsError
from engine.tls import ServerTls
from orchestrator.settings import Settings
from orchestrator.tls import link_problem
from tests.keys import Certificates, encrypted_copy

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}


@pytest.fixture
def files(tmp_path: Path) -> Certificates:
    """A CA, an engine certificate for a service name, and a client certificate, as files."""
    return Certificates(tmp_path, server="workflow-engines.default.svc", client="orchestrator")


def engine(**env: str) -> EngineSettings:
    return EngineSettings.from_env({"ENGINE_ID": "e", **env})


def refusal(read: object) -> str:
    assert callable(read)
    with pytest.raises(SettingsError) as caught:
        read()
    return str(caught.value)


# -- the engine's TLS_* ------------------------------------------------------------------------


def test_an_engine_serves_plain_tls_or_mutual_tls_as_its_files_say(files: Certificates) -> None:
    assert engine().security == "plain"
    served = engine(TLS_CERT_FILE=str(files.cert_file), TLS_KEY_FILE=str(files.key_file))
    assert (served.tls_cert_file, served.tls_key_file) == (
        str(files.cert_file),
        str(files.key_file),
    )
    assert served.tls_ca_file is None
    assert served.security == "TLS"
    mutual = engine(
        TLS_CERT_FILE=str(files.cert_file),
        TLS_KEY_FILE=str(files.key_file),
        TLS_CA_FILE=str(files.ca_file),
    )
    assert mutual.tls_ca_file == str(files.ca_file)
    assert mutual.security == "mutual TLS"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TLS_CERT_FILE": "/c.pem"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        ({"TLS_KEY_FILE": "/k.pem"}, "TLS_CERT_FILE and TLS_KEY_FILE must be set together"),
        (
            {"TLS_CA_FILE": "/ca.pem"},
            "TLS_CA_FILE (client certificates) needs TLS_CERT_FILE and TLS_KEY_FILE too",
        ),
    ],
)
def test_both_services_refuse_the_same_tls_files_in_the_same_words(
    env: dict[str, str], message: str
) -> None:
    assert refusal(lambda: engine(**env)) == message
    assert refusal(lambda: Settings.from_env({**BASE, **env})) == message


def test_the_engine_s_files_are_checked_when_its_server_is_made(
    files: Certificates, tmp_path: Path
) -> None:
    assert (
        ServerTls(str(files.cert_file), str(files.key_file), str(files.ca_file)).security
        == "mutual TLS"
    )
    assert refusal(lambda: ServerTls("/no/such.pem", str(files.key_file))) == (
        "TLS_CERT_FILE /no/such.pem: No such file or directory"
    )
    assert refusal(lambda: ServerTls(str(files.cert_file), str(files.client_key))).startswith(
        "TLS_CERT_FILE and TLS_KEY_FILE are not a PEM certificate and its key: "
    )
    assert refusal(
        lambda: ServerTls(str(files.cert_file), str(files.key_file), str(files.key_file))
    ).startswith("TLS_CA_FILE is not PEM certificates: ")
    encrypted = encrypted_copy(files.key_file.read_bytes(), tmp_path / "encrypted.key")
    assert refusal(lambda: ServerTls(str(files.cert_file), str(encrypted))).startswith(
        "TLS_KEY_FILE is an encrypted key: give the key without a passphrase"
    )


# -- the orchestrator's ENGINE_TLS_* -----------------------------------------------------------


def test_without_engine_tls_the_orchestrator_connects_in_plain_text() -> None:
    assert Settings.from_env(BASE).engine_tls is None


def test_engine_tls_files_are_read_at_start(files: Certificates) -> None:
    tls = Settings.from_env({**BASE, "ENGINE_TLS_CA_FILE": str(files.ca_file)}).engine_tls
    assert tls is not None
    assert tls.ca == files.ca_file.read_bytes()
    assert (tls.server_name, tls.cert, tls.mutual, tls.security) == (None, None, False, "TLS")
    assert tls.channel_options() == []  # the address's host is checked
    assert isinstance(tls.credentials(), grpc.ChannelCredentials)
    mutual = Settings.from_env(
        {
            **BASE,
            "ENGINE_TLS_CA_FILE": str(files.ca_file),
            "ENGINE_TLS_SERVER_NAME": "workflow-engines.default.svc",
            "ENGINE_TLS_CERT_FILE": str(files.client_cert),
            "ENGINE_TLS_KEY_FILE": str(files.client_key),
        }
    ).engine_tls
    assert mutual is not None
    assert mutual.cert == files.client_cert.read_bytes()
    assert mutual.key == files.client_key.read_bytes()
    assert (mutual.mutual, mutual.security) == (True, "mutual TLS")
    assert mutual.channel_options() == [
        ("grpc.ssl_target_name_override", "workflow-engines.default.svc")
    ]
    assert "BEGIN" not in repr(mutual)  # the key stays out of logs and reprs


@pytest.mark.parametrize("name", ["10.0.0.7", "fd00::7", "Workflow-Engines.default.svc"])
def test_the_name_checked_may_be_a_dns_name_or_an_address(files: Certificates, name: str) -> None:
    env = {**BASE, "ENGINE_TLS_CA_FILE": str(files.ca_file), "ENGINE_TLS_SERVER_NAME": name}
    tls = Settings.from_env(env).engine_tls
    assert tls is not None and tls.server_name == name


def unusable(files: Certificates, tmp_path: Path) -> list[tuple[dict[str, str], str]]:
    ca, cert, key = str(files.ca_file), str(files.client_cert), str(files.client_key)
    encrypted = str(encrypted_copy(files.client_key.read_bytes(), tmp_path / "encrypted.key"))
    return [
        (
            {"ENGINE_TLS_CA_FILE": "/no/such/ca.pem"},
            "ENGINE_TLS_CA_FILE /no/such/ca.pem: No such file or directory",
        ),
        ({"ENGINE_TLS_CA_FILE": key}, "ENGINE_TLS_CA_FILE is not PEM certificates: "),
        (
            {"ENGINE_TLS_CA_FILE": ca, "ENGINE_TLS_CERT_FILE": cert},
            "ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE must be set together",
        ),
        (
            {"ENGINE_TLS_CA_FILE": ca, "ENGINE_TLS_KEY_FILE": key},
            "ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE must be set together",
        ),
        (
            {"ENGINE_TLS_CERT_FILE": cert, "ENGINE_TLS_KEY_FILE": key},
            "ENGINE_TLS_CERT_FILE needs ENGINE_TLS_CA_FILE, the CA that signed the engines'"
            " certificates",
        ),
        (
            {"ENGINE_TLS_SERVER_NAME": "workflow-engines.default.svc"},
            "ENGINE_TLS_SERVER_NAME needs ENGINE_TLS_CA_FILE, the CA that signed the engines'"
            " certificates",
        ),
        (
            {"ENGINE_TLS_CA_FILE": ca, "ENGINE_TLS_SERVER_NAME": "engines:50051"},
            "ENGINE_TLS_SERVER_NAME 'engines:50051' is not a DNS name (such as"
            " workflow-engines.default.svc) or an IP address",
        ),
        (
            {
                "ENGINE_TLS_CA_FILE": ca,
                "ENGINE_TLS_CERT_FILE": cert,
                "ENGINE_TLS_KEY_FILE": str(files.key_file),  # the engine's key, not the client's
            },
            "ENGINE_TLS_CERT_FILE and ENGINE_TLS_KEY_FILE are not a PEM certificate and its key: ",
        ),
        (
            {
                "ENGINE_TLS_CA_FILE": ca,
                "ENGINE_TLS_CERT_FILE": cert,
                "ENGINE_TLS_KEY_FILE": encrypted,
            },
            "ENGINE_TLS_KEY_FILE is an encrypted key: give the key without a passphrase",
        ),
        (
            {"TRANSPORT_TYPE": "local", "ENGINE_TLS_CA_FILE": ca},
            "ENGINE_TLS_CA_FILE is for engines reached over the network: the local engines of"
            " TRANSPORT_TYPE=local serve in plain text inside this process",
        ),
    ]


def test_unusable_engine_tls_settings_are_refused_naming_the_variable(
    files: Certificates, tmp_path: Path
) -> None:
    for env, message in unusable(files, tmp_path):
        assert refusal(lambda env=env: Settings.from_env({**BASE, **env})).startswith(message), env


# -- a failed call, read for TLS -------------------------------------------------------------


def failed(
    details: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
) -> grpc.aio.AioRpcError:
    empty = grpc.aio.Metadata()
    return grpc.aio.AioRpcError(code, empty, empty, details, f"{code.name}:{details}")


async def test_grpc_s_handshake_failures_read_as_what_to_fix(files: Certificates) -> None:
    env = {
        **BASE,
        "ENGINE_TLS_CA_FILE": str(files.ca_file),
        "ENGINE_TLS_SERVER_NAME": "workflow-engines.default.svc",
    }
    tls = Settings.from_env(env).engine_tls
    prefix = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
    cases = {
        "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL"
        " routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification"
        " context: OK": "TLS: the engine does not speak TLS (set its TLS_CERT_FILE and"
        " TLS_KEY_FILE), and ENGINE_TLS_CA_FILE makes this orchestrator connect with TLS",
        "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL"
        " routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer"
        " certificate: OK": "TLS: the engine's certificate is not signed by the CA in"
        " ENGINE_TLS_CA_FILE (unable to get local issuer certificate)",
        "Custom verification check failed with error: UNAUTHENTICATED: Hostname Verification"
        " Check failed.": "TLS: the engine's certificate is not for ENGINE_TLS_SERVER_NAME"
        " workflow-engines.default.svc",
    }
    for details, said in cases.items():
        assert await link_problem("127.0.0.1:1", failed(prefix + details), tls, 1.0) == said
    # not TLS: an engine that is not there, or one that answers in its own words
    refused = prefix + "Failed to connect to remote host: Connection refused"
    assert await link_problem("127.0.0.1:1", failed(refused), tls, 1.0) is None
    internal = failed("certificate of the run", grpc.StatusCode.INTERNAL)
    assert await link_problem("127.0.0.1:1", internal, tls, 1.0) is None
