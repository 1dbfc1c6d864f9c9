"""Prometheus metrics of one app instance (its own registry, so several apps in one process, as in the
tests, never share counters).

Events are counted where they happen (requests, generations, cache lookups, uploads). State is read at
scrape time from `sources`: callables returning `{name: value}`, exported as gauges named
`archivist_<source>_<name>`. The generator contributes its `stats()` when it has one (the engine reports
running/waiting sequences, KV-cache use and prefix-cache hit rate there) and the ingest jobs theirs.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

StatsSource = Callable[[], dict[str, float] | None]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNSAFE = re.compile(r"[^a-zA-Z0-9_]")


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: dict[str, StatsSource] = {}

    def collect(self) -> Iterator[Metric]:
        for prefix, source in list(self.sources.items()):
            try:
                stats = source() or {}
            except Exception:  # a scrape must not fail because one part is still loading or broken
                log.warning("metrics source %s failed", prefix, exc_info=True)
                continue
            for name, value in stats.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metric = f"archivist_{prefix}_{UNSAFE.sub('_', name)}"
                    yield GaugeMetricFamily(metric, f"{prefix} {name}", value=float(value))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "archivist_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "archivist_http_request_duration_seconds",
            "Time to the end of the response, by route",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retrieve = Histogram(
            "archivist_retrieve_seconds", "Retrieval time per question", buckets=LATENCY_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "archivist_ttft_seconds",
            "Time from slot to first generated text",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "archivist_generation_queue_seconds",
            "Time waiting for a generation slot",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "archivist_generation_tokens_per_second",
            "Decode speed per answer",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
            registry=r,
        )
        self.generations = Counter(
            "archivist_generations", "Finished generations by finish reason", ["finish_reason"], registry=r
        )
        self.completion_tokens = Counter("archivist_completion_tokens", "Tokens generated", registry=r)
        self.answers = Counter(
            "archivist_answers", "Answers by how they were produced", ["kind"], registry=r
        )  # kind: generated, cached, no_answer, ungrounded
        self.cache_lookups = Counter(
            "archivist_answer_cache_lookups", "Answer cache lookups", ["result"], registry=r
        )
        self.rejected = Counter(
            "archivist_rejected_requests", "Requests turned away by a limit", ["reason"], registry=r
        )
        self.ingested = Counter("archivist_ingest_files", "Uploaded files by outcome", ["status"], registry=r)
        self._state = _StateCollector()
        r.register(self._state)

    def add_source(self, prefix: str, source: StatsSource) -> None:
        self._state.sources[prefix] = source

    def render(self) -> bytes:
        return generate_latest(self.registry)
