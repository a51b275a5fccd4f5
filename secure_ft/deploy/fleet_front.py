"""The TLS front sites connect to: the SuperLink's Fleet API, and nothing else.

Flower 1.42's SuperLink serves all of its APIs over HTTP on one port: the Fleet API sites
use (``/v1/fleet/...``), the Control API the ``flwr`` CLI uses (``/v1/control/...``:
registering SuperNodes, listing, starting and stopping runs) and the runtime API of the
ServerApp (``/v1/runtime/...``). The Control API has no authentication of its own in the
open-source SuperLink, so anyone who can reach that port and holds ``ca.crt`` could register
a key. The kit therefore binds the SuperLink to the coordinator's loopback address and puts
this front on the address sites use: it forwards ``POST /v1/fleet/*`` to the SuperLink and
answers 403 to every other path. SuperNode authentication (signed requests from registered
keys) still happens in the SuperLink itself.

One more path is answered by the front itself, when it is given the site registry: a POST to
``/secure-ft/v1/site-identity`` tells a starting SuperNode which site its key is registered as
(`secure_ft.deploy.site_identity`).

Logging: every request at DEBUG (sites poll every few seconds, so INFO would be a line per
poll), and once a minute at INFO a summary — requests forwarded, refused, upstream errors —
when there were any. Refused requests are always logged at WARNING.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from secure_ft.deploy.site_identity import IDENTITY_PATH, answer_identity

log = logging.getLogger(__name__)

FLEET_PREFIX = "/v1/fleet/"
# hop-by-hop headers and those the client library recomputes are never forwarded
_DROPPED = {"host", "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
            "proxy-authorization", "proxy-authenticate", "content-length", "content-encoding"}
REFUSED = "refused: this address serves only the Fleet API (/v1/fleet/); administration is on the coordinator"


SUMMARY_SECONDS = 60.0


class RequestTally:
    """Counts requests by outcome and logs them at INFO at most once every `every_s` seconds."""

    def __init__(self, every_s: float = SUMMARY_SECONDS, clock=time.monotonic):
        self.every_s, self.clock = every_s, clock
        self.counts: Counter[str] = Counter()
        self.since = clock()

    def count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        now = self.clock()
        if now - self.since >= self.every_s:
            log.info("fleet front, last %.0fs: %s", now - self.since,
                     ", ".join(f"{number} {name}" for name, number in sorted(self.counts.items())))
            self.counts.clear()
            self.since = now


def is_fleet_request(method: str, path: str) -> bool:
    """Only a POST to a Fleet API path passes the front."""
    return method == "POST" and path.startswith(FLEET_PREFIX) and ".." not in path


def fleet_front_app(upstream: str, ca_file: Path, timeout_s: float = 120.0,
                    registry_file: Path | None = None) -> Starlette:
    """A Starlette app forwarding Fleet API calls to `upstream` (``https://127.0.0.1:PORT``), verified with `ca_file`.

    With `registry_file` (``sites.json``) it also answers site-identity questions itself.
    """
    context = ssl.create_default_context(cafile=str(ca_file))
    client = httpx.AsyncClient(base_url=upstream, verify=context, timeout=timeout_s)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # httpx logs every request at INFO
    tally = RequestTally()

    async def forward(request: Request) -> Response:
        path = request.url.path
        if registry_file is not None and request.method == "POST" and path == IDENTITY_PATH:
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            status, answer = answer_identity(registry_file, body)
            return JSONResponse(answer, status_code=status)
        peer = request.client.host if request.client else "?"
        if not is_fleet_request(request.method, path):
            log.warning("fleet front: refused %s %s from %s", request.method, path, peer)
            tally.count("refused")
            return PlainTextResponse(REFUSED, status_code=403)
        headers = {key: value for key, value in request.headers.items() if key.lower() not in _DROPPED}
        try:
            upstream_reply = await client.post(path, content=await request.body(), headers=headers,
                                               params=request.query_params)
        except httpx.HTTPError as error:
            log.warning("fleet front: the SuperLink did not answer %s from %s: %s", path, peer, error)
            tally.count("upstream errors")
            return PlainTextResponse("the SuperLink did not answer", status_code=502)
        log.debug("fleet front: %s %s from %s -> %d", request.method, path, peer, upstream_reply.status_code)
        tally.count("forwarded")
        reply_headers = {key: value for key, value in upstream_reply.headers.items() if key.lower() not in _DROPPED}
        return Response(upstream_reply.content, status_code=upstream_reply.status_code, headers=reply_headers)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await client.aclose()

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", forward, methods=methods)], lifespan=lifespan)


def serve_fleet_front(host: str, port: int, upstream: str, pki: Path, registry_file: Path | None = None) -> None:
    """Serve the front with TLS (the SuperLink's certificate) until interrupted."""
    import uvicorn

    app = fleet_front_app(upstream, pki / "ca.crt", registry_file=registry_file)
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=str(pki / "server.pem"),
                            ssl_keyfile=str(pki / "server.key"), log_level="warning", access_log=False,
                            # sites hold long polls open: do not wait for them when stopping
                            timeout_graceful_shutdown=2)
    uvicorn.Server(config).run()
