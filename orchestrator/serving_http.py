"""The orchestrator's HTTP API (DESIGN section 5), on aiohttp.

Handlers are thin: they parse and check the request, call the ``Api`` facade, and shape JSON.
Every error leaves as ``{"error": {"code", "message", "details"}}`` with a fitting status, from
one mapping function, including aiohttp's own (unknown route, oversized body). When a token is
configured every route needs ``Authorization: Bearer <API_TOKEN>`` but ``OPEN_PATHS`` (probes,
metrics, the OpenAPI document); a spec's own ``http.path`` keeps its trigger's auth.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, Final, Protocol

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from engine import installed_version, wire
from engine.core.errors import InputsError, SpecError
from engine.core.states import EXECUTION_STATUSES, EXECUTION_TERMINAL
from engine.core.values import JSON, JSONObject, nests_deeper
from orchestrator.errors import CallerLeft, IdempotencyKeyReused, OrchestratorError
from orchestrator.monitoring import (
    MAX_SUBSCRIBERS,
    EventFilter,
    Hub,
    Published,
    Subscription,
)
from orchestrator.store import (
    EVENTS_PAGE,
    EVENTS_PAGE_MAX,
    LIST_LIMIT,
    MAX_CANCEL_REASON,
    MAX_IDEMPOTENCY_KEY,
    Backup,
    EventPage,
    ExecutionHead,
    Store,
    WorkflowDeleted,
    page_continues,
)
from orchestrator.subworkflows import ChildRequest, ChildStarted
from orchestrator.triggering import TRIGGER_ID, HttpTrigger, Triggers, as_sent

log = logging.getLogger(__name__)

MAX_JSON_DEPTH = wire.MAX_JSON_DEPTH
SSE_HEARTBEAT = 15.0
WAIT_TIMEOUT_DEFAULT = 30.0
WAIT_TIMEOUT_MAX = 300.0


class Api(Protocol):
    """What the HTTP and gRPC adapters need from the orchestrator."""

    hub: Hub
    store: Store
    """Read by ``GET /api/v1/backup`` alone, for the copy of its file."""

    async def execution_event_page(
        self, execution_id: str, *, after_seq: int, limit: int
    ) -> EventPage: ...

    async def register(self, text: str, *, yaml: bool, force: bool) -> tuple[JSONObject, bool]: ...
    async def list_workflows(
        self, after: str | None = None, limit: int | None = None
    ) -> tuple[list[JSONObject], str | None]: ...
    async def get_workflow(self, workflow_id: str, version: str | None = None) -> JSONObject: ...
    async def delete_workflow(self, workflow_id: str) -> WorkflowDeleted: ...
    async def execute(
        self,
        workflow_id: str,
        *,
        inputs: JSON,
        version: str | None,
        idempotency_key: str | None,
        wait: float | None,
        brief: bool = False,
    ) -> tuple[JSONObject, bool]: ...
    async def retry(
        self,
        execution_id: str,
        *,
        idempotency_key: str | None,
        wait: float | None,
        brief: bool = False,
    ) -> tuple[JSONObject, bool]: ...
    async def get_execution(self, execution_id: str) -> JSONObject: ...
    async def execution_head(self, execution_id: str, *, weigh: bool = False) -> ExecutionHead: ...
    def execution_document(
        self, execution_id: str, *, wanted: Callable[[], bool] | None = None
    ) -> AbstractAsyncContextManager[tuple[JSONObject, bool]]: ...
    async def list_executions(
        self, *, workflow_id: str | None, status: str | None, limit: int, before: str | None = None
    ) -> list[JSONObject]: ...
    async def cancel(self, execution_id: str, reason: str) -> JSONObject: ...
    async def cancel_run(self, execution_id: str, reason: str) -> None: ...
    async def execute_sub_workflow(self, request: ChildRequest) -> ChildStarted: ...
    def engines(self) -> list[JSONObject]: ...
    async def readiness(self) -> tuple[bool, str]: ...
    def metrics_payload(self) -> tuple[bytes, str]: ...


BACKUP_TYPE: Final = "application/vnd.sqlite3"
BACKUP_CHUNK: Final = 1 << 20
BACKUPS_AT_ONCE: Final = 2
"""Backups being made or sent at once; another is refused (429) until one is done."""
BACKUP_STALL_S: Final = 60.0
"""Seconds a backup's client may go without taking a chunk before the copy is given up."""
"""Bytes of a backup read (on a thread) and written at a time."""

MAX_URL_BYTES: Final = 8190
WORKFLOW_PAGE: Final = 500
"""Workflows a listing gives when no limit is asked for (at most 10,000)."""
"""Longest request line target, and header value, the API takes: aiohttp's own default."""
PARSER_LINE_BYTES: Final = 64 * 1024
"""What the server's parser lets through to the API (``max_line_size``/``max_field_size``), so
that a request past ``MAX_URL_BYTES`` gets the API's JSON refusal, naming the limit, instead of
the parser's plain text; past this, the parser still answers its own 400."""


OPEN_PATHS: Final = frozenset({"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"})
"""The routes anyone may call when ``API_TOKEN`` is set: what probes and scrapers read, and this
API's description. Every other route of the table needs the bearer token, reads too: a run's
inputs, outputs and events often carry secrets. The OpenAPI document is marked from this set."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpError(Exception):
    """A refusal decided in this module; others come from the facade's error tree."""

    def __init__(self, status: int, code: str, message: str, details: JSONObject | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


class MalformedRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a 10 KB URL, a broken header) with 400
    before any handler runs, and logs it as a server error with a traceback. It is the
    client's mistake: one WARNING line says so."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage | web.RequestPayloadError):
            # a body that cannot be decoded (Content-Encoding: gzip on plain text) comes back
            # once more as aiohttp drains it after the API's answer
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "refused a malformed request: %s", (_parse_problem(exc),)
            record.exc_info = record.exc_text = None
        return True


