"""The access log: one line per request with its id, size, latency and outcome, never its texts.

An ASGI middleware (no request body is buffered here) that gives every request an id (the
client's ``X-Request-ID`` when it is a short token, else a fresh one), echoes it in the
response, records the request in the metrics and logs it on ``secure_ft.serving.access``.
The route is logged by its template, so no client-chosen path or query string is written.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from secure_ft.serving.metrics import ServerMetrics

log = logging.getLogger("secure_ft.serving.access")

REQUEST_ID_KEY = "secure_ft.request_id"
TEXTS_KEY = "secure_ft.texts"  # set by the prediction routes: how many texts the request held
CLIENT_CLOSED_REQUEST = 499  # logged (never sent) when the client went away first, as nginx does
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def request_id(scope) -> str:
    return scope.get(REQUEST_ID_KEY, "-")


class AccessLog:
    """ASGI middleware: request id, metrics and one access-log line per HTTP request."""

    def __init__(self, app, metrics: ServerMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _CLIENT_ID.fullmatch(given) else uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = rid
        started = time.perf_counter()
        seen = {"status": 500, "bytes_in": 0, "bytes_out": 0}

        async def counting_receive():
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes_in"] += len(message.get("body", b""))
            return message

        async def tagging_send(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body":
                seen["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            status = seen["status"]
            self.metrics.observe_request(route, scope["method"], status, seconds)
            if status == CLIENT_CLOSED_REQUEST:
                self.metrics.client_disconnects.labels(route).inc()
                outcome = "client_disconnected"
            else:
                outcome = "ok" if status < 400 else "rejected" if status < 500 else "error"
            log.info("request_id=%s method=%s route=%s status=%d outcome=%s texts=%s bytes_in=%d bytes_out=%d "
                     "latency_ms=%.1f", rid, scope["method"], route, status, outcome, scope.get(TEXTS_KEY, "-"),
                     seen["bytes_in"], seen["bytes_out"], seconds * 1000)
