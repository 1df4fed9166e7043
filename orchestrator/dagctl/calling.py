"""dagctl's HTTP client: JSON requests and the live event stream, on the standard library.

A synchronous urllib client keeps ``dagctl`` quick to start; nothing here needs concurrency. Every
failure leaves as one of two errors, so commands print them one way::

    DagctlError
    ├── Unreachable   no HTTP answer at all (refused, unknown host, timed out)
    ├── ApiError      an HTTP answer with an error status, with the server's
    │                 {"error": {"code", "message", "details"}} when it sent one
    └── CutShort      a download whose body ended before its Content-Length

Server-Sent Events are parsed by ``parse_sse`` (pure, over lines) and read by ``Client.events``.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from engine.core.envparse import loopback_host
from engine.core.printing import one_line as one_line  # shared with engine run
from engine.core.printing import printable as printable
from engine.core.values import JSON, JSONObject

DEFAULT_TIMEOUT = 30.0
STREAM_TIMEOUT = 45.0
"""Seconds without a byte before a live stream counts as broken; the server beats every 15."""
SCHEMES = ("http", "https")


class DagctlError(Exception):
    """Root of the errors dagctl prints as one line (plus details) before exiting 1."""


class Unreachable(DagctlError):
    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"cannot reach the orchestrator at {server}: {reason}")
        self.server = server
        self.reason = reason


class ApiError(DagctlError):
    """An error status from the orchestrator; ``code`` is its stable error code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: JSONObject,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after
        """The seconds its Retry-After header asked a caller to wait, when it sent one."""

    @property
    def passing(self) -> bool:
        """An answer from a server (or a proxy before it) that cannot serve now but may
        shortly: one restarting, or one with no room for another live stream."""
        return self.status in PASSING_STATUSES


class CutShort(DagctlError):
    """A download's body ended (or broke off) before all the bytes it announced came."""

    def __init__(self, server: str, got: int, expected: int, reason: str) -> None:
        super().__init__(
            f"the answer of {server} broke off after {got} of {expected} bytes ({reason})"
        )
        self.got = got
        self.expected = expected


class StreamUnavailable(DagctlError):
    """The live stream could not be opened or broke off; callers fall back to polling.

    ``refusal`` is the server's 404/405 when it had no stream to give: the route is missing,
    or the execution asked for is unknown (polling then reports which).
    """

    def __init__(self, message: str, refusal: ApiError | None = None) -> None:
        super().__init__(message)
        self.refusal = refusal


PASSING_STATUSES: Final = frozenset({502, 503, 504})
"""Statuses of an orchestrator that is away for a moment (a proxy's 502 and 504 while it
restarts behind it, its own 503 when it has no room), not of a refusal."""


NOT_HTTP = "it did not answer HTTP; is that the gRPC port?"
NOT_TLS = "it answered without TLS: is its address http://, not https://?"
_PLAIN_ANSWERS = frozenset(("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"))
"""OpenSSL's reasons for a TLS handshake a plain-HTTP server answered (by version)."""


def server_problem(url: str) -> str | None:
    """Why ``url`` cannot be an orchestrator's base URL, or None when it can be one."""
    for index, char in enumerate(url, 1):
        if not " " < char <= "~":
            return (
                f"character {index} ({char!r}) cannot be in a URL, which holds printable ASCII "
                "without spaces (a host name in its xn-- form, a path percent-encoded)"
            )
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as exc:  # an unclosed [ of an IPv6 address
        return f"not a URL: {exc}"
    if parts.scheme not in SCHEMES:
        return f"the scheme must be http or https, not {parts.scheme or 'none'}"
    if parts.query or parts.fragment:
        return "a server URL takes no ?query or #fragment"
    if "@" in parts.netloc:
        return "a server URL takes no user or password (DAGCTL_TOKEN is sent as a bearer token)"
    # the port as written: urlsplit's own message for a bad one does not name it
    after_host = parts.netloc.rpartition("]")[2]
    _, colon, port = after_host.partition(":")
    if colon and port and not (port.isdecimal() and 1 <= int(port) <= 65535):
        return f"the port must be a number from 1 to 65535, not {port}"
    if not parts.hostname:
        return "no host"
    path = parts.path.rstrip("/")
    if path.endswith(("/api", "/api/v1")) or "/api/v1/" in path:
        # dagctl adds /api/v1/... itself; a prefix a proxy serves the orchestrator under is
        # kept, but the API's own path given again would be asked for twice (/api/api/v1)
        base = f"{parts.scheme}://{parts.netloc}{path.partition('/api')[0]}"
        return f"give the orchestrator's address without the API's path ({path}): {base}"
    return None


