"""The request middleware: request id, arrival time, `Server-Timing: total`, metrics, catch-all.

A pure ASGI middleware (no `BaseHTTPMiddleware`: that one buffers and breaks disconnect detection).
It sits inside Starlette's outermost error middleware, so any exception that escapes the routes
still becomes the one problem+json 500 (logged with the request id) instead of a bare text 500.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from facesr.service import metrics
from facesr.service.api.timing import server_timing_header
from facesr.service.errors import Problem, handle_exception

logger = logging.getLogger("facesr.service")

REQUEST_ID_HEADER = "X-Request-ID"
# Accepted client request ids: short, printable, no separators that could break logs or headers.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/+=-]{0,127}$")
# Route label for requests that matched no route (keeps the metric's cardinality bounded).
UNMATCHED_ROUTE = "unmatched"


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's `X-Request-ID` when it is sane, else a fresh one."""
    for name, value in headers:
        if name.lower() == b"x-request-id":
            candidate = value.decode("latin-1").strip()
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _route_label(scope: Scope) -> str:
    """The matched route's path template; requests refused before routing are matched here."""
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class RequestContextMiddleware:
    """Per-request bookkeeping shared by every route.

    Puts `request_id` and `arrived_at` (time.time()) into `request.state`, echoes the id in the
    response, appends `total` to `Server-Timing`, counts the request in the HTTP metrics and, for
    problems, in the rejection/failure counters (reason from the problem set by the handler).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = request_id_from(scope.get("headers", []))
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrived_at"] = time.time()
        status_code = 500
        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_code = message["status"]
                total = {"total": time.perf_counter() - started}
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), request_id.encode()))
                headers.append((b"server-timing", server_timing_header(total).encode()))
                message = {**message, "headers": headers}
            await send(message)

        metrics.INFLIGHT_REQUESTS.inc()
        try:
            await self.app(scope, receive, send_with_context)
        except Exception as error:
            if response_started:
                logger.exception("error after the response started (request id %s)", request_id)
                raise
            response = await handle_exception(Request(scope, receive), error)
            await response(scope, receive, send_with_context)
        finally:
            metrics.INFLIGHT_REQUESTS.dec()
            route = _route_label(scope)
            metrics.HTTP_REQUESTS.labels(route=route, code=str(status_code)).inc()
            metrics.REQUEST_DURATION.labels(route=route).observe(time.perf_counter() - started)
            problem = state.get("problem")
            if isinstance(problem, Problem):
                count_problem(problem)


def count_problem(problem: Problem) -> None:
    """Count a problem answer in `facesr_rejected_total` or `facesr_request_failures_total`."""
    if problem.outcome == "rejected":
        metrics.REJECTED.labels(reason=problem.reason).inc()
    elif problem.outcome == "failed":
        metrics.REQUEST_FAILURES.labels(reason=problem.reason).inc()