def _parse_problem(exc: BaseException) -> str:
    """What aiohttp's parser found wrong, from the error or the one it was raised over."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, BadHttpMessage):
            return error.message
    return str(exc).strip().splitlines()[-1].strip()


def error_body(exc: BaseException) -> tuple[int, JSONObject]:
    """The one mapping from an error to an HTTP status and JSON body."""
    if isinstance(exc, HttpError):
        status, code, message, details = exc.status, exc.code, exc.message, exc.details
    elif isinstance(exc, SpecError):
        status, code, message = 400, "invalid_spec", str(exc).splitlines()[0]
        details = {"problems": list(exc.messages())}
    elif isinstance(exc, InputsError):
        status, code, message = 422, "invalid_inputs", str(exc)
        details = {"problems": list(exc.problems)}
    elif isinstance(exc, OrchestratorError):
        status, code, message, details = exc.http_status, exc.code, exc.message, exc.details
    elif isinstance(exc, web.RequestPayloadError):
        status, code, details = 400, "bad_request", {}
        message = f"the request body cannot be read: {_parse_problem(exc)}"
    elif isinstance(exc, web.HTTPException):
        status = exc.status
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            status, "http_error"
        )
        message = exc.reason if status != 413 else "request body is too large"
        details = {}
    else:
        status, code, message, details = 500, "internal", "internal error", {}
    return status, {"error": {"code": code, "message": message, "details": details}}


def check_bearer(header: str, token: str | None, *, grpc: bool = False) -> None:
    """``Authorization: Bearer <token>`` when a token is configured; 401 without, 403 wrong.

    The one check for HTTP headers and gRPC metadata alike; compared in constant time.
    """
    if token is None:
        return
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        # gRPC metadata keys are lower case: grpc-python refuses "Authorization" before
        # sending (INTERNAL: Invalid metadata), so the refusal names the key as it must go
        needed = (
            "'authorization: Bearer <token>' metadata"
            if grpc
            else ("Authorization: Bearer <token>")
        )
        raise HttpError(401, "unauthorized", f"this call needs {needed}")
    if not hmac.compare_digest(as_sent(given.strip()), as_sent(token)):
        raise HttpError(403, "forbidden", "the bearer token is not valid")


async def _read_json(
    request: web.Request, *, required: bool = True, keys_once: bool = True
) -> JSON:
    """The body as JSON, refused with 400 naming the problem. ``keys_once``: a key written
    twice in an object is refused, not left to the last one written; a spec's reader reports
    one itself, with its line and every other problem of the spec."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise HttpError(400, "bad_request", "the request body is empty: send a JSON object")
        return {}
    try:
        value: JSON = (wire.loads_sent if keys_once else wire.loads)(raw)
    except wire.DuplicateKey as exc:
        raise HttpError(
            400, "bad_json", f"the request body holds a {exc}", {"key": exc.shown}
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = (
            f" at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else ""
        )
        raise HttpError(400, "bad_json", f"the request body is not valid JSON{where}") from None
    except RecursionError:
        raise HttpError(
            400, "too_deep", f"the request body nests deeper than {MAX_JSON_DEPTH} levels"
        ) from None
    except ValueError as exc:  # NaN, 1e999, an integer of more than 4300 digits
        raise HttpError(400, "bad_json", f"the request body is not valid JSON: {exc}") from None
    check_json(raw, value, "the request body")
    return value


_SURROGATE_TEXT: Final = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES: Final = re.compile(rb"\\u[dD][89a-fA-F]")


def check_json(raw: str | bytes, value: JSON, what: str) -> None:
    """Refuse parsed JSON nested past ``MAX_JSON_DEPTH``, or escaping a lone UTF-16 surrogate
    (``"\\udc80"``): Python decodes that to a code point no UTF-8 text can hold, so the store
    and the engines could not keep it. Only text with such an escape in it is looked at twice.
    The one check for HTTP bodies and gRPC JSON fields alike."""
    if nests_deeper(value, MAX_JSON_DEPTH):
        raise HttpError(400, "too_deep", f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    found = _SURROGATE_BYTES.search(raw) if isinstance(raw, bytes) else _SURROGATE_TEXT.search(raw)
    if found is None:
        return
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise HttpError(
            400,
            "bad_json",
            f"{what} holds a lone UTF-16 surrogate escape such as \\udc80: "
            "text must be valid Unicode",
        ) from None


_dumps: Final = json.JSONEncoder(separators=(",", ":")).encode


def _json(data: object, status: int = 200) -> web.Response:
    # the one encoder: json.dumps with options builds a new one per call
    return web.json_response(data, status=status, dumps=_dumps)


SPLIT_CHILDREN: Final = 64
"""Containers with this many children or fewer, below the top two levels, are encoded child by
child (a foreach's list of large items); larger ones, whose children are small, in one go."""


def _pieces(value: object, depth: int = 0) -> Iterator[str]:
    """``value`` as compact JSON (the text ``_json`` makes), in pieces: each piece is one call
    of the C encoder, which holds the GIL until it returns, so a thread encoding a document of
    many megabytes lets the event loop run between its pieces, a value at a time."""
    if isinstance(value, dict) and (depth < 2 or len(value) <= SPLIT_CHILDREN) and depth < 5:
        if not value or not all(isinstance(key, str) for key in value):
            yield _dumps(value)
            return
        opening = "{"
        for key, child in value.items():
            yield f"{opening}{_dumps(key)}:"
            yield from _pieces(child, depth + 1)
            opening = ","
        yield "}"
    elif isinstance(value, list) and (depth < 2 or len(value) <= SPLIT_CHILDREN) and depth < 5:
        if not value:
            yield "[]"
            return
        opening = "["
        for child in value:
            yield opening
            yield from _pieces(child, depth + 1)
            opening = ","
        yield "]"
    else:
        yield _dumps(value)


def encode_large(data: object) -> bytes:
    """``data`` as the body ``_json`` sends, encoded in pieces (``_pieces``): run in a thread."""
    return "".join(_pieces(data)).encode()


async def _document_answer(data: JSONObject, large: bool) -> web.Response:
    """The answer carrying a run's document: a large one is encoded off the event loop, so
    probes and small reads are answered meanwhile; the document is sent whole all the same."""
    if not large:
        return _json(data)
    body = await asyncio.to_thread(encode_large, data)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _trigger_fields(body: JSON) -> tuple[JSON, str | None, float | None]:
    """inputs, version and the wait timeout (None: answer at once) of a trigger request."""
    if not isinstance(body, dict):
        raise HttpError(400, "bad_request", 'the body must be a JSON object: {"inputs": {...}}')
    _known_fields(body, ("inputs", "version", "wait", "timeout"))
    # null is none, as an absent "inputs" is: clients write an unset map so (Go's nil, Java's
    # defaults), and gRPC's inputs_json "null" means the same
    inputs = body.get("inputs")
    if inputs is None:
        inputs = {}
    version = body.get("version")
    if version is not None and not isinstance(version, str):
        raise HttpError(400, "bad_request", 'version must be a string such as "^1.2"')
    return inputs, version, _wait_fields(body)


def _known_fields(body: dict[str, JSON], allowed: tuple[str, ...]) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise HttpError(
            400,
            "bad_request",
            f"unknown field(s) {', '.join(sorted(unknown))}",
            {"allowed": list(allowed)},
        )


def _wait_fields(body: dict[str, JSON]) -> float | None:
    """The wait timeout a body's ``wait`` and ``timeout`` ask for (None: answer at once)."""
    wait_flag = body.get("wait", False)
    if not isinstance(wait_flag, bool):
        raise HttpError(400, "bad_request", "wait must be true or false")
    timeout = body.get("timeout", WAIT_TIMEOUT_DEFAULT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise HttpError(400, "bad_request", "timeout must be a positive number of seconds")
    return min(float(timeout), WAIT_TIMEOUT_MAX) if wait_flag else None


def _query_options(request: web.Request) -> tuple[str | None, float | None]:
    """version and wait timeout from the query string (``raw_body`` hooks: the body is the
    sender's, so ``?version=^1&wait=true&timeout=5`` carries the options)."""
    q = request.query
    _once(request, ("version", "wait", "timeout"))
    wait_text = q.get("wait", "false").lower()
    if wait_text not in ("true", "false", "1", "0"):
        raise HttpError(400, "bad_request", "wait must be true or false")
    try:
        timeout = float(q.get("timeout", WAIT_TIMEOUT_DEFAULT))
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < math.inf:
        raise HttpError(400, "bad_request", "timeout must be a positive number of seconds")
    wait = min(timeout, WAIT_TIMEOUT_MAX) if wait_text in ("true", "1") else None
    return q.get("version") or None, wait


def _flag(request: web.Request, name: str) -> bool:
    """A yes/no query parameter: absent is no; a value that is neither is refused."""
    text = request.query.get(name, "false").lower()
    if text not in ("", "true", "false", "1", "0", "yes", "no"):
        raise HttpError(400, "bad_request", f"{name} must be true or false, got {text!r}")
    return text in ("", "true", "1", "yes")


def _connected(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise HttpError(
            400, "bad_request", f"Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY} characters"
        )
    return key


def _trigger_answer(
    execution: JSONObject, waited: bool, extra: JSONObject | None = None
) -> web.Response:
    status_url = f"/api/v1/executions/{execution['id']}"
    if waited and execution.get("finished_at"):
        return _json(
            {
                "execution_id": execution["id"],
                "status": execution["status"],
                "outputs": execution.get("outputs"),
                "error": execution.get("error"),
                "status_url": status_url,
                **(extra or {}),
            }
        )
    return _json(
        {
            "execution_id": execution["id"],
            "status": execution["status"],
            "status_url": status_url,
            **(extra or {}),
        },
        202,
    )


def _limit(request: web.Request, default: int, most: int) -> int:
    _once(request, ("limit",))
    raw = request.query.get("limit", str(default))
    # ASCII digits only: int() also reads "1_0" and other scripts' digits
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9):
        shown = wire.bounded(raw, 40)
        raise HttpError(400, "bad_request", f"limit must be a whole number, got {shown!r}")
    limit = int(raw)
    if not 1 <= limit <= most:
        raise HttpError(400, "bad_request", f"limit must be between 1 and {most}")
    return limit


def _check_sizes(request: web.Request) -> None:
    size = len(request.raw_path.encode())
    if size > MAX_URL_BYTES:
        raise HttpError(
            414,
            "url_too_long",
            f"the URL is {size} bytes, over the limit of {MAX_URL_BYTES}",
            {"limit": MAX_URL_BYTES},
        )
    for name, value in request.raw_headers:
        if len(value) > MAX_URL_BYTES:
            header = name.decode("latin-1")
            raise HttpError(
                431,
                "header_too_large",
                f"header {header} is {len(value)} bytes, over the limit of {MAX_URL_BYTES}",
                {"header": header, "limit": MAX_URL_BYTES},
            )


class HttpApi:
    def __init__(
        self, api: Api, *, token: str | None, max_body: int, triggers: Triggers | None = None
    ) -> None:
        self.api = api
        self.token = token
        self.max_body = max_body
        self.triggers = triggers
        self._backups_sending = 0
        self._version = installed_version()

    # -- plumbing ---------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler]]:
        """The route table: method, path and handler. ``app`` guards all but ``OPEN_PATHS``."""
        return [
            ("POST", "/trigger/{workflow_id}", self.trigger),
            ("GET", "/api/v1/workflows", self.list_workflows),
            ("POST", "/api/v1/workflows", self.register),
            ("GET", "/api/v1/workflows/{workflow_id}", self.get_workflow),
            ("DELETE", "/api/v1/workflows/{workflow_id}", self.delete_workflow),
            ("GET", "/api/v1/workflows/{workflow_id}/versions/{version}", self.get_version),
            ("POST", "/api/v1/workflows/{workflow_id}/executions", self.trigger),
            ("GET", "/api/v1/executions", self.list_executions),
            ("GET", "/api/v1/executions/{execution_id}", self.get_execution),
            ("POST", "/api/v1/executions/{execution_id}/cancel", self.cancel),
            ("POST", "/api/v1/executions/{execution_id}/retry", self.retry),
            ("GET", "/api/v1/executions/{execution_id}/events", self.execution_events),
            ("GET", "/api/v1/events", self.live_events),
            ("GET", "/api/v1/engines", self.engines),
            ("GET", "/api/v1/backup", self.backup),
            ("GET", "/api/v1/triggers", self.list_triggers),
            ("POST", "/api/v1/triggers", self.create_trigger),
            ("GET", "/api/v1/triggers/{trigger_id}", self.get_trigger),
            ("DELETE", "/api/v1/triggers/{trigger_id}", self.delete_trigger),
            ("POST", "/api/v1/triggers/{trigger_id}/pause", self.pause_trigger),
            ("POST", "/api/v1/triggers/{trigger_id}/resume", self.resume_trigger),
            ("GET", "/api/v1/triggers/{trigger_id}/history", self.trigger_history),
            ("GET", "/api/v1/openapi.json", self.openapi),
            ("GET", "/metrics", self.metrics),
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.readyz),
        ]

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body, middlewares=[self._errors, self._hooks]
        )
        r = app.router
        for method, path, handler in self.routes():
            # the token is checked before the handler does anything: before a body is read,
            # the store is asked, or a live stream takes one of the hub's places
            guarded = handler if path in OPEN_PATHS else self._guard(handler)
            if method == "GET":
                r.add_get(path, guarded)  # and HEAD, through the same guard
            else:
                r.add_route(method, path, guarded)
        return app

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            _check_sizes(request)
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except ConnectionResetError:
            # the client left while its body was on the way: no one is there to answer
            log.debug("%s %s: the client went away mid-request", request.method, request.path)
            return web.Response(status=400)
        except Exception as exc:  # every refusal leaves as the same JSON shape
            if isinstance(exc, web.HTTPRequestEntityTooLarge):
                # aiohttp's own says neither the limit nor what sets it
                exc = HttpError(
                    413,
                    "body_too_large",
                    f"the request body is larger than the {self.max_body} bytes this server "
                    "takes (MAX_BODY_BYTES)",
                    {"limit": self.max_body},
                )
            status, body = error_body(exc)
            if isinstance(exc, OrchestratorError) and status >= 500:
                # a refusal this service decided (a full disk, a hook whose secret is not set):
                # one line, not a traceback per request anyone may send
                log.warning("%s %s refused: %s", request.method, request.path, exc.message)
            elif status >= 500:
                log.exception("%s %s failed", request.method, request.path)
            response = _json(body, status)
            if isinstance(exc, OrchestratorError) and exc.retry_after is not None:
                response.headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, web.RequestPayloadError):
                # the rest of the body cannot be read either, so the connection ends here: said
                # so, a client does not send its next request down it
                response.force_close()
            if isinstance(exc, web.HTTPMethodNotAllowed):
                # what the route does take: HTTP requires it on a 405
                response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
            return response

    @web.middleware
    async def _hooks(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # spec http.path routes arrive with registrations at run time: looked up here when no
        # built-in route matched, so they never shadow the API
        if self.triggers is not None and request.match_info.http_exception is not None:
            hook = self.triggers.route(request.path)
            if hook is not None:
                return await self.hook(request, hook)
        return await handler(request)

    def _guard(self, handler: Handler) -> Handler:
        """``handler`` behind the bearer check: the one way a route of the table is guarded."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            check_bearer(request.headers.get("Authorization", ""), self.token)
            return await handler(request)

        return guarded

    # -- workflows --------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        force = _flag(request, "force")
        ctype = request.content_type
        is_yaml = ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, "bad_request", "the spec is not UTF-8 text") from None
        if not text.strip():
            raise HttpError(400, "bad_request", "the request body is empty: send a workflow spec")
        if not is_yaml:
            # JSON errors and depth limits, before the registry sees it
            try:
                await _read_json(request, keys_once=False)
            except HttpError as exc:
                if exc.code != "bad_json" or text.lstrip().startswith(("{", "[")):
                    raise
                # most often YAML sent without its type (curl --data-binary sends a form's)
                given = "Content-Type" in request.headers  # else aiohttp says octet-stream
                sent = f"Content-Type {ctype}" if given else "no Content-Type"
                raise HttpError(
                    exc.status,
                    exc.code,
                    f"{exc.message} (sent with {sent}; a YAML spec needs Content-Type: "
                    "application/yaml)",
                    exc.details,
                ) from None
        workflow, created = await self.api.register(text, yaml=is_yaml, force=force)
        return _json({"workflow": workflow, "created": created}, 201 if created else 200)

    async def list_workflows(self, request: web.Request) -> web.Response:
        _once(request, ("after",))
        # paged as triggers are: a registry of thousands of workflows, each with its list of
        # versions, made answers of megabytes that held the event loop while built
        found, next_after = await self.api.list_workflows(
            request.query.get("after") or None, _limit(request, WORKFLOW_PAGE, 10_000)
        )
        return _json({"workflows": found, "next_after": next_after})

    async def get_workflow(self, request: web.Request) -> web.Response:
        version = request.query.get("version") or None
        return _json(await self.api.get_workflow(request.match_info["workflow_id"], version))

    async def delete_workflow(self, request: web.Request) -> web.Response:
        deleted = await self.api.delete_workflow(request.match_info["workflow_id"])
        return _json(
            {
                "id": deleted.workflow_id,
                "deleted": True,
                "versions": deleted.versions,
                "triggers": deleted.triggers,
                "executions": deleted.executions,
            }
        )

    async def get_version(self, request: web.Request) -> web.Response:
        return _json(
            await self.api.get_workflow(
                request.match_info["workflow_id"], request.match_info["version"]
            )
        )

    # -- executions -------------------------------------------------------------------------

    async def trigger(self, request: web.Request) -> web.Response:
        inputs, version, wait = _trigger_fields(await _read_json(request, required=False))
        execution, _created = await self.api.execute(
            request.match_info["workflow_id"],
            inputs=inputs,
            version=version,
            idempotency_key=_idempotency_key(request),
            wait=wait,
            brief=True,
        )
        return _trigger_answer(execution, wait is not None)

    async def hook(self, request: web.Request, hook: HttpTrigger) -> web.Response:
        """A spec's own ``http.path``: that trigger's auth, then as ``/trigger``; with
        ``raw_body`` the whole JSON body is the inputs and options come in the query."""
        if request.method != "POST":
            # as aiohttp's own 405 for the API's routes: with the Allow header HTTP requires
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        triggers = self._trigger_set()
        raw = await request.read()  # the size limit applies here
        signature = hook.authenticate(request.headers, raw, triggers.environ, self.token)
        key = _idempotency_key(request)
        delivery = None
        if key is None and signature is not None and hook.raw_body:
            # A third party's signed delivery sent again is the same body, so the same
            # signature: a GitHub redelivery, or a request caught and replayed (the signature
            # covers neither headers nor the query). It gets the first run, for as long as
            # keys are kept, and a replay with other query options is refused as a key reused.
            # Per path: two hooks of one workflow sharing a secret are two senders.
            named = f"{hook.path}\0{signature}".encode()
            key = delivery = f"delivery:{hashlib.sha256(named).hexdigest()}"
        if hook.raw_body:
            # a third party's payload, as it sends it: a key twice there is its sender's to
            # fix, and no one who could is asked, so the last one wins as in most readers
            inputs: JSON = await _read_json(request, keys_once=False)
            version, wait = _query_options(request)
        else:
            inputs, version, wait = _trigger_fields(await _read_json(request, required=False))
        try:
            execution, _created = await triggers.call(
                hook, inputs=inputs, version=version, idempotency_key=key, wait=wait
            )
        except IdempotencyKeyReused as exc:
            if delivery is None:
                raise
            raise IdempotencyKeyReused(
                f"this signed delivery to {hook.path} was taken for execution "
                f"{exc.details.get('execution_id')} with another version in the query: a "
                "delivery sent again gets its first run for 24 hours, whatever its query says",
                exc.details,
            ) from None
        return _trigger_answer(execution, wait is not None)

    async def list_executions(self, request: web.Request) -> web.Response:
        q = request.query
        limit = _limit(request, 50, LIST_LIMIT)
        _once(request, ("workflow", "status", "before"))
        found = await self.api.list_executions(
            workflow_id=q.get("workflow") or None,
            status=q.get("status") or None,
            limit=limit,
            before=q.get("before") or None,
        )
        # a full page, or one cut by size, may have more behind it: where the next one starts
        after = found[-1]["id"] if page_continues(found, limit) else None
        return _json({"executions": found, "next_before": after})

    async def get_execution(self, request: web.Request) -> web.Response:
        # the whole document, a large one built and encoded within the large-read budget
        return await self._document(request, request.match_info["execution_id"])

    async def _document(self, request: web.Request, execution_id: str) -> web.Response:
        """The run's document; a large one only while its caller is still there when its turn
        comes (aiohttp does not cancel a handler whose client hung up)."""
        try:
            async with self.api.execution_document(
                execution_id, wanted=lambda: _connected(request)
            ) as (doc, large):
                return await _document_answer(doc, large)
        except CallerLeft:
            return web.Response(status=204)  # nobody reads it: what is answered does not matter

    async def cancel(self, request: web.Request) -> web.Response:
        body = await _read_json(request, required=False)
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", 'the body must be a JSON object: {"reason": ...}')
        unknown = sorted(set(body) - {"reason"})
        if unknown:
            raise HttpError(
                400,
                "bad_request",
                f"unknown field(s) {', '.join(unknown)}",
                {"allowed": ["reason"]},
            )
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise HttpError(400, "bad_request", "reason must be a string")
        execution_id = request.match_info["execution_id"]
        await self.api.cancel_run(execution_id, reason or "cancelled on request")
        return await self._document(request, execution_id)

    async def retry(self, request: web.Request) -> web.Response:
        body = await _read_json(request, required=False)
        if not isinstance(body, dict):
            raise HttpError(400, "bad_request", 'the body must be a JSON object: {"wait": true}')
        _known_fields(body, ("wait", "timeout"))
        wait = _wait_fields(body)
        execution_id = request.match_info["execution_id"]
        execution, _created = await self.api.retry(
            execution_id, idempotency_key=_idempotency_key(request), wait=wait, brief=True
        )
        return _trigger_answer(execution, wait is not None, {"retry_of": execution_id})

    async def execution_events(self, request: web.Request) -> web.Response:
        """One page of the stored timeline: a run of thousands of nodes has tens of thousands
        of events, too many to read, hold and encode per request. ``next_after_seq`` is where
        the next page starts, null once the page reaches the end of what is stored."""
        execution_id = request.match_info["execution_id"]
        after = _after_seq(request)
        limit = _limit(request, EVENTS_PAGE, EVENTS_PAGE_MAX)
        page = await self.api.execution_event_page(execution_id, after_seq=after, limit=limit)
        return _json({"events": page.events, "next_after_seq": page.next_after_seq})

    async def live_events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events. With ?execution= the stored timeline is replayed first (after
        Last-Event-ID), and the stream ends with the run's final event; a reconnect after that
        gets 204, which tells an EventSource to stop reconnecting. When the server stops first,
        the stream just closes: the EventSource reconnects with Last-Event-ID."""
        _once(request, ("workflow", "execution"))
        if request.method == "HEAD":
            # the headers of a stream, without one: a HEAD took one of the live places and
            # held it until the first heartbeat found no one there
            return web.Response(headers={"Content-Type": "text/event-stream"})
        flt = EventFilter(
            workflow_id=request.query.get("workflow") or None,
            execution_id=request.query.get("execution") or None,
        )
        with self.api.hub.subscribe(flt) as sub:  # before the replay, so nothing falls between
            events: AsyncGenerator[list[Published] | None]
            if flt.execution_id is not None:
                # the run's row, not its document: opening a stream folds none of its events
                run = await self.api.execution_head(flt.execution_id)  # 404 before it opens
                check_run_of(run, flt)
                after = _last_event_id(request)  # 400 before it opens, too
                replay = await stored_page(self.api, flt.execution_id, after, run)
                if replay is None:
                    return web.Response(status=204)  # ended, and its end was seen already
                events = follow_execution(
                    self.api, sub, flt.execution_id, replay, after, heartbeat=SSE_HEARTBEAT
                )
            else:
                events = follow_all(sub, SSE_HEARTBEAT)
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            # only one run's events carry ids a reconnect can resume from: seq counts per run
            with_ids = flt.execution_id is not None
            try:
                async with aclosing(events):
                    async for batch in events:
                        if batch is None:
                            await response.write(b": keep-alive\n\n")
                        else:
                            await _sse(response, batch, with_ids)
            except ConnectionError:  # reset, or lost while a write waited to drain
                pass  # the client went away: nothing to answer
            return response

    async def engines(self, request: web.Request) -> web.Response:
        return _json({"engines": self.api.engines()})

    # -- triggers ---------------------------------------------------------------------------

    async def backup(self, request: web.Request) -> web.StreamResponse:
        """A consistent copy of the state database, checked, as one SQLite file."""
        if request.method == "HEAD":
            # its length is known only once a copy is made: a full copy for a HEAD is waste
            raise HttpError(405, "method_not_allowed", "HEAD makes no backup: GET it")
        if self._backups_sending >= BACKUPS_AT_ONCE:
            # each copy being sent holds its size on the disk STATE_DB is on until sent
            raise HttpError(
                429,
                "too_many_backups",
                f"{self._backups_sending} backups are being sent: try again when one is done",
                {"sending": self._backups_sending},
            )
        self._backups_sending += 1
        try:
            if request.transport is None or request.transport.is_closing():
                raise ConnectionResetError  # gone while it waited: no copy for no one
            made = await self.api.store.backup()
            return await self._send_backup(request, made)
        finally:
            self._backups_sending -= 1

    async def _send_backup(self, request: web.Request, made: Backup) -> web.StreamResponse:
        began, sent = time.monotonic(), 0
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(made.taken_at))
        try:
            response = web.StreamResponse(
                headers={
                    "Content-Type": BACKUP_TYPE,
                    "Content-Disposition": f'attachment; filename="state-{stamp}.db"',
                    "Cache-Control": "no-store",
                }
            )
            response.content_length = made.size
            await response.prepare(request)
            while chunk := await asyncio.to_thread(made.file.read, BACKUP_CHUNK):
                # a client that stops reading holds the copy's blocks on the disk: given up
                # after a while without progress
                async with asyncio.timeout(BACKUP_STALL_S):
                    await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except (ConnectionError, TimeoutError) as exc:
            # the client left, or stopped reading: the copy was unlinked when made, and goes
            # with its file
            why = "stopped reading" if isinstance(exc, TimeoutError) else "left"
            log.info(
                "state database backup: the client %s after %s of %s bytes", why, sent, made.size
            )
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            # the last close of an unlinked file frees its blocks: for a large one, long
            # enough to stall every other request if done on the event loop
            await asyncio.shield(asyncio.to_thread(made.file.close))
        log.info(
            "state database backed up: %s bytes, %s executions, copied and checked in %.2f s, "
            "sent in %.2f s",
            made.size,
            made.summary.executions,
            made.took,
            time.monotonic() - began,
        )
        return response

    def _trigger_set(self) -> Triggers:
        if self.triggers is None:
            raise HttpError(503, "unavailable", "triggers are not running in this server")
        return self.triggers

    async def list_triggers(self, request: web.Request) -> web.Response:
        _once(request, ("workflow", "after"))
        found, next_after = self._trigger_set().page(
            request.query.get("workflow") or None,
            _limit(request, 500, 10_000),
            request.query.get("after") or None,
        )
        # a page that was cut says where the next starts: a list that stops at 500 unsaid
        # looks like all of them
        return _json({"triggers": found, "next_after": next_after})

    async def create_trigger(self, request: web.Request) -> web.Response:
        return _json(await self._trigger_set().create(await _read_json(request)), 201)

    async def get_trigger(self, request: web.Request) -> web.Response:
        return _json(self._trigger_set().get(request.match_info["trigger_id"]))

    async def delete_trigger(self, request: web.Request) -> web.Response:
        return _json(await self._trigger_set().delete(request.match_info["trigger_id"]))

    async def pause_trigger(self, request: web.Request) -> web.Response:
        return _json(await self._trigger_set().pause(request.match_info["trigger_id"]))

    async def resume_trigger(self, request: web.Request) -> web.Response:
        return _json(await self._trigger_set().resume(request.match_info["trigger_id"]))

    async def trigger_history(self, request: web.Request) -> web.Response:
        history = await self._trigger_set().history(
            request.match_info["trigger_id"], _limit(request, 50, 1000)
        )
        return _json({"history": history})

    # -- operations -------------------------------------------------------------------------

    async def metrics(self, request: web.Request) -> web.Response:
        body, content_type = self.api.metrics_payload()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(self, request: web.Request) -> web.Response:
        # the version: which release answers, for dagctl --version and whoever upgrades
        return _json({"status": "ok", "version": self._version})

    async def readyz(self, request: web.Request) -> web.Response:
        ok, why = await self.api.readiness()
        return _json({"status": "ready" if ok else "not ready", "reason": why}, 200 if ok else 503)

    async def openapi(self, request: web.Request) -> web.Response:
        return _json(openapi_document(guarded=self.token is not None))


