"""The wire format of packages: a deterministic, uncompressed tar of regular files. Standard library only,
so the registry and its client (``clients/registry_client.py``) share it from the core, neither importing the
other.

Packing: the names sorted, each a plain file name (no directories), mode 0644, uid/gid 0, mtime 0, USTAR
headers; so the same package directory always gives the same bytes and the same sha256.
Unpacking (``safe_extract``) refuses anything but regular files with allowed plain names: no paths, no links,
no devices, no duplicates, and a cap on the total size, so a hostile tar cannot write outside the target.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from expertmesh.errors import IntegrityError, PackageError, PayloadTooLargeError

BLOCK = 512
CHUNK = 1 << 20  # bytes per read when streaming


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def tar_size(sizes: Iterable[int]) -> int:
    """Exact byte length of ``iter_tar`` over files of these sizes (a 512-byte header each, data padded to
    512, two zero blocks at the end)."""
    return sum(BLOCK + _padded(s) for s in sizes) + 2 * BLOCK


Entry = tuple[str, int, Callable[[], BinaryIO]]   # name, size, opener


def iter_tar(entries: Iterable[Entry]) -> Iterator[bytes]:
    """Stream a deterministic tar; each file must yield exactly its declared size."""
    for name, size, opener in sorted(entries, key=lambda e: e[0]):
        yield _header(name, size)
        sent = 0
        with opener() as f:
            while block := f.read(min(CHUNK, size - sent) or 1):
                sent += len(block)
                if sent > size:
                    raise IntegrityError(f"{name} is larger than its recorded size {size}")
                yield block
                if sent == size:
                    break
        if sent != size:
            raise IntegrityError(f"{name} is shorter ({sent} bytes) than its recorded size {size}")
        if _padded(size) - size:
            yield b"\0" * (_padded(size) - size)
    yield b"\0" * (2 * BLOCK)


def directory_entries(src: str | Path) -> list[Entry]:
    """The files of a package directory as tar entries; anything but regular files is refused."""
    root = Path(src)
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory")
    entries: list[Entry] = []
    for p in sorted(root.iterdir()):
        if p.is_symlink() or not p.is_file():
            raise PackageError(f"{p.name} in {root} is not a regular file; a package holds plain files only")
        entries.append((p.name, p.stat().st_size, lambda p=p: open(p, "rb")))
    return entries


def pack_directory(src: str | Path, out: BinaryIO) -> tuple[str, int]:
    """Write the tar of ``src`` to ``out``; return (sha256 hex, byte count)."""
    h = hashlib.sha256()
    n = 0
    for block in iter_tar(directory_entries(src)):
        h.update(block)
        out.write(block)
        n += len(block)
    return h.hexdigest(), n


def check_member_name(name: str, allowed: Iterable[str]) -> str:
    allowed = set(allowed)
    if (not name or "/" in name or "\\" in name or name in {".", ".."} or name.startswith(".")
            or "\0" in name or os.path.isabs(name)):
        raise PackageError(f"archive member {name!r} is a path, not a plain file name (path traversal refused)")
    if name not in allowed:
        raise PackageError(f"archive member {name!r} is not allowed in this package (allowed: {sorted(allowed)})")
    return name


def safe_extract(archive: str | Path, dest: str | Path, *, allowed: Iterable[str], max_bytes: int) -> list[str]:
    """Unpack an uncompressed tar of plain files into the existing empty directory ``dest``."""
    allowed = set(allowed)
    dest = Path(dest)
    names: list[str] = []
    total = 0
    try:
        tf = tarfile.open(archive, mode="r:")
    except (tarfile.TarError, EOFError) as e:
        raise PackageError(f"upload is not an uncompressed tar archive: {e}") from None
    with tf:
        try:
            for member in tf:
                if not member.isreg():
                    kind = "a link" if member.issym() or member.islnk() else "a directory" if member.isdir() \
                        else "not a regular file"
                    raise PackageError(f"archive member {member.name!r} is {kind}; only plain files are allowed")
                name = check_member_name(member.name, allowed)
                if name in names:
                    raise PackageError(f"archive member {name!r} appears twice")
                total += member.size
                if total > max_bytes:
                    raise PayloadTooLargeError(f"unpacked package exceeds the {max_bytes} byte limit")
                src = tf.extractfile(member)
                assert src is not None
                with src, open(dest / name, "xb") as out:
                    while block := src.read(CHUNK):
                        out.write(block)
                names.append(name)
        except (tarfile.TarError, EOFError) as e:
            raise PackageError(f"archive is truncated or malformed: {e}") from None
    return names
