"""The composition page's heat map and the manifest section tables, from the stored JSON alone."""
from __future__ import annotations

import math

from registry.web.heatmap import heat_map
from registry.web.summaries import section
from tests.web.conftest import EVALUATION


def test_benchmark_form_rows_columns_shades_and_share():
    hm = heat_map({"provenance": {"evaluation": EVALUATION}})

    assert hm.entries == ["public", "law-expert", "med-expert"]
    assert [label for label, _ in hm.rows] == ["law", "medicine", "code"]
    # shade = round(10 * value / max); max is 0.81 (code -> public): 0.62 -> round(7.65) = 8
    assert hm.rows[2][1][0].shade == 10 and hm.rows[0][1][1].shade == 8
    assert math.isclose(sum(s for _, s in hm.share), 1.0)
    assert hm.share[0][0] == "public"


def test_compose_eval_results_one_or_many():
    one = {"data": "data/corpora/law/heldout.jsonl", "gate_mass": {"public": 0.4, "law": 0.6}}
    two = [one, {"data": "med.jsonl", "gate_mass": {"public": 0.5, "med": 0.5}}]

    single, many = heat_map({"provenance": {"evaluation": one}}), heat_map({"provenance": {"evaluation": two}})

    assert single.rows[0][0] == "law" and [c.value for c in single.rows[0][1]] == [0.4, 0.6]
    assert many.entries == ["public", "law", "med"] and many.rows[1][0] == "med.jsonl"
    assert [c.value for c in many.rows[1][1]] == [0.5, 0.0, 0.5]   # an entry a data set never saw: 0


def test_missing_or_malformed_evaluations_give_no_heat_map():
    bad = [
        {}, {"provenance": "x"}, {"provenance": {}},
        {"provenance": {"evaluation": {"entries": ["a"], "by_domain": {"d": [0.1, 0.2]}}}},     # length mismatch
        {"provenance": {"evaluation": {"entries": ["a"], "by_domain": {"d": ["high"]}}}},       # not a number
        {"provenance": {"evaluation": {"entries": ["a"], "by_domain": {"d": [float("nan")]}}}},
        {"provenance": {"evaluation": {"entries": ["a"], "by_domain": {}}}},
        {"provenance": {"evaluation": [{"gate_mass": {"a": -1}}]}},
        {"provenance": {"evaluation": [1, 2]}},
    ]

    assert [heat_map(doc) for doc in bad] == [None] * len(bad)


def test_sections_side_by_side_and_scalars():
    sec = section({"seed": 3, "base": {"auc": 0.5}, "expert": {"auc": 0.61, "exposure": 2.0}, "ok": True})

    assert sec.scalars == [("seed", "3"), ("ok", "true")]
    assert sec.columns == ["base", "expert"]
    assert sec.rows == [("auc", ["0.5", "0.61"]), ("exposure", ["", "2"])]
    assert section(None).empty and section({}).empty
