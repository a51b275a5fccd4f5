"""Prometheus metrics of one server (``GET /metrics``): requests, errors, latency, batch sizes.

Each server has its own registry, so several apps in one process (tests) never share counts.
Routes are recorded by their template (``/v2/models/{name}/infer``), never by raw path, which
keeps label values few and free of client-chosen strings.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """The counters and histograms a server updates, in a registry of its own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("secure_ft_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.errors = Counter("secure_ft_request_errors", "HTTP requests answered with a 4xx or 5xx status",
                              ["route", "status"], registry=self.registry)
        self.latency = Histogram("secure_ft_request_latency_seconds", "Time from request start to response end",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.request_texts = Histogram("secure_ft_request_texts", "Texts per prediction request",
                                       buckets=_SIZE_BUCKETS, registry=self.registry)
        self.client_disconnects = Counter("secure_ft_client_disconnects",
                                          "Requests whose client went away before the answer was sent", ["route"],
                                          registry=self.registry)
        self.connections_closed = Counter(
            "secure_ft_connections_closed", "Connections the server closed on a client: header or body too slow, "
            "or over the connection limit", ["reason"], registry=self.registry)
        self.overloaded = Counter("secure_ft_overloaded", "Prediction requests refused with 503 because too many "
                                  "texts were queued", registry=self.registry)
        self.open_connections = Gauge("secure_ft_open_connections", "Client connections open now",
                                      registry=self.registry)
        self.queued_texts = Gauge("secure_ft_queued_texts", "Texts admitted and not yet answered",
                                  registry=self.registry)
        self.batch_size = Histogram("secure_ft_batch_size", "Texts per forward pass (after dynamic batching)",
                                    buckets=_SIZE_BUCKETS, registry=self.registry)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        if status >= 400:
            self.errors.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
