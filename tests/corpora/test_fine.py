"""Fine-grained domains: parts of the real sources, whole-document splits shared with the parent, clear errors."""
from __future__ import annotations

import pytest

from expertmesh.corpora import build_all, build_corpus, read_records
from expertmesh.corpora.build import split_value
from expertmesh.corpora.fine import FAMILIES, OVERLAPS, expand_domains, fine_domains, parse_fine
from expertmesh.errors import ConfigError


def test_catalogue_has_at_least_48_domains_and_every_overlap_names_two_of_them():
    names = fine_domains()

    assert len(names) >= 48 and len(set(names)) == len(names)
    assert all(a in names and b in names and a != b for a, b, _ in OVERLAPS)
    assert {"code.email", "code.http", "law.copyleft", "law.copyleft-limited"} <= set(names)


def test_names_parse_in_both_spellings_and_groups_expand():
    assert parse_fine("medicine:ch09") == parse_fine("medicine.ch09") == ("medicine", "ch09")
    assert parse_fine("law") is None and parse_fine("acme.notes") is None      # user domain names stay plain

    assert expand_domains(["medicine:ch09", "medicine.ch09", "law"]) == ["medicine.ch09", "law"]
    assert expand_domains(["fine:literature"]) == [f"literature.{g}" for g in FAMILIES["literature"].parts]


@pytest.mark.parametrize("bad,needle", [("medicine:ch99", "choose one of ch01"), ("poetry:odes", "no fine-grained"),
                                        ("fine:poetry", "fine:<parent>")])
def test_unknown_part_or_parent_lists_the_choices(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        expand_domains([bad])


def test_a_part_holds_only_its_documents_and_keeps_the_parents_split(tmp_path):
    meta = build_corpus("medicine:ch09", tmp_path, max_docs=12)
    d = tmp_path / "medicine.ch09"
    train, held = read_records(d / "train.jsonl"), read_records(d / "heldout.jsonl")

    codes = [r["id"].split("/")[1] for r in train + held]
    assert len(codes) == 12 and all(c.startswith("I") for c in codes)        # chapter 9 = I00-I99
    # the side of each document is the parent corpus's (split by id hash), never cut inside a document
    assert all(split_value(r["id"]) >= 100 for r in train) and all(split_value(r["id"]) < 100 for r in held) \
        or meta["heldout_fallback"]
    assert meta["source"]["parent"] == "medicine" and meta["source"]["part"] == "ch09"
    assert {o["with"] for o in meta["source"]["overlaps"]} == {"medicine.ch18"}


def test_overlapping_licence_categories_are_disjoint_documents(tmp_path):
    metas = build_all(["law:copyleft", "law:copyleft-limited"], tmp_path, max_docs=8)

    ids = {d: {r["id"] for r in read_records(tmp_path / d / "train.jsonl")} for d in metas}
    assert set(metas) == {"law.copyleft", "law.copyleft-limited"}
    assert ids["law.copyleft"] and ids["law.copyleft-limited"]
    assert not ids["law.copyleft"] & ids["law.copyleft-limited"]
    assert any("gpl" in i for i in ids["law.copyleft"])


def test_stdlib_package_part(tmp_path):
    build_corpus("code.json", tmp_path)

    recs = read_records(tmp_path / "code.json" / "train.jsonl")
    assert recs and all(r["id"].startswith("code/json/") for r in recs)
