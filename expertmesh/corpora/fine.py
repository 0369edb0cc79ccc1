"""Fine-grained domains: parts of the built-in sources (ICD-10-CM chapters, ScanCode licence categories, CPython
standard-library packages, man-page sections, Shakespeare's genres, FOLDOC vs the Jargon File).

A fine domain is named ``<parent>.<part>`` (``medicine.ch09``, ``law.copyleft-limited``, ``code.asyncio``);
``<parent>:<part>`` is accepted as the same name on the command line. It keeps the parent's document ids, so a
document's train/held-out side is the one it has in the parent corpus (the split hashes the id): whole documents
only, never one cut across splits, and no document in two fine domains of one parent.

Some pairs overlap on purpose (``OVERLAPS``: email vs http, copyleft vs copyleft-limited, system calls vs the C
library, FOLDOC vs the Jargon File ...), so a router must tell near neighbours apart.

    expertmesh data build --domain fine --out data/fine --max-docs 60        # every fine domain (67)
    expertmesh data build --domain medicine:ch09 --domain code.email --out data/fine
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

from expertmesh.corpora.sources import Doc, Source, make_source, register_source
from expertmesh.errors import ConfigError

# ICD-10-CM chapters 1-21 (22 "codes for special purposes" holds 2 categories: too few to split).
_ICD_CHAPTERS = {f"ch{n:02d}": str(n) for n in range(1, 22)}
_LICENCE_CATEGORIES = {"permissive": "Permissive", "copyleft": "Copyleft", "copyleft-limited": "Copyleft Limited",
                       "proprietary-free": "Proprietary Free", "commercial": "Commercial",
                       "free-restricted": "Free Restricted", "source-available": "Source-available",
                       "public-domain": "Public Domain", "patent-license": "Patent License", "cla": "CLA"}
# ("Unstated License" is left out: one of its 16 licences has text, too few to split.)
# Standard-library packages with >= 4 modules outside tests; "modules" is every top-level .py file.
_STDLIB_PACKAGES = ("asyncio", "concurrent", "ctypes", "curses", "dbm", "distutils", "email", "http", "idlelib",
                    "importlib", "json", "lib2to3", "multiprocessing", "re", "tkinter", "tomllib", "turtledemo",
                    "unittest", "urllib", "wsgiref", "xml", "zoneinfo", "modules")
_MAN_SECTIONS = {f"man{s}": s for s in "1234578"}     # section 6 (games) has one page here
_GENRES = {
    "comedies": ("alls_well_that_ends_well", "as_you_like_it", "comedy_of_errors", "loves_labours_lost",
                 "measure_for_measure", "merchant_of_venice", "merry_wives_of_windsor", "midsummer_nights_dream",
                 "much_ado_about_nothing", "pericles", "taming_of_the_shrew", "tempest", "twelfth_night",
                 "two_gentlemen_of_verona", "winters_tale"),
    "tragedies": ("antony_and_cleopatra", "coriolanus", "cymbeline", "hamlet", "julius_caesar", "lear", "macbeth",
                  "othello", "romeo_and_juliet", "timon_of_athens", "tragedy_of_titus_andronicus",
                  "troilus_and_cressida"),
    "histories": ("henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1", "henry_vi_part_2",
                  "henry_vi_part_3", "henry_viii", "john", "richard_ii", "richard_iii"),
    "poems": ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"),
}
_WORK_GENRE = {w: g for g, works in _GENRES.items() for w in works}
_DICTIONARIES = ("foldoc", "jargon")

# Pairs that share vocabulary on purpose (a router has real work to do between them).
OVERLAPS: list[tuple[str, str, str]] = [
    ("code.email", "code.http", "MIME headers, encodings and message parsing in both"),
    ("code.http", "code.urllib", "HTTP requests, URLs and response handling"),
    ("code.xml", "code.json", "serialisation and parsing"),
    ("code.asyncio", "code.concurrent", "futures and executors"),
    ("code.multiprocessing", "code.concurrent", "process pools"),
    ("code.distutils", "code.lib2to3", "build and refactoring tools of old packaging"),
    ("law.copyleft", "law.copyleft-limited", "GPL-family terms versus LGPL/MPL-style file-level copyleft"),
    ("law.permissive", "law.public-domain", "grant-everything licences"),
    ("law.proprietary-free", "law.commercial", "proprietary terms, free or paid"),
    ("systems.man2", "systems.man3", "system calls versus the C library wrapping them"),
    ("systems.man1", "systems.man8", "user versus administrator commands"),
    ("computing.foldoc", "computing.jargon", "two dictionaries of computing terms"),
    ("literature.comedies", "literature.tragedies", "plays in verse and prose by one author"),
    ("literature.tragedies", "literature.histories", "plays of kings and war"),
    ("medicine.ch09", "medicine.ch18", "circulatory diseases versus symptoms and signs (chest pain)"),
    ("medicine.ch19", "medicine.ch20", "injuries versus their external causes"),
]


def _medicine_part(doc: Doc, ctx: dict) -> str | None:
    icd = ctx.setdefault("icd", __import__("simple_icd_10_cm"))
    code = doc.id.split("/", 1)[1]
    chapter = next((a for a in icd.get_ancestors(code) if icd.is_chapter(a)), None)
    return f"ch{int(chapter):02d}" if chapter else None


def _law_part(doc: Doc, ctx: dict) -> str | None:
    from expertmesh.corpora.sources.law import split_front_matter

    path = Path(ctx["parent"]._dir()) / f"{doc.id.split('/', 1)[1]}.LICENSE"
    front, _ = split_front_matter(path.read_text(encoding="utf-8", errors="replace"))
    m = re.search(r"^category:\s*['\"]?(.*?)['\"]?\s*$", front, re.M)
    wanted = {v: k for k, v in _LICENCE_CATEGORIES.items()}
    return wanted.get(m.group(1)) if m else None


def _code_part(doc: Doc, ctx: dict) -> str | None:
    parts = doc.id.split("/")[1:]                 # code/<pkg>/.../<file>.py or code/<file>.py
    if len(parts) == 1:
        return "modules"
    return parts[0] if parts[0] in _STDLIB_PACKAGES else None


def _systems_part(doc: Doc, ctx: dict) -> str | None:
    return f"man{doc.id.split('/')[1]}"           # systems/<section>/<page>


def _literature_part(doc: Doc, ctx: dict) -> str | None:
    return _WORK_GENRE.get(doc.id.split("/", 1)[1])


def _computing_part(doc: Doc, ctx: dict) -> str | None:
    return doc.id.split("/")[1]                   # computing/<dictionary>/<headword>


@dataclass(frozen=True)
class Family:
    """How one parent source splits into parts: the part names (with a description each) and a classifier
    doc -> part (None: the document belongs to no part)."""

    parent: str
    parts: dict[str, str]
    classify: Callable[[Doc, dict], str | None]


FAMILIES: dict[str, Family] = {f.parent: f for f in [
    Family("medicine", {p: f"ICD-10-CM chapter {n}" for p, n in _ICD_CHAPTERS.items()}, _medicine_part),
    Family("law", {p: f"ScanCode licences of category {c!r}" for p, c in _LICENCE_CATEGORIES.items()}, _law_part),
    Family("code", {p: (f"CPython standard-library package {p}" if p != "modules" else
                        "CPython standard-library top-level modules") for p in _STDLIB_PACKAGES}, _code_part),
    Family("systems", {p: f"manual pages of section {s}" for p, s in _MAN_SECTIONS.items()}, _systems_part),
    Family("literature", {g: f"Shakespeare's {g}" for g in _GENRES}, _literature_part),
    Family("computing", {d: {"foldoc": "FOLDOC", "jargon": "the Jargon File"}[d] + " entries"
                         for d in _DICTIONARIES}, _computing_part),
]}


def fine_domains(parent: str | None = None) -> list[str]:
    """Every fine domain name (``<parent>.<part>``), optionally of one parent, in catalogue order."""
    return [f"{f.parent}.{p}" for f in FAMILIES.values() if parent in (None, f.parent) for p in f.parts]


def parse_fine(name: str) -> tuple[str, str] | None:
    """(parent, part) of ``medicine.ch09`` / ``medicine:ch09``; None for a name that is not fine-grained.
    A parent with an unknown part is an error that lists the parts."""
    sep = ":" if ":" in name else "." if "." in name else None
    if sep is None:
        return None
    parent, part = name.split(sep, 1)
    family = FAMILIES.get(parent)
    if family is None:
        if sep == ":":
            raise ConfigError(f"domain={name!r}: {parent!r} has no fine-grained parts; choose one of "
                              f"{', '.join(FAMILIES)}")
        return None
    if part not in family.parts:
        raise ConfigError(f"domain={name!r}: {parent} has no part {part!r}; choose one of "
                          f"{', '.join(family.parts)}")
    return parent, part


def expand_domains(names: list[str]) -> list[str]:
    """Domain names with ``fine`` (every fine domain) and ``fine:<parent>`` expanded and ``a:b`` written
    ``a.b``; order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        if name == "fine":
            out += fine_domains()
        elif name.startswith("fine:"):
            parent = name.split(":", 1)[1]
            if parent not in FAMILIES:
                raise ConfigError(f"domain={name!r}: choose fine:<parent> with parent one of {', '.join(FAMILIES)}")
            out += fine_domains(parent)
        else:
            parsed = parse_fine(name)
            out.append(f"{parsed[0]}.{parsed[1]}" if parsed else name)
    return list(dict.fromkeys(out))


