"""A fake Kubernetes API server at the HTTP level: list and watch for EndpointSlices and Pods.

The real ``kubernetes`` client talks to it through a generated kubeconfig, on 127.0.0.1 only. It
speaks the protocol the way the API server does:

- ``GET /apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`` and
  ``GET /api/v1/namespaces/{ns}/pods``, filtered by an equality ``labelSelector``, answer a List
  whose ``metadata.resourceVersion`` is the store's current version;
- with ``watch=true&resourceVersion=N`` they stream newline-delimited JSON events after N
  (ADDED, MODIFIED, DELETED, and BOOKMARK when ``allowWatchBookmarks=true``), ending after
  ``timeoutSeconds``; a version older than the compacted history answers with an ERROR event
  carrying a 410 Status (or, with ``gone_as_http``, an HTTP 410), as etcd compaction does;
- ``forbidden`` makes every request a 403 Status, as an RBAC refusal; ``forbidden_watch`` only
  the watches (a Role granting list but not watch); ``unauthorized`` makes every request a 401,
  as the API server answers an expired or unknown token, and ``tokens`` the bearer tokens it
  accepts (any when None), as it does for a token that expired and was issued anew;
- ``watch_lines`` makes every watch answer 200 and then send those raw lines and end, for an
  ERROR event straight after the acceptance or a line that is no event at all; a ``compacted``
  past every version (``lag_watch_cache()``) makes every watch a 410, even right after a list,
  as an API server whose watch cache lags behind etcd;
- ``drop_watches()`` cuts every open watch connection mid-stream, and ``stop()``/``start()``
  take the whole server away and back on the same port;
- with ``ssl_context`` set it serves https, as the API server always does in a cluster (the
  in-cluster configuration reaches it over TLS with the pod's ``ca.crt``); a new context between
  ``stop()`` and ``start()`` is an API server back with a new certificate.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

JSON = dict[str, Any]

SLICES = "endpointslices"
PODS = "pods"


@dataclass(eq=False)
class _Watcher:
    kind: str
    namespace: str
    selector: dict[str, str]
    bookmarks: bool
    queue: asyncio.Queue[JSON | None] = field(default_factory=asyncio.Queue)
    request: web.Request | None = None


def _selector(raw: str) -> dict[str, str]:
    out = {}
    for part in filter(None, raw.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = value.lstrip("=").strip()
    return out


def _matches(obj: JSON, namespace: str, selector: dict[str, str]) -> bool:
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    return meta.get("namespace") == namespace and all(
        labels.get(k) == v for k, v in selector.items()
    )


def _status(code: int, reason: str, message: str) -> JSON:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class FakeKubeApi:
    def __init__(self) -> None:
        self.version = 1000
        self.objects: dict[str, dict[tuple[str, str], JSON]] = {SLICES: {}, PODS: {}}
        self.history: list[tuple[int, str, str, JSON]] = []
        """(resourceVersion, kind, event type, object) for replaying watches."""
        self.compacted = 0
        """Watches from a resourceVersion below this get 410 Gone."""
        self.forbidden = False
        self.forbidden_watch = False
        self.unauthorized = False
        self.gone_as_http = False
        self.tokens: set[str] | None = None
        self.watch_lines: list[bytes] | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- the server -----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices", self._slices)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._pods)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            "127.0.0.1",
            self.port,
            reuse_address=True,
            ssl_context=self.ssl_context,
        )
        await site.start()
        if not self.port:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def write_kubeconfig(
        self,
        path: Path,
        namespace: str = "default",
        token: str = "fake-token",
        ca_file: Path | None = None,
    ) -> Path:
        """A kubeconfig for this server; ``ca_file`` is its ``certificate-authority``."""
        cluster: JSON = {"server": self.url}
        if ca_file is not None:
            cluster["certificate-authority"] = str(ca_file)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "fake",
                    "context": {"cluster": "fake", "user": "tester", "namespace": namespace},
                }
            ],
            "current-context": "fake",
        }
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        return path

    # -- changing the world ---------------------------------------------------------------------

    def put(self, kind: str, obj: JSON) -> JSON:
        """Create or replace an object; watchers get ADDED or MODIFIED."""
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.setdefault("namespace", "default")
        key = (meta["namespace"], meta["name"])
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        event = "MODIFIED" if key in self.objects[kind] else "ADDED"
        self.objects[kind][key] = obj
        self._emit(kind, event, obj)
        return obj

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        obj = self.objects[kind].pop((namespace, name))
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self._emit(kind, "DELETED", obj)

    def bookmark(self) -> None:
        """Every watcher that asked for bookmarks learns the current resourceVersion."""
        self.version += 1  # other kinds moved on: the watched collection did not change
        for watcher in self._watchers:
            if watcher.bookmarks:
                watcher.queue.put_nowait(self._bookmark(watcher.kind))

    def compact(self) -> None:
        """Forget the history: watches from any version seen so far will get 410 Gone."""
        self.version += 1
        self.compacted = self.version
        self.history.clear()

    def lag_watch_cache(self) -> None:
        """Every watch gets 410 Gone from now on, even from the version a list just gave."""
        self.compacted = 2**62

    def drop_watches(self) -> None:
        """Cut every watch connection mid-stream, as a restarting API server or a proxy does."""
        for watcher in list(self._watchers):
            if watcher.request is not None and watcher.request.transport is not None:
                watcher.request.transport.abort()
            watcher.queue.put_nowait(None)
        self._watchers.clear()  # so that watch_count() counts only the watches opened since

    def watch_count(self) -> int:
        return len(self._watchers)

    def _emit(self, kind: str, event: str, obj: JSON) -> None:
        version = int(obj["metadata"]["resourceVersion"])
        self.history.append((version, kind, event, obj))
        for watcher in self._watchers:
            if watcher.kind == kind and _matches(obj, watcher.namespace, watcher.selector):
                watcher.queue.put_nowait({"type": event, "object": obj})

    def _bookmark(self, kind: str) -> JSON:
        return {
            "type": "BOOKMARK",
            "object": {
                "kind": "EndpointSlice" if kind == SLICES else "Pod",
                "apiVersion": "discovery.k8s.io/v1" if kind == SLICES else "v1",
                "metadata": {"resourceVersion": str(self.version)},
            },
        }

    # -- handlers -------------------------------------------------------------------------------

    async def _slices(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, SLICES, "EndpointSliceList", "discovery.k8s.io/v1")

    async def _pods(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, PODS, "PodList", "v1")

    async def _serve(
        self, request: web.Request, kind: str, list_kind: str, api_version: str
    ) -> web.StreamResponse:
        query = dict(request.query)
        self.requests.append((kind, query))
        namespace = request.match_info["ns"]
        watching = query.get("watch") in ("true", "1")
        # the scheme is case-insensitive (RFC 9110), and the API server reads it so: the client's
        # in-cluster configuration sends "bearer <token>", a kubeconfig "Bearer <token>"
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        bearer = credentials.strip() if scheme.lower() == "bearer" else ""
        if self.unauthorized or (self.tokens is not None and bearer not in self.tokens):
            # what the API server says when no authenticator accepts the request: no user, so
            # nothing about RBAC
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        if self.forbidden or (self.forbidden_watch and watching):
            return web.json_response(
                _status(
                    403,
                    "Forbidden",
                    f'{kind} is forbidden: User "system:serviceaccount:{namespace}:dag-engine"'
                    f" cannot {'watch' if watching else 'list'} resource"
                    f' "{kind}" in API group "" in the namespace "{namespace}"',
                ),
                status=403,
            )
        selector = _selector(query.get("labelSelector", ""))
        if not watching:
            items = [o for o in self.objects[kind].values() if _matches(o, namespace, selector)]
            return web.json_response(
                {
                    "kind": list_kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(self.version)},
                    "items": items,
                }
            )
        return await self._watch(request, kind, namespace, selector, query)

    async def _watch(
        self,
        request: web.Request,
        kind: str,
        namespace: str,
        selector: dict[str, str],
        query: dict[str, str],
    ) -> web.StreamResponse:
        since = int(query.get("resourceVersion") or self.version)
        timeout = float(query.get("timeoutSeconds") or 1800)
        if self.watch_lines is not None:
            accepted = web.StreamResponse(headers={"Content-Type": "application/json"})
            await accepted.prepare(request)
            for line in self.watch_lines:
                await accepted.write(line)
            await accepted.write_eof()
            return accepted
        if since < self.compacted and self.gone_as_http:
            gone = _status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
            return web.json_response(gone, status=410)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        if since < self.compacted:
            gone = _status(410, "Expired", f"too old resource version: {since} ({self.compacted})")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            await response.write_eof()
            return response
        watcher = _Watcher(kind, namespace, selector, query.get("allowWatchBookmarks") == "true")
        watcher.request = request
        for version, k, kind_of_change, obj in self.history:
            if version > since and k == kind and _matches(obj, namespace, selector):
                watcher.queue.put_nowait({"type": kind_of_change, "object": obj})
        self._watchers.add(watcher)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except TimeoutError:
                    break
                if event is None:  # dropped
                    return response
                await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away, or we cut it
        finally:
            self._watchers.discard(watcher)
        return response


# -- objects as the API shows them ----------------------------------------------------------------


def endpoint_slice(
    name: str,
    endpoints: list[tuple[str, bool]],
    port: int,
    *,
    service: str = "workflow-engines",
    namespace: str = "default",
    port_name: str = "grpc",
) -> JSON:
    """An EndpointSlice of ``service`` with (address, ready) endpoints on one named port."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": ready, "serving": ready, "terminating": False},
                "targetRef": {"kind": "Pod", "name": f"engine-{i}", "namespace": namespace},
            }
            for i, (address, ready) in enumerate(endpoints)
        ],
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
    }


def engine_pod(
    name: str,
    ip: str,
    *,
    ready: bool = True,
    phase: str = "Running",
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    namespace: str = "default",
) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app": "workflow-engine", **(labels or {})},
            "annotations": annotations or {},
        },
        "spec": {"containers": [{"name": "engine", "image": "dag-engine/engine"}]},
        "status": {
            "phase": phase,
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
