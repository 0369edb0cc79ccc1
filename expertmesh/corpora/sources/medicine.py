"""medicine: ICD-10-CM (PyPI ``simple-icd-10-cm``), one document per 3-character category (e.g. ``A00``).

A category's document reads like a page of the tabular list: its chapter and block, its notes, then every
code below it with description, inclusion terms and instructional notes. Codes with a 7th character are not
listed one by one (S72 alone has 2,600): the category's 7th-character table stands for them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from expertmesh.corpora.sources import Doc, Source, package_version, register_source
from expertmesh.errors import DataError

DIST = "simple-icd-10-cm"
# (label, getter name) in the order the tabular list prints them.
_NOTE_FIELDS = (("Note", "get_notes"), ("Includes", "get_includes"), ("Inclusion terms", "get_inclusion_term"),
                ("Excludes1", "get_excludes1"), ("Excludes2", "get_excludes2"), ("Code first", "get_code_first"),
                ("Code also", "get_code_also"), ("Use additional code", "get_use_additional_code"))


def _icd():
    try:
        import simple_icd_10_cm
    except ImportError:
        raise DataError(f"ICD-10-CM data not found: install it with `pip install {DIST}` "
                        "(or `pip install -e '.[corpora]'`)") from None
    return simple_icd_10_cm


def _lines(value: Any) -> list[str]:
    if not value:
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split("\n")
    return [" ".join(str(v).split()) for v in items if str(v).strip()]


def _notes(icd, code: str, indent: str) -> list[str]:
    out = []
    for label, getter in _NOTE_FIELDS:
        items = _lines(getattr(icd, getter)(code))
        if len(items) == 1:
            out.append(f"{indent}{label}: {items[0]}")
        elif items:
            out.append(f"{indent}{label}:")
            out.extend(f"{indent}  - {item}" for item in items)
    return out


def category_text(icd, cat: str) -> str:
    lines = [f"ICD-10-CM {cat} {icd.get_description(cat)}"]
    for anc in reversed(icd.get_ancestors(cat)):
        if anc == cat:          # O09 is both a block and a category
            continue
        kind = "Chapter" if icd.is_chapter(anc) else "Block"
        lines.append(f"{kind} {anc}: {icd.get_description(anc)}")
    lines += _notes(icd, cat, "")
    seventh = icd.get_seven_chr_def(cat)
    if seventh:
        note = " ".join(str(icd.get_seven_chr_note(cat) or "").split())
        lines.append(f"7th characters{f' ({note})' if note else ''}:")
        lines += [f"  {k} {' '.join(v.replace('/', ' / ').split())}" for k, v in seventh.items()]
    for code in icd.get_descendants(cat):
        if icd.is_extended_subcategory(code):
            continue
        lines.append(f"{code} {icd.get_description(code)}")
        lines += _notes(icd, code, "  ")
    return "\n".join(lines)


@register_source
@dataclass
class MedicineSource(Source):
    name = "medicine"
    domain = "medicine"
    description = "ICD-10-CM tabular list (PyPI simple-icd-10-cm), one document per 3-character category"

    def check_available(self) -> None:
        _icd()

    def documents(self) -> Iterator[Doc]:
        icd = _icd()
        # get_all_codes lists a code that is both a block and a category (e.g. O09) twice.
        for code in dict.fromkeys(c for c in icd.get_all_codes(True) if icd.is_category(c)):
            yield Doc(id=f"medicine/{code}", load=lambda c=code: category_text(icd, c), source=DIST)

    def provenance(self) -> dict:
        return {"package": DIST, "version": package_version(DIST)}
