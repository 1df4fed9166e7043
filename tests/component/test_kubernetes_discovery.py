"""Kubernetes discovery with the real ``kubernetes`` client against a fake API server over HTTP.

The fake (tests/fakes/kube_api.py) speaks list and watch with resourceVersions, bookmarks,
410 Gone, 403 and dropped connections; the client reaches it through a generated kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import config as k8s_config

from engine.api import dagengine_pb2 as pb
from orchestrator import discovery_kubernetes
from orchestrator.discovery import EngineHint
from orchestrator.discovery_kubernetes import (
    ApiUnreachable,
    KubernetesApiError,
    KubernetesDiscovery,
    check_settings,
)
from orchestrator.fleet import Fleet
from orchestrator.ring import make_balancer
from orchestrator.settings import Settings, SettingsError
from tests.component.discovery_helpers import settings_for
from tests.fakes.kube_api import PODS, SLICES, FakeKubeApi, _status, endpoint_slice, engine_pod

DEADLINE = 5.0  # generous for a loaded machine; changes normally arrive in milliseconds


class Sink:
    """What discovery reported last, and a way to wait for a condition on it."""

    def __init__(self) -> None:
        self.reports: list[tuple[set[str], dict[str, EngineHint]]] = []
        self._changed = asyncio.Event()

    def __call__(
        self, addresses: set[str], /, hints: Mapping[str, EngineHint] | None = None
    ) -> None:
        self.reports.append((set(addresses), dict(hints or {})))
        self._changed.set()

    @property
    def addresses(self) -> set[str] | None:
        return self.reports[-1][0] if self.reports else None

    @property
    def hints(self) -> dict[str, EngineHint]:
        return self.reports[-1][1] if self.reports else {}

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while not predicate():
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"not within {DEADLINE}s: {what}; last report: {self.reports[-1:]}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@asynccontextmanager
async def discovering(
    settings: Settings,
    caplog: pytest.LogCaptureFixture | None = None,
    *,
    level: int = logging.INFO,
    backoff_max: float | None = None,
) -> AsyncIterator[tuple[KubernetesDiscovery, Sink, asyncio.Task[None]]]:
    """Discovery running into a Sink, past its first report, until the block ends.

    With ``caplog``, discovery's records at ``level`` and up are captured all the while.
    """
    sink = Sink()
    discovery = (
        KubernetesDiscovery(settings)
        if backoff_max is None
        else KubernetesDiscovery(settings, backoff_max=backoff_max)
    )
    capturing = (
        caplog.at_level(level, logger="orchestrator.discovery_kubernetes")
        if caplog is not None
        else nullcontext()
    )
    with capturing:
        task = asyncio.create_task(discovery.run(sink))
        await sink.until(lambda: sink.addresses is not None, "a first report")
        try:
            yield discovery, sink, task
        finally:
            await stop(task)


async def test_endpoint_slices_list_then_watch_follow_scaling(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.put(SLICES, endpoint_slice("engines-a", [("10.0.0.1", True), ("10.0.0.2", False)], 50051))
    # another Service's slice and another namespace's are not ours
    fake.put(SLICES, endpoint_slice("other", [("10.9.9.9", True)], 50051, service="other"))
    fake.put(SLICES, endpoint_slice("elsewhere", [("10.8.8.8", True)], 50051, namespace="x"))
    async with discovering(settings_for(fake, tmp_path)) as (discovery, sink, _):
        assert sink.addresses == {"10.0.0.1:50051"}  # the not-ready endpoint is left out
        list_query = fake.requests[0][1]
        assert list_query["labelSelector"] == "kubernetes.io/service-name=workflow-engines"
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        watch_query = fake.requests[-1][1]
        assert watch_query["watch"] == "true"
        assert watch_query["allowWatchBookmarks"] == "true"
        assert watch_query["resourceVersion"] == list_query.get("resourceVersion", "1003")

        # what follows arrives by the watch alone: one list in all (asserted at the end),
        # with a resync interval far longer than the test
        fake.put(
            SLICES,
            endpoint_slice(
                "engines-a", [("10.0.0.1", True), ("10.0.0.2", True), ("10.0.0.3", True)], 50051
            ),
        )
        await sink.until(lambda: sink.addresses == {f"10.0.0.{i}:50051" for i in (1, 2, 3)}, "up")
        fake.put(SLICES, endpoint_slice("engines-b", [("10.0.1.1", True)], 50051))
        await sink.until(lambda: sink.addresses is not None and len(sink.addresses) == 4, "b")
        fake.delete(SLICES, "engines-a")
        await sink.until(lambda: sink.addresses == {"10.0.1.1:50051"}, "down")
        assert sink.hints["10.0.1.1:50051"].pod == "engine-0"
        assert discovery.lists == 1


async def test_a_bookmark_advances_the_resource_version_watched_from(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path)) as (discovery, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        listed_at = discovery.resource_version
        fake.bookmark()
        await sink.until(lambda: discovery.resource_version == str(fake.version), "bookmark")
        assert discovery.resource_version != listed_at
        reports = len(sink.reports)
        # a bookmark changes no engine, and the next watch starts from it
        fake.drop_watches()
        await sink.until(lambda: fake.watch_count() == 1, "a rewatch")
        assert fake.requests[-1][1]["resourceVersion"] == str(fake.version)
        assert len(sink.reports) == reports
        assert discovery.lists == 1


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_leads_to_a_fresh_list(
    fake: FakeKubeApi, tmp_path: Path, as_http: bool
) -> None:
    fake.gone_as_http = as_http
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path)) as (discovery, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        # the connection breaks, and while it is down history is compacted past our version
        fake.drop_watches()
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        fake.compact()
        await sink.until(lambda: discovery.lists == 2, "a relist after 410")
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "the relisted engines")
        await sink.until(lambda: fake.watch_count() == 1, "a watch after the relist")
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.3", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.3:50051"}, "watching again")


async def test_a_dropped_watch_reconnects_from_where_it_was_without_relisting(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path)) as (discovery, sink, _):
        for n in (2, 3):
            await sink.until(lambda: fake.watch_count() == 1, "a watch")
            fake.drop_watches()
            # changed while no watch is open: replayed from history by the rewatch
            fake.put(SLICES, endpoint_slice("engines", [(f"10.0.0.{n}", True)], 50051))
            await sink.until(lambda n=n: sink.addresses == {f"10.0.0.{n}:50051"}, "rewatched")  # type: ignore[misc]
        assert discovery.lists == 1


async def test_a_full_resync_every_interval(fake: FakeKubeApi, tmp_path: Path) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path, discovery_interval=1.0)
    async with discovering(settings) as (discovery, sink, _):
        await sink.until(lambda: discovery.lists >= 2, "a second list after the interval")
        assert sink.addresses == {"10.0.0.1:50051"}


async def test_pod_mode_honours_annotations_and_leaves_out_pods_not_ready(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(
        PODS,
        engine_pod(
            "engine-0",
            "10.1.0.1",
            annotations={"workflow-engine/port": "7000", "workflow-engine/capacity": "4"},
            labels={"engine-id": "alpha"},
        ),
    )
    fake.put(PODS, engine_pod("engine-1", "10.1.0.2"))
    fake.put(PODS, engine_pod("engine-2", "10.1.0.3", ready=False))
    fake.put(PODS, engine_pod("engine-3", "10.1.0.4", phase="Pending", ready=False))
    fake.put(PODS, engine_pod("engine-4", "10.1.0.5", annotations={"workflow-engine/port": "x"}))
    not_engine = engine_pod("web", "10.1.0.9")
    not_engine["metadata"]["labels"] = {"app": "web"}
    fake.put(PODS, not_engine)
    settings = settings_for(fake, tmp_path, k8s_discovery_source="pods", engine_port=50051)
    async with discovering(settings, caplog, level=logging.WARNING) as (_, sink, _):
        assert fake.requests[0] == (PODS, {"labelSelector": "app=workflow-engine"})
        assert sink.addresses == {"10.1.0.1:7000", "10.1.0.2:50051", "10.1.0.5:50051"}
        assert sink.hints["10.1.0.1:7000"] == EngineHint(
            pod="engine-0", capacity=4, engine_id="alpha"
        )
        assert sink.hints["10.1.0.2:50051"].capacity is None
        # the pod turns ready: it joins through the watch
        fake.put(PODS, engine_pod("engine-2", "10.1.0.3"))
        await sink.until(lambda: "10.1.0.3:50051" in (sink.addresses or ()), "ready pod")
        # a terminating pod leaves at once, before its readiness probe fails
        gone = engine_pod("engine-1", "10.1.0.2")
        gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        fake.put(PODS, gone)
        await sink.until(lambda: "10.1.0.2:50051" not in (sink.addresses or ()), "leaving")
    warnings = [r.getMessage() for r in caplog.records if "workflow-engine/port" in r.getMessage()]
    assert warnings == [
        "pod engine-4: annotation workflow-engine/port must be an integer from 1 to 65535,"
        " got 'x'; using the default"
    ]


async def test_403_is_reported_once_and_the_last_engines_stay(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (_, sink, task):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        reports = len(sink.reports)
        fake.forbidden = True
        fake.drop_watches()
        requests = len(fake.requests)
        await sink.until(lambda: len(fake.requests) >= requests + 4, "several refusals")
        assert not task.done()  # no library error got out
        assert len(sink.reports) == reports  # nothing reported: the fleet keeps what it has
        refused = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refused) == 1
        message = refused[0].getMessage()
        assert "Kubernetes API refused discovery" in message
        assert "HTTP 403" in message
        assert "needs list and watch on endpointslices.discovery.k8s.io" in message
        assert "keeping the 1 engines known" in message

        fake.forbidden = False
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "allowed again")
        # the outage ends when a watch delivers, which follows the list
        await sink.until(
            lambda: any("answering again" in r.getMessage() for r in caplog.records),
            "the recovery logged",
        )


async def test_a_watch_refused_while_the_list_is_allowed_is_reported_once(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a Role with list but not watch: every list succeeds, every watch is a 403
    fake.forbidden_watch = True
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, task):
        assert sink.addresses == {"10.0.0.1:50051"}  # the list alone still finds engines
        await sink.until(lambda: watches(fake) >= 4 and discovery.lists >= 4, "several retries")
        assert not task.done()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1, errors
        assert "HTTP 403" in errors[0] and "watching endpointslices" in errors[0]
        # a successful list is no recovery while the watch is still refused
        assert not [r for r in caplog.records if "answering again" in r.getMessage()]

        fake.forbidden_watch = False
        await sink.until(lambda: fake.watch_count() == 1, "a watch once allowed")
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "by the watch")
        recovered = [r for r in caplog.records if "answering again" in r.getMessage()]
        assert len(recovered) == 1


async def test_a_401_names_the_credentials_not_rbac(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (_, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        reports = len(sink.reports)
        fake.unauthorized = True  # the token expired, say
        fake.drop_watches()
        requests = len(fake.requests)
        await sink.until(lambda: len(fake.requests) >= requests + 4, "several rejections")
        assert len(sink.reports) == reports  # the fleet keeps what it has
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        message = errors[0].getMessage()
        assert "rejected the orchestrator's credentials" in message
        assert "HTTP 401" in message
        assert f"kubeconfig {settings.kubeconfig}" in message
        assert "expired" in message
        assert "ServiceAccount needs" not in message  # RBAC advice would mislead here
        assert errors[0].__dict__["event"] == "discovery.unauthorized"
        assert "keeping the 1 engines known" in message

        fake.unauthorized = False
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "accepted again")


async def test_an_unreachable_api_server_is_reported_once_and_reconnected(
    fake: FakeKubeApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path), caplog, backoff_max=0.2) as (
        discovery,
        sink,
        _,
    ):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        reports = len(sink.reports)
        # a stopped fake counts no requests: the failures discovery meets are counted instead
        failures: list[KubernetesApiError] = []
        meet = discovery._trouble

        def met(exc: KubernetesApiError) -> None:
            failures.append(exc)
            meet(exc)

        monkeypatch.setattr(discovery, "_trouble", met)
        await fake.stop()
        await sink.until(lambda: len(failures) >= 3, "several reconnection attempts")
        assert all(isinstance(exc, ApiUnreachable) for exc in failures), failures
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "Kubernetes API unreachable" in errors[0].getMessage()
        assert len(sink.reports) == reports
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await fake.start()  # same port
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "back")


def test_settings_that_can_never_connect_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        check_settings(Settings(in_cluster_config=True))
    # off a cluster with nothing set, the setting to change is named first, with the ways out
    said = str(caught.value)
    assert said.startswith("DISCOVERY_MODE=kubernetes (the default) with IN_CLUSTER_CONFIG=true")
    assert "not a Kubernetes pod" in said
    assert "IN_CLUSTER_CONFIG=false" in said and "DISCOVERY_MODE=static" in said
    with pytest.raises(SettingsError, match=r"^DISCOVERY_MODE=kubernetes with IN_CLUSTER_CONF"):
        check_settings(Settings(in_cluster_config=True, environ={"DISCOVERY_MODE": "kubernetes"}))
    missing = tmp_path / "nope"
    with pytest.raises(SettingsError, match=r"^IN_CLUSTER_CONFIG=false: cannot read the kube"):
        check_settings(Settings(in_cluster_config=False, kubeconfig=str(missing)))


async def test_the_fleet_caps_an_engines_capacity_at_its_annotation() -> None:
    fleet = Fleet(
        make_balancer("consistent-hash"),
        default_capacity=10,
        health_interval=60.0,
        publish=lambda event: None,
        on_capacity=lambda: None,
        on_lost=lambda link: None,
    )
    address = "127.0.0.1:9"  # nothing listens: the link stays joining, which is all we need
    try:
        fleet.update({address}, {address: EngineHint(pod="p", capacity=4, engine_id="alpha")})
        link = fleet.links[address]
        assert (link.capacity, link.key) == (4, "alpha")
        fleet._learn(link, pb.EngineInfo(engine_id="alpha", capacity=16))
        assert link.capacity == 4  # the engine could take 16; the operator said 4
        fleet.update({address}, {address: EngineHint(pod="p", capacity=None)})
        assert link.capacity == 16
        fleet.update({address}, {address: EngineHint(pod="p", capacity=2)})
        assert link.capacity == 2
        fleet.update(set())
        assert fleet.links == {}
    finally:
        await fleet.close()


def watches(fake: FakeKubeApi) -> int:
    return sum(1 for _, query in fake.requests if query.get("watch") == "true")


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
async def test_a_lasting_410_relists_with_backoff_and_is_logged_once(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, as_http: bool
) -> None:
    fake.gone_as_http = as_http
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(
        settings_for(fake, tmp_path), caplog, level=logging.DEBUG, backoff_max=0.2
    ) as (discovery, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        logged = len(caplog.records)
        fake.lag_watch_cache()  # every watch is a 410, even right after a fresh list
        fake.drop_watches()
        requests = len(fake.requests)
        started = time.monotonic()
        await sink.until(lambda: len(fake.requests) - requests >= 8, "eight requests")
        # a busy loop made thousands a second; backing off, the requests come a list and its
        # watch at a time, 0.2 s apart (0.16 s at the least, with jitter): eight take three
        # of those waits at the least
        assert time.monotonic() - started >= 3 * 0.16
        assert discovery.lists >= 3  # it keeps trying all the same
        episode = [r.getMessage() for r in caplog.records[logged:] if r.levelno >= logging.INFO]
        loud = [m for m in episode if not m.startswith("rewatching")]  # the drop itself
        assert len(loud) == 1, loud
        assert "410" in loud[0] and "relisting with backoff" in loud[0]
        assert "410" in (discovery.trouble() or "")

        fake.compacted = 0
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "watching again")
        await sink.until(lambda: discovery.trouble() is None, "the episode over")


@pytest.mark.parametrize(
    "line",
    [b'{"type":"ERROR","object":"oops"}\n', b'{"type":"ADDED","object":[1]}\n', b"<html>\n"],
    ids=["error-not-a-status", "object-not-an-object", "not-json"],
)
async def test_a_malformed_watch_event_is_logged_once_and_discovery_goes_on(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture, line: bytes
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (_, sink, task):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        fake.watch_lines = [line]
        fake.drop_watches()
        before = watches(fake)
        await sink.until(lambda: watches(fake) >= before + 3, "several watches")
        assert not task.done()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1, errors
        assert repr(line[:20])[2:-1] in errors[0]  # names what came

        fake.watch_lines = None
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "watching again")


async def test_an_unexpected_failure_is_logged_once_with_its_traceback_and_retried(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, task):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        # valid JSON the pure part does not expect: a bug to survive, not a protocol error
        odd = endpoint_slice("odd", [("10.0.0.9", True)], 50051)
        odd["endpoints"] = "everywhere"
        fake.put(SLICES, odd)
        await sink.until(lambda: discovery.lists >= 3, "several relists")
        assert not task.done()
        errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1, [r.getMessage() for r in errors]
        assert "failed unexpectedly" in errors[0].getMessage()
        assert errors[0].exc_info is not None  # the traceback, to find the bug by
        assert discovery.clients >= 2  # a fresh client, in case the old one is the trouble

        fake.delete(SLICES, "odd")
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "going on")


async def test_credentials_that_cannot_be_loaded_at_refresh_are_retried_afresh(
    fake: FakeKubeApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_connect = discovery_kubernetes.connect
    connected: list[Any] = []

    async def connect(settings: Settings) -> Any:
        client = await real_connect(settings)
        if not connected:
            # what the in-cluster refresh hook raises on a token file caught empty
            def empty_token(configuration: Any) -> None:
                raise k8s_config.ConfigException("Token file exists but empty.")

            client.configuration.refresh_api_key_hook = empty_token
        connected.append(client)
        return client

    monkeypatch.setattr(discovery_kubernetes, "connect", connect)
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings_for(fake, tmp_path), caplog, backoff_max=0.2) as (_, sink, _):
        assert sink.addresses == {"10.0.0.1:50051"}
        assert len(connected) == 2
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and "cannot load the credentials" in errors[0], errors


async def test_a_401_loads_the_credentials_afresh(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.tokens = {"first"}
    settings = settings_for(fake, tmp_path)
    assert settings.kubeconfig is not None
    fake.write_kubeconfig(Path(settings.kubeconfig), token="first")
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    async with discovering(settings, caplog, backoff_max=0.2) as (_, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        # the token expires and a new one is issued (an exec plugin, a rotated file)
        fake.tokens = {"second"}
        fake.write_kubeconfig(Path(settings.kubeconfig), token="second")
        fake.drop_watches()
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "the new token used")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(errors) == 1 and "HTTP 401" in errors[0], errors


async def test_a_watch_accepted_then_failed_is_no_recovery(
    fake: FakeKubeApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    error = {"type": "ERROR", "object": _status(500, "InternalError", "watch chan error")}
    settings = settings_for(fake, tmp_path)
    async with discovering(settings, caplog, backoff_max=0.2) as (discovery, sink, _):
        await sink.until(lambda: fake.watch_count() == 1, "a watch")
        fake.watch_lines = [json.dumps(error).encode() + b"\n"]  # 200, then the ERROR
        fake.drop_watches()
        before = watches(fake)
        await sink.until(lambda: watches(fake) >= before + 4, "several watches")
        logged = [r.getMessage() for r in caplog.records if "rewatching" not in r.getMessage()]
        assert len(logged) == 1, logged
        assert "HTTP 500: watch chan error" in logged[0]

        fake.watch_lines = None
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.2", True)], 50051))
        await sink.until(lambda: sink.addresses == {"10.0.0.2:50051"}, "watching again")
        await sink.until(lambda: discovery.trouble() is None, "the recovery")
        recovered = [r for r in caplog.records if "answering again" in r.getMessage()]
        assert len(recovered) == 1


async def test_an_unreachable_api_at_start_is_trouble_to_show(
    fake: FakeKubeApi, tmp_path: Path
) -> None:
    settings = settings_for(fake, tmp_path)
    await fake.stop()
    sink = Sink()
    discovery = KubernetesDiscovery(settings, backoff_max=0.2)
    task = asyncio.create_task(discovery.run(sink))
    try:
        await sink.until(lambda: discovery.trouble() is not None, "trouble")
        trouble = discovery.trouble() or ""
        assert trouble.startswith("Kubernetes API unreachable: listing endpointslices"), trouble
        assert " (since 20" in trouble
        assert sink.addresses is None
        fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
        await fake.start()
        await sink.until(lambda: sink.addresses == {"10.0.0.1:50051"}, "reachable")
        await sink.until(lambda: discovery.trouble() is None, "no more trouble")
    finally:
        await stop(task)


@pytest.mark.parametrize(
    ("overrides", "what"),
    [
        (
            {"k8s_service_name": "workflow-engine"},
            "endpointslices with kubernetes.io/service-name=workflow-engine in namespace default",
        ),
        ({"k8s_namespace": "dag-engine"}, "in namespace dag-engine"),
        (
            {"k8s_discovery_source": "pods", "k8s_label_selector": "app=nothing"},
            "pods matching app=nothing in namespace default",
        ),
    ],
    ids=["service", "namespace", "selector"],
)
async def test_a_list_that_matches_nothing_is_warned_of_once_and_shown(
    fake: FakeKubeApi,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, str],
    what: str,
) -> None:
    fake.put(SLICES, endpoint_slice("engines", [("10.0.0.1", True)], 50051))
    fake.put(PODS, engine_pod("engine-0", "10.0.0.1"))
    settings = settings_for(fake, tmp_path, discovery_interval=1.0, **overrides)
    async with discovering(settings, caplog) as (discovery, sink, _):
        assert sink.addresses == set()
        await sink.until(lambda: discovery.lists >= 2, "a resync")
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, warnings  # once, not at every resync
        assert warnings[0].startswith("Kubernetes discovery finds no ")
        assert what in warnings[0]
        assert what in (discovery.trouble() or "")
