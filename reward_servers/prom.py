"""A tiny, thread-safe Prometheus text-format (0.0.4) exporter for the reward pool and its HTTP service.

Why not ``prometheus_client``: its default registry is process-global (two pools in one test process would
collide) and it is not a declared dependency of this package. Counters, gauges and histograms with labels are
all the reward service needs, and the exposition format is small and stable.

Usage::

    reg = Registry()
    items = reg.counter("reward_items_total", "Scored items by status.", ["status"])
    items.inc(status="ok")
    lat = reg.histogram("reward_item_seconds", "Item latency.", buckets=(0.1, 1.0))
    lat.observe(0.3)
    text = reg.render()   # serve with Content-Type CONTENT_TYPE
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"metric {self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count, optionally split by labels."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labelnames)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Adds ``amount`` (>= 0) to the series named by ``labels``."""
        if amount < 0:
            raise ValueError(f"counter {self.name} cannot decrease (amount={amount})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        """Current value of one series (0 if never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.labelnames, k)} {_fmt(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down; either set directly or read from a callback at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> None:
        super().__init__(name, doc)
        self._value = 0.0
        self._fn = fn

    def set(self, value: float) -> None:
        """Sets the gauge (ignored at scrape time when a callback was given)."""
        with self._lock:
            self._value = float(value)

    def get(self) -> float:
        """Current value."""
        if self._fn is not None:
            return float(self._fn())
        with self._lock:
            return self._value

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_fmt(self.get())}"]


class CallbackCounter(Gauge):
    """A counter whose value is read from a callback at scrape time (e.g. restarts counted elsewhere)."""

    kind = "counter"


class Histogram(_Metric):
    """Cumulative-bucket histogram of observed values (seconds, by convention), optionally labelled."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        doc: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        # per series: (bucket counts, not cumulative; sum; count)
        self._series: dict[tuple[str, ...], tuple[list[int], float, int]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Records one observation in the series named by ``labels``."""
        key = self._key(labels)
        with self._lock:
            counts, total, n = self._series.get(key) or ([0] * len(self.buckets), 0.0, 0)
            for i, upper in enumerate(self.buckets):
                if value <= upper:
                    counts[i] += 1
                    break
            self._series[key] = (counts, total + value, n + 1)

    def count(self, **labels: str) -> int:
        """Number of observations in one series."""
        with self._lock:
            entry = self._series.get(self._key(labels))
        return entry[2] if entry else 0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            series = sorted((k, (list(c), s, n)) for k, (c, s, n) in self._series.items())
        for key, (counts, total, n) in series:
            cumulative = 0
            for upper, c in zip(self.buckets, counts, strict=True):
                cumulative += c
                le = _labels(self.labelnames, key, f'le="{_fmt(upper)}"')
                lines.append(f"{self.name}_bucket{le} {cumulative}")
            inf = _labels(self.labelnames, key, 'le="+Inf"')
            lines.append(f"{self.name}_bucket{inf} {n}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_fmt(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {n}")
        return lines


class Registry:
    """An ordered set of metrics rendered together; metric names must be unique."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._lock = threading.Lock()

    def _add(self, metric: _Metric) -> _Metric:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> Counter:
        """Creates and registers a counter."""
        return self._add(Counter(name, doc, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, doc: str, fn: Callable[[], float] | None = None) -> Gauge:
        """Creates and registers a gauge; ``fn`` (if given) is read at every scrape."""
        return self._add(Gauge(name, doc, fn))  # type: ignore[return-value]

    def counter_fn(self, name: str, doc: str, fn: Callable[[], float]) -> CallbackCounter:
        """Creates and registers a counter read from ``fn`` (which must never decrease) at every scrape."""
        return self._add(CallbackCounter(name, doc, fn))  # type: ignore[return-value]

    def histogram(
        self, name: str, doc: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> Histogram:
        """Creates and registers a histogram."""
        return self._add(Histogram(name, doc, labelnames, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        """The whole registry in Prometheus text exposition format 0.0.4."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
