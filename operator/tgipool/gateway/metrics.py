"""The gateway's Prometheus metrics, in a registry of their own (one per app, so tests can run many).

| metric | labels | meaning |
|---|---|---|
| `tgipool_gateway_requests_total` | route, code | requests answered |
| `tgipool_gateway_tenant_requests_total` | tenant | authenticated requests (tenant name, never the key) |
| `tgipool_gateway_routed_total` | pool | routing decisions: requests sent to a pool |
| `tgipool_gateway_fallbacks_total` | pool, fallback | spills from a saturated pool to its fallback |
| `tgipool_gateway_rejections_total` | reason | refusals by reason (list below) |
| `tgipool_gateway_retries_total` | pool, reason | endpoint retries: connect_error, status_5xx, overloaded |
| `tgipool_gateway_queue_depth` | pool | requests waiting in a saturated pool's queue |
| `tgipool_gateway_queue_wait_seconds` | pool | time spent queued, for requests that queued |
| `tgipool_gateway_upstream_seconds` | pool | from sending to the endpoint to the last byte received from it |
| `tgipool_gateway_ttft_seconds` | pool | time to first token: arrival to the first event sent (streams) |
| `tgipool_gateway_request_seconds` | pool | end to end: arrival to the last byte sent (up to 30 min) |
| `tgipool_gateway_cold_start_wait_seconds` | pool | time held while a resting pool woke |
| `tgipool_gateway_added_latency_seconds` | pool | overhead: end to end minus upstream time and waits (below)|

Rejection reasons: unauthorized, forbidden, unknown_model, bad_request, client_timeout (a body slower than
clientTimeoutSeconds), too_long, rate_limited, too_large_for_quota (over a whole bucket), overloaded (queue
wait bound passed), queue_full, pool_removed, upstream_error, upstream_timeout (responseTimeoutSeconds),
stream_idle_timeout (streamIdleTimeoutSeconds), wake_timeout, wake_queue_full. A client that leaves before
its answer is counted in `requests_total` with code 499.

Times start at the request's arrival: when the bytes completing its headers reached the connection, before
parsing (`http_server.arrival`), and end at the answer's last byte written. `added_latency_seconds` is what
the client waits for minus the upstream's own time (from sending the request to the upstream's last byte,
over all attempts), minus the time queued for an endpoint (`queue_wait_seconds`) and held while a resting
pool woke (`cold_start_wait_seconds`): the gateway's parsing, tokenizing, routing and relaying.

With a compiled core in front (`tgipool gateway --core`), the core's counts are added into these same
metrics (`core_link.py`), so `/metrics` reports the whole gateway. The core times arrivals and the
upstream's last byte by the kernel's receive stamps (`gatewaycore/stamp_linux.go`), and starts the
upstream's time once the request is written: its own wake-ups count as added latency. Python's times are
taken when it reads, so its added latency leaves out its wake-ups (`docs/gateway-performance.md`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_OVERHEAD_BUCKETS = (
    0.00005,
    0.0001,
    0.0002,
    0.0003,
    0.0005,
    0.00075,
    0.001,
    0.002,
    0.005,
    0.01,
    0.05,
    0.25,
    1.0,
)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# What TGI does not measure: its duration buckets end at 145.6 s, long generations run for minutes.
_REQUEST_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 180, 300, 600, 1200, 1800)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        p = "tgipool_gateway_"
        self.requests = Counter(p + "requests", "Requests answered.", ["route", "code"], registry=r)
        self.tenant_requests = Counter(p + "tenant_requests", "Requests per tenant.", ["tenant"], registry=r)
        self.routed = Counter(p + "routed", "Routing decisions per pool.", ["pool"], registry=r)
        self.fallbacks = Counter(
            p + "fallbacks", "Spills to a fallback pool.", ["pool", "fallback"], registry=r
        )
        self.rejections = Counter(
            p + "rejections", "Requests refused by the gateway.", ["reason"], registry=r
        )
        self.retries = Counter(p + "retries", "Retries on another endpoint.", ["pool", "reason"], registry=r)
        self.queue_depth = Gauge(p + "queue_depth", "Requests waiting per pool.", ["pool"], registry=r)
        # The per-pool histograms by name without the prefix, and their upper bounds (without +Inf).
        self.histograms: dict[str, Histogram] = {}
        self.bounds: dict[str, tuple[float, ...]] = {}

        def per_pool(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            hist = self.histograms[name] = Histogram(p + name, doc, ["pool"], buckets=buckets, registry=r)
            self.bounds[name] = buckets
            return hist

        self.queue_wait = per_pool("queue_wait_seconds", "Time spent queued.", _LATENCY_BUCKETS)
        self.upstream = per_pool("upstream_seconds", "Upstream time per request.", _LATENCY_BUCKETS)
        self.ttft = per_pool(
            "ttft_seconds",
            "Time to first token: from the request's arrival to the first streamed event sent back.",
            _REQUEST_BUCKETS,
        )
        self.request_seconds = per_pool(
            "request_seconds",
            "End-to-end latency: from the request's arrival to the last byte of the answer.",
            _REQUEST_BUCKETS,
        )
        self.cold_start = per_pool(
            "cold_start_wait_seconds",
            "Time a request was held while its resting (warm or cold) pool woke, answered or not.",
            _REQUEST_BUCKETS,
        )
        self.added = per_pool(
            "added_latency_seconds",
            "Gateway overhead per request: from its arrival (before parsing) to the last byte of the answer "
            "written, minus the upstream's time (request sent to its last byte) and time queued or held.",
            _OVERHEAD_BUCKETS,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
