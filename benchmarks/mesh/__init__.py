"""mesh-bench: one command that measures every composition method on multi-domain data.

    expertmesh bench --quick            # real corpora, default base, < 15 min on 2 CPU cores
    expertmesh bench --tiny             # config-built tiny model + synthetic corpora, seconds (tests)

``run_bench(BenchConfig)`` builds corpora, trains or reuses cached experts of equal budget per domain, runs every
method in ``METHODS`` (a registry of name -> function; a method that fails is recorded with its reason, never
faked), and writes ``results.json``, PNG plots and the BENCHMARKS.md section.
"""
from benchmarks.mesh import external as _external  # noqa: F401  (registers its methods into METHODS)
from benchmarks.mesh.config import BenchConfig, preset
from benchmarks.mesh.methods import METHODS

__all__ = ["BenchConfig", "METHODS", "preset", "run_bench"]


def run_bench(cfg: BenchConfig, **kw):
    from benchmarks.mesh.harness import run_bench as _run

    return _run(cfg, **kw)
