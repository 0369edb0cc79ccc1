"""Build per-domain corpora: ``<out>/<domain>/{train.jsonl, heldout.jsonl, meta.json}``.

Rules (also written into every meta.json):
- selection: documents are taken in order of sha256("select:" + id) until ``max_docs`` non-empty documents are
  kept, so a smaller build is a prefix of a bigger one and independent of file-system order;
- split: a document is held out iff int(sha256(id), 16) % 1000 < heldout_fraction * 1000, so a document keeps
  its split across rebuilds and sizes, and no document is ever cut across splits. Only when that leaves one
  side empty (tiny builds) is the document nearest the threshold moved, and meta says so;
- size: each text of a built-in source is cut to ``max_chars`` characters (20,000 ~ 5,000 tokens) so one huge
  document cannot dominate a domain; a user's document over ``max_chars`` is an error instead (split it);
  exact duplicate texts are kept once;
- minimum held-out: with ``min_heldout`` N, the N documents nearest the threshold are held out when the hash
  leaves fewer (never more than half the corpus); meta's ``heldout_warning`` says when even that is too few.
The output directory is written atomically: an interrupted build leaves the previous corpus or nothing.

Tiny CPU example (seconds):  python -c "from expertmesh.corpora import build_corpus; \
build_corpus('law', 'data/corpora', max_docs=20)"
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

from expertmesh.corpora.records import write_records
from expertmesh.corpora.sources import Doc, Source, load_sources, make_source
from expertmesh.errors import ConfigError, ConflictError, DataError
from expertmesh.fileio import atomic_directory, write_json_atomic
from expertmesh.validate import check_float, check_int, check_name

FORMAT = "expertmesh-corpus/1"
SPLITS = ("train", "heldout")
SPLIT_RULE = ("held out iff int(sha256(id).hexdigest(), 16) % 1000 < heldout_fraction * 1000; whole documents "
              "only; if that leaves a side empty, the document nearest the threshold moves (heldout_fallback)")
SELECTION_RULE = ("documents in order of sha256('select:' + id) until max_docs non-empty, non-duplicate texts "
                  "are kept (null max_docs: all)")
CAP_RULE = ("each text cut to at most max_chars characters, at the last line break in the final 20% when there "
            "is one; truncated_docs counts the cut documents")


def split_value(doc_id: str) -> int:
    """0..999; a document is held out iff this is below heldout_fraction * 1000."""
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest(), 16) % 1000


def selection_key(doc_id: str) -> str:
    return hashlib.sha256(b"select:" + doc_id.encode("utf-8")).hexdigest()


def normalise_text(text: str) -> str:
    """Unix newlines, no NULs, no trailing spaces, at most two blank lines in a row, no outer blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{4,}", "\n\n\n", text).strip("\n")


def cap_text(text: str, max_chars: int) -> tuple[str, bool]:
    if len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    nl = cut.rfind("\n")
    return (cut[:nl] if nl >= 0.8 * max_chars else cut).rstrip(), True


def available_domains() -> list[str]:
    """The built-in domains (user data comes in through ``build_corpus_from_files``)."""
    return sorted(name for name, cls in load_sources().items() if cls.domain)


def _check_params(max_docs: int | None, heldout_fraction: float, max_chars: int) -> None:
    if max_docs is not None:
        check_int("max_docs", max_docs, lo=1)
    check_float("heldout_fraction", heldout_fraction, lo=0.0, hi=0.9)
    check_int("max_chars", max_chars, lo=100)


def _load_selected(docs: Sequence[Doc], cap: int | None, workers: int,
                   max_chars: int, cut_long: bool = True) -> tuple[list[tuple[Doc, str, bool]], dict[str, int]]:
    """Load documents in selection order until ``cap`` are kept; empty and duplicate texts are skipped."""
    def load(doc: Doc) -> str:
        try:
            return doc.load()
        except (OSError, UnicodeError) as e:
            raise DataError(f"{doc.id}: cannot read the document ({e})") from None

    kept: list[tuple[Doc, str, bool]] = []
    seen: set[str] = set()
    stats = {"skipped_empty": 0, "duplicates_dropped": 0}
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        i = 0
        while i < len(docs) and (cap is None or len(kept) < cap):
            batch = docs[i:] if cap is None else docs[i:i + cap - len(kept)]
            i += len(batch)
            texts = pool.map(load, batch) if pool else map(load, batch)
            for doc, raw in zip(batch, texts):
                text = normalise_text(raw)
                if not cut_long and len(text) > max_chars:
                    raise DataError(
                        f"{doc.id} is {len(text):,} characters, more than --max-chars {max_chars:,}; nothing is "
                        "cut from your text: split files into documents with --split lines|blank-lines|"
                        "regex:PATTERN, or raise --max-chars", detail={"id": doc.id, "chars": len(text)})
                text, truncated = cap_text(text, max_chars)
                digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
                if not text.strip():
                    stats["skipped_empty"] += 1
                elif digest in seen:
                    stats["duplicates_dropped"] += 1
                else:
                    seen.add(digest)
                    kept.append((doc, text, truncated))
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
    return kept, stats


