"""Counters for ``GET /v1/metrics``: requests by route and status, recent latencies, in-flight requests."""
from __future__ import annotations

import time
from collections import Counter, defaultdict, deque

import numpy as np

WINDOW = 2048                         # latencies kept per route for the percentiles


class Metrics:
    def __init__(self):
        self.started = time.time()
        self.in_flight = 0
        self.requests: Counter = Counter()                  # (method route, status) -> count
        self.latency: dict[str, deque] = defaultdict(lambda: deque(maxlen=WINDOW))

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = f"{method} {route}"
        self.requests[(key, status)] += 1
        self.latency[key].append(seconds)

    def summary(self) -> dict:
        """JSON-ready: uptime, in-flight, per route the count by status and p50/p95/p99 latency in ms over the last
        ``WINDOW`` requests."""
        routes: dict[str, dict] = {}
        for (key, status), n in sorted(self.requests.items()):
            routes.setdefault(key, {"status": {}})["status"][str(status)] = n
        for key, lat in self.latency.items():
            ms = np.asarray(lat) * 1000.0
            routes.setdefault(key, {"status": {}}).update(
                {f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)})
        return {"uptime_s": round(time.time() - self.started, 1), "in_flight": self.in_flight, "routes": routes}
