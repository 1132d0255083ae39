"""Prometheus metrics of the front door, per model and per replica (prometheus_client, one
registry per app). Replica health and slots are read at scrape time from the live state."""

from __future__ import annotations

from typing import Callable

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        mr = ["model", "replica"]
        self.requests = Counter("aibox_gateway_requests", "Requests answered, by model, replica, endpoint and "
                                "HTTP status (499: the client left)", [*mr, "endpoint", "status"], registry=r)
        self.errors = Counter("aibox_gateway_upstream_errors", "Failures talking to an engine (connect: the "
                              "request was retried on another replica; stream: cut mid-answer; unresponsive: "
                              "the engine hung or a stream went silent, the answer ended with 502)",
                              [*mr, "kind"], registry=r)
        self.rejected = Counter("aibox_gateway_rejected", "Requests refused before reaching an engine "
                                "(queue_full, queue_timeout: 429; unavailable: 503)", ["model", "reason"], registry=r)
        self.in_flight = Gauge("aibox_gateway_in_flight", "Requests in flight on a replica", mr, registry=r)
        self.queue_depth = Gauge("aibox_gateway_queue_depth", "Requests waiting for a free slot", ["model"],
                                 registry=r)
        self.latency = Histogram("aibox_gateway_request_seconds", "Arrival to the last byte relayed", mr,
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("aibox_gateway_first_byte_seconds", "Arrival to the first body byte relayed "
                              "(time to first token for a stream)", mr, buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("aibox_gateway_queue_wait_seconds", "Time spent waiting for a slot", ["model"],
                                    buckets=_LATENCY_BUCKETS, registry=r)
        # Governed access (issue 16): per key and model, for admitted requests; refusals at the gate by reason.
        self.key_requests = Counter("aibox_gateway_key_requests", "Admitted requests by key, model and HTTP status "
                                    "(499: the client left)", ["key", "model", "status"], registry=r)
        self.key_tokens = Counter("aibox_gateway_key_tokens", "Tokens by key and model from the engines' usage "
                                  "(kind: prompt or completion)", ["key", "model", "kind"], registry=r)
        self.denied = Counter("aibox_gateway_access_denied", "Requests refused at the gate (auth_401, auth_403, "
                              "rpm, tokens_per_day, concurrency)", ["reason"], registry=r)
        self._healthy = Gauge("aibox_gateway_replica_healthy", "1 when the replica passes its health checks",
                              mr, registry=r)
        self._slots = Gauge("aibox_gateway_replica_slots", "Slots of the replica (its /health slots_total)",
                            mr, registry=r)
        self._health_failures = Gauge("aibox_gateway_replica_health_failures", "Health checks of the replica "
                                      "timed out in a row (0 when it answers; out at health_failures, below "
                                      "that it serves, slow)", mr, registry=r)

    def bind_replica(self, model: str, replica: str, healthy: Callable[[], float], slots: Callable[[], float],
                     health_failures: Callable[[], float]) -> None:
        self._healthy.labels(model, replica).set_function(healthy)
        self._slots.labels(model, replica).set_function(slots)
        self._health_failures.labels(model, replica).set_function(health_failures)
        self.in_flight.labels(model, replica).set(0)

    def bind_queue(self, model: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(model).set_function(depth)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