def _reason(exc: BaseException) -> str:
    """The few words that say why a request got no answer, with no control character."""
    return printable(_why_not(exc))


def _why_not(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc.reason, str):
        return _why_not(exc.reason)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "the connection closed without an answer"
    if isinstance(exc, http.client.BadStatusLine | http.client.LineTooLong):
        # its bytes are not worth showing: an HTTP/2 SETTINGS frame from a gRPC port, say
        return NOT_HTTP
    if isinstance(exc, ssl.SSLError) and exc.reason in _PLAIN_ANSWERS:
        return NOT_TLS
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _is_loopback(url: str) -> bool:
    try:
        host = urllib.parse.urlsplit(url).hostname or ""
    except ValueError:
        return False
    return loopback_host(host)


_NO_ROUTE: Final = ("Not Found", "404: Not Found")
"""The message of a server's 404 for a path it has no route for (aiohttp's reason, in JSON
from the orchestrator's error handler, or as aiohttp's own text)."""


def _retry_after(value: str | None) -> float | None:
    """A Retry-After header's seconds; None for none, or for an HTTP date (not sent by the
    orchestrator, and a clock apart from ours)."""
    text = (value or "").strip()
    return float(text) if text.isascii() and text.isdigit() and len(text) <= 6 else None


def _http_error(exc: urllib.error.HTTPError) -> ApiError:
    with exc:
        error = _api_error(exc.code, exc.read())
    error.retry_after = _retry_after(exc.headers.get("Retry-After") if exc.headers else None)
    return error


