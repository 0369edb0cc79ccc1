"""Corpora for the bench: real built-in domains (skipped with a reason when a source is missing) or tiny
synthetic ones for --tiny."""
from __future__ import annotations

import random
from pathlib import Path

TINY = {
    "medicine": ["the patient was given aspirin for chest pain and fever.",
                 "fever and chest pain in the patient were treated with aspirin.",
                 "the nurse checked the patient for fever twice a day."],
    "law": ["the licensee shall not sublicense the software without written permission.",
            "without written permission the licensee shall not sublicense the software.",
            "the licensor grants a licence to copy and modify the software."],
    "code": ["def main(argv): return sum(x * 2 for x in argv if x)",
             "def f(x): return [y * 2 for y in x if y]",
             "for i in range(10): print(i * 2)"],
    "poetry": ["to be or not to be that is the question whether tis nobler in the mind.",
               "shall i compare thee to a summer day thou art more lovely.",
               "the quality of mercy is not strained it droppeth as the gentle rain."],
}


def write_tiny_corpora(root: Path, domains: list[str], seed: int = 0) -> dict[str, Path]:
    from expertmesh.corpora.records import write_records

    rng = random.Random(seed)
    out = {}
    for d in domains:
        texts = TINY[d]
        dd = root / d
        dd.mkdir(parents=True, exist_ok=True)
        write_records(dd / "train.jsonl", [{"id": f"{d}/{i}", "domain": d, "source": "tiny",
                                            "text": " ".join(rng.sample(texts, len(texts)))} for i in range(30)])
        write_records(dd / "heldout.jsonl", [{"id": f"{d}/h{i}", "domain": d, "source": "tiny",
                                              "text": " ".join(rng.sample(texts, len(texts)))} for i in range(8)])
        out[d] = dd
    return out


def build_corpora(domains: list[str], root: Path, *, max_docs: int | None, reuse: bool,
                  log=print) -> tuple[dict[str, Path], dict[str, str], dict[str, dict]]:
    """(available corpus dirs, skipped domain -> reason, meta per domain)."""
    from expertmesh.corpora import build_corpus, read_meta

    ok, skipped, metas = {}, {}, {}
    for d in domains:
        dd = root / d
        if reuse and (dd / "train.jsonl").is_file() and (dd / "heldout.jsonl").is_file():
            ok[d] = dd
            try:
                metas[d] = read_meta(dd)
            except Exception:  # noqa: BLE001 - meta is informative only
                metas[d] = {}
            log(f"[bench] corpus {d}: reused {dd}")
            continue
        try:
            metas[d] = build_corpus(d, root, max_docs=max_docs, overwrite=True)
            ok[d] = dd
            log(f"[bench] corpus {d}: built {dd}")
        except Exception as e:  # noqa: BLE001 - any missing source skips the domain, with its reason
            skipped[d] = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
            log(f"[bench] corpus {d}: SKIPPED ({skipped[d]})")
    return ok, skipped, metas


def read_texts(path: Path) -> list[str]:
    from expertmesh.corpora.records import read_records

    return [r["text"] for r in read_records(path)]


def write_pooled(corpora: dict[str, Path], out: Path, seed: int = 0) -> Path:
    """Pooled training data of all expert domains (the central baseline that breaks data locality)."""
    from expertmesh.corpora.records import read_records, write_records

    recs = []
    for d, p in corpora.items():
        recs += [dict(r, id=f"{d}:{r.get('id', i)}") for i, r in enumerate(read_records(p / "train.jsonl"))]
    random.Random(seed).shuffle(recs)
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "train.jsonl", recs)
    return out
