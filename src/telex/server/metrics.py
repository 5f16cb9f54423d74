"""The server's live figures, in one snapshot, and the same as Prometheus metrics.

Nothing here is on the hot path: the broker and the adapter only add to plain integers
(``Stats``); a snapshot is taken when someone asks (``telex stats``, ``/stats``, a
Prometheus scrape). ``METRICS`` names and explains each figure once, for all three and
for docs/operations.md.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .server import Server

__all__ = ["METRICS", "Histogram", "serve_metrics", "snapshot"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Histogram:
    """Counts of observed values by upper bound (as Prometheus histograms: cumulative on
    the way out), their sum and their count."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, observations at or below it), ending with ``+Inf``."""
        total, out = 0, []
        for bound, count in zip([*map(str, self.bounds), "+Inf"], self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": dict(self.cumulative()), "sum": self.sum, "count": self.count}


# name: (kind, help). Kinds: counter, gauge, histogram; "by" adds a label to a counter.
METRICS: dict[str, tuple[str, str]] = {
    "accepted": ("counter", "Messages acknowledged (taken, and stored when there is a store)."),
    "rejected": ("counter", "Messages answered with a rejection, by ACK status (label status)."),
    "delivered": ("counter", "Messages delivered to a client that acknowledged them."),
    "receipts": ("counter", "Receipts sent to senders of stored messages."),
    "resent": ("counter", "Resent messages recognised as stored already (not stored twice)."),
    "handler_errors": ("counter", "Messages whose handler raised (answered with a rejection)."),
    "auth_failures": ("counter", "Failed logins."),
    "violations": ("counter", "Protocol violations (answered with ERROR)."),
    "connections": ("counter", "Connections accepted."),
    "refused_connections": ("counter", "Connections refused or closed at a limit (label why)."),
    "bytes_in": ("counter", "Bytes read from peers (after TLS)."),
    "bytes_out": ("counter", "Bytes written to peers (before TLS)."),
    "commits": ("counter", "Transactions committed to the store."),
    "commit_failures": ("counter", "Transactions the store refused (their messages rejected)."),
    "connections_open": ("gauge", "Connections open now (label mode: framed, text, handshaking)."),
    "connections_tls": ("gauge", "Connections open now over TLS."),
    "clients": ("gauge", "Framed clients holding a name now."),
    "queued": (
        "gauge",
        "Messages waiting for a client to acknowledge them, by client (label "
        "name): its outbox in the store, or in flight to it.",
    ),
    "queued_oldest_seconds": ("gauge", "Age of the oldest message waiting for each client."),
    "commit_batch_size": ("histogram", "Messages (and marks) per store transaction."),
    "commit_seconds": ("histogram", "Seconds from a batch's hand-over to its commit's end."),
    "uptime_seconds": ("gauge", "Seconds since the server started."),
}


def snapshot(server: Server) -> dict[str, Any]:
    """Every figure now, as plain JSON values (what ``STATS`` sends)."""
    stats = server.broker.stats
    values: dict[str, Any] = {
        name: getattr(stats, name)
        for name, (kind, _) in METRICS.items()
        if kind == "counter" and isinstance(getattr(stats, name, None), int)
    }
    values["rejected_by"] = dict(stats.rejected_by)
    values["refused_by"] = dict(stats.refused_by)
    values.update(server.gauges())
    values["commit_batch_size"] = server.commit_sizes.as_dict()
    values["commit_seconds"] = server.commit_latency.as_dict()
    return values


def families(values: dict[str, Any]) -> Iterator[Any]:
    """The snapshot as prometheus-client metric families, named ``telex_*``."""
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )

    for name, (kind, text) in METRICS.items():
        full = f"telex_{name}"
        family: Any
        if name == "rejected":
            family = CounterMetricFamily(full, text, labels=["status"])
            for status, count in sorted(values["rejected_by"].items()):
                family.add_metric([status], count)
        elif name == "refused_connections":
            family = CounterMetricFamily(full, text, labels=["why"])
            for why, count in sorted(values["refused_by"].items()):
                family.add_metric([why], count)
        elif kind == "counter":
            family = CounterMetricFamily(full, text, value=values[name])
        elif name == "connections_open":
            family = GaugeMetricFamily(full, text, labels=["mode"])
            for mode, count in sorted(values["connections_by_mode"].items()):
                family.add_metric([mode], count)
        elif name in ("queued", "queued_oldest_seconds"):
            family = GaugeMetricFamily(full, text, labels=["name"])
            key = "count" if name == "queued" else "oldest_seconds"
            for client, figures in sorted(values["queued"].items()):
                family.add_metric([client], figures[key])
        elif kind == "gauge":
            family = GaugeMetricFamily(full, text, value=values[name])
        else:
            histogram = values[name]
            buckets = list(histogram["buckets"].items())
            family = HistogramMetricFamily(full, text, buckets=buckets, sum_value=histogram["sum"])
        yield family


def serve_metrics(server: Server, host: str, port: int) -> Any:
    """Serve ``/metrics`` in the Prometheus text format on ``host:port`` (prometheus-client's
    own HTTP server, in a thread); each scrape takes a snapshot on the server's loop."""
    import asyncio

    from prometheus_client import CollectorRegistry, start_http_server

    loop = asyncio.get_running_loop()

    class Collector:
        def collect(self) -> Iterator[Any]:
            future = asyncio.run_coroutine_threadsafe(server.figures(), loop)
            yield from families(future.result(timeout=10))

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return start_http_server(port, addr=host, registry=registry)
