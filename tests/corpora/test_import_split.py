"""``build_corpus_from_files`` with ``split`` modes, no silent cutting of a user's text, and a minimum held-out."""
from __future__ import annotations

import pytest

from expertmesh.corpora import build_corpus_from_files, read_records
from expertmesh.errors import DataError


def _chapters(n: int, words: int = 30) -> str:
    return "\n".join(f"CHAPTER {i}\n" + " ".join(f"word{i}_{j}" for j in range(words)) + "\n" for i in range(n))


@pytest.mark.parametrize("split, text, n_docs", [
    ("lines", "first record\n\nsecond record\nthird record\n", 3),
    ("blank-lines", "para one\nstill one\n\n\npara two\n  \npara three", 3),
    ("regex:^CHAPTER ", _chapters(5), 5),
    ("file", _chapters(5), 1),
])
def test_split_modes_make_one_document_per_block(tmp_path, split, text, n_docs):
    src = tmp_path / "book.txt"
    src.write_text(text, encoding="utf-8")

    meta = build_corpus_from_files(src, "mine", tmp_path / "out", split=split, heldout_fraction=0.0)

    recs = read_records(tmp_path / "out" / "mine" / "train.jsonl")
    assert meta["splits"]["train"]["docs"] == len(recs) == n_docs
    joined = "".join(r["text"] for r in recs)
    assert all(w in joined for w in text.split())          # nothing dropped
    if split.startswith("regex"):
        assert all(r["text"].startswith("CHAPTER ") for r in recs)
        assert sorted(r["id"] for r in recs) == sorted(f"book.txt#{i}" for i in range(1, 6))


def test_a_long_user_document_is_refused_not_cut(tmp_path):
    src = tmp_path / "big.txt"
    src.write_text(_chapters(40, words=200), encoding="utf-8")       # ~ 40 x 1,800 characters

    with pytest.raises(DataError, match=r"more than --max-chars 20,000.*--split"):
        build_corpus_from_files(src, "big", tmp_path / "out")
    assert not (tmp_path / "out" / "big").exists()

    meta = build_corpus_from_files(src, "big", tmp_path / "out", split="regex:^CHAPTER ")
    total = meta["splits"]["train"]["chars"] + meta["splits"]["heldout"]["chars"]
    assert meta["splits"]["train"]["truncated_docs"] == 0 and total >= len(src.read_text()) - 40 * 2


def test_min_heldout_moves_documents_and_warns_when_too_small(tmp_path):
    src = tmp_path / "rows.txt"
    src.write_text("\n".join(f"record number {i} with some text" for i in range(30)), encoding="utf-8")

    meta = build_corpus_from_files(src, "rows", tmp_path / "a", split="lines", min_heldout=8)
    small = build_corpus_from_files(src, "rows", tmp_path / "b", split="lines", min_heldout=20)

    assert meta["splits"]["heldout"]["docs"] == 8 and "heldout_warning" not in meta
    assert small["splits"]["heldout"]["docs"] == 15          # never more than half the corpus
    assert "too few" in small["heldout_warning"]


def test_a_bad_split_mode_names_the_choices(tmp_path):
    (tmp_path / "a.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="blank-lines"):
        build_corpus_from_files(tmp_path / "a.txt", "mine", tmp_path / "out", split="paragraphs")
    with pytest.raises(DataError, match="not a valid regular expression"):
        build_corpus_from_files(tmp_path / "a.txt", "mine", tmp_path / "out", split="regex:(")
