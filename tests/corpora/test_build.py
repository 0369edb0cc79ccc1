"""Corpus building: deterministic whole-document split, selection by id hash, atomic output, sampling."""
from __future__ import annotations

import json

import pytest

from expertmesh.corpora import (build_all, build_corpus, build_corpus_from_files, list_corpora, read_records,
                                sample_texts, split_value)
from expertmesh.corpora.build import cap_text, normalise_text
from expertmesh.errors import ConfigError, ConflictError, DataError


def _ids(dirpath, split):
    return [r["id"] for r in read_records(dirpath / f"{split}.jsonl")]


@pytest.fixture
def notes(tmp_path):
    """A user directory of 40 small text files."""
    d = tmp_path / "notes"
    for i in range(40):
        (d / f"sub{i % 3}").mkdir(parents=True, exist_ok=True)
        (d / f"sub{i % 3}" / f"n{i:02d}.txt").write_text(f"note {i}\n" + "word " * (i + 1), encoding="utf-8")
    return d


def test_split_is_by_document_and_stable_across_rebuilds(tmp_path):
    meta = build_corpus("law", tmp_path / "a", max_docs=60)
    build_corpus("law", tmp_path / "a", max_docs=60, overwrite=True)
    build_corpus("law", tmp_path / "b", max_docs=60)
    a, b = tmp_path / "a" / "law", tmp_path / "b" / "law"

    train, held = _ids(a, "train"), _ids(a, "heldout")
    assert (train, held) == (_ids(b, "train"), _ids(b, "heldout"))
    assert not set(train) & set(held)
    assert len(train) + len(held) == 60 == meta["splits"]["train"]["docs"] + meta["splits"]["heldout"]["docs"]
    if meta["heldout_fallback"] is None:
        assert all(split_value(i) < 100 for i in held) and all(split_value(i) >= 100 for i in train)


def test_smaller_build_is_a_prefix_with_the_same_splits(tmp_path):
    build_corpus("law", tmp_path / "small", max_docs=15, heldout_fraction=0.3)
    build_corpus("law", tmp_path / "big", max_docs=45, heldout_fraction=0.3)
    small, big = tmp_path / "small" / "law", tmp_path / "big" / "law"

    assert set(_ids(small, "train")) <= set(_ids(big, "train"))
    assert set(_ids(small, "heldout")) <= set(_ids(big, "heldout"))


def test_meta_and_records_layout(tmp_path):
    meta = build_corpus("law", tmp_path, max_docs=5, max_chars=500)
    d = tmp_path / "law"

    assert sorted(p.name for p in d.iterdir()) == ["heldout.jsonl", "meta.json", "train.jsonl"]
    assert json.loads((d / "meta.json").read_text()) == meta
    assert meta["params"] == {"max_docs": 5, "heldout_fraction": 0.1, "max_chars": 500}
    assert meta["source"]["package"] == "licensedcode-data" and meta["source"]["version"]
    recs = read_records(d / "train.jsonl")
    assert all(set(r) == {"id", "domain", "source", "text"} and r["domain"] == "law" for r in recs)
    assert all(len(r["text"]) <= 500 for r in recs)
    assert meta["splits"]["train"]["chars"] == sum(len(r["text"]) for r in recs)


def test_existing_output_needs_overwrite(tmp_path):
    build_corpus("law", tmp_path, max_docs=2)
    with pytest.raises(ConflictError, match="--overwrite"):
        build_corpus("law", tmp_path, max_docs=2)


