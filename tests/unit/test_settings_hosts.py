"""Orchestrator settings that were taken at start and failed later, or quietly changed: engine
addresses and a DNS name that were warned about at every discovery round, and a
MAX_CONNECTIONS below the floor that was raised to it while the 503 named the variable."""

from __future__ import annotations

import json
import logging

import pytest

from engine.core.envparse import SettingsError
from orchestrator.connections import connection_cap, refusal
from orchestrator.settings import MIN_CONNECTIONS, Settings

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}


@pytest.mark.parametrize(
    "addresses",
    [
        "127.0.0.1:50051",
        "[::1]:50051",  # IPv6 in brackets, as gRPC takes it
        "[fd00::2]:1,[::ffff:10.0.0.1]:2",
        "engine-0.workflow-engines.default.svc.cluster.local:50051",
        "localhost:5 engine:6",
        "workflow_engine:50051",  # a Docker Compose service name: resolvers answer for it
    ],
)
def test_engine_addresses_with_hosts_as_host_takes_them_are_taken(addresses: str) -> None:
    settings = Settings.from_env({**BASE, "ENGINE_ADDRESSES": addresses})
    assert settings.engine_addresses == tuple(addresses.replace(",", " ").split())


@pytest.mark.parametrize(
    "address",
    [
        "bad_host!:80",
        "a%b:80",
        "-a:80",
        "a..b:80",
        "300.1.1.1:80",  # neither an address nor a name
        "[1.2.3.4]:80",  # brackets go around IPv6 only
        "[localhost]:80",
        "::1:80",  # IPv6 without brackets: its last group could be the port
        "fd00::2:50051",
    ],
)
def test_an_engine_address_whose_host_is_neither_stops_start_naming_it(address: str) -> None:
    # before: taken, and discovery warned about it at every round
    for mode in ("static", "dns"):
        with pytest.raises(SettingsError) as caught:
            Settings.from_env({**BASE, "DISCOVERY_MODE": mode, "ENGINE_ADDRESSES": address})
        assert str(caught.value) == (
            "ENGINE_ADDRESSES must list host:port addresses, each host an IP address (IPv6 in "
            f"brackets, as in [fd00::2]:50051) or a host name, got {address!r}"
        )


def test_one_bad_engine_address_among_good_ones_is_the_one_named() -> None:
    with pytest.raises(SettingsError, match=r"got 'bad_host!:81'$"):
        Settings.from_env({**BASE, "ENGINE_ADDRESSES": "127.0.0.1:80,bad_host!:81,[::1]:82"})


@pytest.mark.parametrize(
    "name",
    [
        "workflow-engines.default.svc.cluster.local",
        "engines",
        "engines.local.",
        "10.0.0.1",
        "workflow_engine",  # a Docker Compose service name
    ],
)
def test_an_engine_dns_name_is_taken(name: str) -> None:
    settings = Settings.from_env({"DISCOVERY_MODE": "dns", "ENGINE_DNS_NAME": name})
    assert settings.engine_dns_name == name


@pytest.mark.parametrize(
    "name", ["not a name", "a%b", "engines:50051", "[::1]", "-engines", "x" * 64, "bad!"]
)
def test_an_engine_dns_name_that_is_no_name_stops_start_naming_it(name: str) -> None:
    # before: taken, and "cannot resolve engines at not a name" at every discovery round
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"DISCOVERY_MODE": "dns", "ENGINE_DNS_NAME": name})
    assert str(caught.value).startswith("ENGINE_DNS_NAME must be a DNS name"), caught.value
    assert str(caught.value).endswith(f"got {name!r}"), caught.value


def test_the_engine_dns_name_defaults_to_the_services_name() -> None:
    settings = Settings.from_env({"DISCOVERY_MODE": "dns", "K8S_NAMESPACE": "work"})
    assert settings.engine_dns_name == "workflow-engines.work.svc.cluster.local"


@pytest.mark.parametrize("value", ["2", "15", "0", "-1", "abc", "16.5"])
def test_max_connections_below_the_floor_stops_start_naming_it(value: str) -> None:
    # before: 2 was taken and raised to 16, and the 503 said "16 connections open, its limit
    # (MAX_CONNECTIONS)"
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**BASE, "MAX_CONNECTIONS": value})
    assert str(caught.value) == (
        f"MAX_CONNECTIONS must be a whole number of at least {MIN_CONNECTIONS}, got {value!r}"
    )


def test_max_connections_from_the_floor_up_is_taken() -> None:
    assert Settings.from_env({**BASE, "MAX_CONNECTIONS": "16"}).max_connections == 16
    assert Settings.from_env(BASE).max_connections == 1024


def test_lowering_max_connections_to_fit_the_file_descriptors_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "orchestrator.connections"):
        assert connection_cap(1024, 1 << 20) == 1024
        assert not caplog.records
        assert connection_cap(1024, 1000) == 744
    assert [r.getMessage() for r in caplog.records] == [
        "MAX_CONNECTIONS=1024 lowered to 744: the process may open 1000 files, and 256 are kept "
        "for the state database, engines and logs"
    ]


def test_the_503_does_not_say_its_limit_is_what_max_connections_holds() -> None:
    # the cap may be MAX_CONNECTIONS lowered to fit the file descriptors
    head, _, body = refusal(744).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    error = json.loads(body)["error"]
    assert error["code"] == "too_many_connections" and error["details"] == {"limit": 744}
    assert error["message"] == (
        "the server has 744 connections open, as many as it takes at once (MAX_CONNECTIONS, "
        "or fewer when its open-file limit leaves room for fewer): try again shortly"
    )
