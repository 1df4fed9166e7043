"""Finding engines through the Kubernetes API (``DISCOVERY_MODE=kubernetes``).

The one idea: the engine set is a pure function of the objects held in a small cache (the
EndpointSlices of the engines' Service, or the engines' Pods). The I/O loop does nothing but keep
that cache current the way Kubernetes controllers do: list, then watch from the list's
resourceVersion with bookmarks; relist when the API answers 410 Gone and every
``ENGINE_DISCOVERY_INTERVAL`` anyway; rewatch after a dropped connection. Each change is reported
to the fleet as soon as its watch event arrives. As client-go's reflector does, the first relist
after a 410 is immediate and further ones in a row back off: an API server whose watch cache
lags its lists answers every watch with 410, and relisting at once would be a busy loop.

When the API refuses (credentials or RBAC) or cannot be reached, or anything else goes wrong,
each distinct cause is logged once per episode, clearly, and nothing is reported: the fleet keeps
the last engines it was told about, and their own health checks decide whether they still get
work. A 401 rebuilds the client from its configuration, so that a rotated or re-issued token (an
exec plugin's, a projected service-account token's) is picked up; so does a server certificate
the client does not trust, so that a new cluster CA (the ``ca.crt`` the kubelet updates, or the
kubeconfig's) is read again: a client reads its CA once, when it is built. The loop never ends
on its own: whatever fails, it retries with backoff until cancelled. The episode ends when a
watch delivers an event or stays open for a moment, not when a list succeeds or a watch is merely
accepted: RBAC may allow list and not watch, and an API server may accept a watch and fail it at
once with an ERROR event; either would otherwise call every retry a recovery. ``trouble()`` says
what is wrong now (``/readyz`` shows it), the latest cause rather than the episode's first (an
API server that was down may be back with a certificate not trusted), including a list that
matches nothing at all.

This is the only module that imports the ``kubernetes`` client (DESIGN section 2). Its asyncio
API is used for connection set-up, authentication and the list/watch requests; watch lines are
read here rather than through ``kubernetes.aio.watch.Watch``, which retries a 410 Gone once with
the same expired resourceVersion instead of relisting, and hides bookmark-only progress.

Errors::

    KubernetesApiError          anything that stopped a list or watch
    ├── ApiUnreachable          no connection, or it broke before an answer
    ├── ApiUntrusted            TLS: the server's certificate is not trusted by the CA the
    │                           client has (the cluster's CA changed, say)
    ├── ApiUnauthorized         401: the credentials (token, certificate) are not accepted,
    │                           or the client cannot load them (a token file empty at refresh)
    ├── ApiRefused              403: RBAC does not allow it
    ├── ApiGone                 410: the resourceVersion is too old; relist
    ├── ApiStatusError          any other status from the API server
    └── MalformedEvent          a watch line that is not an event; relist (the cache may be wrong)
    WatchBroken                 an established watch stream broke; rewatch (not an outage)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import aiohttp
import yaml
from kubernetes.aio import client as k8s_client
from kubernetes.aio import config as k8s_config

from engine.core.events import isoformat
from orchestrator.discovery import AddressSink, EngineHint
from orchestrator.settings import Settings, SettingsError

log = logging.getLogger(__name__)

Source = Literal["endpointslices", "pods"]
JSONDict = dict[str, Any]

PORT_NAME = "grpc"
PORT_ANNOTATION = "workflow-engine/port"
CAPACITY_ANNOTATION = "workflow-engine/capacity"
ENGINE_ID_LABEL = "engine-id"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_LIST_TIMEOUT = 15.0
"""Seconds a list may take; a hung API server is then an outage, not a hang."""
_BACKOFF_FIRST, _BACKOFF_MAX = 0.2, 10.0
_SETTLED = 1.0
"""Seconds an accepted watch must stay open, without an event, to end an outage."""
_CAUSES_LOGGED = 5
"""Distinct causes of one kind logged per outage episode; ``trouble()`` shows any further ones."""


# -- the pure part: objects in, engines out ----------------------------------------------------


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PortNote:
    """An EndpointSlice without a port named ``grpc``: its only port taken instead, or the slice
    left out (``left_out``), in words that name the slice and the ports it has."""

    slice: str
    text: str
    left_out: bool


def engines_from_endpoint_slices(
    slices: Iterable[Mapping[str, Any]], port_name: str = PORT_NAME
) -> tuple[dict[str, EngineHint], list[PortNote]]:
    """The ready endpoints of ``slices`` by address, and the slices whose port was not found by
    its name.

    The port is the one named ``port_name``; a slice without one takes its only port, when it
    has just one (a Service of one port need not name it, and Istio's convention names it
    ``grpc-<suffix>``): the Service says which port is the engines' by name, and where it has
    one port there is nothing to choose. A slice of several ports, none so named, or of none,
    contributes nothing, with a note saying so: a number guessed from elsewhere would be wrong.
    ``conditions.ready`` absent means ready, as the EndpointSlice API defines; terminating
    endpoints are never ready.
    """
    out: dict[str, EngineHint] = {}
    notes: list[PortNote] = []
    for eps in slices:
        if eps.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue  # FQDN slices point outside the cluster, not at engine pods
        port, note = _slice_port(eps, port_name)
        if note is not None:
            notes.append(note)
        if port is None:
            continue
        for endpoint in eps.get("endpoints") or ():
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False or conditions.get("terminating") is True:
                continue
            target = endpoint.get("targetRef") or {}
            for host in endpoint.get("addresses") or ():
                out[_join(str(host), port)] = EngineHint(pod=target.get("name"))
    return out, notes


def _slice_port(eps: Mapping[str, Any], port_name: str) -> tuple[int | None, PortNote | None]:
    """The engines' port in ``eps``, and a note when it was not found by its name."""
    ports = [p for p in eps.get("ports") or () if isinstance(p, Mapping)]
    for p in ports:
        if p.get("name") == port_name and _usable(p):
            return int(p["port"]), None
    meta = eps.get("metadata") or {}
    labels = meta.get("labels") or {}
    what = f"EndpointSlice {meta.get('namespace', '?')}/{meta.get('name', '?')}"
    service = labels.get(SERVICE_NAME_LABEL) or "its Service"
    if len(ports) == 1 and _usable(ports[0]):
        text = f"{what} has no port named {port_name}; using its only port, {_port_words(ports[0])}"
        return int(ports[0]["port"]), PortNote(what, text, left_out=False)
    named = f"{port_name} (the name discovery looks for; no setting changes it)"
    if ports:
        has = f"its ports: {', '.join(_port_words(p) for p in ports)}"
        fix = (
            f"name the engines' gRPC port {named} in Service {service}, or make it the"
            " Service's only port"
        )
    else:
        has = "it has no ports"
        fix = f"give Service {service} the engines' gRPC port, named {named}"
    text = (
        f"{what} has no port named {port_name} ({has}), so its endpoints are not used as"
        f" engines: {fix}"
    )
    return None, PortNote(what, text, left_out=True)


