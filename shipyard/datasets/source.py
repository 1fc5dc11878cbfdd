"""Find the files of a dataset source (local directory, glob or fsspec URI) and check their names.

A local directory is walked as a stream, each directory's names sorted so that files come out in the
order of their relative paths, with only one directory's names in memory at a time; other sources
(globs, remote URIs) are listed whole by fsspec.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from stat import S_ISREG as stat_is_file
from typing import Any, NamedTuple, cast

import fsspec
from fsspec.implementations.local import LocalFileSystem

from shipyard.errors import DatasetError

# Characters a dataset path may hold: no control characters, no backslashes (Windows separators would let
# 'a\..\..\x' escape on pull), and no empty or dot components (checked separately).
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


class SourceFile(NamedTuple):
    """One file of a source: where to read it and what it will be called in the dataset.

    A named tuple, not a dataclass: a staging makes one per file, and this is several times cheaper.
    """

    path: str
    rel: str
    size: int
    stat: tuple[int, int, int, int, int] | None = None  # (dev, inode, size, mtime_ns, ctime_ns), local only


@dataclass(frozen=True)
class Source:
    """A source: its filesystem, and either a local directory to walk or its files listed, sorted by name."""

    uri: str
    fs: fsspec.AbstractFileSystem
    listed: list[SourceFile] | None = None
    directory: str | None = None

    def files(self) -> Iterator[SourceFile]:
        """Yield the files in relative-path order, leaving out hidden ones ('.' or '_' prefixed)."""
        if self.directory is not None:
            yield from _walk(self.directory, "")
        else:
            yield from self.listed or []

    @property
    def is_local(self) -> bool:
        """Tell whether the files are on local disk (readable with plain ``open``)."""
        return isinstance(self.fs, LocalFileSystem)

    def open(self, file: SourceFile) -> io.BufferedIOBase:
        """Open a file for reading bytes (with ``readinto``)."""
        if self.is_local:
            return open(file.path, "rb")  # the caller closes it
        return cast(io.BufferedIOBase, self.fs.open(file.path, "rb"))

    def read_into(self, file: SourceFile, offset: int, view: memoryview) -> int:
        """Fill ``view`` with the file's bytes from ``offset``; return how many were read (short at EOF)."""
        if self.is_local:
            fd = os.open(file.path, os.O_RDONLY)
            try:
                done = 0
                while done < len(view) and (n := os.preadv(fd, [view[done:]], offset + done)) > 0:
                    done += n
                return done
            finally:
                os.close(fd)
        data: bytes = self.fs.cat_file(file.path, start=offset, end=offset + len(view))
        view[: len(data)] = data
        return len(data)


def check_name(rel: str, where: str) -> None:
    """Fail unless ``rel`` is a plain relative path that stays inside the dataset prefix."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in {"", ".", ".."} for p in parts) or _BAD_CHARS.search(rel):
        raise DatasetError(f"file name {where!r} would escape the dataset prefix or is not a plain relative path "
                           "(rename it: no '..', '.', empty parts, backslashes or control characters)")


def list_source(source: str) -> Source:
    """Find the files of ``source`` (a local directory is walked lazily, by :meth:`Source.files`)."""
    fs, root = fsspec.core.url_to_fs(source)
    root = root.rstrip("/") or root
    if any(ch in root for ch in "*?["):
        paths = sorted(p for p in fs.glob(root) if fs.isfile(p))
        base = root.split("*", 1)[0].split("?", 1)[0].split("[", 1)[0].rsplit("/", 1)[0]
    elif isinstance(fs, LocalFileSystem) and os.path.isdir(root):
        return Source(uri=source, fs=fs, directory=os.path.abspath(root))
    elif fs.isdir(root):
        paths, base = sorted(fs.find(root)), root
    elif fs.isfile(root):
        paths, base = [root], root.rsplit("/", 1)[0]
    else:
        raise DatasetError(f"dataset source {source} does not exist (give a directory, glob or fsspec URI)")
    files = [_source_file(fs, base, p) for p in paths if not _hidden(p, base)]
    if not files:
        raise DatasetError(f"dataset source {source} holds no files (an empty dataset cannot be staged)")
    return Source(uri=source, fs=fs, listed=files)


def _walk(root: str, rel: str) -> Iterator[SourceFile]:
    """Yield the files under ``root/rel`` sorted by relative path: a directory sorts as its name + '/'.

    One generator with a stack of directories, not one per level: this loop runs once per file.
    """
    stack = [(rel, iter(_names(root, rel)))]
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        child = f"{parent}/{name}" if parent else name
        if name[-1] == "/":
            stack.append((child[:-1], iter(_names(root, child[:-1]))))
            continue
        path = f"{root}/{child}"
        st = os.stat(path)
        if stat_is_file(st.st_mode):
            stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            yield SourceFile(path, child, st.st_size, stat)


def _names(root: str, rel: str) -> list[str]:
    """Return a directory's visible names, sorted, directories as 'name/', after checking them."""
    with os.scandir(f"{root}/{rel}" if rel else root) as entries:
        names = sorted(e.name + "/" if e.is_dir() else e.name for e in entries if not e.name.startswith((".", "_")))
    if _BAD_CHARS.search("".join(names)):  # scandir names are never empty, '.', '..' or hold '/': only this to check
        for name in names:
            child = f"{rel}/{name}" if rel else name
            check_name(child.rstrip("/"), f"{root}/{child}")
    return names


def _hidden(path: str, base: str) -> bool:
    rel = path[len(base) :].lstrip("/")
    return any(part.startswith((".", "_")) and part not in {".", ".."} for part in rel.split("/"))


def _source_file(fs: fsspec.AbstractFileSystem, base: str, path: str) -> SourceFile:
    rel = path[len(base) :].lstrip("/") if path.startswith(base + "/") else path
    check_name(rel, path)
    if isinstance(fs, LocalFileSystem):
        st = os.stat(path)
        stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return SourceFile(path=path, rel=rel, size=st.st_size, stat=stat)
    info: dict[str, Any] = fs.info(path)
    return SourceFile(path=path, rel=rel, size=int(info["size"]))