def _once(request: web.Request, names: tuple[str, ...]) -> None:
    """Refuse a filter given twice, rather than silently use its first value."""
    for name in names:
        if len(request.query.getall(name, [])) > 1:
            raise HttpError(400, "bad_request", f"give {name} once: one value per request")


def _after_seq(request: web.Request) -> int:
    """The ``after_seq`` query parameter: a seq, 0 (the start) when absent."""
    _once(request, ("after_seq",))
    raw = request.query.get("after_seq", "0")
    # ASCII digits only, as for limit; a seq is a SQLite integer, and 18 digits always fit
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        shown = wire.bounded(raw, 40)
        raise HttpError(
            400, "bad_request", f"after_seq must be an event seq (0 or more), got {shown!r}"
        )
    return int(raw)


def _last_event_id(request: web.Request) -> int:
    """The seq a reconnecting EventSource saw last (its Last-Event-ID header); 0 when absent."""
    raw = request.headers.get("Last-Event-ID", "").strip() or "0"
    # a seq is a SQLite integer: 18 digits always fit, and int() refuses 4300 or more
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
        shown = wire.bounded(raw, 40)
        raise HttpError(400, "bad_request", f"Last-Event-ID must be an event seq, got {shown!r}")
    return int(raw)


def _seq(event: JSONObject) -> int:
    seq = event.get("seq")
    return seq if isinstance(seq, int) else 0


