"""mesh-bench: one command that measures every composition method on multi-domain data.

    expertmesh bench --quick            # real corpora, default base, < 15 min on 2 CPU cores
    expertmesh bench --tiny             # config-built tiny model + synthetic corpora, seconds (tests)

``run_bench(BenchConfig)`` builds corpora, trains or reuses cached experts of equal budget per domain, runs every
method in ``METHODS`` (a registry of name -> function; a method whose part has not landed in this build is
recorded as not available, never faked), and writes ``results.json``, PNG plots and the BENCHMARKS.md section.
"""
from benchmarks.mesh.config import BenchConfig, preset
from benchmarks.mesh.methods import METHODS, MethodUnavailable

__all__ = ["BenchConfig", "METHODS", "MethodUnavailable", "preset", "run_bench"]


def run_bench(cfg: BenchConfig, **kw):
    from benchmarks.mesh.harness import run_bench as _run

    return _run(cfg, **kw)
