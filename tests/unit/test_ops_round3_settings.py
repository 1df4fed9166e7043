"""Settings refused at start that were taken before and failed later: a HOST one of the servers
could not listen on (or listened on for IPv4 only), and Kubernetes names and selectors that
discovery retried for ever while ``/readyz`` stayed 200."""

from __future__ import annotations

import pytest

from engine.core.envparse import any_address, bare_host, host_port
from engine.settings import Settings as EngineSettings
from engine.settings import SettingsError
from orchestrator.settings import Settings

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}

GOOD_HOSTS = [
    "::",
    "[::]",
    "0.0.0.0",
    "::1",
    "[::1]",
    "127.0.0.1",
    "fd00::2",
    "[fd00::2]",
    "localhost",
    "orchestrator.example",
    "orchestrator.example.",
]
BAD_HOSTS = [
    "0.0.0.0:8080",  # a port: HTTP_PORT and GRPC_PORT say it
    "[::]:8080",
    "[1.2.3.4]",  # brackets go around IPv6 only
    "[localhost]",
    "[::",
    ":::",
    "bad host",
    "*",
    "a_b",
    "-a",
    "a..b",
    "300.1.1.1",  # not an address, and not a name either
    "x" * 64,
]


@pytest.mark.parametrize("host", GOOD_HOSTS)
def test_a_host_of_either_service_is_an_address_or_a_name(host: str) -> None:
    assert Settings.from_env({**BASE, "HOST": host}).host == host
    assert EngineSettings.from_env({"ENGINE_ID": "e", "HOST": host}).host == host


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_a_host_that_is_neither_stops_either_service_naming_it(host: str) -> None:
    # before: taken, and one server failed to listen while the other served (or both did,
    # each in its own words)
    for read in (
        lambda: Settings.from_env({**BASE, "HOST": host}),
        lambda: EngineSettings.from_env({"ENGINE_ID": "e", "HOST": host}),
    ):
        with pytest.raises(SettingsError) as caught:
            read()
        assert str(caught.value) == (
            "HOST must be an IP address (IPv6 with or without brackets: :: or [::] is every "
            f"interface) or a host name, without a port, got {host!r}"
        )


def test_both_services_listen_on_every_interface_unless_told() -> None:
    assert Settings.from_env(BASE).host == "[::]"  # before: 0.0.0.0, IPv4 alone for HTTP
    assert EngineSettings.from_env({"ENGINE_ID": "e"}).host == "[::]"