_FINAL_TYPES: Final = frozenset(f"execution.{status}" for status in EXECUTION_TERMINAL)


def final_event(event: JSONObject) -> bool:
    """An execution's last event: the one that ends it."""
    return event.get("type") in _FINAL_TYPES


async def follow_all(
    sub: Subscription, heartbeat: float | None
) -> AsyncGenerator[list[Published] | None]:
    """Every event ``sub`` matches, lag markers included, until the hub closes, a batch of
    what is buffered at a time; None for each ``heartbeat`` of quiet."""
    while True:
        try:
            batch = await sub.next_batch(heartbeat)
        except StopAsyncIteration:
            return
        yield batch or None


def check_run_of(run: ExecutionHead, flt: EventFilter) -> None:
    """Both filters given: a run of another workflow is not found (its events would otherwise
    stream as if the workflow filter were not there)."""
    if flt.workflow_id is not None and run.workflow_id != flt.workflow_id:
        raise HttpError(
            404,
            "not_found",
            f"execution {run.id} is a run of {run.workflow_id}, not of {flt.workflow_id}",
            {"execution_id": run.id, "workflow_id": run.workflow_id},
        )


StoredPage = tuple[list[Published], bool]
"""A page of a run's stored events, as streams send them, and whether more are stored past it."""


