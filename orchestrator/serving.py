"""``python -m orchestrator``: build the parts from the settings, serve, and stop cleanly.

Start-up order matters for the no-loss promise: the store opens and the registry loads before
any port listens, and executions left unfinished by a previous process are queued again
before new ones are accepted. On SIGTERM the servers stop taking requests first; runs in flight
stay ``running`` in the store and resume, from their checkpoints, when an orchestrator starts.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import grpc
from aiohttp import web

from engine import wire
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.core.envparse import any_address, bare_host, host_port, loopback_host
from engine.logformat import configure_logging
from engine.settings import STOP_SIGNALS, listen_problem, refusal_line, take_held_stop_signal
from orchestrator.connections import (
    AcceptFailures,
    CappedSite,
    connection_cap,
    raise_fd_limit,
)
from orchestrator.discovery import Discovery, DnsDiscovery, StaticDiscovery
from orchestrator.dispatching import Dispatcher
from orchestrator.errors import StoreUnavailable
from orchestrator.fleet import Fleet
from orchestrator.lua_checking import LuaSyntaxChecker
from orchestrator.metrics import Metrics
from orchestrator.monitoring import Hub
from orchestrator.orchestrating import Orchestrator
from orchestrator.retention import Retention
from orchestrator.ring import make_balancer
from orchestrator.serving_grpc import (
    OrchestratorService,
    calls_left_behind,
    unparsed_request_status,
)
from orchestrator.serving_http import PARSER_LINE_BYTES, HttpApi, MalformedRequests
from orchestrator.settings import Settings, SettingsError
from orchestrator.store import StateDamaged, StateReadOnly, Store
from orchestrator.subworkflows import SubWorkflows
from orchestrator.tls import ServerTls, server_tls
from orchestrator.triggering import Triggers
from orchestrator.versions import Registry

if TYPE_CHECKING:  # the Lua runtime loads only when engines run in this process
    from orchestrator.local import LocalEngines

log = logging.getLogger(__name__)

ORCHESTRATOR_SERVICE = "dagengine.v1.Orchestrator"
_STOP_GRACE = 5.0
_KEEPALIVE = 75.0
HEADER_FIELD_BYTES = 16 * 1024
"""Longest header value the parser takes: past the API's own 8190 (which it refuses naming the
header and the limit), the parser answers with its plain 400."""
MAX_HEADERS = 32
_HEALTH_EVERY = 2.0
"""Seconds between the gRPC health's looks at readiness (what ``/readyz`` answers)."""
_RESTART_FIRST, _RESTART_MAX = 1.0, 30.0
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
"""What binding ``::`` fails with on a machine without IPv6 (a kernel without it, or with it
turned off): HTTP is then served over IPv4 alone, as gRPC does."""


def make_discovery(settings: Settings) -> Discovery:
    if settings.discovery_mode == "static":
        return StaticDiscovery(settings.engine_addresses)
    if settings.discovery_mode == "dns":
        assert settings.engine_dns_name is not None
        return DnsDiscovery(
            settings.engine_dns_name, settings.engine_port, settings.discovery_interval
        )
    # imported here: the kubernetes client takes half a second to load, and only this mode uses it
    from orchestrator.discovery_kubernetes import KubernetesDiscovery, check_settings

    check_settings(settings)
    return KubernetesDiscovery(settings)


