"""lm-evaluation-harness, unchanged, against a live ``expertmesh serve`` on 127.0.0.1.

Its ``local-completions`` model runs loglikelihood requests as ``echo=true, logprobs=1, max_tokens=1`` over
token ids, and generate_until as plain completions with ``stop``. Tasks come from local files (no hub here).
Slow (a server process plus lm-eval's imports: ~1 min on a busy 2-core machine): ``pytest -m slow``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

def write_tasks(root: Path) -> Path:
    from benchmarks.lm_eval_tasks import write_task
    from expertmesh.testing import TINY_TEXTS

    root.mkdir(parents=True, exist_ok=True)
    texts = [t for d in ("medicine", "law", "code") for t in TINY_TEXTS[d]]
    rows = [{"context": t[:20], "choices": [t[20:], texts[(i + 2) % len(texts)][20:]], "label": 0}
            for i, t in enumerate(texts)]
    (root / "choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (root / "gen.jsonl").write_text("".join(json.dumps({"context": t[:20], "answer": t[20:30]}) + "\n"
                                            for t in texts), encoding="utf-8")
    write_task(root / "choice.yaml", "mesh_tiny_choice", root / "choice.jsonl")
    write_task(root / "gen.yaml", "mesh_tiny_gen", root / "gen.jsonl", output_type="generate_until",
               metrics=("exact_match",), generation_kwargs={"until": ["\n"], "max_gen_toks": 6, "do_sample": False})
    return root


@pytest.fixture
def live_serve(tmp_path, serving_experts, tiny_base_dir):
    """``expertmesh serve`` as its own process over a local composition of the tiny experts."""
    from expertmesh.compose import build_composition
    from expertmesh.procwait import ProcessNotReadyError, wait_until_ready

    for name, d in serving_experts.items():
        shutil.copytree(d, tmp_path / "experts" / name)
    build_composition("tiny-mesh", tmp_path / "experts", "domain", out=tmp_path / "composition", top_k=2)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--composition", str(tmp_path / "composition"),
                             "--experts", str(tmp_path / "experts"), "--base", str(tiny_base_dir), "--port", str(port),
                             "--max-context", "512", "--log-level", "warning"],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        try:                                    # generous: a busy machine imports torch slowly
            wait_until_ready(proc, f"{url}/readyz", timeout=300, name="serve", log=tmp_path / "serve.log")
        except ProcessNotReadyError as e:       # only the wait: an error of the test itself is not re-worded
            pytest.fail(f"{e}: {(tmp_path / 'serve.log').read_text()[-2000:]}")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_lm_eval_local_completions_loglikelihood_and_generate(live_serve, tiny_base_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(tmp_path / "tasks")
    model_args = (f"model=tiny-mesh,base_url={live_serve}/v1/completions,tokenizer_backend=huggingface,"
                  f"tokenizer={tiny_base_dir},num_concurrent=1,max_retries=1,max_length=400")
    out = lm_eval.simple_evaluate(model="local-completions", model_args=model_args,
                                  tasks=["mesh_tiny_choice", "mesh_tiny_gen"], log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks)))

    res = out["results"]
    assert 0.0 <= res["mesh_tiny_choice"]["acc,none"] <= 1.0
    assert 0.0 <= res["mesh_tiny_gen"]["exact_match,none"] <= 1.0
    lls = [ll for s in out["samples"]["mesh_tiny_choice"] for ll, _greedy in s["filtered_resps"]]
    assert len(lls) == 12 and all(math.isfinite(x) and x < 0 for x in lls)
    assert len(set(lls)) > 1                                      # real scores, not a constant
    gens = [s["filtered_resps"][0] for s in out["samples"]["mesh_tiny_gen"]]
    assert len(gens) == 6 and all(isinstance(g, str) for g in gens)
    metrics = httpx.get(f"{live_serve}/metrics").text
    assert 'endpoint="/v1/completions",status="200"' in metrics
