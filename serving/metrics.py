"""Prometheus metrics of one server (own CollectorRegistry per app, so several apps can live in one process).

    expertmesh_requests_total{endpoint,status}           HTTP requests by endpoint and status code
    expertmesh_prompt_tokens_total / _completion_tokens_total
    expertmesh_request_latency_seconds{endpoint}         submit -> last token (histogram)
    expertmesh_time_to_first_token_seconds{endpoint}     submit -> first token (histogram)
    expertmesh_expert_requests_total{expert}             requests in which the expert took gate mass
    expertmesh_expert_gate_tokens_total{expert}          gate mass x routed tokens (expert-token equivalents)
    expertmesh_engine_*                                  gauges/counters read from Engine.stats() at scrape
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _EngineCollector:
    def __init__(self, engine_ref):
        self.engine_ref = engine_ref

    def collect(self):
        engine = self.engine_ref()
        if engine is None:
            return
        s = engine.stats()
        gauges = {"running_rows": s["running"], "waiting_requests": s["waiting"], "ready": int(s["ready"]),
                  "withdrawal_epoch": s["epoch"], "withdrawn_experts": len(s["withdrawn"]),
                  "fail_closed": int(s["fail_closed"]), "resident_experts": s["resident"]["resident"],
                  "resident_capacity": s["resident"]["capacity"], "members": s["resident"]["members"]}
        for name, value in gauges.items():
            yield GaugeMetricFamily(f"expertmesh_engine_{name}", f"engine {name.replace('_', ' ')}", value=value)
        counters = dict(s["counters"])
        counters.update({"expert_loads": s["resident"]["loads"], "expert_evictions": s["resident"]["evictions"]})
        for name, value in counters.items():
            yield CounterMetricFamily(f"expertmesh_engine_{name}", f"engine {name.replace('_', ' ')}", value=value)
        if s["withdrawals"]:
            yield GaugeMetricFamily("expertmesh_engine_last_withdrawal_apply_seconds",
                                    "seconds from the watcher seeing a change to the engine applying it",
                                    value=s["withdrawals"][-1]["seen_to_applied_s"])


class ServingMetrics:
    def __init__(self, engine_ref):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("expertmesh_requests", "HTTP requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("expertmesh_prompt_tokens", "prompt tokens processed", registry=r)
        self.completion_tokens = Counter("expertmesh_completion_tokens", "tokens generated", registry=r)
        self.latency = Histogram("expertmesh_request_latency_seconds", "submit to last token", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("expertmesh_time_to_first_token_seconds", "submit to first token", ["endpoint"],
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.expert_requests = Counter("expertmesh_expert_requests", "requests in which the expert took gate mass",
                                       ["expert"], registry=r)
        self.expert_tokens = Counter("expertmesh_expert_gate_tokens", "gate mass x routed tokens", ["expert"],
                                     registry=r)
        r.register(_EngineCollector(engine_ref))

    def observe_done(self, endpoint: str, done: dict) -> None:
        usage = done.get("usage", {})
        self.prompt_tokens.inc(usage.get("prompt_tokens", 0))
        self.completion_tokens.inc(usage.get("completion_tokens", 0))
        self.latency.labels(endpoint).observe(done.get("latency_s", 0.0))
        self.ttft.labels(endpoint).observe(done.get("ttft_s", 0.0))
        routing = done.get("routing", {})
        routed = done.get("routed_tokens", 0.0)
        for name, w in routing.get("weights", {}).items():
            if name == "public" or w <= 0:
                continue
            self.expert_requests.labels(name).inc()
            self.expert_tokens.labels(name).inc(w * routed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