@asynccontextmanager
async def running_orchestrator(
    settings: Settings, discovery: Discovery
) -> AsyncIterator[Orchestrator]:
    """The orchestrator's parts, started in order and stopped in reverse.

    The store opens and unfinished executions are queued again before the caller gets the
    facade, so nothing can be accepted before what was already accepted is taken up.
    """
    store = await Store.open(settings.state_db)
    checker = LuaSyntaxChecker()
    orch: Orchestrator
    dispatcher: Dispatcher
    fleet: Fleet
    metrics = Metrics(lambda: fleet.describe(), lambda: dispatcher.queue_depth)
    hub = Hub(on_drop=metrics.dropped)
    fleet = Fleet(
        make_balancer(settings.load_balancer),
        default_capacity=settings.engine_capacity,
        health_interval=settings.health_check_interval,
        publish=lambda event: orch.publish([event]),
        on_capacity=lambda: dispatcher.pump(),
        on_lost=lambda link: dispatcher.engine_lost(link),
        discovery_trouble=discovery.trouble,
        engine_token=settings.engine_token,
        engine_tls=settings.engine_tls,
    )
    orch = Orchestrator(
        store=store,
        registry=Registry(max_subworkflow_depth=settings.max_subworkflow_depth),
        fleet=fleet,
        hub=hub,
        metrics=metrics,
        lua_checker=checker,
        queue_limit=settings.queue_limit,
        queue_limit_per_workflow=settings.queue_limit_per_workflow,
        max_subworkflow_depth=settings.max_subworkflow_depth,
    )
    subworkflows: SubWorkflows
    dispatcher = Dispatcher(
        store,
        fleet,
        publish=orch.publish,
        on_finished=orch.finished,
        on_events=lambda ticket, link, events: subworkflows.on_events(ticket, link, events),
        refusal=orch.stored_refusal,
    )
    subworkflows = SubWorkflows(
        store,
        dispatcher,
        start_child=orch.start_child,
        cancel=orch.cancel_run,  # no document wanted back: a large child's is not folded
        has_subworkflows=orch.has_subworkflows,
    )
    orch.attach(dispatcher, subworkflows)
    loop = asyncio.get_running_loop()
    background: list[asyncio.Task[None]] = []
    triggers: Triggers | None = None
    try:
        await orch.start()
        # after the unfinished runs are queued again: a catch-up fire queues behind them
        triggers = Triggers(
            orch,
            environ=settings.environ,
            api_token=settings.api_token,
            catchup_limit=settings.trigger_catchup_limit,
        )
        orch.triggers = triggers
        await triggers.start()
        background.append(
            loop.create_task(kept_running("engine discovery", lambda: discovery.run(fleet.update)))
        )
        background.append(loop.create_task(kept_running("engine health checks", fleet.run)))
        background.append(
            loop.create_task(kept_running("removing deleted workflows", orch.purge_deleted))
        )
        if settings.execution_retention > 0:
            retention = Retention(store, settings.execution_retention)
            background.append(loop.create_task(kept_running("retention sweeps", retention.run)))
        yield orch
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if triggers is not None:
            await triggers.stop()
        await subworkflows.close()
        await dispatcher.close()
        await fleet.close()
        await store.close()
        checker.close()


async def kept_running(
    what: str,
    loop_forever: Callable[[], Coroutine[object, object, None]],
    *,
    first_delay: float = _RESTART_FIRST,
) -> None:
    """Run a loop that should never end, and start it again, with a backoff, whenever it does.

    Discovery and health checks run unobserved in the background: one uncaught exception
    would otherwise stop the fleet from ever learning of an engine again, without a word.
    """
    delay = first_delay
    while True:
        try:
            await loop_forever()
            log.error("%s stopped on its own; starting it again in %.1fs", what, delay)
        except Exception:
            log.exception("%s failed; starting it again in %.1fs", what, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, _RESTART_MAX)