def _split(kept: list[tuple[Doc, str, bool]], heldout_fraction: float, min_heldout: int = 1):
    """Whole-document split by id hash; then at least ``min_heldout`` held out (the documents nearest the
    threshold move) while the held-out side stays at most half of the corpus."""
    threshold = heldout_fraction * 1000
    held = [k for k in kept if split_value(k[0].id) < threshold]
    train = [k for k in kept if split_value(k[0].id) >= threshold]
    fallback, warning = None, None
    if heldout_fraction > 0 and len(held) < min_heldout:
        order = sorted(train, key=lambda k: (split_value(k[0].id), k[0].id))
        moved = []
        while order and len(held) < min_heldout and len(held) + 1 <= len(kept) // 2:
            move = order.pop(0)
            train.remove(move)
            held.append(move)
            moved.append(move[0].id)
        if moved:
            fallback = f"moved {moved[0]} to heldout" if len(moved) == 1 else \
                f"moved {len(moved)} documents to heldout to reach min_heldout={min_heldout}"
        if len(held) < min_heldout:
            warning = (f"only {len(held)} held-out document(s) of {len(kept)} (min_heldout={min_heldout}): too few "
                       "for a reliable held-out loss; add documents or split files into more (--split)")
    elif not train and len(held) >= 2:
        move = max(held, key=lambda k: (split_value(k[0].id), k[0].id))
        held.remove(move)
        train.append(move)
        fallback = f"moved {move[0].id} to train"
    return {"train": train, "heldout": held}, fallback, warning