def _api_error(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        details = err.get("details")
        return ApiError(
            status,
            str(err.get("code") or f"http_{status}"),
            str(err.get("message") or ""),
            details if isinstance(details, dict) else {},
        )
    text = raw.decode("utf-8", "replace").strip().splitlines()
    message = text[0][:200] if text else http.client.responses.get(status, "error")
    return ApiError(status, f"HTTP {status}", message, {})


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: JSONObject


DOWNLOAD_CHUNK: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Download:
    """A 200 answer whose body is read as it comes: ``chunks`` until all ``length`` bytes
    came, ``CutShort`` when the body ends or breaks off before that."""

    server: str
    length: int
    content_type: str
    headers: Mapping[str, str]
    _response: http.client.HTTPResponse

    def chunks(self) -> Iterator[bytes]:
        got = 0
        while got < self.length:
            try:
                chunk = self._response.read(min(DOWNLOAD_CHUNK, self.length - got))
            except (OSError, http.client.HTTPException) as exc:
                raise CutShort(self.server, got, self.length, _reason(exc)) from exc
            if not chunk:
                raise CutShort(self.server, got, self.length, "the connection closed")
            got += len(chunk)
            yield chunk


def parse_sse(lines: Iterable[bytes]) -> Iterator[tuple[str | None, str]]:
    """(id, data) for each Server-Sent Event in ``lines``; comments and empty events skipped."""
    data: list[str] = []
    event_id: str | None = None
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data, event_id = [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield event_id, "\n".join(data)


class Client:
    """Calls to one orchestrator; ``server`` is its base URL (``http://host:port``)."""

    def __init__(
        self,
        server: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: how to trust an https server (and what certificate to show it), when the
        system's defaults will not do."""
        self.server = server.rstrip("/")
        self.token = token
        self.timeout = timeout
        # A local orchestrator is never reached through an HTTP proxy from the environment;
        # a remote one is, the way every other HTTP tool would.
        handlers: list[urllib.request.BaseHandler] = (
            [urllib.request.ProxyHandler({})] if _is_loopback(self.server) else []
        )
        if tls is not None:
            handlers.append(urllib.request.HTTPSHandler(context=tls))
        self._opener = urllib.request.build_opener(*handlers)

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        url = self.server + path
        pairs = {k: str(v) for k, v in (query or {}).items() if v is not None}
        return url + ("?" + urllib.parse.urlencode(pairs) if pairs else "")

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> urllib.request.Request:
        all_headers = {"Accept": "application/json", "User-Agent": "dagctl", **(headers or {})}
        request = urllib.request.Request(
            self.url(path, query), data=data, headers=all_headers, method=method
        )
        if self.token:
            # Unredirected: urllib copies ordinary headers onto a redirect, which would hand
            # the token to whatever host (or plain-http URL) the answer points at.
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return request

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        request = self._request(method, path, query=query, data=data, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            error = _http_error(exc)
            if error.status == 404 and error.message in _NO_ROUTE:
                # the server's own answer for a path it has no route for, unlike a 404 about
                # a workflow or a run: most likely a server older than this dagctl
                error = ApiError(
                    404,
                    error.code,
                    f"the server has no {method} {path} (is it older than this dagctl?)",
                    error.details,
                )
            raise error from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.server, _reason(exc)) from exc
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError):
            raise ApiError(status, "bad_answer", "the answer is not JSON", {}) from None
        if not isinstance(body, dict):
            raise ApiError(status, "bad_answer", "the answer is not a JSON object", {})
        return Reply(status, body)

    @contextmanager
    def download(self, path: str, *, accept: str, timeout: float) -> Iterator[Download]:
        """``GET path`` for a body that is not JSON, read in chunks as it comes; ``timeout``:
        seconds without a byte (the server may take long to make it before it answers).
        ``ApiError`` for a refusal or an answer without a Content-Length, ``Unreachable``
        when no answer came."""
        request = self._request("GET", path, headers={"Accept": f"{accept}, application/json"})
        try:
            resp = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.server, _reason(exc)) from exc
        with resp:
            length = (resp.headers.get("Content-Length") or "").strip()
            if not length.isdecimal():
                # without it, a body cut short could not be told from a whole one
                raise ApiError(resp.status, "bad_answer", "the answer has no Content-Length", {})
            yield Download(
                self.server,
                int(length),
                resp.headers.get_content_type(),
                dict(resp.headers.items()),
                resp,
            )

    def get(self, path: str, **query: Any) -> JSONObject:
        return self.call("GET", path, query=query).body

    def post(
        self,
        path: str,
        body: JSON = None,
        *,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        data = json.dumps(body if body is not None else {}).encode()
        return self.call(
            "POST",
            path,
            query=query,
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=timeout,
        )

    def events(
        self,
        query: Mapping[str, Any],
        *,
        last_event_id: int = 0,
        timeout: float = STREAM_TIMEOUT,
        opened: Callable[[], object] | None = None,
    ) -> Generator[JSONObject, None, None]:
        """Live events from ``GET /api/v1/events`` until the server closes the stream;
        ``opened`` is called once it answered (a stream may stay quiet a long while).

        ``StreamUnavailable`` when there is no stream to open (404/405) or it breaks off;
        ``ApiError`` for other refusals, ``Unreachable`` when no answer came.
        """
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = str(last_event_id)
        request = self._request("GET", "/api/v1/events", query=query, headers=headers)
        try:
            resp = self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            error = _http_error(exc)
            if exc.code in (404, 405):
                raise StreamUnavailable(f"no event stream: {error.message}", error) from None
            raise error from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self.server, _reason(exc)) from exc
        with resp:
            if opened is not None:
                opened()
            if resp.status == 204:
                return  # the run ended and its end was seen already: nothing more will come
            kind = resp.headers.get("Content-Type", "")
            if not kind.startswith("text/event-stream"):
                raise StreamUnavailable(f"the event stream answered {kind or 'no content type'}")
            try:
                for _, data in parse_sse(resp):
                    try:
                        event = json.loads(data)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        yield event
            except (OSError, http.client.HTTPException) as exc:
                raise StreamUnavailable(f"the event stream broke off: {_reason(exc)}") from exc
