"""Request IDs: one name per HTTP request, in its response, its error body and the server's log lines.

A fleet puts a load balancer or a gateway in front of several servers; when a client reports a
failed upscale, the operator needs the log lines of that one request. Every response carries
``X-Request-ID``: the client's own value when it sent a usable one (1-128 characters of letters,
digits and ``._~:+/=-``: what proxies and tracing systems send), else a new random one (32 hex
digits). A value that is not usable (too long, spaces, control characters, non-ASCII) is replaced,
not refused: an ID is for finding log lines, and a request must not fail for it. Error bodies
carry it as ``request_id``, and the server's log lines about a request name it.
"""

from __future__ import annotations

import contextvars
import re
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

HEADER = "X-Request-ID"
_HEADER_NAME = HEADER.lower().encode("ascii")  # as ASGI carries header names
MAX_LENGTH = 128
_USABLE = re.compile(rf"[A-Za-z0-9._~:+/=\-]{{1,{MAX_LENGTH}}}")

current: contextvars.ContextVar[str | None] = contextvars.ContextVar("adassr_request_id", default=None)
"""The request ID of the request being handled (None outside a request)."""

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_id_for(sent: str | None) -> str:
    """The ID of a request whose ``X-Request-ID`` header is ``sent`` (None: no header): the client's
    value when usable, else a new random one."""
    if sent is not None and _USABLE.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def log_prefix() -> str:
    """``"request <id>: "`` inside a request, ``""`` outside one: the start of a log line about it."""
    rid = current.get()
    return f"request {rid}: " if rid else ""


def _sent_id(scope: Scope) -> str | None:
    """The request's ``X-Request-ID`` header as text (the first one; None when absent or not ASCII)."""
    for name, value in scope.get("headers", ()):
        if bytes(name).lower() == _HEADER_NAME:
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


class RequestIdMiddleware:
    """ASGI middleware: sets :data:`current` for each HTTP request and adds ``X-Request-ID`` to its
    response (every endpoint, errors and Starlette's own 404/405 included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_for(_sent_id(scope))
        token = current.set(rid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if bytes(k).lower() != _HEADER_NAME]
                headers.append((_HEADER_NAME, rid.encode("ascii")))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current.reset(token)
