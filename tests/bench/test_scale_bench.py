"""The scale bench end to end on a config-built model, federated part included (slow: ~3-5 min on a loaded 2-core
machine, most of it Ray start-up)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_scale_bench_writes_the_issue_format(tmp_path):
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale_bench.py"), "--tiny", "--work",
                          str(tmp_path / "work"), "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["format"] == "expertmesh-scale/1"
    keys = ["n_experts", "real", "routing_top1", "routing_top3", "composed_over_oracle", "uncovered_delta_nats",
            "tokens_per_s_b1", "tokens_per_s_b16", "peak_rss_mb", "build_s"]
    assert [list(r) for r in results["rows"]] == [keys] * len(results["rows"])
    assert [r["n_experts"] for r in results["rows"]] == [2, 3, 8]
    assert results["rows"][-1]["real"] is False and results["rows"][-1]["tokens_per_s_b16"] > 0
    details = json.loads((out / "details.json").read_text())
    assert details["cost"]["by_n"]["8"]["resident_peak_mb"] <= details["cost"]["by_n"]["8"]["budget_mb"]
    passes = details["cost"]["by_n"]["8"]["passes"]    # --tiny runs 2 passes per N; the row is their median
    assert len(passes) == 2
    assert results["rows"][-1]["tokens_per_s_b16"] == pytest.approx(
        sum(p["tokens_per_s_b16"] for p in passes) / 2, abs=0.01)
    assert (out / "tokens_per_s_vs_n.png").is_file() and (out / "memory_vs_n.png").is_file()
    fed = details["federated"]                         # Flower simulation vs central tuning over the 3 owners
    assert fed["owners"] == 3 and fed["federated_train_tokens"] > 0 and fed["central_steps"] == 3 * 1 * 2
    for method in ("untuned", "federated", "central"):
        assert set(fed[method]) == {"medicine", "law", "code", "mean"}
        assert all(math.isfinite(v) for v in fed[method].values())
    assert fed["federated_gain_nats"] == round(fed["untuned"]["mean"] - fed["federated"]["mean"], 5)
