"""Prometheus text exposition (version 0.0.4) of the server's counters and latency histogram."""

from __future__ import annotations

from collections import Counter

from dprad.serve.batcher import MicroBatcher

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """Counters and a latency histogram, rendered in the Prometheus text format (version 0.0.4)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.latency_buckets: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.latency_count: Counter[str] = Counter()
        self.reports_scored: Counter[str] = Counter()
        self.budget_refusals: Counter[str] = Counter()
        self.rate_refusals: Counter[str] = Counter()

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        buckets = self.latency_buckets.setdefault(endpoint, [0] * len(LATENCY_BUCKETS))
        for i, le in enumerate(LATENCY_BUCKETS):
            if seconds <= le:
                buckets[i] += 1
        self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds
        self.latency_count[endpoint] += 1

    def render(self, batcher: MicroBatcher) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")

        family("dprad_requests_total", "counter", "HTTP requests by endpoint and status.")
        for (ep, status), v in sorted(self.requests.items()):
            out.append(f'dprad_requests_total{{endpoint="{_esc(ep)}",status="{status}"}} {v}')
        family("dprad_request_latency_seconds", "histogram", "Request latency by endpoint.")
        for ep, buckets in sorted(self.latency_buckets.items()):
            for le, v in zip(LATENCY_BUCKETS, buckets, strict=True):
                out.append(f'dprad_request_latency_seconds_bucket{{endpoint="{_esc(ep)}",le="{le}"}} {v}')
            out.append(
                f'dprad_request_latency_seconds_bucket{{endpoint="{_esc(ep)}",le="+Inf"}} {self.latency_count[ep]}'
            )
            out.append(
                f'dprad_request_latency_seconds_sum{{endpoint="{_esc(ep)}"}} {self.latency_sum[ep]:.6f}'
            )
            out.append(
                f'dprad_request_latency_seconds_count{{endpoint="{_esc(ep)}"}} {self.latency_count[ep]}'
            )
        family("dprad_reports_scored_total", "counter", "Reports scored, by key.")
        for kid, v in sorted(self.reports_scored.items()):
            out.append(f'dprad_reports_scored_total{{key_id="{_esc(kid)}"}} {v}')
        family("dprad_budget_refusals_total", "counter", "Requests refused for lack of budget, by key.")
        for kid, v in sorted(self.budget_refusals.items()):
            out.append(f'dprad_budget_refusals_total{{key_id="{_esc(kid)}"}} {v}')
        family("dprad_rate_limit_refusals_total", "counter", "Requests refused by the rate limit, by key.")
        for kid, v in sorted(self.rate_refusals.items()):
            out.append(f'dprad_rate_limit_refusals_total{{key_id="{_esc(kid)}"}} {v}')
        s = batcher.stats
        family("dprad_batches_total", "counter", "Micro-batches scored by the model.")
        out.append(f"dprad_batches_total {s.batches}")
        family("dprad_model_seconds_total", "counter", "Seconds spent inside the model.")
        out.append(f"dprad_model_seconds_total {s.seconds:.6f}")
        return "\n".join(out) + "\n"


def _esc(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