def _usable(port: Mapping[str, Any]) -> bool:
    number = port.get("port")
    return (
        isinstance(number, int)
        and not isinstance(number, bool)
        and 0 < number <= 65535
        and port.get("protocol", "TCP") in ("TCP", None)
    )


def _port_words(port: Mapping[str, Any]) -> str:
    name = port.get("name") or "unnamed"
    number = port.get("port")
    protocol = port.get("protocol") or "TCP"
    where = str(number) if isinstance(number, int) else "no number"
    return f"{name} ({where}{'' if protocol == 'TCP' else '/' + str(protocol)})"


def engines_from_pods(
    pods: Iterable[Mapping[str, Any]], default_port: int
) -> tuple[dict[str, EngineHint], list[str]]:
    """Running, Ready, not-terminating pods by address, and the annotation problems found.

    ``workflow-engine/port`` overrides ``default_port``; ``workflow-engine/capacity`` caps what
    the orchestrator routes to that engine; the ``engine-id`` label names it until its GetInfo
    answers. A bad annotation is a problem to report, and the pod is still used with defaults:
    refusing a serving engine over a typo would be worse.
    """
    out: dict[str, EngineHint] = {}
    problems: list[str] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        name = str(meta.get("name", "?"))
        if meta.get("deletionTimestamp") or status.get("phase") != "Running":
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in status.get("conditions") or ()
        )
        host = status.get("podIP")
        if not ready or not host:
            continue
        annotations = meta.get("annotations") or {}
        port = _annotation_int(annotations, PORT_ANNOTATION, name, problems, upper=65535)
        capacity = _annotation_int(annotations, CAPACITY_ANNOTATION, name, problems)
        labels = meta.get("labels") or {}
        out[_join(str(host), port or default_port)] = EngineHint(
            pod=name,
            capacity=capacity,
            engine_id=str(labels[ENGINE_ID_LABEL]) if labels.get(ENGINE_ID_LABEL) else None,
        )
    return out, problems