def test_failed_build_leaves_nothing(tmp_path, notes):
    (notes / "bad.txt").write_bytes(b"caf\xe9")
    with pytest.raises(DataError, match=r"bad\.txt:1: not UTF-8"):
        build_corpus_from_files(notes, "mine", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_import_user_files_gives_the_same_layout(tmp_path, notes):
    jsonl = tmp_path / "extra.jsonl"
    jsonl.write_text('{"id": "x1", "text": "first"}\n{"text": "second"}\n', encoding="utf-8")
    single = tmp_path / "single.txt"
    single.write_text("a single file", encoding="utf-8")

    meta = build_corpus_from_files([notes, jsonl, single], "my-notes", tmp_path / "out", heldout_fraction=0.25)

    d = tmp_path / "out" / "my-notes"
    ids = set(_ids(d, "train")) | set(_ids(d, "heldout"))
    assert {"sub0/n00.txt", "x1", "extra.jsonl:2", "single.txt"} <= ids and len(ids) == 43
    assert meta["splits"]["heldout"]["docs"] > 0 and meta["source"]["name"] == "files"
    assert [m["domain"] for m in list_corpora(tmp_path / "out")] == ["my-notes"]


def test_import_rejects_bad_input(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_corpus_from_files(tmp_path / "nope", "mine", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no documents found"):
        build_corpus_from_files(tmp_path / "empty", "mine", tmp_path / "out")
    with pytest.raises(ConfigError, match="domain='Bad Name'"):
        build_corpus_from_files(tmp_path / "empty", "Bad Name", tmp_path / "out")


def test_tiny_build_still_holds_one_document_out(tmp_path, notes):
    meta = build_corpus_from_files(sorted((notes / "sub0").iterdir())[:3], "tiny", tmp_path)
    held = meta["splits"]["heldout"]["docs"]
    assert held >= 1 and meta["splits"]["train"]["docs"] == 3 - held


def test_exact_duplicates_are_kept_once(tmp_path):
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_text("same text" if name != "c.txt" else "other", encoding="utf-8")
    meta = build_corpus_from_files(tmp_path / "in", "dups", tmp_path / "out", heldout_fraction=0.0)
    assert meta["duplicates_dropped"] == 1 and meta["splits"]["train"]["docs"] == 2


def test_bad_parameters_and_unknown_domain(tmp_path):
    with pytest.raises(ConfigError, match="heldout_fraction"):
        build_corpus("law", tmp_path, heldout_fraction=1.5)
    with pytest.raises(ConfigError, match="max_docs"):
        build_corpus("law", tmp_path, max_docs=0)
    with pytest.raises(ConfigError, match="not a known corpus source.*law"):
        build_all(["law", "astrology"], tmp_path)
    with pytest.raises(ConfigError, match="no option 'colour'"):
        build_corpus("law", tmp_path, source_options={"colour": "red"})
    assert not list(tmp_path.iterdir())


def test_text_normalisation_and_cap():
    assert normalise_text("\n\na  \r\nb\n\n\n\n\nc\x00\n") == "a\nb\n\n\nc"
    text, cut = cap_text("line one\nline two\nline three", 20)
    assert cut and text == "line one\nline two"
    assert cap_text("short", 20) == ("short", False)


def test_sample_texts_is_reproducible_and_respects_budgets():
    recs = [{"text": f"doc{i} " + "x" * 95} for i in range(20)]      # 100 chars each

    a = sample_texts(recs, n_chars=450, seed=1)
    assert a == sample_texts(recs, n_chars=450, seed=1) != sample_texts(recs, n_chars=450, seed=2)
    assert sum(map(len, a)) == 450 and len(a) == 5
    assert len(sample_texts(recs, n_docs=7, seed=0)) == 7
    assert len(sample_texts(recs, n_docs=99, seed=0)) == 20                 # whole docs: each once
    pieces = sample_texts(["a\n" * 500], n_chars=300, seed=0, piece_chars=50)
    assert sum(map(len, pieces)) == 300 and all(len(p) <= 50 and p.startswith("a") for p in pieces)
    with pytest.raises(ConfigError, match="exactly one"):
        sample_texts(recs, n_chars=10, n_docs=2)
    with pytest.raises(DataError, match="no records"):
        sample_texts([], n_docs=1)


def test_interrupted_write_leaves_no_partial_directory(tmp_path, monkeypatch):
    import expertmesh.corpora.build as build

    def boom(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(build, "write_json_atomic", boom)

    with pytest.raises(KeyboardInterrupt):
        build_corpus("law", tmp_path, max_docs=3)
    assert list(tmp_path.iterdir()) == []