@register_source
@dataclass
class FineSource(Source):
    """The documents of one part of a parent source. Options: ``parent``, ``part``, ``parent_options``."""

    parent: str = ""
    part: str = ""
    parent_options: dict | None = None

    name = "fine"
    domain = None                      # built through a fine domain name, not listed as a domain of its own
    description = "one fine-grained part of a built-in source"

    def __post_init__(self) -> None:
        if parse_fine(f"{self.parent}:{self.part}") is None:
            raise ConfigError(f"parent={self.parent!r} has no fine-grained parts")

    @cached_property
    def _parent(self) -> Source:
        return make_source(self.parent, self.parent_options)

    @property
    def default_max_docs(self) -> int | None:          # type: ignore[override]
        return self._parent.default_max_docs

    @property
    def load_workers(self) -> int:                      # type: ignore[override]
        return self._parent.load_workers

    def check_available(self) -> None:
        self._parent.check_available()

    def documents(self) -> Iterator[Doc]:
        family, ctx = FAMILIES[self.parent], {"parent": self._parent}
        for doc in self._parent.documents():
            if family.classify(doc, ctx) == self.part:
                yield doc

    def provenance(self) -> dict:
        me = f"{self.parent}.{self.part}"
        return {**self._parent.provenance(), "parent": self.parent, "part": self.part,
                "part_description": FAMILIES[self.parent].parts[self.part],
                "overlaps": [{"with": b if a == me else a, "why": why} for a, b, why in OVERLAPS if me in (a, b)]}


def fine_source(name: str, parent_options: dict | None = None) -> Source:
    parsed = parse_fine(name)
    if parsed is None:
        raise ConfigError(f"domain={name!r} is not a fine-grained domain; see expertmesh.corpora.fine_domains()")
    return FineSource(parent=parsed[0], part=parsed[1], parent_options=parent_options)