def _annotation_int(
    annotations: Mapping[str, Any],
    key: str,
    pod: str,
    problems: list[str],
    upper: int = 1_000_000,
) -> int | None:
    raw = annotations.get(key)
    if raw is None:
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = 0
    if not 0 < value <= upper:
        problems.append(
            f"pod {pod}: annotation {key} must be an integer from 1 to {upper}, got {raw!r}"
        )
        return None
    return value


class ObjectCache:
    """The watched objects by namespace/name, kept current by list results and watch events."""

    def __init__(self) -> None:
        self.objects: dict[str, JSONDict] = {}

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{meta.get('namespace', '')}/{meta.get('name', '')}"

    def replace(self, items: Iterable[JSONDict]) -> None:
        self.objects = {self._key(obj): obj for obj in items}

    def apply(self, kind: str, obj: JSONDict) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.objects[self._key(obj)] = obj
        elif kind == "DELETED":
            self.objects.pop(self._key(obj), None)


# -- errors --------------------------------------------------------------------------------------


class KubernetesApiError(Exception):
    """A list or watch that did not get what it asked for."""

    outage = "error"
    """What kind of outage this is."""

    def cause(self) -> str:
        """What tells this trouble from another of its kind: a new cause is logged, a repeat not."""
        return _cause(str(self))


class ApiUnreachable(KubernetesApiError):
    outage = "unreachable"


class ApiUntrusted(KubernetesApiError):
    outage = "untrusted"

    def __init__(self, message: str, ca_file: str | None) -> None:
        super().__init__(message)
        self.ca_file = ca_file
        """The CA bundle the client verified against; None for the system's."""


class ApiUnauthorized(KubernetesApiError):
    outage = "unauthorized"


class ApiRefused(KubernetesApiError):
    outage = "refused"

    def cause(self) -> str:
        # RBAC's messages differ only in the verb refused (list, watch), and the advice logged
        # names both
        return self.outage


class ApiGone(KubernetesApiError):
    outage = "gone"


class ApiStatusError(KubernetesApiError):
    outage = "status"


class MalformedEvent(KubernetesApiError):
    outage = "malformed"


class WatchBroken(Exception):
    """An established watch stream ended without its closing; rewatching is routine."""


def _status_error(code: int, body: str, what: str) -> KubernetesApiError:
    """The error for an HTTP status (or an ERROR watch event's Status) from the API server."""
    try:
        status = json.loads(body)
        message = str(status.get("message") or status.get("reason") or body)
    except (ValueError, AttributeError):
        message = body.strip()[:200] or "no message"
    text = f"{what}: HTTP {code}: {message}"
    if code == 401:
        return ApiUnauthorized(text)
    if code == 403:
        return ApiRefused(text)
    if code == 410:
        return ApiGone(text)
    return ApiStatusError(text)


# -- the client adapter --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    """ADDED, MODIFIED, DELETED or BOOKMARK."""
    object: JSONDict
    resource_version: str


