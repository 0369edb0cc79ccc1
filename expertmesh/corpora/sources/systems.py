"""systems: English manual pages installed on this machine, one document per page (id ``systems/<section>/<page>``).

Pages are rendered as a terminal would show them, ``man -l FILE | col -bx`` at 80 columns (~50 ms a page);
where man is missing, ``groff -man -Tutf8``; where groff is missing too, a minimal roff reader keeps the text
and drops the formatting requests. Aliases (symlinks and one-line ``.so`` pages) are skipped, and so are
the running header and footer lines. Pages matching ``exclude`` are left out: by default the 16.6k generated
``gcloud_*`` subcommand pages of google-cloud-cli, which would otherwise be 83% of the domain on this image.
Rendering all ~3.3k remaining pages takes minutes, so a build takes 2,000 by default (choose with max_docs).
"""
from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterator

from expertmesh.corpora.sources import Doc, Source, debian_version, register_source
from expertmesh.errors import DataError

_SECTION_DIR = re.compile(r"^man([1-9])$")
# -rHY=0: no hyphenation, so words are not split across lines ("ser-\n vice").
_ENV = {"MANROFFOPT": "-rHY=0", "MANWIDTH": "80", "MAN_KEEP_FORMATTING": "", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "MAN_DISABLE_SECCOMP": "1", "MANPAGER": "cat", "PAGER": "cat"}


def read_roff(path: Path) -> str:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def is_alias(source: str) -> bool:
    """A page whose only request is ``.so other/page`` (man-db follows it; we keep the target only)."""
    body = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\"", '.\\}'))]
    return len(body) <= 2 and any(ln.startswith(".so ") for ln in body)


# (pattern, replacement) for the roff escapes that matter in man pages; the rest are dropped.
_ESCAPES = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),                      # font changes \fB \fR \f(CW
    (re.compile(r"\\s[+-]?\d"), ""),                                     # size changes
    (re.compile(r"\\\((em|en)"), "-"), (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"), (re.compile(r"\\\(bu"), "*"),
    (re.compile(r"\\\(..|\\\[[^\]]*\]"), ""),                           # other special characters
    (re.compile(r"\\[-e]"), lambda m: "-" if m.group(0) == "\\-" else "\\"),
    (re.compile(r"\\[&|^%:,/]|\\c$", re.M), ""), (re.compile(r"\\ "), " "),
]
_TEXT_MACROS = {".B", ".I", ".SM", ".SB"}
_ALTERNATING = {".BR", ".RB", ".BI", ".IB", ".IR", ".RI"}      # fonts alternate between args, no spaces


def render_roff_minimal(source: str) -> str:
    """Plain text of a man(7) page without groff: headings kept, requests dropped, escapes simplified."""
    out: list[str] = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith((".", "'")):
            macro, _, rest = line.partition(" ")
            words = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', rest)]
            args = ("" if macro in _ALTERNATING else " ").join(words)
            if macro in (".SH", ".SS"):
                out += ["", args.upper() if macro == ".SH" else args]
            elif macro in (".PP", ".P", ".LP", ".TP", ".IP", ".sp", ".br"):
                out.append("" if macro != ".IP" or not args else args.split(" ")[0])
            elif macro == ".TH":
                out.append(args)
            elif macro in _TEXT_MACROS or macro in _ALTERNATING:
                out.append(args)
            continue
        out.append(line)
    text = "\n".join(out)
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text


def _run(cmd: list[str], *, stdin: bytes | None = None) -> bytes:
    out = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, env={**os.environ, **_ENV})
    return out.stdout if out.returncode == 0 else b""


def render_page(path: Path, renderer: str) -> str:
    source = read_roff(path)
    if is_alias(source):
        return ""
    if renderer == "man":
        raw = _run(["man", "-l", str(path)])
        return strip_running_lines(_run(["col", "-bx"], stdin=raw).decode("utf-8", errors="replace")) if raw else ""
    if renderer == "groff":
        raw = _run(["groff", "-man", "-Tutf8", "-t", "-rHY=0", "-P-cbou"], stdin=source.encode("utf-8"))
        return strip_running_lines(raw.decode("utf-8", errors="replace"))
    return render_roff_minimal(source)


def strip_running_lines(rendered: str) -> str:
    """Drop the first and last non-blank lines: the header "open(2)  System Calls Manual  open(2)" and the
    footer "Linux man-pages 6.03  2023-02-05  open(2)"."""
    lines = rendered.strip("\n").split("\n")
    return "\n".join(lines[1:-1]) if len(lines) > 2 else ""


def pick_renderer() -> str:
    if shutil.which("man") and shutil.which("col"):
        return "man"
    return "groff" if shutil.which("groff") else "minimal"


@register_source
@dataclass
class SystemsSource(Source):
    man_dir: str = "/usr/share/man"
    renderer: str = "auto"          # auto | man | groff | minimal
    exclude: list[str] = field(default_factory=lambda: ["gcloud_*"])   # fnmatch patterns on file names

    name = "systems"
    domain = "systems"
    description = "English manual pages of this machine (sections 1-9), one document per page, rendered as text"
    default_max_docs = 2000
    load_workers = 2                # rendering waits on man/groff subprocesses

    def _renderer(self) -> str:
        if self.renderer not in ("auto", "man", "groff", "minimal"):
            raise DataError(f"renderer={self.renderer!r} is not one of auto, man, groff, minimal")
        return pick_renderer() if self.renderer == "auto" else self.renderer

    def _pages(self) -> list[tuple[str, Path]]:
        root = Path(self.man_dir)
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and _SECTION_DIR.match(d.name)) \
            if root.is_dir() else []
        pages = []
        for d in dirs:
            for f in sorted(d.iterdir()):
                if f.is_file() and not f.is_symlink() and not any(fnmatch(f.name, p) for p in self.exclude):
                    pages.append((f"systems/{d.name[3:]}/{f.name.removesuffix('.gz')}", f))
        if not pages:
            raise DataError(f"no manual pages under {root}/man[1-9]; install them with "
                            "`apt-get install -y man-db manpages` (and unminimize a minimal image)")
        return pages

    def check_available(self) -> None:
        self._renderer()
        self._pages()

    def documents(self) -> Iterator[Doc]:
        renderer = self._renderer()
        for doc_id, path in self._pages():
            yield Doc(id=doc_id, load=lambda p=path: render_page(p, renderer), source="man-pages")

    def provenance(self) -> dict:
        return {"package": "man pages of the installed Debian packages",
                "version": {p: debian_version(p) for p in ("manpages", "manpages-dev", "man-db")},
                "path": self.man_dir, "renderer": self._renderer()}
