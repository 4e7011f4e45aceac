"""Prometheus metrics of one server (its own registry, so two apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("taskprune_requests", "Prediction requests by task and HTTP status",
                                ["task", "status"], registry=r)
        self.latency = Histogram("taskprune_request_seconds", "Prediction request latency (server side)",
                                 ["task"], buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("taskprune_errors", "Error responses by HTTP status", ["status"], registry=r)
        self.cache_hits = Counter("taskprune_cache_hits", "Task models found in the cache", registry=r)
        self.cache_misses = Counter("taskprune_cache_misses", "Task models cut because not cached", registry=r)
        self.cache_evictions = Counter("taskprune_cache_evictions", "Task models evicted from the cache", registry=r)
        self.cache_bytes = Gauge("taskprune_cache_bytes", "Bytes held by cached task models", registry=r)
        self.cut_seconds = Histogram("taskprune_cut_seconds", "Time to cut a task model from the base",
                                     buckets=LATENCY_BUCKETS, registry=r)
        self.batch_inputs = Histogram("taskprune_batch_inputs", "Inputs per model call (after batching requests)",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