class KubeObjects:
    """The list and watch calls for one kind, through the kubernetes client, as plain JSON.

    Objects stay the API's JSON (camelCase dicts) rather than the client's models: the pure
    functions above read them as the documentation shows them, and tests can write them so.
    """

    def __init__(
        self, api_client: Any, source: Source, namespace: str, label_selector: str
    ) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.label_selector = label_selector
        if source == "pods":
            self.what = f"pods matching {label_selector} in namespace {namespace}"
            core = k8s_client.CoreV1Api(api_client)
            self._call = core.list_namespaced_pod_without_preload_content
        else:
            self.what = f"endpointslices with {label_selector} in namespace {namespace}"
            self._call = k8s_client.DiscoveryV1Api(
                api_client
            ).list_namespaced_endpoint_slice_without_preload_content

    async def list(self) -> tuple[list[JSONDict], str]:
        """The objects and the collection's resourceVersion to watch from."""
        try:
            resp = await self._call(
                self.namespace,
                label_selector=self.label_selector,
                _request_timeout=_LIST_TIMEOUT,
            )
            try:
                body = await resp.text()
            finally:
                resp.release()
        except _CERTIFICATE_ERRORS as exc:
            raise self._untrusted(f"listing {self.what}", exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiUnreachable(f"listing {self.what}: {_describe(exc)}") from exc
        except k8s_config.ConfigException as exc:
            raise ApiUnauthorized(f"listing {self.what}: {_no_credentials(exc)}") from exc
        if resp.status != 200:
            raise _status_error(resp.status, body, f"listing {self.what}")
        try:
            doc = json.loads(body)
            items = [item for item in doc.get("items") or () if isinstance(item, dict)]
            version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        except (ValueError, AttributeError) as exc:
            raise ApiStatusError(f"listing {self.what}: not a list: {body[:200]!r}") from exc
        return items, version

    async def watch(
        self,
        resource_version: str,
        timeout: float,
        answered: Callable[[], None] | None = None,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` for up to ``timeout`` seconds, bookmarks included.

        ``answered`` is called once the API server has accepted the watch (HTTP 200), before
        any event: an idle watch may send none for minutes. Accepted is not yet working: an
        ERROR event may follow at once."""
        try:
            resp = await self._call(
                self.namespace,
                label_selector=self.label_selector,
                watch=True,
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=max(1, round(timeout)),
                # the server ends the watch at timeout_seconds; the margin only catches a
                # connection that went silent without closing
                _request_timeout=float(timeout + 30),
            )
        except _CERTIFICATE_ERRORS as exc:
            raise self._untrusted(f"watching {self.what}", exc) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ApiUnreachable(f"watching {self.what}: {_describe(exc)}") from exc
        except k8s_config.ConfigException as exc:
            raise ApiUnauthorized(f"watching {self.what}: {_no_credentials(exc)}") from exc
        try:
            if resp.status != 200:
                raise _status_error(resp.status, await resp.text(), f"watching {self.what}")
            if answered is not None:
                answered()
            while True:
                try:
                    line = await resp.content.readline()
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    raise WatchBroken(f"watch of {self.what} broke: {_describe(exc)}") from exc
                if not line:
                    return
                if line.strip():
                    yield self._event(line)
        finally:
            resp.release()

    def _untrusted(self, doing: str, exc: BaseException) -> ApiUntrusted:
        ca_file = self.api_client.configuration.ssl_ca_cert
        return ApiUntrusted(f"{doing}: {_describe(exc)}", str(ca_file) if ca_file else None)

    def _event(self, line: bytes) -> WatchEvent:
        try:
            doc = json.loads(line)
            kind, obj = str(doc["type"]), doc["object"]
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedEvent(f"watching {self.what}: not an event: {line[:200]!r}") from exc
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if not isinstance(code, int):
                raise MalformedEvent(
                    f"watching {self.what}: ERROR without a Status: {line[:200]!r}"
                )
            raise _status_error(code, json.dumps(obj), f"watching {self.what}")
        if not isinstance(obj, dict) or not isinstance(meta, dict | None):
            raise MalformedEvent(f"watching {self.what}: {kind} without an object: {line[:200]!r}")
        version = str((meta or {}).get("resourceVersion") or "")
        return WatchEvent(kind, obj, version)


def _cause(text: str) -> str:
    """``text`` without what changes from one retry to the next of the same trouble.

    Whether a list or a watch met it is no new cause, nor are the numbers (resourceVersions,
    ports) in it.
    """
    return re.sub(r"\d+", "#", re.sub(r"^(listing|watching) ", "", text))


_CERTIFICATE_ERRORS = (aiohttp.ClientConnectorCertificateError, ssl.SSLCertVerificationError)
"""The server's certificate failed verification: retrying with the same CA cannot help."""
_MISMATCH = re.compile(r"(Hostname|IP address) mismatch")
"""OpenSSL's words for a certificate a trusted CA signed for another name than the server's."""


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _no_credentials(exc: BaseException) -> str:
    # raised before any request, by the client's token refresh (in-cluster, the service-account
    # token file is re-read every minute, and may be caught empty while the kubelet rewrites it)
    return f"cannot load the credentials: {_describe(exc)}"


async def connect(settings: Settings) -> Any:
    """An ApiClient from the in-cluster service account, or from the kubeconfig.

    Raises ``SettingsError`` when the configuration cannot be loaded at all: there is nothing
    to retry then, and start-up should stop with one line.
    """
    configuration = k8s_client.Configuration()
    try:
        if settings.in_cluster_config:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            path = settings.kubeconfig or str(Path("~/.kube/config").expanduser())
            await k8s_config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
    except (k8s_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        source = (
            "IN_CLUSTER_CONFIG=true: the pod's service account"
            if settings.in_cluster_config
            else f"IN_CLUSTER_CONFIG=false: kubeconfig {settings.kubeconfig or '~/.kube/config'}"
        )
        raise SettingsError(f"DISCOVERY_MODE=kubernetes: cannot load {source}: {exc}") from exc
    return k8s_client.ApiClient(configuration)


def check_settings(settings: Settings) -> None:
    """Fail at start-up, with one line, on a configuration that can never connect."""
    if settings.in_cluster_config:
        configuration = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except k8s_config.ConfigException as exc:
            # named from the discovery mode down: off a cluster, the setting to change is
            # most often DISCOVERY_MODE, which defaults to kubernetes
            default = "" if "DISCOVERY_MODE" in settings.environ else " (the default)"
            raise SettingsError(
                f"DISCOVERY_MODE=kubernetes{default} with IN_CLUSTER_CONFIG=true, but this is"
                f" not a Kubernetes pod ({exc}): set IN_CLUSTER_CONFIG=false to use a"
                " kubeconfig (KUBECONFIG), or off a cluster DISCOVERY_MODE=static with"
                " ENGINE_ADDRESSES (or `dagctl up`, which starts engines too)"
            ) from exc
        return
    path = settings.kubeconfig or str(Path("~/.kube/config").expanduser())
    cannot = f"IN_CLUSTER_CONFIG=false: cannot read the kubeconfig {path} (KUBECONFIG)"
    # checked here: the client only logs a warning of its own and then fails on a key, or
    # fails in Python's words ('str' object does not support item assignment)
    if Path(path).is_dir():
        raise SettingsError(f"{cannot}: it is a directory")
    if not Path(path).exists():
        raise SettingsError(f"{cannot}: no such file")
    if not Path(path).is_file():  # a device or a pipe, which a read could wait on for ever
        raise SettingsError(f"{cannot}: it is not a regular file")
    not_one = f"{cannot}: it is not a kubeconfig (a YAML mapping)"
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{cannot}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"{not_one}: it is not UTF-8 text") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{not_one}: {_yaml_problem(exc)}") from exc
    if not isinstance(loaded, dict):
        raise SettingsError(not_one)
    try:
        k8s_config.list_kube_config_contexts(path)
    except (k8s_config.ConfigException, OSError, ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"{cannot}: {exc}") from exc


def _yaml_problem(error: yaml.YAMLError) -> str:
    """What the YAML parser found, and where, in a few words on one line."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        return f"{error.problem} at line {error.problem_mark.line + 1}"
    return " ".join(str(error).split())


# -- the loop ------------------------------------------------------------------------------------


class KubernetesDiscovery:
    """List, watch, report; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: Source | None = None,
        backoff_max: float = _BACKOFF_MAX,
    ) -> None:
        self.settings = settings
        self.source: Source = source or settings.k8s_discovery_source
        self.interval = max(settings.discovery_interval, 1.0)
        self.backoff_max = backoff_max
        self.resource_version = ""
        """The last resourceVersion seen, from a list, an event or a bookmark."""
        self.cache = ObjectCache()
        self.lists = 0
        self.clients = 0
        """ApiClients built so far: one, plus one per rebuild after a 401, an untrusted
        certificate or a surprise."""
        self._outage: str | None = None
        self._outage_text = ""
        self._outage_since = 0.0
        self._causes_logged: dict[str, set[str]] = {}
        """The causes of this outage episode logged so far, by kind."""
        self._gone_in_a_row = 0
        """410s since the last watch event: the second one in a row means backing off."""
        self._delay = _BACKOFF_FIRST
        self._empty_logged = False
        self._problems_seen: set[str] = set()
        self._port_notes: dict[str, PortNote] = {}
        """The slices whose port was not found by its name, by slice: each logged when it
        appears or its words change, not at every resync."""
        self._report: AddressSink | None = None
        self._known = 0

    @property
    def label_selector(self) -> str:
        if self.source == "pods":
            return self.settings.k8s_label_selector
        return f"{SERVICE_NAME_LABEL}={self.settings.k8s_service_name}"

    @property
    def what(self) -> str:
        if self.source == "pods":
            return f"pods matching {self.label_selector} in namespace {self.settings.k8s_namespace}"
        return (
            f"endpointslices with {self.label_selector} in namespace {self.settings.k8s_namespace}"
        )

    def trouble(self) -> str | None:
        """What keeps discovery from knowing the engines right now, or None."""
        if self._outage is not None:
            return f"{self._outage_text} (since {isoformat(self._outage_since)})"
        if self.lists and not self.cache.objects:
            return f"Kubernetes discovery finds no {self.what}"
        left_out = [note for note in self._port_notes.values() if note.left_out]
        if left_out and not self._known:
            more = len(left_out) - 1
            alike = f" (and {more} more EndpointSlice(s) without it)" if more else ""
            return f"Kubernetes discovery finds no engines: {left_out[0].text}{alike}"
        return None

    async def run(self, report: AddressSink) -> None:
        self._report = report
        api_client: Any = None
        try:
            while True:
                try:
                    if api_client is None:
                        api_client = await connect(self.settings)
                        self.clients += 1
                    await self._list_and_watch(
                        KubeObjects(
                            api_client,
                            self.source,
                            self.settings.k8s_namespace,
                            self.label_selector,
                        )
                    )
                    continue  # the resync is due: list again at once
                except ApiGone as exc:
                    self._gone_in_a_row += 1
                    if self._gone_in_a_row == 1:
                        # routine after a compaction or a long disconnection
                        log.debug("relisting: %s", exc)
                        continue
                    self._trouble(exc)
                except SettingsError as exc:
                    # checked at start-up, so a token or file that went away since: wait for it
                    self._trouble(ApiUnreachable(str(exc)))
                except (ApiUnauthorized, ApiUntrusted) as exc:
                    self._trouble(exc)
                    # the token may have been re-issued since (an exec plugin, a rotated file),
                    # or the cluster's CA changed (the kubelet updates ca.crt): only a fresh
                    # configuration reads them again, and only a new client its CA
                    await _closed(api_client)
                    api_client = None
                except KubernetesApiError as exc:
                    self._trouble(exc)
                except Exception as exc:
                    # a bug or a library surprise (say, a token file empty at refresh) must not
                    # end discovery for good: the fleet would never learn of an engine again
                    self._unexpected(exc)
                    await _closed(api_client)
                    api_client = None
                await asyncio.sleep(self._delay * random.uniform(0.8, 1.2))
                self._delay = min(self._delay * 2, self.backoff_max)
        finally:
            await _closed(api_client)

    async def _list_and_watch(self, objects: KubeObjects) -> None:
        """One list and the watches after it, until the resync is due; raises ``ApiGone``."""
        items, self.resource_version = await objects.list()
        self.lists += 1
        self.cache.replace(items)
        if not items and not self._empty_logged:
            self._empty_logged = True
            log.warning(
                "Kubernetes discovery finds no %s: check K8S_NAMESPACE and %s",
                objects.what,
                "K8S_LABEL_SELECTOR" if self.source == "pods" else "K8S_SERVICE_NAME",
                extra={"event": "discovery.empty"},
            )
        self._publish()
        loop = asyncio.get_running_loop()
        resync_at = loop.time() + self.interval
        delay = _BACKOFF_FIRST
        while (remaining := resync_at - loop.time()) > 0:
            started = loop.time()
            settled: asyncio.TimerHandle | None = None

            def answered() -> None:
                nonlocal settled
                settled = loop.call_later(_SETTLED, self._working, objects.what)

            try:
                async with asyncio.timeout(remaining + 5):
                    async for event in objects.watch(self.resource_version, remaining, answered):
                        delay = _BACKOFF_FIRST
                        self._working(objects.what)
                        if event.resource_version:
                            self.resource_version = event.resource_version
                        if event.type != "BOOKMARK":
                            self.cache.apply(event.type, event.object)
                            self._publish()
            except (WatchBroken, TimeoutError) as exc:
                # routine (API server restarts, idle connections cut by a proxy): rewatch from
                # where we were; a rewatch that cannot connect is an outage, raised from there
                log.info("rewatching %s from %s: %s", objects.what, self.resource_version, exc)
            else:
                if loop.time() - started > 1.0:
                    continue  # the server closed a watch that had run its course
            finally:
                if settled is not None:
                    settled.cancel()
            # a watch that ends as soon as it starts must not become a busy loop
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)
        self._working(objects.what)  # a whole resync interval without an error

    def engines(self) -> dict[str, EngineHint]:
        """The engines the cache holds now."""
        objs = self.cache.objects.values()
        if self.source == "pods":
            engines, problems = engines_from_pods(objs, self.settings.engine_port)
            for problem in problems:
                if problem not in self._problems_seen:
                    self._problems_seen.add(problem)
                    log.warning("%s; using the default", problem)
            return engines
        engines, notes = engines_from_endpoint_slices(objs)
        noted = {note.slice: note for note in notes}
        for note in notes:
            if self._port_notes.get(note.slice) != note:
                if note.left_out:
                    log.warning("%s", note.text, extra={"event": "discovery.no_port"})
                else:
                    log.info("%s", note.text, extra={"event": "discovery.only_port"})
        self._port_notes = noted
        return engines

    def _publish(self) -> None:
        engines = self.engines()
        self._known = len(engines)
        if self.cache.objects:
            self._empty_logged = False
        assert self._report is not None
        self._report(set(engines), engines)

    def _begin(self, outage: str, text: str, cause: str) -> bool:
        """Enter or go on with an outage; True when this cause is new to the episode, to log.

        The text shown is always the latest: the episode's first cause may be long gone (an
        API server that was down is back, and answers with a certificate not trusted).
        """
        if self._outage is None:
            self._outage_since = time.time()
            self._causes_logged.clear()
        self._outage, self._outage_text = outage, text
        logged = self._causes_logged.setdefault(outage, set())
        if cause in logged or len(logged) >= _CAUSES_LOGGED:
            # a cause flapping with another is logged once each; endless new ones of a kind
            # (say, server text that names each request) stop being logged, a new kind is not
            return False
        logged.add(cause)
        return True

    def _trouble(self, exc: KubernetesApiError) -> None:
        if isinstance(exc, ApiUnauthorized):
            headline = "Kubernetes API rejected the orchestrator's credentials"
        elif isinstance(exc, ApiRefused):
            headline = "Kubernetes API refused discovery"
        elif isinstance(exc, ApiUnreachable):
            headline = "Kubernetes API unreachable"
        elif isinstance(exc, ApiUntrusted) and _MISMATCH.search(str(exc)):
            # signed by a trusted CA, for another name: the address is what to look at
            headline = (
                "Kubernetes API server's certificate is not for the address the orchestrator"
                " connects to"
            )
        elif isinstance(exc, ApiUntrusted):
            headline = (
                f"Kubernetes API server's certificate is not trusted by {self._trusted_by(exc)}"
            )
        elif isinstance(exc, ApiGone):
            headline = "Kubernetes API answers every watch with 410 Gone, even after a new list"
        else:
            headline = "Kubernetes discovery failed"
        if not self._begin(exc.outage, f"{headline}: {exc}", exc.cause()):
            return
        if isinstance(exc, ApiUnauthorized):
            if self.settings.in_cluster_config:
                whose = "the pod's service-account token (IN_CLUSTER_CONFIG=true)"
            else:
                whose = (
                    f"the user of the kubeconfig {self.settings.kubeconfig or '~/.kube/config'}"
                    " (IN_CLUSTER_CONFIG=false)"
                )
            # not RBAC: the API server does not know who is asking, so roles cannot help
            log.error(
                "%s: %s. Check %s: the token or certificate is expired, invalid or revoked;"
                " keeping the %d engines known and retrying with the configuration loaded afresh",
                headline,
                exc,
                whose,
                self._known,
                extra={"event": "discovery.unauthorized"},
            )
        elif isinstance(exc, ApiRefused):
            log.error(
                "%s: %s. The orchestrator's ServiceAccount needs list and watch on %s in"
                " namespace %s (deployments/rbac.yaml); keeping the %d engines known until it is"
                " allowed",
                headline,
                exc,
                "pods" if self.source == "pods" else "endpointslices.discovery.k8s.io",
                self.settings.k8s_namespace,
                self._known,
                extra={"event": "discovery.refused"},
            )
        elif isinstance(exc, ApiUnreachable):
            log.error(
                "%s: %s; keeping the %d engines known and retrying",
                headline,
                exc,
                self._known,
                extra={"event": "discovery.unreachable"},
            )
        elif isinstance(exc, ApiUntrusted):
            if _MISMATCH.search(str(exc)):
                where = (
                    "KUBERNETES_SERVICE_HOST"
                    if self.settings.in_cluster_config
                    else "the server of the kubeconfig"
                )
                again = f"{where} read afresh (check it is a name the certificate has)"
            elif self.settings.in_cluster_config:
                again = "ca.crt read afresh (the kubelet updates it when the cluster's CA changes)"
            else:
                again = "the kubeconfig read afresh"
            log.error(
                "%s: %s; keeping the %d engines known and retrying with %s",
                headline,
                exc,
                self._known,
                again,
                extra={"event": "discovery.untrusted"},
            )
        elif isinstance(exc, ApiGone):
            # its watch cache lags behind etcd (an API server just restarted, say)
            log.warning(
                "%s: %s; relisting with backoff, keeping the %d engines known",
                headline,
                exc,
                self._known,
                extra={"event": "discovery.gone"},
            )
        else:
            log.error(
                "%s: %s; keeping the %d engines known and retrying",
                headline,
                exc,
                self._known,
                extra={"event": "discovery.failed"},
            )

    def _trusted_by(self, exc: ApiUntrusted) -> str:
        """The CA the client checked the server's certificate against, as the operator set it."""
        if exc.ca_file is None:
            return "the system's CA certificates"
        if self.settings.in_cluster_config:
            return exc.ca_file
        # its certificate-authority, or the data inlined, which the client keeps in a temp file
        kubeconfig = self.settings.kubeconfig or "~/.kube/config"
        return f"the certificate authority of the kubeconfig {kubeconfig}"

    def _unexpected(self, exc: Exception) -> None:
        headline = "Kubernetes discovery failed unexpectedly"
        described = _describe(exc)
        kind = f"unexpected {type(exc).__name__}"
        if self._begin(kind, f"{headline}: {described}", _cause(described)):
            log.error(
                "%s: %s; keeping the %d engines known and retrying with a new client",
                headline,
                described,
                self._known,
                exc_info=exc,
                extra={"event": "discovery.failed"},
            )

    def _working(self, what: str) -> None:
        """A watch delivers (or has stayed open a while): whatever went wrong is over."""
        self._gone_in_a_row = 0
        self._delay = _BACKOFF_FIRST
        if self._outage is not None:
            log.info(
                "Kubernetes API answering again: watching %s",
                what,
                extra={"event": "discovery.recovered"},
            )
        self._outage = None


async def _closed(api_client: Any) -> None:
    """Close the client, if there is one."""
    if api_client is not None:
        await api_client.close()