async def _read_page(api: Api, execution_id: str, after: int) -> StoredPage:
    """A page of the run's stored events past ``after``, shared with every other stream of the
    run that reads the same stretch (``Hub.pages``)."""

    async def fetch(after_seq: int) -> tuple[list[JSONObject], bool]:
        page = await api.execution_event_page(execution_id, after_seq=after_seq, limit=EVENTS_PAGE)
        return page.events, page.next_after_seq is not None

    return await api.hub.pages.read(execution_id, after, fetch)


async def stored_page(
    api: Api, execution_id: str, after: int, run: ExecutionHead
) -> StoredPage | None:
    """The first page a one-run stream sends, past seq ``after``; None when the run has ended
    and the client is at or past its end (HTTP's 204, gRPC's OK at once), which its row tells
    without reading any event."""
    if run.status in EXECUTION_TERMINAL and after >= run.last_seq:
        return None
    replay = await _read_page(api, execution_id, after)
    if not replay[0] and run.status in EXECUTION_TERMINAL:
        return None
    return replay


async def follow_execution(
    api: Api,
    sub: Subscription,
    execution_id: str,
    replay: StoredPage,
    after: int,
    *,
    heartbeat: float | None = None,
) -> AsyncGenerator[list[Published] | None]:
    """One run's events past seq ``after``, each once and in seq order, ending with its final
    event: ``replay`` (the first page of its stored events, read after ``sub`` was opened) and
    the pages after it, then live ones. Yields them in batches: a page, or what ``sub`` had
    buffered.

    Every event is stored before it is published, so when ``sub`` lags, the events it dropped
    are read back from the store instead of leaving a gap: a slow reader still gets the final
    event, and no lag marker. The store is read a page at a time, so a run of many thousand
    events is never held whole. Yields None for each ``heartbeat`` seconds of quiet. Ends
    without sending a final event when the client is past it already (``after`` at or beyond
    it), or when the hub closes (the server is stopping; ``sub.closed`` tells): the caller
    says which to its client. The one loop behind HTTP's SSE and gRPC's WatchEvents."""
    last = after
    pending, more = replay  # more: stored events past this page
    while True:
        batch: list[Published] = []
        for item in pending:
            seq = _seq(item.event)
            if seq <= last:
                continue  # sent already: from the stored timeline, or before a reconnect
            last = seq
            batch.append(item)
            if final_event(item.event):
                yield batch
                return
        if batch:
            yield batch
        pending = []
        if more:
            # shared: the other streams of this run that read this stretch decode it once
            pending, more = await _read_page(api, execution_id, last)
            continue
        try:
            live = await sub.next_batch(heartbeat)
        except StopAsyncIteration:
            return
        if not live:
            yield None
        for item in live:
            event = item.event
            if event.get("type") == "subscriber.lagged":
                more = True  # what follows it is stored too: read from where the client is
                break
            if final_event(event) and _seq(event) <= last:
                return  # the end, which the client says it has seen (after_seq past it)
            pending.append(item)


