"""The engines the orchestrator can use: connections, health, capacity, and who gets a run.

Discovery reports addresses; the fleet opens one channel per engine, asks its health
(grpc.health.v1) right away and then every ``ENGINE_HEALTH_CHECK_INTERVAL``, learns its id and
capacity from ``GetInfo``, and keeps only serving engines in the balancer. Changes become
engine.joined / engine.left / engine.unhealthy events. An engine that stops answering loses its
runs: the dispatcher is told at once and resumes them elsewhere.

An engine that discovery stops listing is not one that stopped answering. Kubernetes takes a
pod out of its EndpointSlice (ready: false, terminating: true) before it sends the SIGTERM that
starts the engine's drain, and a readiness blip does the same. Such an engine still holding runs
is kept, *undiscovered*: out of the balancer, ``draining``, still health-checked, so it finishes
its runs (or hands them back with UNAVAILABLE at the end of its grace) instead of having them
cut off and run again elsewhere. It goes once it holds none, or as lost when it stops answering;
listed again, it is an ordinary engine again.

With ENGINE_TOKEN set, every call on an engine's channel carries it. An engine that refuses it
(UNAUTHENTICATED, PERMISSION_DENIED) answers, but not to us: it is unhealthy, never ready, with a
last error that names ENGINE_TOKEN, and runs wait in the queue rather than go there to fail.

With ENGINE_TLS_CA_FILE set, the channels speak TLS (``engine.tls.ClientTls``). A link whose TLS
fails (a plain engine, a certificate another CA signed or for another name, a client certificate
missing or refused) fails like an engine that does not answer, but its last error starts with
"TLS:" and says what to fix (``orchestrator.tls.link_problem``); it is logged once per cause and
engine, and ``/readyz`` names it while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import grpc
from grpc_health.v1 import health_pb2

from engine import wire
from engine.api import dagengine_pb2 as pb
from engine.api import dagengine_pb2_grpc as pb_grpc
from engine.authenticating import send_token
from engine.core.events import isoformat
from engine.core.values import JSONObject
from engine.tls import ClientTls
from orchestrator.discovery import EngineHint
from orchestrator.ring import Balancer
from orchestrator.tls import link_problem

log = logging.getLogger(__name__)

ENGINE_SERVICE = "dagengine.v1.Engine"
_REFUSED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
"""How an engine refuses a call without its ENGINE_TOKEN (``engine.authenticating``)."""
EngineStateName = Literal["joining", "ready", "draining", "unhealthy"]

# Large outputs travel inside events and resume requests: see wire.MAX_MESSAGE_BYTES.
# The pings see an engine whose host vanished (its streams silent, no FIN) within 15 s, as the
# engine's own pings see this process gone (engine.serving.KEEPALIVE_TIME_MS). gRPC's default
# of two pings between two calls is kept: the health checks are calls, and an engine of an
# earlier version (gRPC's default ping policy) cuts a caller that pings more with GOAWAY.
MAX_RECONNECT_BACKOFF_MS: Final = 2_000
"""The longest gRPC waits between two attempts to reach an engine that is down."""

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", wire.MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # the wait gRPC applies to a ping's answer, the keepalive's included (a minute unless set)
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # after a failed connect gRPC waits 1 s, then 1.6 times longer each time, up to 2 minutes
    # unless told, and a health check meanwhile fails at once without trying: an engine back on
    # its address after a few minutes down went unseen for up to that long, with runs waiting
    # in the queue. Capped, it is tried again within seconds of any check.
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
]


@dataclass(eq=False)
class EngineLink:
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.EngineAsyncStub
    health: grpc.aio.UnaryUnaryMultiCallable[
        health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    ]
    engine_id: str = ""
    state: EngineStateName = "joining"
    capacity: int = 10
    in_flight: int = 0
    failures: int = 0
    last_error: str | None = None
    version: str = ""
    checked_at: float = field(default_factory=time.time)
    full_until: float = 0.0
    """Monotonic time before which the engine is treated as full: it refused a run for capacity."""
    reported_capacity: int | None = None
    capacity_limit: int | None = None
    """From discovery (a pod annotation): ``capacity`` never exceeds it."""
    discovered: bool = True
    """False while discovery no longer lists the engine but runs are still on it (see the
    module docstring): it drains them and is never made ready again until listed again."""
    tls_problem: str | None = None
    """What fails in TLS on the link, while its health checks fail for it; None otherwise."""
    tls_told: str | None = None
    """The TLS problem last logged for this engine: each cause is logged once."""

    def settle_capacity(self, default: int) -> None:
        own = self.reported_capacity or default
        self.capacity = min(own, self.capacity_limit) if self.capacity_limit else own

    @property
    def key(self) -> str:
        return self.engine_id or self.address

    def describe(self) -> JSONObject:
        return {
            "id": self.key,
            "address": self.address,
            "state": self.state,
            "capacity": self.capacity,
            "in_flight": self.in_flight,
            "version": self.version,
            "last_error": self.last_error,
            "checked_at": isoformat(self.checked_at),
        }


def _load_share(link: EngineLink) -> float:
    return link.in_flight / max(link.capacity, 1)


def health_check(
    channel: grpc.aio.Channel,
) -> grpc.aio.UnaryUnaryMultiCallable[
    health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
]:
    """grpc.health.v1 Check as a typed call (the health package ships no typed stub)."""
    return channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


class Fleet:
    def __init__(
        self,
        balancer: Balancer,
        *,
        default_capacity: int,
        health_interval: float,
        publish: Callable[[JSONObject], None],
        on_capacity: Callable[[], None],
        on_lost: Callable[[EngineLink], None],
        check_timeout: float = 3.0,
        discovery_trouble: Callable[[], str | None] = lambda: None,
        engine_token: str | None = None,
        engine_tls: ClientTls | None = None,
    ) -> None:
        self._balancer = balancer
        self._default_capacity = default_capacity
        self._interval = max(health_interval, 0.1)
        self._publish = publish
        self._on_capacity = on_capacity
        self._on_lost = on_lost
        self._check_timeout = check_timeout
        self._discovery_trouble = discovery_trouble
        self._engine_token = engine_token
        self._engine_tls = engine_tls
        # one set of credentials for every channel: gRPC parses the certificates once
        self._credentials = engine_tls.credentials() if engine_tls is not None else None
        self._channel_options = CHANNEL_OPTIONS + (
            engine_tls.channel_options() if engine_tls is not None else []
        )
        # every call on an engine's channel carries ENGINE_TOKEN: runs, cancels, sub-workflow
        # answers and GetInfo alike, whichever module makes the call
        self._interceptors = send_token(engine_token) if engine_token is not None else None
        self.links: dict[str, EngineLink] = {}  # by address
        self._first_round: set[str] | None = None
        """Engines of discovery's first report not checked yet: runs wait until each has
        answered (or failed) once. Otherwise the first engine to answer after a restart takes
        every sub-workflow run the store gave back, past its capacity, for their whole life."""
        self._checking: set[asyncio.Task[None]] = set()
        self._seq = 0

    # -- membership -------------------------------------------------------------------------

    def update(self, addresses: set[str], hints: Mapping[str, EngineHint] | None = None) -> None:
        """Discovery's latest view: connect to new engines, drop vanished ones (or let those
        with runs drain first)."""
        if self._first_round is None:
            self._first_round = set(addresses)
        for address, hint in (hints or {}).items():
            if address in self.links:
                self._take_hint(self.links[address], hint)
        for address in addresses & set(self.links):
            link = self.links[address]
            if not link.discovered:
                link.discovered = True
                log.info(
                    "engine %s at %s is listed again",
                    link.key,
                    address,
                    extra={"engine_id": link.key},
                )
                self._spawn_check(link)  # serving: back in the balancer at once
        for address in addresses - set(self.links):
            channel = self._channel(address)
            link = EngineLink(
                address=address,
                channel=channel,
                stub=pb_grpc.EngineStub(channel),
                health=health_check(channel),
                capacity=self._default_capacity,
            )
            self.links[address] = link
            if hints and address in hints:
                self._take_hint(link, hints[address])
            self._spawn_check(link)
        for address in set(self.links) - addresses:
            link = self.links[address]
            if self._drained(link):
                continue
            if link.in_flight > 0 and link.state != "unhealthy":
                if link.discovered:
                    self._undiscover(link)
                continue
            self._on_lost(link)
            self._drop(link, "no longer discovered")

    def _channel(self, address: str) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(
                address, options=self._channel_options, interceptors=self._interceptors
            )
        return grpc.aio.secure_channel(
            address,
            self._credentials,
            options=self._channel_options,
            interceptors=self._interceptors,
        )

    def discovery_trouble(self) -> str | None:
        """What keeps the engines from being known or reached now, or None (for ``/readyz``):
        discovery's trouble, and engines whose link fails its TLS (a setting to fix, not an
        engine that went away)."""
        troubles = [
            f"engine at {link.address}: {link.tls_problem}"
            for link in sorted(self.links.values(), key=lambda lk: lk.address)
            if link.tls_problem is not None
        ]
        found = self._discovery_trouble()
        if found is not None:
            troubles.insert(0, found)
        return "; ".join(troubles) or None

    def _undiscover(self, link: EngineLink) -> None:
        """Discovery let go of an engine that still has runs: let it finish them."""
        link.discovered = False
        reason = f"no longer discovered: finishing its {link.in_flight} runs in flight"
        if link.state == "draining":
            log.info(
                "engine %s at %s %s", link.key, link.address, reason, extra={"engine_id": link.key}
            )
        else:
            self._become(link, "draining", reason)

    def _drop(self, link: EngineLink, reason: str) -> None:
        """Forget the engine and close its channel (the caller has told the dispatcher of any
        runs lost with it)."""
        if self.links.get(link.address) is link:
            del self.links[link.address]
        if link.state == "ready":
            # only a ready link is in the balancer; another link may hold the same key by now
            # (a pod back under its name at a new address)
            self._leave_balancer(link)
            self._event("engine.left", "warning", link, {"reason": reason})
        task = asyncio.get_running_loop().create_task(link.channel.close())
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    def _drained(self, link: EngineLink) -> bool:
        """Drop an undiscovered engine once it holds no run; True when it was dropped."""
        if link.discovered or link.in_flight > 0:
            return False
        log.info(
            "engine %s at %s finished its runs and is gone",
            link.key,
            link.address,
            extra={"engine_id": link.key},
        )
        self._drop(link, "drained")
        return True

    def _take_hint(self, link: EngineLink, hint: EngineHint) -> None:
        if hint.capacity != link.capacity_limit:
            link.capacity_limit = hint.capacity
            link.settle_capacity(self._default_capacity)
            if link.state == "ready":
                self._on_capacity()
        if hint.engine_id and not link.engine_id and link.state != "ready":
            link.engine_id = hint.engine_id  # GetInfo's answer replaces it

    def ready(self) -> list[EngineLink]:
        return [link for link in self.links.values() if link.state == "ready"]

    def pick(self, routing_key: str, *, overflow: bool = False) -> EngineLink | None:
        """The engine for a run of ``routing_key``, or None when every engine is full.

        ``overflow``: when every engine is full, the least loaded for its capacity anyway (a
        sub-workflow run, which engines admit past their capacity)."""
        if self._first_round is None or self._first_round:
            return None  # the first health checks are not all back yet
        now = time.monotonic()
        ready: dict[str, EngineLink] = {}
        for link in self.links.values():
            if link.state != "ready" or link.full_until > now:
                continue
            other = ready.get(link.key)
            # engines sharing an id (a misconfiguration, warned of) share its place: the less
            # loaded of them takes the run
            if other is None or _load_share(link) < _load_share(other):
                ready[link.key] = link
        if not ready:
            return None
        loads = {k: v.in_flight for k, v in ready.items()}
        capacities = {k: v.capacity for k, v in ready.items()}
        chosen = self._balancer.pick(routing_key, loads, capacities)
        if chosen is None and overflow:
            chosen = min(ready, key=lambda k: (loads[k] / max(capacities[k], 1), k))
        return ready.get(chosen) if chosen is not None else None

    def describe(self) -> list[JSONObject]:
        return [link.describe() for link in sorted(self.links.values(), key=lambda lk: lk.key)]

    # -- health -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Check every engine each interval, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            await asyncio.gather(*(self.check(link) for link in list(self.links.values())))

    def _spawn_check(self, link: EngineLink) -> None:
        task = asyncio.get_running_loop().create_task(self.check(link))
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def check(self, link: EngineLink) -> None:
        try:
            await self._check(link)
        finally:
            first = self._first_round
            if first and link.address in first:
                first.discard(link.address)
                if not first:
                    self._on_capacity()  # what waited for the first round goes now

    async def _check(self, link: EngineLink) -> None:
        if self.links.get(link.address) is not link or self._drained(link):
            return  # gone since this check was planned, or now
        link.checked_at = time.time()
        try:
            reply = await link.health(
                health_pb2.HealthCheckRequest(service=ENGINE_SERVICE), timeout=self._check_timeout
            )
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
            if serving and link.discovered:
                # every time, not only while joining: an engine restarted at the same address
                # between two checks may have another id, capacity or version
                info = await link.stub.GetInfo(pb.GetInfoRequest(), timeout=self._check_timeout)
                self._learn(link, info)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
            tls = await link_problem(link.address, exc, self._engine_tls, self._check_timeout)
            if tls is not None:
                # a setting to fix, not an engine that is slow or gone: said first
                self._failed(link, f"{tls} ({error})", tls=tls)
                return
            if exc.code() in _REFUSED:
                # it answers, but not us: not ready, and said so where `dagctl get engines`
                # shows it, rather than a place runs go to fail
                self._failed(link, self._refused(exc), refused=True)
                return
            if (
                exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                and link.failures == 0
                and link.state in ("ready", "draining")
            ):
                # Slow is not gone: an engine whose loop is busy for a moment (encoding an
                # event of tens of MB) answers late, and taking it for dead would cut off and
                # re-run all its runs. A second late answer in a row, or a broken stream
                # (``suspect``), decides.
                link.failures = 1
                link.last_error = error
                log.warning(
                    "engine %s at %s was slow to answer its health check (%s): checking again",
                    link.key,
                    link.address,
                    error,
                    extra={"engine_id": link.key},
                )
                return
            self._failed(link, error)
            return
        if self.links.get(link.address) is not link:
            return  # discovery dropped it while we asked
        link.failures = 0
        link.last_error = None
        link.tls_problem = link.tls_told = None
        if not link.discovered:
            # its pod is leaving: serving or not, it only finishes what it has
            self._drained(link)
        elif serving:
            self._become(link, "ready")
        else:
            self._become(link, "draining", "draining")

    def _refused(self, exc: grpc.aio.AioRpcError) -> str:
        """The last error of an engine that refused our ENGINE_TOKEN, with what to do."""
        if self._engine_token is None:
            fix = "set ENGINE_TOKEN on the orchestrator to the engines' token"
        elif exc.code() == grpc.StatusCode.PERMISSION_DENIED:
            fix = "the orchestrator's ENGINE_TOKEN differs from the engine's"
        else:
            fix = "the orchestrator sent its ENGINE_TOKEN, but the engine did not receive it"
        return f"{exc.code().name}: {exc.details()} ({fix})"

    def _learn(self, link: EngineLink, info: pb.EngineInfo) -> None:
        if info.engine_id and info.engine_id != link.engine_id:
            if link.state == "ready":
                self._leave_balancer(link)
                self._event("engine.left", "info", link, {"reason": f"now engine {info.engine_id}"})
                link.state = "joining"  # joins again under its new id at once
            link.engine_id = info.engine_id
        if info.capacity > 0:
            before = link.capacity
            link.reported_capacity = info.capacity
            link.settle_capacity(self._default_capacity)
            if link.capacity > before and link.state == "ready":
                self._on_capacity()  # room for what waits
        link.version = info.version

    def drain(self, link: EngineLink, reason: str) -> None:
        """The engine said it is draining (it refused a run, or handed one back): no new runs
        until a health check finds it serving again; those it has stay."""
        if self.links.get(link.address) is link and link.state == "ready":
            self._become(link, "draining", reason)

    def suspect(self, link: EngineLink, error: str) -> None:
        """A call to the engine failed at the connection: out of the ring until a check passes.

        Without this a run whose stream just broke would be handed straight back to the dead
        engine, which still looks ready until its next health check.
        """
        self._failed(link, error)

    def _failed(
        self, link: EngineLink, error: str, *, refused: bool = False, tls: str | None = None
    ) -> None:
        link.failures += 1
        link.last_error = error
        link.tls_problem = tls
        if tls is not None and tls != link.tls_told and self.links.get(link.address) is link:
            link.tls_told = tls
            if link.state in ("joining", "unhealthy"):
                # the event below tells one that was ready or draining
                log.error(
                    "engine at %s cannot be reached: %s",
                    link.address,
                    error,
                    extra={"engine_id": link.key, "event": "engine.tls_failed"},
                )
        if self.links.get(link.address) is not link or link.state == "unhealthy":
            return
        if self._drained(link):
            return  # it went away after its last run, as a drained engine does
        previous = link.state
        link.state = "unhealthy"
        if previous == "ready":
            self._leave_balancer(link)
        if previous != "joining":
            self._event("engine.unhealthy", "error", link, {"error": error})
            self._on_lost(link)
        elif refused:
            log.error("engine at %s refuses this orchestrator: %s", link.address, error)
        elif tls is None:  # a TLS failure was told above
            log.warning("engine at %s is not answering yet: %s", link.address, error)
        if not link.discovered:
            # nothing will list it again to bring it back: its runs are resuming elsewhere
            self._drop(link, "no longer discovered and not answering")

    def _become(self, link: EngineLink, state: EngineStateName, reason: str = "") -> None:
        if link.state == state:
            return
        previous = link.state
        link.state = state
        if state == "ready":
            self._warn_if_shared(link)
            self._balancer.add(link.key)
            self._event("engine.joined", "info", link, {"previous": previous})
            self._on_capacity()
        elif state == "draining":
            # a draining engine finishes what it has; it just gets nothing new
            if previous == "ready":
                self._leave_balancer(link)
            self._event("engine.left", "warning", link, {"reason": reason})

    def _leave_balancer(self, link: EngineLink) -> None:
        """Take the link's key out of the balancer, unless another ready link holds it too.

        The balancer knows engines by id and the fleet knows links by address: two engines
        started with the same ENGINE_ID share a key, and the one that stays must keep its work.
        """
        if not any(
            other is not link and other.state == "ready" and other.key == link.key
            for other in self.links.values()
        ):
            self._balancer.remove(link.key)

    def _warn_if_shared(self, link: EngineLink) -> None:
        others = sorted(
            other.address
            for other in self.links.values()
            if other is not link and other.key == link.key and other.state != "unhealthy"
        )
        if others:
            log.warning(
                "engine id %s is used by the engine at %s and by the one at %s: give each engine"
                " its own ENGINE_ID; they share one place in the routing and are told apart only"
                " by address",
                link.key,
                link.address,
                ", ".join(others),
                extra={"engine_id": link.key, "event": "engine.duplicate_id"},
            )

    def _event(self, kind: str, severity: str, link: EngineLink, data: JSONObject) -> None:
        self._seq += 1
        # at the event's own severity, with its reason: a filter on warnings must see an
        # engine leave or fail, and why, without reading the event stream
        detail = data.get("error") or data.get("reason")
        # event severities are the stdlib's level names, in lower case
        level = logging.getLevelNamesMapping().get(severity.upper(), logging.INFO)
        context = {"engine_id": link.key, "event": kind}
        if detail:
            log.log(level, "%s %s at %s: %s", kind, link.key, link.address, detail, extra=context)
        else:
            log.log(level, "%s %s at %s", kind, link.key, link.address, extra=context)
        self._publish(
            {
                "seq": self._seq,
                "time": isoformat(time.time()),
                "type": kind,
                "severity": severity,
                "workflow_id": None,
                "version": None,
                "execution_id": None,
                "node_id": None,
                "engine_id": link.key,
                "attempt": None,
                "data": {"address": link.address, "capacity": link.capacity, **data},
            }
        )

    async def close(self) -> None:
        for task in list(self._checking):
            task.cancel()
        await asyncio.gather(
            *(lk.channel.close() for lk in self.links.values()), return_exceptions=True
        )
        self.links.clear()