def _build(source: Source, domain: str, out_dir: str | Path, *, max_docs: int | None, heldout_fraction: float,
           max_chars: int, overwrite: bool, min_heldout: int = 1) -> dict[str, Any]:
    t0 = time.perf_counter()
    check_name("domain", domain)
    _check_params(max_docs, heldout_fraction, max_chars)
    check_int("min_heldout", min_heldout, lo=0)
    final = Path(out_dir) / domain
    if final.exists() and not overwrite:      # fail before the (possibly slow) loading
        raise ConflictError(f"{final} already exists; choose another output directory or pass --overwrite")
    source.check_available()
    docs = list(source.documents())
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"source {source.name!r} gave the document id {dup!r} twice; ids must be unique")
    cap = max_docs if max_docs is not None else source.default_max_docs
    ordered = sorted(docs, key=lambda d: selection_key(d.id))
    kept, stats = _load_selected(ordered, cap, source.load_workers, max_chars, source.cut_long)
    if not kept:
        raise DataError(f"source {source.name!r} gave no non-empty documents for domain {domain!r}")
    splits, fallback, warning = _split(kept, heldout_fraction, min_heldout)
    meta: dict[str, Any] = {
        "format": FORMAT, "domain": domain,
        "source": {"name": source.name, "description": source.description, **source.provenance(),
                   "options": source.options()},
        "splits": {name: {"docs": len(items), "chars": sum(len(t) for _, t, _ in items),
                          "truncated_docs": sum(tr for _, _, tr in items)} for name, items in splits.items()},
        "params": {"max_docs": cap, "heldout_fraction": heldout_fraction, "max_chars": max_chars,
                   **({"min_heldout": min_heldout} if min_heldout != 1 else {})},
        "split_rule": SPLIT_RULE, "selection_rule": SELECTION_RULE, "max_chars_rule": CAP_RULE,
        "candidates": len(docs), **stats, "heldout_fallback": fallback,
        **({"heldout_warning": warning} if warning else {}),
        "expertmesh_version": _own_version(),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with atomic_directory(final, overwrite=overwrite) as tmp:
        for name, items in splits.items():
            write_records(tmp / f"{name}.jsonl", (
                {"id": d.id, "domain": domain, "source": d.source, "text": text}
                for d, text, _ in sorted(items, key=lambda k: k[0].id)))
        meta["build_seconds"] = round(time.perf_counter() - t0, 2)
        write_json_atomic(tmp / "meta.json", meta)
    return meta


def _own_version() -> str | None:
    try:
        return metadata.version("expertmesh")
    except metadata.PackageNotFoundError:
        return None


def source_for(domain: str, options: dict[str, Any] | None = None) -> tuple[str, Source]:
    """(directory name, source) of a built-in domain or a fine-grained one (``medicine.ch09``/``medicine:ch09``,
    see corpora/fine.py; ``options`` then go to the parent source)."""
    from expertmesh.corpora.fine import fine_source, parse_fine

    parsed = parse_fine(domain)
    if parsed is not None:
        return f"{parsed[0]}.{parsed[1]}", fine_source(domain, options)
    return domain, make_source(domain, options)


def build_corpus(domain: str, out_dir: str | Path, *, max_docs: int | None = None, heldout_fraction: float = 0.1,
                 max_chars: int = 20000, overwrite: bool = False,
                 source_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``<out_dir>/<domain>/`` from a built-in source; returns its meta. ``max_docs=None`` takes the
    source's default cap (all documents, except 2,000 man pages for systems)."""
    name, source = source_for(domain, source_options)
    return _build(source, name, out_dir, max_docs=max_docs,
                  heldout_fraction=heldout_fraction, max_chars=max_chars, overwrite=overwrite)


def build_corpus_from_files(paths: str | Path | Iterable[str | Path], domain: str, out_dir: str | Path, *,
                            max_docs: int | None = None, heldout_fraction: float = 0.1, max_chars: int = 20000,
                            overwrite: bool = False, split: str = "file", min_heldout: int = 1) -> dict[str, Any]:
    """Build ``<out_dir>/<domain>/`` from a user's .jsonl / .txt / .md files or directories of them.

    ``split`` cuts text files into documents (see sources/files.py); a document longer than ``max_chars`` is
    an error, never cut; at least ``min_heldout`` documents are held out where the corpus allows it."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    check_name("domain", domain)
    return _build(make_source("files", {"paths": [str(p) for p in paths], "split": split}), domain, out_dir,
                  max_docs=max_docs, heldout_fraction=heldout_fraction, max_chars=max_chars, overwrite=overwrite,
                  min_heldout=min_heldout)


def build_all(domains: Iterable[str], out_dir: str | Path, *, max_docs: int | None = None,
              heldout_fraction: float = 0.1, max_chars: int = 20000, overwrite: bool = False,
              source_options: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Build several domains; every source is checked first, so a missing one fails before any build.

    Names may be fine-grained (``medicine.ch09``, ``medicine:ch09``) or ``fine`` / ``fine:<parent>`` for every
    fine domain (of one parent); see corpora/fine.py."""
    from expertmesh.corpora.fine import expand_domains

    domains = expand_domains(list(domains))
    if not domains:
        raise ConfigError(f"domains is empty; choose from {', '.join(available_domains())}")
    source_options = source_options or {}
    sources = dict(source_for(d, source_options.get(d)) for d in domains)
    domains = list(sources)
    checked: set[str] = set()
    for source in sources.values():
        key = getattr(source, "parent", None) or source.name     # check each parent source once
        if key not in checked:
            source.check_available()
            checked.add(key)
    _check_params(max_docs, heldout_fraction, max_chars)
    return {d: _build(sources[d], d, out_dir, max_docs=max_docs, heldout_fraction=heldout_fraction,
                      max_chars=max_chars, overwrite=overwrite) for d in domains}


def read_meta(domain_dir: str | Path) -> dict[str, Any]:
    path = Path(domain_dir) / "meta.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{domain_dir} is not a corpus directory (no meta.json)") from None
    except (UnicodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None


def list_corpora(path: str | Path) -> list[dict[str, Any]]:
    """Metas of a corpus root (``<path>/<domain>/meta.json``) or of one domain directory, by domain."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; give a corpus root or a domain directory")
    if (path / "meta.json").is_file():
        return [read_meta(path)]
    metas = [read_meta(d) for d in sorted(path.iterdir())
             if d.is_dir() and not d.name.startswith(".") and (d / "meta.json").is_file()]
    if not metas:
        raise DataError(f"no corpora under {path}; build some with `expertmesh data build`")
    return metas


def sample_texts(records: Sequence[dict | str], *, n_chars: int | None = None, n_docs: int | None = None,
                 seed: int = 0, piece_chars: int | None = None) -> list[str]:
    """Draw texts for training, reproducibly from ``seed``.

    Documents come in a seeded random order; each contributes its text, or with ``piece_chars`` a window of
    that many characters starting at a random line start (more documents per token budget). Stops after
    ``n_docs`` pieces or once ``n_chars`` characters are drawn (the last piece cut to fit). With
    ``piece_chars`` the documents are visited again (new windows) until the budget is met.
    """
    if (n_chars is None) == (n_docs is None):
        raise ConfigError("sample_texts needs exactly one of n_chars or n_docs")
    budget_field, budget = ("n_chars", n_chars) if n_chars is not None else ("n_docs", n_docs)
    check_int(budget_field, budget, lo=1)
    if piece_chars is not None:
        check_int("piece_chars", piece_chars, lo=1)
    texts = [t for t in (r if isinstance(r, str) else r["text"] for r in records) if t]
    if not texts:
        raise DataError("sample_texts got no records with text")
    rng = random.Random(seed)
    out: list[str] = []
    drawn = 0
    while True:
        order = list(range(len(texts)))
        rng.shuffle(order)
        for i in order:
            piece = _window(texts[i], piece_chars, rng)
            if n_chars is not None:
                piece = piece[:n_chars - drawn]
            out.append(piece)
            drawn += len(piece)
            if (n_docs is not None and len(out) >= n_docs) or (n_chars is not None and drawn >= n_chars):
                return out
        if piece_chars is None:      # every whole document used once: that is all there is
            return out


def _window(text: str, piece_chars: int | None, rng: random.Random) -> str:
    if piece_chars is None or len(text) <= piece_chars:
        return text
    starts = [0] + [m.end() for m in re.finditer("\n", text[:len(text) - piece_chars])]
    start = rng.choice(starts)
    return text[start:start + piece_chars]