SSE_WRITE: Final = 64 * 1024
"""Bytes of frames one write carries at most: a larger frame goes in pieces this size, each
after the last has drained, so a client that does not read pins a piece, not the frame."""


async def _sse(response: web.StreamResponse, batch: list[Published], with_id: bool) -> None:
    """Write ``batch``'s frames, the frames shared by every subscriber: together, up to
    ``SSE_WRITE`` bytes a write. ``response.write`` waits for its transport to drain once it
    holds more than 64 KiB."""
    frames = [item.frame(with_id) for item in batch]
    if sum(map(len, frames)) <= SSE_WRITE:  # the common case: a batch is about one write
        await response.write(frames[0] if len(frames) == 1 else b"".join(frames))
        return
    parts: list[bytes] = []
    held = 0
    for frame in frames:
        if parts and held + len(frame) > SSE_WRITE:
            await response.write(parts[0] if len(parts) == 1 else b"".join(parts))
            parts, held = [], 0
        if len(frame) <= SSE_WRITE:
            parts.append(frame)
            held += len(frame)
            continue
        view = memoryview(frame)
        for start in range(0, len(frame), SSE_WRITE):
            await response.write(view[start : start + SSE_WRITE])
    if parts:
        await response.write(parts[0] if len(parts) == 1 else b"".join(parts))


