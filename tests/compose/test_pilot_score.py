"""The retriever's pilot scoring rules (compose/selector.py) against a direct numpy computation."""
from __future__ import annotations

import numpy as np
import pytest

from expertmesh.compose.selector import PilotIndex
from expertmesh.errors import ConfigError


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def index_data():
    rng = np.random.default_rng(0)
    pilots = _unit(rng.normal(size=(11, 16)))
    owner = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 0])      # member 0 has 6 pilots (not contiguous), 1 has 2
    queries = _unit(rng.normal(size=(5, 16)))
    return pilots, owner, queries


@pytest.mark.parametrize("rule,k", [("mean", None), ("top3", 3), ("max", 1)])
def test_each_rule_matches_a_direct_computation(index_data, rule, k):
    pilots, owner, queries = index_data
    got = PilotIndex(pilots, owner, 4, rule=rule).scores(queries)
    sims = queries @ pilots.T
    for j in range(3):
        s = np.sort(sims[:, owner == j], axis=1)[:, ::-1]
        want = s.mean(1) if k is None else s[:, :k].mean(1)     # member 1 has 2 pilots: top3 is their mean
        np.testing.assert_allclose(got[:, j], want, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[:, 3]).all()                          # a member without pilots has no score


def test_rules_can_rank_members_differently():
    # member 0: one pilot equal to the query and two far; member 1: three fairly close pilots
    q = _unit(np.array([[1.0, 0.0, 0.0]]))
    pilots = _unit(np.array([[1, 0, 0], [-1, 0.2, 0], [-1, -0.2, 0], [0.8, 0.6, 0], [0.8, -0.6, 0], [0.8, 0, 0.6]]))
    owner = np.array([0, 0, 0, 1, 1, 1])
    assert PilotIndex(pilots, owner, 2, rule="mean").scores(q).argmax() == 1
    assert PilotIndex(pilots, owner, 2, rule="max").scores(q).argmax() == 0


def test_an_unknown_rule_is_a_config_error(index_data):
    pilots, owner, _ = index_data
    with pytest.raises(ConfigError, match="pilot_score"):
        PilotIndex(pilots, owner, 3, rule="median")