async def serve(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT; returns the exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # first: a signal in the rest of the start-up (Kubernetes discovery's client, the store)
    # stops the orchestrator as soon as it can, and one held back since __main__ at once
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        early = take_held_stop_signal()
        if early is not None:
            log.info("%s received while starting: stopping without serving", early.name)
            return 0
        return await _start(settings, stop)
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _start(settings: Settings, stop: asyncio.Event) -> int:
    """Start the parts, serve until ``stop`` is set, and return the exit status."""
    local: LocalEngines | None = None
    try:
        tls = server_tls(settings)
        if settings.transport == "local":
            from orchestrator.local import LocalEngines

            local = LocalEngines(settings)
            # the engines' token (ENGINE_TOKEN, or one made for them): the client's too
            settings = local.settings
            await local.start()
            discovery: Discovery = StaticDiscovery(local.addresses)
        else:
            discovery = make_discovery(settings)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot start the local engines: %s", exc)
        return 1
    try:
        async with running_orchestrator(settings, discovery) as orch:
            # This process is the orchestrator's alone (not so for LocalCluster): what is alive
            # now (registry, specs, settings) lives as long as it, so keep it out of the
            # collector's scans and collect young objects less often. Each run makes
            # short-lived dicts by the thousand, and collections were ~11% of the loop; at
            # 10,000 a burst's runs in flight (their tasks, coroutines, futures) were still
            # alive at most collections and were traversed again and again: at 100,000 most
            # of what a collection finds is dead already (bench/whole_system.py: ~5% less
            # orchestrator CPU per execution; a few MB more young objects at a time).
            gc.freeze()
            gc.set_threshold(100_000, 10, 10)
            return await _serve_apis(settings, orch, stop, tls)
    except (StateDamaged, StateReadOnly) as exc:
        # as a setting refused: starting again changes nothing until someone acts on the file
        log.error("%s", exc)
        return 2
    except (sqlite3.Error, StoreUnavailable) as exc:
        # a write at start (the open's write test, taking up the runs left) waited out the
        # busy timeout: another program holds the file's write lock
        cause = exc.__cause__ if isinstance(exc, StoreUnavailable) else exc
        code = getattr(cause, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            log.error(
                "STATE_DB %s is locked by another process (a sqlite3 shell, a VACUUM?): %s",
                settings.state_db,
                cause,
            )
        else:
            log.error("cannot open the state database %s: %s", settings.state_db, exc)
        return 1
    except (RuntimeError, OSError) as exc:
        log.error("cannot open the state database %s: %s", settings.state_db, exc)
        return 1
    finally:
        if local is not None:
            await local.stop()
        log.info("orchestrator stopped", extra={"event": "stopped"})


async def _serve_apis(
    settings: Settings, orch: Orchestrator, stop: asyncio.Event, tls: ServerTls | None
) -> int:
    if stop.is_set():
        # a signal came while the store opened: the runs taken up stay for the next start
        log.info("stopping before serving: a signal came during start-up")
        return 0
    # the file descriptors there are, and the HTTP connections that leaves room for
    cap = connection_cap(settings.max_connections, raise_fd_limit())
    runner = web.AppRunner(
        HttpApi(
            orch,
            token=settings.api_token,
            max_body=settings.max_body_bytes,
            triggers=_triggers_of(orch),
        ).app(),
        access_log=None,
        max_line_size=PARSER_LINE_BYTES,
        # a request part-way through its headers holds up to max_headers x max_field_size
        # bytes: 512 KiB, with MAX_CONNECTIONS of them at most (aiohttp's 128 x 64 KiB let 60
        # connections that never finish their headers take a gigabyte)
        max_field_size=HEADER_FIELD_BYTES,
        max_headers=MAX_HEADERS,
        # an idle keep-alive connection is closed after this (aiohttp keeps one an hour)
        keepalive_timeout=_KEEPALIVE,
        # requests still open when stopping get this long (aiohttp's default is a minute,
        # past the pod's termination grace)
        shutdown_timeout=_STOP_GRACE,
    )
    await runner.setup()
    server = grpc.aio.server(
        interceptors=[wire.DecodeRequests(unparsed_request_status)],
        options=[
            ("grpc.so_reuseport", 0),
            # HTTP's body limit, with room for the other fields of a request
            ("grpc.max_receive_message_length", settings.max_body_bytes + 64 * 1024),
            # a watcher whose machine vanished (no FIN, no RST) would keep its stream, and its
            # place among the live streams, until TCP gave up hours later: a ping unanswered
            # for 20 s ends it, also on a stream quiet for long
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            # the wait gRPC applies to a ping's answer, the keepalive's included (a minute
            # unless set: keepalive_timeout_ms alone does not shorten it)
            ("grpc.http2.ping_timeout_ms", 20_000),
            ("grpc.http2.max_pings_without_data", 0),
        ],
    )
    following: asyncio.Future[None] | None = None
    try:
        try:
            http_port = await _listen_http(runner, settings, tls, cap)
        except OSError as exc:
            log.error(
                "cannot listen on %s (HOST, HTTP_PORT): %s",
                host_port(settings.host, settings.http_port),
                listen_problem(settings.host, settings.http_port, exc),
            )
            return 1
        pb_grpc.add_OrchestratorServicer_to_server(
            OrchestratorService(orch, token=settings.api_token, triggers=_triggers_of(orch)),
            server,
        )
        health = await wire.add_health_and_reflection(server, ORCHESTRATOR_SERVICE)
        # gRPC takes an IPv6 address in brackets, and [::] as every interface over both families
        address = host_port(settings.host, settings.grpc_port)
        try:
            grpc_port = (
                server.add_secure_port(address, tls.grpc)
                if tls is not None
                else server.add_insecure_port(address)
            )
        except RuntimeError:
            # gRPC's own words name no reason, and point to a plain-text line outside the log
            log.error(
                "cannot listen on %s (HOST, GRPC_PORT): %s",
                address,
                listen_problem(settings.host, settings.grpc_port),
            )
            return 1
        await server.start()
        following = asyncio.ensure_future(
            wire.follow_health(health, ORCHESTRATOR_SERVICE, _trouble(orch), _HEALTH_EVERY, log)
        )
        security = "plain" if tls is None else ("mutual TLS" if tls.mutual else "TLS")
        log.info(
            "orchestrator serving HTTP on port %s and gRPC on port %s, %s (state %s)",
            http_port,
            grpc_port,
            security,
            settings.state_db,
            extra={
                "event": "serving",
                "http_port": http_port,
                "grpc_port": grpc_port,
                "security": security,
            },
        )
        if open_to_others(settings):
            log.warning(
                "API_TOKEN is not set: anyone who can reach port %s or %s can register, run"
                " and cancel workflows and read their inputs and outputs",
                http_port,
                grpc_port,
                extra={"event": "api_open"},
            )
        await stop.wait()
        log.info("stopping: no new requests; unfinished runs resume at the next start")
        await health.enter_graceful_shutdown()
        orch.hub.close_all()  # live event streams end now instead of holding the stop
        orch.release_waiters()  # callers waiting on runs get them as they stand (202)
        return 0
    finally:
        if following is not None:
            following.cancel()
        await runner.cleanup()
        await server.stop(_STOP_GRACE)
        # what callers that left had begun ends before the store closes under it
        await calls_left_behind(_STOP_GRACE)
        await orch.stores_settled(_STOP_GRACE)


async def _listen_http(
    runner: web.AppRunner, settings: Settings, tls: ServerTls | None, cap: int
) -> int:
    """Listen for HTTP where HOST says, and return the port (the one picked, for port 0).

    aiohttp takes an IPv6 address without brackets, and binds ``::`` for IPv6 alone (asyncio
    turns dual-stack off): every interface is then two listeners, IPv4 and IPv6 on one port,
    as gRPC serves [::]. Without them an IPv6-only cluster's kubelet could not probe
    ``/healthz``. The connection cap counts both together (they share the runner's server)."""
    hosts = ("0.0.0.0", "::") if any_address(settings.host) else (bare_host(settings.host),)
    port = settings.http_port
    for index, host in enumerate(hosts):
        site = CappedSite(runner, host, port, ssl_context=tls.http if tls else None, limit=cap)
        try:
            await site.start()
        except OSError as exc:
            if index > 0 and exc.errno in _NO_IPV6:
                log.info("no IPv6 on this machine: HTTP is served over IPv4 only")
                break
            raise
        if index == 0:
            port = _bound_port(site)  # the IPv6 listener takes the port the first one got
    return port


def _trouble(orch: Orchestrator) -> Callable[[], Coroutine[None, None, str | None]]:
    """What keeps the orchestrator from being ready, as ``/readyz`` says it, or None."""

    async def trouble() -> str | None:
        ready, reason = await orch.readiness()
        return None if ready else reason

    return trouble


def _triggers_of(orch: Orchestrator) -> Triggers | None:
    return orch.triggers if isinstance(orch.triggers, Triggers) else None


def open_to_others(settings: Settings) -> bool:
    """The API has no token and listens beyond this machine. Open by choice on a laptop; said
    out loud elsewhere, since a spec's hook auth guards only its hook, not the API that
    registers and runs workflows."""
    return settings.api_token is None and not loopback_host(settings.host)


def _bound_port(site: web.TCPSite) -> int:
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    return int(sockets[0].getsockname()[1]) if sockets else 0


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(refusal_line(exc, os.environ, "orchestrator.settings"), file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    logging.getLogger("aiohttp.server").addFilter(MalformedRequests())
    logging.getLogger("asyncio").addFilter(AcceptFailures())
    return asyncio.run(serve(settings))