@pytest.mark.parametrize(
    ("host", "address", "bare", "anywhere"),
    [
        ("::", "[::]:50051", "::", True),
        ("[::]", "[::]:50051", "::", True),
        ("0.0.0.0", "0.0.0.0:50051", "0.0.0.0", True),
        ("::1", "[::1]:50051", "::1", False),
        ("[fd00::2]", "[fd00::2]:50051", "fd00::2", False),
        ("10.0.0.1", "10.0.0.1:50051", "10.0.0.1", False),
        ("localhost", "localhost:50051", "localhost", False),
    ],
)
def test_one_host_takes_the_form_each_server_wants(
    host: str, address: str, bare: str, anywhere: bool
) -> None:
    # gRPC: an IPv6 address in brackets (":::50051" failed its address lookup); aiohttp and the
    # metrics server: without ("[::]" failed to listen)
    assert host_port(host, 50051) == address
    assert bare_host(host) == bare
    assert any_address(host) is anywhere


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        (
            "K8S_NAMESPACE",
            "Bad_NS",
            "K8S_NAMESPACE must be a Kubernetes name of at most 63 lowercase letters, digits and"
            " '-', starting and ending with a letter or digit, got 'Bad_NS'",
        ),
        (
            "K8S_NAMESPACE",
            "n" * 64,
            "K8S_NAMESPACE must be a Kubernetes name of at most 63 lowercase letters, digits and"
            f" '-', starting and ending with a letter or digit, got {'n' * 64!r}",
        ),
        (
            "K8S_SERVICE_NAME",
            "workflow engines",
            "K8S_SERVICE_NAME must be a Kubernetes name of at most 63 lowercase letters, digits"
            " and '-', starting with a letter and ending with a letter or digit, got"
            " 'workflow engines'",
        ),
        (
            "K8S_SERVICE_NAME",
            "1engines",  # a Service name starts with a letter (DNS-1035), a namespace need not
            "K8S_SERVICE_NAME must be a Kubernetes name of at most 63 lowercase letters, digits"
            " and '-', starting with a letter and ending with a letter or digit, got '1engines'",
        ),
        (
            "K8S_LABEL_SELECTOR",
            "app in (a",
            "K8S_LABEL_SELECTOR must be a label selector (key=value, key!=value, key in (a,b),"
            " key notin (a), key or !key, comma-separated), got 'app in (a': expected ',' or"
            " ')' in the values of app in (...), found the end",
        ),
    ],
)
def test_kubernetes_names_the_api_server_refuses_stop_the_start_naming_them(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, name: value})
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        ("a b", "expected an operator or ',' after a, found 'b'"),
        ("a=b c", "expected ',' between requirements, found 'c'"),
        ("a in x", "expected '(' after a in, found 'x'"),
        ("a in (x y)", "expected ',' or ')' in the values of a in (...), found 'y'"),
        ("a notin (x", "expected ',' or ')' in the values of a notin (...), found the end"),
        ("a,", "expected a label key, found the end"),
        (",a", "expected a label key, found ','"),
        ("!a=b", "expected ',' between requirements, found '='"),
        ("a>b", "a > takes a whole number, found 'b'"),
        (
            "-a=b",
            "label key '-a' is not a label name (at most 63 letters, digits, '-', '_' and '.',"
            " starting and ending with a letter or digit)",
        ),
        (
            "a=b!",
            "expected ',' between requirements, found '!'",
        ),
        (
            "a=-b",
            "'-b' is not a label value (at most 63 letters, digits, '-', '_' and '.', starting"
            " and ending with a letter or digit)",
        ),
        ("Example.COM/a=b", "the prefix of label key 'Example.COM/a' is not a DNS subdomain"),
    ],
)
def test_a_label_selector_is_checked_as_the_api_server_parses_it(
    selector: str, problem: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "K8S_LABEL_SELECTOR": selector})
    assert str(caught.value).endswith(f"got {selector!r}: {problem}")


@pytest.mark.parametrize(
    "selector",
    [
        "app=workflow-engine",
        "app.kubernetes.io/name=workflow-engine",
        "a==b",
        "a!=b",
        "a in (x,y)",
        "a notin (x)",
        "a",
        "!a",
        " a = b , c != d , e in ( f , g ) , !h , i ",
        "a=",  # an empty value is a value
        "a in (x,)",
        "a in ()",
        "a>1,b<2",
        "example.com/tier in (web)",
    ],
)
def test_every_form_of_label_selector_is_taken(selector: str) -> None:
    assert Settings.from_env({**BASE, "K8S_LABEL_SELECTOR": selector}).k8s_label_selector == (
        selector.strip()
    )


def test_the_defaults_and_the_manifests_names_are_taken() -> None:
    settings = Settings.from_env(
        {**BASE, "K8S_NAMESPACE": "dag-engine", "K8S_SERVICE_NAME": "workflow-engines"}
    )
    assert (settings.k8s_namespace, settings.k8s_service_name, settings.k8s_label_selector) == (
        "dag-engine",
        "workflow-engines",
        "app=workflow-engine",
    )
    assert Settings.from_env({**BASE, "K8S_NAMESPACE": "1st"}).k8s_namespace == "1st"


def test_an_engine_takes_run_output_bytes_up_to_what_a_resume_message_carries() -> None:
    assert EngineSettings.from_env({}).run_output_bytes == 48 * 1024 * 1024
    most = {"RUN_OUTPUT_BYTES": str(56 * 1024 * 1024)}
    assert EngineSettings.from_env(most).run_output_bytes == 56 * 1024 * 1024
    with pytest.raises(SettingsError) as refused:
        EngineSettings.from_env({"RUN_OUTPUT_BYTES": str(56 * 1024 * 1024 + 1)})
    assert str(refused.value) == (
        "RUN_OUTPUT_BYTES must be at most 58720256 (56 MiB): a run resumed on another engine "
        "carries its outputs in one message of at most 64 MiB, got 58720257"
    )
