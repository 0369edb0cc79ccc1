"""Analyses besides the loss table: opt-out exactness, generation speed, router scaling to 1,000 experts."""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from benchmarks.mesh.methods import Context


def opt_out_exactness(ctx: Context, top_k: int = 2) -> dict:
    """max |logit diff| between (all experts, j excluded by the request mask) and (a composition built without j)."""
    d = ctx.expert_domains[0]
    ids = ctx.blocks[d][:2]
    out = {}
    for j, name in enumerate(ctx.expert_domains):
        allowed = torch.ones(len(ctx.experts), dtype=torch.bool)
        allowed[j] = False
        with torch.inference_mode():
            with ctx.composed(top_k=top_k) as cm:
                masked = cm(ids, allowed=allowed, trace=True).logits.float()
                leaked = float(cm.last_trace.mass[:, j + 1].max())
            others = [e for i, e in enumerate(ctx.experts) if i != j]
            with ctx.composed(others, top_k=top_k) as cm:
                without = cm(ids).logits.float()
        out[name] = {"max_abs_logit_diff": float((masked - without).abs().max()), "gate_mass_on_excluded": leaked}
    worst = max(v["max_abs_logit_diff"] for v in out.values())
    return {"by_expert": out, "max_abs_logit_diff": worst, "top_k": top_k,
            "what": f"{len(ids)} held-out {d} blocks; composition with expert j excluded per request vs one built "
                    "without j"}


def _gen_speed(generate, prompt, n_new: int, reps: int = 2) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        out = generate(prompt)
        dt = time.perf_counter() - t0
        new = out.shape[1] - prompt.shape[1]
        best = min(best, dt / max(new, 1))
    return 1.0 / best


def generation_speed(ctx: Context, n_new: int) -> dict:
    """Greedy generation tokens/s at batch 1 (best of 2): base vs compositions."""
    tok = ctx.base.tokenizer
    prompt = ctx.blocks[ctx.expert_domains[0]][:1, :32]
    kw = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=tok.pad_token_id)
    res = {}
    with torch.inference_mode():
        res["base"] = _gen_speed(lambda p: ctx.base.model.generate(input_ids=p, **kw), prompt, n_new)
        for k in (1, 2):
            with ctx.composed(top_k=k) as cm:
                res[f"domain-router-k{k}"] = _gen_speed(lambda p: cm.generate(p, **kw), prompt, n_new)
        with ctx.composed(top_k=2) as cm:
            one = torch.zeros(len(ctx.experts), dtype=torch.bool)
            one[0] = True
            res["retriever-top1 (1 expert allowed)"] = _gen_speed(lambda p: cm.generate(p, allowed=one, **kw),
                                                                   prompt, n_new)
    return {"tokens_per_second": {k: round(v, 2) for k, v in res.items()}, "new_tokens": n_new, "batch": 1,
            "prompt_tokens": int(prompt.shape[1]), "threads": torch.get_num_threads()}


def router_scaling(sizes: list[int], *, pilots: int = 8, dim: int = 384, hidden: int = 576, layers: int = 30,
                   candidates: int = 4, queries: int = 50, seed: int = 0) -> dict:
    """Synthetic experts (random unit pilots, random router rows): build time of the retriever index and the
    per-request selection latency (faiss top pilots -> mean score per expert -> top-m candidates), plus the
    per-token, per-layer gate cost over the m candidates + public (retrieve) and over all N + 1 rows (domain)."""
    from expertmesh.compose.selector import PilotIndex, top_m
    from expertmesh.mixture.gate import gate_weights

    impl = "expertmesh.compose.selector.PilotIndex (exact faiss over all pilots) + top_m"
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        P = rng.standard_normal((n * pilots, dim)).astype(np.float32)
        owner = np.repeat(np.arange(n), pilots)
        q = rng.standard_normal((queries, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        allowed = np.ones(n, bool)
        t0 = time.perf_counter()
        P /= np.linalg.norm(P, axis=1, keepdims=True)
        router_rows = torch.from_numpy(rng.standard_normal((n, hidden)).astype(np.float32))
        pidx = PilotIndex(P, owner, n)
        build = time.perf_counter() - t0

        def select(qi):
            return np.array(top_m(pidx.scores(qi)[0], allowed, candidates))

        lat = []
        for i in range(queries):
            t0 = time.perf_counter()
            top = select(q[i:i + 1])
            lat.append(time.perf_counter() - t0)
        h = torch.randn(1, 64, hidden)
        public = torch.randn(1, hidden)
        cand = torch.cat([public, router_rows[torch.from_numpy(np.asarray(top).copy())]], 0)
        every = torch.cat([public, router_rows], 0)

        def per_token_us(rows_):
            # one thread, best of 15: a micro-benchmark on a shared machine
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                gate_weights(h, rows_, top_k=2)  # warm-up
                ts = []
                for _ in range(15):
                    t0 = time.perf_counter()
                    gate_weights(h, rows_, top_k=2)
                    ts.append(time.perf_counter() - t0)
            finally:
                torch.set_num_threads(threads)
            return min(ts) / h.shape[1] * 1e6
        gate = per_token_us(cand)
        gate_all = per_token_us(every)
        rows.append({"experts": n, "build_ms": round(build * 1e3, 3),
                     "select_ms_median": round(statistics.median(lat) * 1e3, 4),
                     "select_ms_p95": round(sorted(lat)[int(0.95 * (len(lat) - 1))] * 1e3, 4),
                     "gate_us_per_token_layer": round(gate, 3),
                     "gate_all_rows_us_per_token_layer": round(gate_all, 3)})
    return {"rows": rows, "implementation": impl, "pilots_per_expert": pilots, "candidates": candidates, "embed_dim": dim,
            "what": "synthetic random pilots/rows; gate timed on 1 thread, best of 15, 64 tokens; exact inner-product faiss index; latency excludes embedding "
                    "the request (one MiniLM call, constant in N)"}
