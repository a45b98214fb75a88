"""``[enclave] trim``: image paths left out of the enclave's trusted files.

Every trusted file costs the enclave start-up time and memory even when the service never
opens it (Gramine keeps the list in the enclave and searches it at every file lookup). A trim
entry names trusted files the build leaves out of ``sgx.trusted_files``:

- ``/usr/lib/python3.11/email/`` (ends with ``/``): every file under that directory;
- ``/usr/lib/python3.11/**/*.py`` (has ``*``, ``?`` or ``[...]``): a glob; ``*`` and ``?``
  stay within one path segment, ``**`` as a whole segment matches any number of them;
- anything else: that one file.

A file left out is neither trusted nor allowed, so the LibOS refuses to open it (EACCES, and
at ``log_level = "warning"`` "Disallowing access to file 'NAME'"): a wrong trim fails loudly
at run time, and the crash explanations (builder.run.failures) name the entry to remove. The
build never trims the program's entrypoint, and keeps the libraries every kept ELF file needs
whatever the trim says (builder.gramine.backend).

:func:`compress` turns a run's unused trusted files (``enclave-build profile``) into entries:
a directory whose trusted files all went unused becomes one ``DIR/`` entry.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

_GLOB = re.compile(r"[*?\[]")
#: What a trim entry must look like (checked by the spec).
ENTRY_PATTERN = r"/[^\x00-\x1f\x7f]+"
ENTRY_DOC = "an absolute image path: a file, a directory ending in '/', or a glob (*, ?, [...], **)"


def entry_problem(entry: str) -> str | None:
    """Why *entry* cannot be a trim entry (None: it can)."""
    if not entry.startswith("/") or entry == "/":
        return f"{entry!r}: {ENTRY_DOC}, not the root"
    body = entry.rstrip("/") if entry.endswith("/") else entry
    if posixpath.normpath(body) != body or "//" in entry:
        return f"{entry!r}: write it normalized (no '.', '..' or '//' segments)"
    if entry.endswith("/") and _GLOB.search(entry):
        return f"{entry!r}: a directory entry cannot be a glob (end a glob with a file pattern)"
    return None


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = []
    segments = pattern.split("/")
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        part = []
        i = 0
        while i < len(segment):
            char = segment[i]
            if char == "*":
                part.append("[^/]*")
            elif char == "?":
                part.append("[^/]")
            elif char == "[":
                end = segment.find("]", i + 2 if segment[i + 1 : i + 2] in ("!", "]") else i + 1)
                if end < 0:
                    part.append(re.escape(char))
                else:
                    body = segment[i + 1 : end]
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    part.append(f"[{body.replace(chr(92), chr(92) * 2)}]")
                    i = end
            else:
                part.append(re.escape(char))
            i += 1
        out.append("".join(part) + ("" if last else "/"))
    return re.compile("".join(out))


@dataclass(frozen=True)
class TrimEntry:
    text: str

    @property
    def kind(self) -> str:
        if self.text.endswith("/"):
            return "directory"
        return "glob" if _GLOB.search(self.text) else "file"

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return _glob_regex(self.text)

    def matches(self, path: str) -> bool:
        """Whether this entry leaves the image file *path* out."""
        if self.kind == "directory":
            return path.startswith(self.text)
        if self.kind == "glob":
            return self._regex.fullmatch(path) is not None
        return path == self.text

    def may_name(self, name: str) -> bool:
        """Whether a file whose base name is *name* can be one this entry leaves out (what a
        Gramine refusal line shows of the file); directories: any name."""
        if self.kind == "directory":
            return True
        last = self.text.rsplit("/", 1)[1]
        if self.kind == "glob":
            return last == "**" or _glob_regex(last).fullmatch(name) is not None
        return last == name


@dataclass(frozen=True)
class Trim:
    """The entries of ``[enclave] trim``, in the spec's order."""

    entries: tuple[TrimEntry, ...] = ()

    @classmethod
    def of(cls, texts: Iterable[str]) -> Trim:
        return cls(tuple(TrimEntry(t) for t in dict.fromkeys(texts)))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, path: str) -> TrimEntry | None:
        """The first entry leaving *path* out (None: kept)."""
        return next((e for e in self.entries if e.matches(path)), None)

    def suspects(self, name: str, root: Path | None = None) -> list[tuple[TrimEntry, str | None]]:
        """The entries that may have left out a refused file named *name* (a base name, or an
        absolute path), each with the image path it left out when that is known: with *root*
        (the image's root filesystem), a directory entry is searched for a file of that name."""
        found: list[tuple[TrimEntry, str | None]] = []
        if name.startswith("/"):
            entry = self.match(name)
            return [(entry, name)] if entry is not None else []
        for entry in self.entries:
            if not entry.may_name(name):
                continue
            if entry.kind == "file":
                found.append((entry, entry.text))
            elif root is not None:
                for path in _named_under(root, _search_root(entry), name):
                    if entry.matches(path):
                        found.append((entry, path))
                        break
            else:
                found.append((entry, None))
        return found


def _search_root(entry: TrimEntry) -> str:
    """The longest directory of *entry* with no glob in it."""
    if entry.kind == "directory":
        return entry.text
    head = _GLOB.split(entry.text, 1)[0]
    return head.rsplit("/", 1)[0] + "/"


#: The most directory entries searched for a refused name (an explanation stays fast).
_MAX_SEARCH = 200_000


def _named_under(root: Path, directory: str, name: str) -> list[str]:
    import os

    found: list[str] = []
    top = root / directory.lstrip("/")
    seen = 0
    for current, dirs, files in os.walk(top):
        seen += len(dirs) + len(files)
        if name in files:
            rel = Path(current).relative_to(root).as_posix()
            found.append("/" + posixpath.join(rel, name).lstrip("/"))
        if seen > _MAX_SEARCH:
            break
    return sorted(found)


def compress(unused: Iterable[str], trusted: Iterable[str]) -> list[str]:
    """Trim entries for the *unused* trusted files: a directory holding at least two trusted
    files, all unused, becomes one ``DIR/`` entry (the highest such directory); the other
    unused files are listed one by one. Sorted."""
    unused_set = set(unused)
    counts: dict[str, list[int]] = {}  # directory -> [trusted files, unused ones] under it
    for path in trusted:
        used = path not in unused_set
        directory = posixpath.dirname(path)
        while directory not in ("/", ""):
            tally = counts.setdefault(directory, [0, 0])
            tally[0] += 1
            tally[1] += 0 if used else 1
            directory = posixpath.dirname(directory)

    def whole(directory: str) -> bool:
        tally = counts.get(directory)
        return tally is not None and tally[0] == tally[1] and tally[0] >= 2

    out: set[str] = set()
    for path in unused_set:
        best = None
        directory = posixpath.dirname(path)
        while directory not in ("/", ""):
            if whole(directory):
                best = directory
            directory = posixpath.dirname(directory)
        out.add(best + "/" if best else path)
    return sorted(out)


__all__ = ["Trim", "TrimEntry", "compress", "entry_problem", "ENTRY_PATTERN", "ENTRY_DOC"]