def _op(
    summary: str,
    *,
    body: str | None = None,
    responses: dict[str, str] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> JSONObject:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {
            code: {
                "description": text,
                "content": {
                    "application/json": {
                        "schema": {
                            "$ref": "#/components/schemas/"
                            + ("Error" if code[0] in "45" else "Any")
                        }
                    }
                },
            }
            for code, text in (responses or {"200": "OK"}).items()
        },
    }
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
        }
    return op


def _status_op(summary: str, texts: dict[str, str]) -> JSONObject:
    """A probe's operation: its answers, a 503 too, are ``{status, reason}``, not errors."""
    op = _op(summary, responses=texts)
    responses = op["responses"]
    assert isinstance(responses, dict)
    for response in responses.values():
        assert isinstance(response, dict)
        response["content"] = {
            "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}
        }
    return op


def _error_responses(texts: dict[str, str]) -> dict[str, Any]:
    """Responses with the Error body, for operations written out by hand."""
    responses = _op("", responses=texts)["responses"]
    assert isinstance(responses, dict)
    return responses


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str = "string", **schema: Any) -> dict[str, Any]:
    """A query parameter; ``schema``: the bounds the server holds it to (minimum, enum...)."""
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind, **schema}}


def openapi_document(*, guarded: bool = True) -> JSONObject:
    """The OpenAPI 3.1 description of every route above; a test holds the two together.
    ``guarded``: the server has an API_TOKEN. Without one, no route asks for it, and a
    client generated from the document sends none."""
    errors = {
        "400": "bad request",
        "404": "not found",
        "413": "body too large",
    }
    listing = {"200": "OK", "400": "a filter or limit with a bad value"}
    key_header = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        # printable UTF-8 text: a control character is refused with 400
        "schema": {
            "type": "string",
            "maxLength": MAX_IDEMPOTENCY_KEY,
            "pattern": "^[^\\x00-\\x1f\\x7f]*$",
        },
    }
    trigger = _op(
        "Start an execution",
        body="TriggerRequest",
        params=[
            _path_param("workflow_id"),
            key_header,
        ],
        responses={
            "202": "accepted and stored",
            "200": "finished while waiting",
            "422": "inputs refused",
            "429": "queue full (Retry-After)",
            "503": "the state database cannot take the run now (Retry-After); nothing stored",
            **errors,
        },
    )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "DAG Engine orchestrator",
            "version": "1",
            "description": "With API_TOKEN set, every route but /healthz, /readyz, /metrics "
            "and this document needs Authorization: Bearer <token>: 401 without it, 403 when "
            "it is wrong. Besides these routes, each workflow spec's http trigger path "
            "(triggers[].http.path) takes POST like /trigger/{workflow_id}, with that "
            "trigger's auth; see GET /api/v1/triggers. Any route answers a URL over "
            f"{MAX_URL_BYTES} bytes with 414 url_too_long, and a header value over that with "
            "431 header_too_large (past 64 KiB for a URL and 16 KiB for a header value, the "
            "HTTP parser's own plain-text 400).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Any": {},
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "object"},
                            },
                        }
                    },
                },
                "TriggerRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "inputs": {"type": ["object", "null"]},
                        "version": {"type": "string"},
                        "wait": {"type": "boolean"},
                        "timeout": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
                "Spec": {
                    "type": "object",
                    "required": ["id", "version", "nodes"],
                    "description": "a workflow spec (DESIGN section 3); YAML with "
                    "Content-Type application/yaml",
                },
                "RetryRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "wait": {"type": "boolean"},
                        "timeout": {"type": "number", "exclusiveMinimum": 0},
                    },
                },
                "CancelRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    # null is none, as an absent reason is
                    "properties": {
                        "reason": {"type": ["string", "null"], "maxLength": MAX_CANCEL_REASON}
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string"},
                        "reason": {"type": "string"},
                        # /healthz: the release that answers
                        "version": {"type": "string"},
                    },
                },
                "TriggerCreate": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["workflow_id", "cron"],
                    "properties": {
                        "id": {"type": "string", "pattern": f"^{TRIGGER_ID.pattern}$"},
                        "workflow_id": {"type": "string"},
                        "version": {"type": "string"},
                        "cron": {"type": "string"},
                        "timezone": {"type": "string"},
                        "overlap": {"enum": ["skip", "allow", "cancel_previous"]},
                        "catchup": {"enum": ["none", "latest", "all"]},
                        "inputs": {"type": "object"},
                        "paused": {"type": "boolean"},
                    },
                },
            },
        },
        "paths": {
            "/trigger/{workflow_id}": {"post": trigger},
            "/api/v1/workflows": {
                "get": _op(
                    "Workflows by id, each as the version `latest` runs, 500 unless limit "
                    "says; next_after, when set, is the after of the next page",
                    params=[
                        _query("limit", "integer", minimum=1, maximum=10_000),
                        _query("after"),
                    ],
                    responses=listing,
                ),
                "post": _op(
                    "Register a workflow version",
                    body="Spec",
                    params=[_query("force", "boolean")],
                    responses={
                        "201": "created: {workflow, created}; workflow.warnings, when present, "
                        "says what the spec will not do as the orchestrator stands (an HTTP "
                        "trigger's secret variable not set), registered all the same",
                        "200": "identical content already registered (with warnings as for 201)",
                        "409": "version conflict or dependents out of range",
                        **errors,
                    },
                ),
            },
            "/api/v1/workflows/{workflow_id}": {
                "get": _op(
                    "A workflow with its versions",
                    params=[_path_param("workflow_id"), _query("version")],
                    responses={
                        "200": "OK",
                        "400": "a version range that does not parse",
                        "404": "not found",
                    },
                ),
                "delete": _op(
                    "Delete a workflow: its versions and triggers at once, its executions "
                    "and their events after, in the background; the id is free again once "
                    "they are gone",
                    params=[_path_param("workflow_id")],
                    responses={
                        "200": "deleted: how many versions, triggers and executions it had",
                        "404": "not found",
                        "409": "executions of it are queued or running, or other workflows "
                        "reference it",
                        **errors,
                    },
                ),
            },
            "/api/v1/workflows/{workflow_id}/versions/{version}": {
                "get": _op(
                    "One version: the highest that the version range given matches (an exact "
                    "version, ^1, latest...)",
                    params=[_path_param("workflow_id"), _path_param("version")],
                    responses={"200": "OK", "400": "not a version range", "404": "not found"},
                )
            },
            "/api/v1/workflows/{workflow_id}/executions": {"post": trigger},
            "/api/v1/executions": {
                "get": _op(
                    "Executions, newest first; page with before=<next_before>",
                    params=[
                        _query("workflow"),
                        _query("status", enum=sorted(EXECUTION_STATUSES)),
                        _query("limit", "integer", minimum=1, maximum=LIST_LIMIT),
                        _query("before"),
                    ],
                    responses={**listing, "404": "no execution with the id in before"},
                )
            },
            "/api/v1/executions/{execution_id}": {
                "get": _op(
                    "One execution",
                    params=[_path_param("execution_id")],
                    responses={
                        "200": "OK: the execution JSON; a foreach node's record in nodes adds "
                        "items_done and items_total (its items that succeeded, of how many) "
                        "from its first node.progress event on, and a running one counts for "
                        "that share in progress; a retry's node kept from the run it retries "
                        "adds reused_from, that run's id",
                        "404": "not found",
                    },
                )
            },
            "/api/v1/executions/{execution_id}/cancel": {
                "post": _op(
                    "Cancel an execution and its children",
                    body="CancelRequest",
                    params=[_path_param("execution_id")],
                    responses={"200": "OK", **errors},
                )
            },
            "/api/v1/executions/{execution_id}/retry": {
                "post": _op(
                    "A new run of an execution that ended without succeeding (failed, partial, "
                    "cancelled, timed_out): its version, pinned sub-workflow versions and "
                    "inputs, keeping the outputs of its nodes that succeeded; answered as a "
                    "trigger is, with retry_of",
                    body="RetryRequest",
                    params=[
                        _path_param("execution_id"),
                        key_header,
                    ],
                    responses={
                        "202": "accepted and stored",
                        "200": "finished while waiting",
                        "404": "not found",
                        "409": "not_retryable: the run has not ended, succeeded, is a "
                        "sub-workflow run (retry its parent), or a retry of its chain (it, "
                        "its retries, theirs) is queued or running",
                        "429": "queue full (Retry-After)",
                        "503": "the state database cannot take the run now (Retry-After); "
                        "nothing stored",
                        **errors,
                    },
                )
            },
            "/api/v1/executions/{execution_id}/events": {
                "get": _op(
                    "The stored timeline, a page at a time: {events, next_after_seq}; the "
                    f"next page is after_seq=<next_after_seq>. limit: {EVENTS_PAGE} events "
                    f"unless given, at most {EVENTS_PAGE_MAX}",
                    params=[
                        _path_param("execution_id"),
                        # 18 digits at most: a seq is a SQLite integer
                        _query("after_seq", "integer", minimum=0, maximum=10**18 - 1),
                        _query("limit", "integer", minimum=1, maximum=EVENTS_PAGE_MAX),
                    ],
                    responses={
                        "200": "OK",
                        "400": "after_seq or limit with a bad value",
                        "404": "not found",
                    },
                )
            },
            "/api/v1/events": {
                "get": {
                    "summary": "Live events (Server-Sent Events); with execution, its stored "
                    "timeline first, ending with its final event",
                    "parameters": [
                        _query("workflow"),
                        _query("execution"),
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "description": "with execution: resume after this seq",
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "text/event-stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "204": {"description": "the execution ended and its end was seen"},
                        **_error_responses(
                            {
                                "400": "bad Last-Event-ID",
                                "404": "no such execution",
                                "503": f"{MAX_SUBSCRIBERS} live streams are open (Retry-After)",
                            }
                        ),
                    },
                }
            },
            "/api/v1/engines": {"get": _op("Engines and their load")},
            "/api/v1/backup": {
                "get": {
                    "summary": "A consistent copy of the state database, made with SQLite's "
                    "online backup while the orchestrator runs and checked (quick_check) before "
                    "it is sent; one at a time, a second caller waits",
                    "responses": {
                        "200": {
                            "description": "the SQLite file, with Content-Length and a "
                            'Content-Disposition filename "state-<UTC time>.db"',
                            "content": {
                                BACKUP_TYPE: {
                                    "schema": {"type": "string", "contentEncoding": "binary"}
                                }
                            },
                        },
                        **_error_responses(
                            {
                                "500": "the copy failed its check: nothing was sent",
                                "503": "the state database cannot be used now (Retry-After)",
                                "507": "too little room beside the state database for the "
                                "copy (details: directory, needed, free)",
                            }
                        ),
                    },
                }
            },
            "/api/v1/triggers": {
                "get": _op(
                    "Triggers (cron and HTTP) with their next fire times, by workflow and id; "
                    "next_after, when set, is the after of the next page",
                    params=[
                        _query("workflow"),
                        _query("limit", "integer", minimum=1, maximum=10_000),
                        _query("after"),
                    ],
                    responses=listing,
                ),
                "post": _op(
                    "Create a cron trigger",
                    body="TriggerCreate",
                    responses={"201": "created", "409": "id taken", **errors},
                ),
            },
            "/api/v1/triggers/{trigger_id}": {
                "get": _op(
                    "One trigger",
                    params=[_path_param("trigger_id")],
                    responses={"200": "OK", "404": "not found"},
                ),
                "delete": _op(
                    "Delete a trigger made through the API",
                    params=[_path_param("trigger_id")],
                    responses={"200": "OK", "409": "a spec trigger", **errors},
                ),
            },
            "/api/v1/triggers/{trigger_id}/pause": {
                "post": _op(
                    "Pause: no slot fires until resumed",
                    params=[_path_param("trigger_id")],
                    responses={"200": "OK", **errors},
                )
            },
            "/api/v1/triggers/{trigger_id}/resume": {
                "post": _op(
                    "Resume from now (slots passed while paused are not fired)",
                    params=[_path_param("trigger_id")],
                    responses={"200": "OK", **errors},
                )
            },
            "/api/v1/triggers/{trigger_id}/history": {
                "get": _op(
                    "Decided slots, newest first: fired, skipped, missed, failed",
                    params=[
                        _path_param("trigger_id"),
                        _query("limit", "integer", minimum=1, maximum=1000),
                    ],
                    responses={**listing, "404": "not found"},
                )
            },
            "/api/v1/openapi.json": {"get": _op("This document")},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {"get": _status_op("Liveness", {"200": "alive"})},
            "/readyz": {
                "get": _status_op("Readiness, and why not", {"200": "ready", "503": "not ready"})
            },
        },
    }
    # a spec registers as JSON or as YAML
    register = doc["paths"]["/api/v1/workflows"]["post"]
    register["requestBody"]["content"]["application/yaml"] = {"schema": {"type": "string"}}
    _mark_security(doc["paths"], guarded)
    return doc


def _mark_security(paths: dict[str, Any], guarded: bool) -> None:
    """The bearer token on every operation but those of ``OPEN_PATHS``, from the same set the
    route table is guarded by, with the two refusals a guarded route can give; with no token
    to guard them, none."""
    refusals = _error_responses({"401": "no token", "403": "wrong token"})
    for path, operations in paths.items():
        for op in operations.values():
            if path in OPEN_PATHS or not guarded:
                op["security"] = []  # open even with API_TOKEN set
                continue
            op["security"] = [{"bearer": []}]
            for code, response in refusals.items():
                op["responses"].setdefault(code, response)
