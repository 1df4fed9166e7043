"""Settings that were taken at start and failed later, or were silently ignored or changed:
each is now refused at start with one line naming the variable, before anything is opened.

Bounds (a body size gRPC cannot take, capacities the protocol's int32 cannot carry, Lua workers
by the hundred thousand, a retention reaching before year 1, intervals the fleet raised),
numbers in ASCII digits alone, two servers on one port, the state database, API_TOKEN as
ENGINE_TOKEN, what TRANSPORT_TYPE=local uses, what ``dagctl up`` reads, and KUBECONFIG.
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.core.events import isoformat
from engine.settings import Settings as EngineSettings
from engine.settings import SettingsError
from orchestrator.dagctl.launching import LaunchError, plan, run_up
from orchestrator.local import LocalEngines
from orchestrator.retention import cutoff
from orchestrator.settings import Settings

BASE = {"DISCOVERY_MODE": "static", "ENGINE_ADDRESSES": "127.0.0.1:1"}


def orchestrator(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def engine(**env: str) -> EngineSettings:
    return EngineSettings.from_env({"ENGINE_ID": "e", **env})


def refusal(read: Callable[[], object]) -> str:
    with pytest.raises(SettingsError) as caught:
        read()
    return str(caught.value)


def ports() -> Any:
    counter = iter(range(40000, 40100))
    return lambda: next(counter)


def up_refusal(environ: Mapping[str, str], base_dir: Path) -> str:
    with pytest.raises(LaunchError) as caught:
        plan(environ, engines=1, python="py", base_dir=base_dir, pick_port=ports())
    assert caught.value.exit_code == 2  # a bad setting, as the services exit
    return str(caught.value)


# -- bounds ----------------------------------------------------------------------------------


def test_max_body_bytes_stops_at_a_gibibyte_which_grpc_can_take() -> None:
    assert orchestrator(MAX_BODY_BYTES=str(2**30)).max_body_bytes == 2**30
    # before: taken, and the orchestrator died at start in gRPC with an OverflowError
    assert refusal(lambda: orchestrator(MAX_BODY_BYTES="2147418112")) == (
        "MAX_BODY_BYTES must be at most 1073741824 (1 GiB), got '2147418112'"
    )
    assert "at most" in refusal(lambda: orchestrator(MAX_BODY_BYTES=str(2**30 + 1)))


def test_capacities_stop_at_a_million_as_the_pod_annotation() -> None:
    assert engine(CAPACITY="1000000").capacity == 1_000_000
    assert orchestrator(ENGINE_CAPACITY="1000000").engine_capacity == 1_000_000
    # before: taken, and GetInfo and ListEngines failed on the int32 field
    assert refusal(lambda: engine(CAPACITY="3000000000")) == (
        "CAPACITY must be at most 1000000, got '3000000000'"
    )
    assert refusal(lambda: orchestrator(ENGINE_CAPACITY="1000001")) == (
        "ENGINE_CAPACITY must be at most 1000000, got '1000001'"
    )
    assert refusal(lambda: engine(CAPACITY="0")) == "CAPACITY must be a positive integer, got '0'"


def test_lua_workers_stop_at_256_as_engine_run_workers() -> None:
    assert engine(LUA_WORKERS="256").lua_workers == 256
    # before: 100000 took gigabytes and minutes to start, deaf to SIGTERM meanwhile
    assert refusal(lambda: engine(LUA_WORKERS="100000")) == (
        "LUA_WORKERS must be at most 256, got '100000'"
    )


def test_local_engines_stop_at_64_as_dagctl_up_engines() -> None:
    assert orchestrator(LOCAL_ENGINES="64").local_engines == 64
    assert refusal(lambda: orchestrator(LOCAL_ENGINES="65")) == (
        "LOCAL_ENGINES must be at most 64, got '65'"
    )


def test_local_engines_share_one_process_s_bound_on_lua_workers() -> None:
    def local(**env: str) -> Settings:
        return Settings.from_env({"TRANSPORT_TYPE": "local", **env})

    assert local(LOCAL_ENGINES="64", LUA_WORKERS="4").local_engines == 64
    # before: 64 engines of 256 workers each, 16,384 Lua runtimes in one process
    assert refusal(lambda: local(LOCAL_ENGINES="64", LUA_WORKERS="256")) == (
        "LOCAL_ENGINES (64) times LUA_WORKERS (256) must be at most 256: the local engines'"
        " Lua workers all run in this process"
    )


@pytest.mark.parametrize("value", ["36501d", "1000000d", "1e20d", "876001h"])
def test_a_retention_past_100_years_is_refused(value: str) -> None:
    # before: taken, and every retention sweep failed with a traceback (year out of range)
    assert refusal(lambda: orchestrator(EXECUTION_RETENTION=value)) == (
        f"EXECUTION_RETENTION must be at most 36500d (100 years), got {value!r}"
    )


def test_the_longest_retention_has_a_cutoff_the_sweep_can_write() -> None:
    longest = orchestrator(EXECUTION_RETENTION="36500d").execution_retention
    assert longest == 36500 * 86400
    before = cutoff(time.time(), longest)
    assert before is not None
    assert isoformat(before) is not None


def test_intervals_below_what_the_fleet_and_discovery_take_are_refused() -> None:
    assert orchestrator(ENGINE_HEALTH_CHECK_INTERVAL="0.1").health_check_interval == 0.1
    assert orchestrator(ENGINE_DISCOVERY_INTERVAL="1").discovery_interval == 1.0
    # before: taken, and raised to 0.1 s and 1 s without a word
    assert refusal(lambda: orchestrator(ENGINE_HEALTH_CHECK_INTERVAL="0")) == (
        "ENGINE_HEALTH_CHECK_INTERVAL must be a number of seconds (at least 0.1), got '0'"
    )
    assert refusal(lambda: orchestrator(ENGINE_DISCOVERY_INTERVAL="0.5")) == (
        "ENGINE_DISCOVERY_INTERVAL must be a number of seconds (at least 1), got '0.5'"
    )


# -- numbers in ASCII digits -----------------------------------------------------------------


@pytest.mark.parametrize("port", ["²", "\u0665\u0660\u0660\u0665\u0661", "5_0051", "+50051"])
def test_an_engine_address_port_is_ascii_digits(port: str) -> None:
    # before: '²' was a traceback (isdigit, then int), Arabic-Indic digits (50051 here) an
    # engine never reachable
    assert refusal(lambda: orchestrator(ENGINE_ADDRESSES=f"127.0.0.1:{port}")) == (
        f"ENGINE_ADDRESSES must list host:port addresses, got '127.0.0.1:{port}'"
    )


@pytest.mark.parametrize("value", ["1_000", "\u0668\u0660\u0668\u0660", "+1000", "²"])
def test_ports_and_whole_numbers_are_ascii_digits(value: str) -> None:
    # before: int() took 1_000 as 1000, and the digits of every script
    assert refusal(lambda: orchestrator(HTTP_PORT=value)) == (
        f"HTTP_PORT must be a port number from 0 (any free port) to 65535, got {value!r}"
    )
    assert refusal(lambda: engine(PORT=value)).startswith("PORT must be a port number")
    assert refusal(lambda: engine(CAPACITY=value)) == (
        f"CAPACITY must be a positive integer, got {value!r}"
    )
    assert refusal(lambda: orchestrator(MAX_CONNECTIONS=value)).startswith("MAX_CONNECTIONS")


@pytest.mark.parametrize("value", ["1_0", "\u0663", "infinity", "nan"])
def test_seconds_and_durations_are_ascii_numbers(value: str) -> None:
    assert refusal(lambda: engine(DRAIN_GRACE=value)) == (
        f"DRAIN_GRACE must be a number of seconds (0 or more), got {value!r}"
    )
    assert refusal(lambda: orchestrator(EXECUTION_RETENTION=f"{value}d")).startswith(
        "EXECUTION_RETENTION must be a duration"
    )


def test_numbers_as_they_were_written_before_are_still_taken() -> None:
    assert orchestrator(HTTP_PORT="08080", QUEUE_LIMIT=" 12 ").http_port == 8080
    assert engine(DRAIN_GRACE="1e1").drain_grace == 10.0
    assert engine(DRAIN_GRACE=".5").drain_grace == 0.5
    assert orchestrator(EXECUTION_RETENTION="1.5h").execution_retention == 5400.0


# -- ports -----------------------------------------------------------------------------------


def test_one_port_for_http_and_grpc_is_refused_as_dagctl_up_refuses_it() -> None:
    # before: taken, and the second server failed as though another process held the port
    assert refusal(lambda: orchestrator(HTTP_PORT="9090", GRPC_PORT="9090")) == (
        "HTTP_PORT and GRPC_PORT are both 9090: the orchestrator needs two ports, "
        "set one of them to another"
    )
    assert refusal(lambda: orchestrator(HTTP_PORT="50051")).startswith(
        "HTTP_PORT and GRPC_PORT are both 50051"
    )
    assert orchestrator(HTTP_PORT="0", GRPC_PORT="0").http_port == 0  # each a free one


def test_one_port_for_grpc_and_metrics_is_refused_by_the_engine() -> None:
    assert refusal(lambda: engine(PORT="9100", METRICS_PORT="9100")) == (
        "METRICS_PORT and PORT are both 9100: the engine needs two ports, "
        "set one of them to another"
    )
    assert refusal(lambda: engine(METRICS_PORT="50051")).startswith("METRICS_PORT and PORT")
    assert engine(PORT="0", METRICS_PORT="9100").metrics_port == 9100


@pytest.mark.parametrize("mode", [{"DISCOVERY_MODE": "dns"}, {}, BASE])
def test_the_port_engines_are_reached_at_is_never_0(mode: dict[str, str]) -> None:
    # before: '0 (unused)', and DNS discovery listed every engine at port 0 for good
    assert refusal(lambda: Settings.from_env({**mode, "ENGINE_PORT": "0"})) == (
        "ENGINE_PORT must be a port number from 1 to 65535, got '0'"
    )
    assert Settings.from_env({**mode, "ENGINE_PORT": "1"}).engine_port == 1


# -- API_TOKEN -------------------------------------------------------------------------------


def test_an_api_token_gRPC_metadata_cannot_carry_is_refused_as_engine_token_is() -> None:
    # before: taken; dagctl refused to send it and every gRPC call with it failed
    assert refusal(lambda: orchestrator(API_TOKEN="tök")) == (
        "API_TOKEN: character 2 ('ö') cannot go in gRPC metadata, which holds printable "
        "ASCII only (secrets.token_urlsafe makes a fitting one)"
    )
    assert orchestrator(API_TOKEN="  s3cret-~!  ").api_token == "s3cret-~!"
    assert orchestrator(API_TOKEN="  ").api_token is None


# -- STATE_DB --------------------------------------------------------------------------------


def state_db_refusal(path: str) -> str:
    return refusal(lambda: orchestrator(STATE_DB=path))


def test_a_directory_as_the_state_database_is_refused_before_a_lock_is_made(
    tmp_path: Path,
) -> None:
    # before: exit 1 once the store opened it, and tmp_path.lock made beside it
    assert state_db_refusal(str(tmp_path)) == (
        f"STATE_DB must be a SQLite database file, got {str(tmp_path)!r}: it is a directory"
    )
    assert not Path(f"{tmp_path}.lock").exists()


def test_memory_and_devices_are_refused_as_the_state_database() -> None:
    assert state_db_refusal(":memory:").startswith(
        "STATE_DB must be a SQLite database file, got ':memory:': an in-memory database is "
        "not shared by the store's connections"
    )
    assert state_db_refusal("/dev/null") == (
        "STATE_DB must be a SQLite database file, got '/dev/null': it is a character device, "
        "not a file"
    )


def test_a_file_that_is_not_sqlite_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not sqlite\n")
    assert state_db_refusal(str(text)) == (
        f"STATE_DB must be a SQLite database file, got {str(text)!r}: it is another kind of "
        "file (it lacks SQLite's header), left as it was"
    )
    assert text.read_text() == "not sqlite\n"
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]  # no notes.txt.lock


def test_a_state_database_under_a_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("")
    path = tmp_path / "plain" / "sub" / "state.db"
    assert state_db_refusal(str(path)) == (
        f"STATE_DB must be a SQLite database file, got {str(path)!r}: "
        f"{tmp_path / 'plain'} is not a directory"
    )


def test_new_empty_and_sqlite_state_databases_are_taken(tmp_path: Path) -> None:
    import sqlite3

    missing = tmp_path / "not" / "yet" / "state.db"  # the store makes the directories
    assert orchestrator(STATE_DB=str(missing)).state_db == str(missing)
    assert not missing.parent.exists()  # reading the settings made nothing
    empty = tmp_path / "empty.db"
    empty.touch()
    assert orchestrator(STATE_DB=str(empty)).state_db == str(empty)
    real = tmp_path / "real.db"
    sqlite3.connect(real).execute("CREATE TABLE t (x)").connection.close()
    assert orchestrator(STATE_DB=str(real)).state_db == str(real)


# -- TRANSPORT_TYPE=local --------------------------------------------------------------------


def test_local_engines_take_the_engine_variables_that_shape_how_they_run() -> None:
    settings = Settings.from_env(
        {
            "TRANSPORT_TYPE": "local",
            "LOCAL_ENGINES": "2",
            "FOREACH_OUTPUT_BYTES": "200",
            "RUN_OUTPUT_BYTES": "5000",
            "LUA_WORKERS": "3",
            "LUA_INLINE": "false",
            "DRAIN_GRACE": "7",
            "CAPACITY": "4",
            "ENGINE_TOKEN": "t",
        }
    )
    servers = [server.settings for server in LocalEngines(settings)._servers]
    assert [(s.engine_id, s.host, s.port, s.metrics_port) for s in servers] == [
        ("local-0", "127.0.0.1", 0, None),
        ("local-1", "127.0.0.1", 0, None),
    ]
    # before: each had the engine's defaults, whatever these said
    for got in servers:
        assert (got.foreach_output_bytes, got.run_output_bytes) == (200, 5000)
        assert (got.lua_workers, got.lua_inline, got.drain_grace) == (3, False, 7.0)
        assert (got.capacity, got.engine_token) == (4, "t")


def test_local_engines_keep_their_defaults_and_engine_capacity_when_unset() -> None:
    for settings in (
        Settings.from_env({"TRANSPORT_TYPE": "local", "ENGINE_CAPACITY": "6"}),
        Settings(transport="local", engine_capacity=6),  # LocalCluster's, not from the env
    ):
        (first, _) = [server.settings for server in LocalEngines(settings)._servers]
        assert (first.capacity, first.lua_workers, first.drain_grace) == (6, 1, 5.0)
        assert (first.lua_inline, first.run_output_bytes) == (True, 48 * 1024 * 1024)


def test_local_engines_refuse_bad_engine_variables_too() -> None:
    assert refusal(
        lambda: Settings.from_env({"TRANSPORT_TYPE": "local", "LUA_WORKERS": "1000"})
    ) == ("LUA_WORKERS must be at most 256, got '1000'")
    assert Settings.from_env(BASE | {"LUA_WORKERS": "1000"}).local_engine is None  # unused


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DISCOVERY_MODE", "static"),
        ("DISCOVERY_MODE", "kubernetes"),
        ("ENGINE_ADDRESSES", "10.9.9.9:50051"),
        ("ENGINE_DNS_NAME", "engines.example"),
    ],
)
def test_where_to_find_engines_is_refused_with_local_engines(name: str, value: str) -> None:
    # before: ignored, the local engines serving whatever these said
    assert refusal(lambda: Settings.from_env({"TRANSPORT_TYPE": "local", name: value})) == (
        f"{name} is for engines found over the network: TRANSPORT_TYPE=local runs its own "
        "(LOCAL_ENGINES) inside this process; unset one or the other"
    )


# -- dagctl up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["local", "LOCAL", " local "])
def test_up_refuses_transport_local_at_once(value: str, tmp_path: Path) -> None:
    # before: its orchestrator ran engines of its own, and up waited a minute for its engines
    assert up_refusal({"TRANSPORT_TYPE": value}, tmp_path) == (
        "TRANSPORT_TYPE=local: dagctl up starts its own engines: unset TRANSPORT_TYPE, or run "
        "`python -m orchestrator` for in-process engines"
    )
    assert plan({"TRANSPORT_TYPE": "grpc"}, engines=1, python="py", base_dir=tmp_path)


@pytest.mark.parametrize("value", ["abc", "70000", "off", "-1", "9_100"])
def test_up_reads_metrics_port_as_the_engine_does(value: str, tmp_path: Path) -> None:
    # before: anything but '' and '0' was on
    assert up_refusal({"METRICS_PORT": value}, tmp_path) == (
        f"METRICS_PORT must be a port number from 0 (off) to 65535, got {value!r}"
    )


def test_up_gives_each_engine_a_metrics_port_only_when_asked(tmp_path: Path) -> None:
    def metrics(environ: dict[str, str]) -> tuple[int | None, ...]:
        layout = plan(environ, engines=2, python="py", base_dir=tmp_path, pick_port=ports())
        return layout.engine_metrics

    assert metrics({}) == metrics({"METRICS_PORT": "0"}) == metrics({"METRICS_PORT": " "})
    assert metrics({}) == (None, None)
    assert None not in metrics({"METRICS_PORT": "9100"})


def test_up_reads_its_ports_as_the_orchestrator_does(tmp_path: Path) -> None:
    # before: int() took 1_000 as 1000, and the orchestrator got '1000'
    assert up_refusal({"HTTP_PORT": "1_000"}, tmp_path) == (
        "HTTP_PORT must be a port number from 0 (any free port) to 65535, got '1_000'"
    )


@pytest.mark.parametrize(
    ("state_db", "problem"),
    [
        ("a-dir", "got 'a-dir': it is a directory"),
        (":memory:", "got ':memory:': an in-memory database is not shared"),
    ],
)
def test_up_refuses_a_state_database_the_orchestrator_would_refuse(
    state_db: str, problem: str, tmp_path: Path
) -> None:
    (tmp_path / "a-dir").mkdir()
    out, err = io.StringIO(), io.StringIO()
    code = run_up(
        # ports of this suite's range, looked at (connected to) and never listened on
        {"STATE_DB": state_db, "HTTP_PORT": "25101", "GRPC_PORT": "25102"},
        server="http://127.0.0.1:25101",
        token=None,
        engines=1,
        examples=False,
        python="/nonexistent/python",  # nothing is started
        cwd=tmp_path,
        out=out,
        err=err,
    )
    # before: up started its orchestrator, which failed opening the store (exit 1)
    assert code == 2
    assert err.getvalue().startswith(f"dagctl: STATE_DB must be a SQLite database file, {problem}")
    assert len(err.getvalue().splitlines()) == 1
    assert out.getvalue() == ""
    assert os.listdir(tmp_path) == ["a-dir"]  # no lock, no logs


# -- KUBECONFIG ------------------------------------------------------------------------------


def kubeconfig_refusal(path: Path) -> str:
    from orchestrator.discovery_kubernetes import check_settings

    return refusal(lambda: check_settings(Settings(in_cluster_config=False, kubeconfig=str(path))))


def test_a_kubeconfig_that_is_a_directory_is_said_to_be_one(tmp_path: Path) -> None:
    # before: 'no such file'
    assert kubeconfig_refusal(tmp_path) == (
        f"IN_CLUSTER_CONFIG=false: cannot read the kubeconfig {tmp_path} (KUBECONFIG): "
        "it is a directory"
    )


@pytest.mark.parametrize(
    ("content", "after"),
    [
        ("a-host-name\n", ""),
        ("", ""),
        ("- a\n- b\n", ""),
        ("a: [\n", ": expected the node content, but found '<stream end>' at line 2"),
    ],
)
def test_a_kubeconfig_that_is_no_yaml_mapping_is_said_to_be_none(
    content: str, after: str, tmp_path: Path
) -> None:
    # before: "'str' object does not support item assignment", or a YAML traceback
    path = tmp_path / "config"
    path.write_text(content)
    assert kubeconfig_refusal(path) == (
        f"IN_CLUSTER_CONFIG=false: cannot read the kubeconfig {path} (KUBECONFIG): "
        f"it is not a kubeconfig (a YAML mapping){after}"
    )


def test_a_kubeconfig_that_is_no_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)  # a read would wait for a writer for ever
    assert kubeconfig_refusal(pipe).endswith("(KUBECONFIG): it is not a regular file")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        assert kubeconfig_refusal(tmp_path / "sock").endswith("it is not a regular file")
