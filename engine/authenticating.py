"""ENGINE_TOKEN on the link between the orchestrator and its engines: both ends of it.

An engine with a token takes ``dagengine.v1.Engine`` calls only with ``authorization: Bearer
<ENGINE_TOKEN>`` metadata: ``RequireToken`` is the one gate, a server interceptor that answers
UNAUTHENTICATED (no token sent) or PERMISSION_DENIED (another token) before a request is even
parsed. The health service and reflection stay open: probes and the orchestrator's readiness
checks ask them without a token. The orchestrator sends its token on every call through
``send_token``'s interceptors on each engine channel, so no call site can forget it.

The refusals are not engine errors turned into statuses (``wire.grpc_status``): no service
method runs, so there is no error to map, and the codes are those of gRPC's own auth.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import grpc

log = logging.getLogger(__name__)

AUTHORIZATION: Final = "authorization"
MISSING: Final = (
    "this engine requires ENGINE_TOKEN: the call has no 'authorization: Bearer' metadata"
)
WRONG: Final = "the bearer token is not this engine's ENGINE_TOKEN"
REPORT_EVERY: Final = 60.0
"""Seconds between log lines about refused calls: a client that keeps calling (or a flood)
gets one line a minute, with the count, not one a call."""

_Q = TypeVar("_Q")
_R = TypeVar("_R")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return ((AUTHORIZATION, f"Bearer {token}"),)


def _as_sent(text: str) -> bytes:
    # metadata is ASCII (the settings refuse a token that is not), but what a caller sends is
    # not ours to trust: bytes, so compare_digest takes any text
    return text.encode("utf-8", "surrogateescape")


class RequireToken(grpc.aio.ServerInterceptor):
    """Every method of ``service`` needs the bearer ``token``; other services pass untouched.

    Put it first among a server's interceptors: a refused call gets a handler that takes the
    request as raw bytes and aborts, so nothing of it is parsed or run.
    """

    def __init__(self, token: str, service: str) -> None:
        self._token = _as_sent(token)
        self._prefix = f"/{service}/"
        self._refused = 0
        self._reported_at = -REPORT_EVERY

    def refusal(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> grpc.StatusCode | None:
        """Why a call with this metadata is refused, or None when it carries the token."""
        header = next((v for k, v in metadata or () if k == AUTHORIZATION), None)
        if not isinstance(header, str):
            return grpc.StatusCode.UNAUTHENTICATED
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return grpc.StatusCode.UNAUTHENTICATED
        if not hmac.compare_digest(_as_sent(given.strip()), self._token):
            return grpc.StatusCode.PERMISSION_DENIED
        return None

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[_Q, _R] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[_Q, _R] | None:
        method: str = handler_call_details.method
        if not method.startswith(self._prefix):
            return await continuation(handler_call_details)
        code = self.refusal(handler_call_details.invocation_metadata)
        handler = await continuation(handler_call_details)
        if code is None or handler is None:
            return handler
        return self._refusing(handler, method, code)

    def _refusing(
        self, handler: grpc.RpcMethodHandler[_Q, _R], method: str, code: grpc.StatusCode
    ) -> grpc.RpcMethodHandler[_Q, _R]:
        """A handler of the same kind as ``handler`` that refuses with ``code``."""
        message = MISSING if code is grpc.StatusCode.UNAUTHENTICATED else WRONG
        note = self._note

        async def refuse(context: Any) -> None:
            note(method, code, context.peer())
            await context.abort(code, message)

        refusing: Any
        if handler.unary_stream is not None:

            async def unary_stream(raw: bytes, context: Any) -> AsyncIterator[object]:
                await refuse(context)
                yield None  # never reached (abort raises): it makes this a stream's handler

            refusing = grpc.unary_stream_rpc_method_handler(unary_stream)
        else:

            async def unary_unary(raw: bytes, context: Any) -> object:
                await refuse(context)
                return None  # never reached: abort raises

            refusing = grpc.unary_unary_rpc_method_handler(unary_unary)
        return cast("grpc.RpcMethodHandler[_Q, _R]", refusing)

    def _note(self, method: str, code: grpc.StatusCode, peer: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY:
            return
        log.warning(
            "refused %d call%s without this engine's ENGINE_TOKEN (the last: %s from %s, %s)",
            self._refused,
            "" if self._refused == 1 else "s",
            method,
            peer,
            code.name,
            extra={"event": "engine.refused"},
        )
        self._refused = 0
        self._reported_at = now


# -- the caller's side ----------------------------------------------------------------------------


def send_token(token: str) -> list[grpc.aio.ClientInterceptor]:
    """The interceptors that add ``authorization: Bearer <token>`` to every call on a channel.

    Two objects, one per kind of call the Engine service has: grpc.aio files each interceptor
    under the first kind it is an instance of, so one object of both kinds would be left out
    of the streaming calls (``Execute``)."""
    metadata = bearer(token)
    return [_UnaryWithToken(metadata), _StreamWithToken(metadata)]


class _WithToken:
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*self._metadata)
        for key, value in details.metadata or ():
            if key != AUTHORIZATION:
                metadata.add(key, value)
        return grpc.aio.ClientCallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            details.wait_for_ready,
        )


class _UnaryWithToken(_WithToken, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details), request)


class _StreamWithToken(_WithToken, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Any, client_call_details: grpc.aio.ClientCallDetails, request: Any
    ) -> Any:
        return await continuation(self.details(client_call_details), request)
