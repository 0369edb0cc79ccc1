"""The routing probe's scoring: top-1 / top-3 / family top-1, and features side by side (no model needed)."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import routing_probe as probe


def test_accuracy_is_a_mean_over_domains_with_family_top1():
    family = np.array(["law", "law", "code"])
    qy = np.array([0, 0, 1, 2])
    scores = np.array([[0.9, 0.1, 0.0],    # domain 0: right
                       [0.2, 0.7, 0.1],    # domain 0: wrong domain, right family
                       [0.1, 0.2, 0.8],    # domain 1: wrong family, its own domain second
                       [0.0, 0.1, 0.9]])   # domain 2: right
    got = probe.accuracy(scores, qy, family)
    assert got == {"top1": pytest.approx((0.5 + 0 + 1) / 3, abs=1e-4), "top3": 1.0,
                   "family_top1": pytest.approx((1 + 0 + 1) / 3, abs=1e-4)}


def test_side_by_side_features_score_the_mean_of_the_families_cosines(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)

    def unit(n):
        x = rng.normal(size=(n, 5))
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    made = {"minilm": (unit(6), unit(2)), "tfidf": (unit(6), unit(2))}
    monkeypatch.setattr(probe, "featurise", lambda kind, train, queries, cache: made[kind])
    X, Q = probe.features("minilm+tfidf", [], [], tmp_path / "stem")
    want = np.mean([q @ x.T for x, q in made.values()], axis=0)
    np.testing.assert_allclose((Q @ X.T).toarray(), want, atol=1e-12)
    np.testing.assert_allclose(np.asarray(X.multiply(X).sum(1)).ravel(), 1.0)


def test_scale_report_family_top1_counts_a_neighbour_in_the_same_source():
    from benchmarks.scale_report import family_top1

    members = ["law.copyleft", "law.permissive", "code.json"]
    confusion = [[1, 3, 0],     # law.copyleft: every top-1 in law
                 [0, 2, 2],     # law.permissive: half in code
                 [0, 0, 0]]     # code.json: no queries, left out of the mean
    assert family_top1(confusion, members) == 0.75
