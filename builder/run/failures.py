"""Why an enclave stopped: Gramine 1.9's failure signatures in a log, each turned into what
happened, the spec key to change and by how much.

:func:`explain` reads the lines of a log (the service's output under ``gramine-direct``, or a
log copied from an SGX machine) and returns one :class:`Explanation` per kind of failure it
recognises, most specific first. It knows:

- **threads**: the SGX loader's "There are no available TCS pages left for a new thread ...
  sgx.max_threads ... The current value is N" (Gramine 1.9, ``pal/src/host/linux-sgx``), and
  what a program prints when it cannot start a thread ("can't start new thread", C++
  ``std::system_error`` "Resource temporarily unavailable") -- under ``gramine-direct`` with
  ``run --enforce-limits`` the thread limit is ``sgx.max_threads``, so that is what ran out;
- **memory**: the LibOS's "Out-of-memory in library OS" / "failed to allocate memory", the
  EDMM loader's "failed to lazily allocate page", a program's ``MemoryError``,
  ``std::bad_alloc`` or "Cannot allocate memory" -- the enclave's address space
  (``sgx.enclave_size``) is full;
- **killed**: "Killed" or an exit by SIGKILL (137): the host (a container's memory limit, the
  kernel's OOM killer) ended the process, not the LibOS;
- **refused files**: "Disallowing access to file 'P'; file is not allowed." and "Disallowing
  creating file 'P'; file is not trusted or allowed." (``libos/src/fs/chroot/fs.c``; logged at
  ``log_level = "warning"`` and above), a trusted file whose hash does not match, a write to a
  trusted file; a refused file that ``[enclave] trim`` left out is explained as the trim entry
  to remove (Gramine names only the file's base name: the entries that can match it are
  listed, with the image path when the image's root filesystem is at hand);
- **missing libraries**: "error while loading shared libraries: L" and Python's
  ``ImportError: L: cannot open shared object file``;
- **stack overflow**: a SIGSEGV exit (139) or "Segmentation fault" with nothing else
  recognised (Gramine 1.9 logs nothing for it at warning level), and Python's
  ``RecursionError``.

*limits* (:class:`Limits`: the manifest's ``sgx.enclave_size``, ``sgx.max_threads`` and
``sys.stack.size``, when known) turns "raise it" into a number: memory and stack go to the
next power of two above the current value, threads to twice the current value (or the
measured peak plus a margin when ``enclave-build profile`` measured one).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..trim import Trim

#: How ``run`` introduces its explanation of a failed service (``dev`` looks for it).
EXPLAINED = "what the log shows:"
#: Threads added above a measured peak (the LibOS's own helper threads vary by a few).
THREAD_MARGIN = 4
#: The most paths an explanation lists (the rest are counted).
MAX_PATHS = 10


def _table(value: Any) -> dict[str, Any]:
    """*value* when it is a TOML table, else an empty one."""
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Limits:
    """The enclave's limits as its manifest sets them (None: unknown)."""

    enclave_size: int | None = None
    max_threads: int | None = None
    stack_size: int | None = None
    #: True when the run enforced them (``run --enforce-limits`` under gramine-direct)
    enforced: bool = False

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], enforced: bool = False) -> Limits:
        sgx = _table(manifest.get("sgx"))
        stack = _table(_table(manifest.get("sys")).get("stack"))
        threads = sgx.get("max_threads")
        return cls(
            parse_size(sgx.get("enclave_size")),
            threads if isinstance(threads, int) else None,
            parse_size(stack.get("size")),
            enforced,
        )


@dataclass(frozen=True)
class Explanation:
    """One recognised failure."""

    kind: str  # "threads", "memory", "killed", "file-refused", "library", "stack", ...
    what: str  # what happened, one sentence
    key: str  # the spec key (or thing) to change
    change: str  # how, with the number when it is known
    lines: tuple[str, ...] = ()  # the log lines that showed it (trimmed)
    #: the suggested value, when there is one (bytes for sizes, a count for threads)
    value: int | None = None
    paths: tuple[str, ...] = field(default=())

    def text(self) -> list[str]:
        out = [f"{self.what}", f"  change: {self.key}: {self.change}"]
        for line in self.lines[:3]:
            out.append(f"  log: {line}")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "what": self.what,
            "key": self.key,
            "change": self.change,
            "value": self.value,
            "paths": list(self.paths),
            "lines": list(self.lines),
        }


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: Any) -> int | None:
    """Bytes of a Gramine size ("2G", "512M", 4096); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    found = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", value.upper())
    if not found:
        return None
    return int(found[1]) * _UNITS[found[2]]


def size_text(value: int) -> str:
    """'2G', '512M', '64K' (exact), else bytes."""
    for unit in ("T", "G", "M", "K"):
        if value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


def next_power_of_two(value: int) -> int:
    """The smallest power of two >= *value* (>= 1)."""
    return 1 << max(0, (max(1, value) - 1).bit_length())


# --------------------------------------------------------------------------- signatures

_TCS = re.compile(
    r"no available TCS pages left for a new thread.*?current value is (\d+)", re.IGNORECASE
)
_THREAD_START = re.compile(
    r"can't start new thread|Cannot create thread|pthread_create.*(?:failed|Resource temporarily)"
    r"|std::system_error.*Resource temporarily unavailable"
    r"|failed to create (?:a )?(?:new )?thread",
    re.IGNORECASE,
)
_OOM = re.compile(
    r"Out-of-memory in library OS|failed to allocate memory|failed to lazily allocate page"
    r"|\bMemoryError\b|std::bad_alloc|Cannot allocate memory|out of memory",
    re.IGNORECASE,
)
_KILLED = re.compile(r"^(?:.*\s)?Killed\s*$")
_REFUSED_OPEN = re.compile(r"Disallowing access to file '([^']*)'; file is not allowed")
_REFUSED_CREATE = re.compile(r"Disallowing creating file '([^']*)'; file is not trusted or allowed")
_HASH = re.compile(r"Hash of trusted file '([^']*)' does not match")
_TRUSTED_WRITE = re.compile(
    r"Disallowing (?:write/append to|creating) a trusted file '([^']*)'|Writing to a trusted "
    r"file is disallowed"
)
_LIBRARY = re.compile(
    r"error while loading shared libraries: ([^:\s]+)"
    r"|([\w.+-]+\.so(?:\.[\d.]+)?): cannot open shared object file"
)
_SEGV = re.compile(r"Segmentation fault|SIGSEGV|Internal memory fault|Unexpected memory fault")
_RECURSION = re.compile(r"RecursionError: maximum recursion depth")


def _trim(line: str, width: int = 300) -> str:
    line = line.rstrip()
    return line if len(line) <= width else line[: width - 3] + "..."


def _paths(found: list[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for path in found:
        seen.setdefault(path, None)
    return tuple(seen)


def _list(paths: tuple[str, ...]) -> str:
    shown = ", ".join(paths[:MAX_PATHS])
    more = len(paths) - MAX_PATHS
    return shown + (f" and {more} more" if more > 0 else "")


def explain(
    lines: Iterable[str],
    limits: Limits | None = None,
    exit_code: int | None = None,
    peak_threads: int | None = None,
    threads_refused: int | None = None,
    trim: Trim | None = None,
    root: Path | None = None,
) -> list[Explanation]:
    """Every failure :mod:`this module <builder.run.failures>` recognises in *lines*, most
    specific first (threads, memory, files, libraries, killed, stack). *exit_code*: the
    process's (137 and 139 are recognised without a log line); *peak_threads*: a measured
    peak, which sizes the thread recommendation; *threads_refused*: how many thread creations
    the enforced thread limit refused (None: not known) -- with limits enforced and none
    refused, a failed thread creation is a stack that did not fit, i.e. memory."""
    limits = limits or Limits()
    hits: dict[str, list[str]] = {}
    refused: list[str] = []
    created: list[str] = []
    mismatched: list[str] = []
    libraries: list[str] = []
    tcs_value: int | None = None
    for raw in lines:
        line = raw.rstrip("\n")
        if (found := _TCS.search(line)) is not None:
            tcs_value = int(found[1])
            hits.setdefault("threads", []).append(line)
        elif _THREAD_START.search(line):
            hits.setdefault("threads", []).append(line)
        if _OOM.search(line):
            hits.setdefault("memory", []).append(line)
        if _KILLED.match(line):
            hits.setdefault("killed", []).append(line)
        if (found := _REFUSED_OPEN.search(line)) is not None:
            refused.append(found[1])
            hits.setdefault("file-refused", []).append(line)
        if (found := _REFUSED_CREATE.search(line)) is not None:
            created.append(found[1])
            hits.setdefault("file-create", []).append(line)
        if (found := _HASH.search(line)) is not None:
            mismatched.append(found[1])
            hits.setdefault("file-hash", []).append(line)
        if _TRUSTED_WRITE.search(line):
            hits.setdefault("trusted-write", []).append(line)
        if (found := _LIBRARY.search(line)) is not None:
            libraries.append(found[1] or found[2])
            hits.setdefault("library", []).append(line)
        if _SEGV.search(line):
            hits.setdefault("stack", []).append(line)
        if _RECURSION.search(line):
            hits.setdefault("recursion", []).append(line)
    if exit_code == 137 and "killed" not in hits:
        hits["killed"] = []
    if exit_code == 139 and "stack" not in hits:
        hits["stack"] = []

    out: list[Explanation] = []
    shown = lambda kind: tuple(_trim(x) for x in hits[kind][:3])

    thread_lines = hits.get("threads", [])
    if thread_lines and tcs_value is None and threads_refused == 0 and limits.enforced:
        # the thread limit refused nothing: what failed was the new thread's stack, i.e. memory
        hits.setdefault("memory", []).extend(thread_lines)
        del hits["threads"]
    if "threads" in hits:
        current = tcs_value if tcs_value is not None else limits.max_threads
        if peak_threads is not None:
            value = peak_threads + THREAD_MARGIN
            how = f"at least {value} (the measured peak {peak_threads} + {THREAD_MARGIN})"
        elif current is not None:
            value = current * 2
            how = f"from {current} to {value} (twice; `enclave-build profile` measures the peak)"
        else:
            value = None
            how = "raise it (`enclave-build profile` measures the threads the service creates)"
        if tcs_value is not None:
            where = "the enclave has no free thread slot (TCS) left."
        elif threads_refused:
            where = (
                f"a thread could not be created: the enclave's thread limit "
                f"(sgx.max_threads = {limits.max_threads}) refused {threads_refused}."
            )
        else:
            where = (
                "a thread could not be created: no free thread slot (sgx.max_threads), or no "
                "memory left for its stack (sgx.enclave_size; see [enclave] size if raising "
                "threads does not help)."
            )
        out.append(
            Explanation("threads", where, "[enclave] max_threads", how, shown("threads"), value)
        )
    if "memory" in hits:
        out.append(_memory(limits, shown("memory")))
    if "file-refused" in hits and trim:
        untrimmed = _trimmed(_paths(refused), trim, root, hits["file-refused"], out)
        refused = list(untrimmed)
        if not refused:
            del hits["file-refused"]
    if "file-refused" in hits:
        paths = _paths(refused)
        out.append(
            Explanation(
                "file-refused",
                f"the LibOS refused {len(paths)} file(s) the manifest does not trust or allow: "
                f"{_list(paths)}.",
                "the files the image trusts (the framework plugin's list, or [[models]] path)",
                "put each file into the image's trusted files (a plugin's trusted paths, or "
                "the model it belongs to), rebuild; if the service only probes for it, this "
                "line is harmless",
                shown("file-refused"),
                paths=paths,
            )
        )
    if "file-create" in hits:
        paths = _paths(created)
        out.append(
            Explanation(
                "file-create",
                f"the LibOS refused to create {len(paths)} file(s) outside any writable "
                f"mount: {_list(paths)}.",
                "where the service writes",
                "write under /tmp (an in-enclave tmpfs) or an encrypted mount; the image's "
                "other files are read-only in the enclave",
                shown("file-create"),
                paths=paths,
            )
        )
    if "file-hash" in hits:
        paths = _paths(mismatched)
        out.append(
            Explanation(
                "file-hash",
                f"trusted file(s) changed after the build: {_list(paths)}.",
                "the image",
                "rebuild (`enclave-build build`) and run the image that build wrote; never "
                "change an image's files after signing",
                shown("file-hash"),
                paths=paths,
            )
        )
    if "trusted-write" in hits:
        out.append(
            Explanation(
                "trusted-write",
                "the service tried to write a trusted (read-only, measured) file.",
                "where the service writes",
                "write under /tmp (tmpfs) or an encrypted mount",
                shown("trusted-write"),
            )
        )
    if "library" in hits and trim:
        libraries = list(_trimmed(_paths(libraries), trim, root, hits["library"], out))
        if not libraries:
            del hits["library"]
    if "library" in hits:
        libs = _paths(libraries)
        out.append(
            Explanation(
                "library",
                f"a shared library could not be loaded: {_list(libs)}.",
                "the image's libraries",
                "install it in the base (the package that ships it) so the build trusts it, "
                "or add it to the plugin's trusted paths; under Gramine an untrusted library "
                "is as missing as an absent one",
                shown("library"),
                paths=libs,
            )
        )
    if "killed" in hits:
        out.append(
            Explanation(
                "killed",
                "the host killed the process (SIGKILL: a container memory limit or the "
                "kernel's OOM killer), not the LibOS.",
                "the container's memory limit (k8s resources.limits.memory)",
                "raise the limit above [enclave] size plus the loader's own memory, or lower "
                "[enclave] size (`enclave-build profile` measures what the enclave uses); "
                "without EDMM every enclave page is committed at start",
                shown("killed"),
            )
        )
    if ("stack" in hits or "recursion" in hits) and not out:
        out.append(
            _stack(
                limits,
                tuple(_trim(x) for x in [*hits.get("stack", []), *hits.get("recursion", [])][:3]),
            )
        )
    return out


def _trimmed(
    names: tuple[str, ...],
    trim: Trim,
    root: Path | None,
    lines: list[str],
    out: list[Explanation],
) -> tuple[str, ...]:
    """Append the explanation of the refused *names* that ``[enclave] trim`` left out; return
    the others."""
    entries: dict[str, list[str]] = {}
    trimmed: list[str] = []
    others: list[str] = []
    certain = True
    for name in names:
        suspects = trim.suspects(name, root)
        if not suspects:
            others.append(name)
            continue
        trimmed.append(name)
        for entry, path in suspects:
            certain = certain and path is not None
            entries.setdefault(entry.text, []).append(path or f"a file named {name}")
    if trimmed:
        shown = tuple(_trim(x) for x in lines if any(n in x for n in trimmed))[:3]
        removals = "; ".join(
            f"remove {json.dumps(entry)} (it leaves out {_list(tuple(paths))})"
            for entry, paths in list(entries.items())[:MAX_PATHS]
        )
        out.append(
            Explanation(
                "file-trimmed",
                f"the LibOS refused {len(trimmed)} file(s) that [enclave] trim "
                f"{'left' if certain else 'may have left'} out of the trusted files: "
                f"{_list(tuple(trimmed))}.",
                "[enclave] trim",
                f"{removals}; rebuild (`enclave-build profile` under the traffic that opens "
                "them writes a trim without them)",
                shown,
                paths=tuple(p for paths in entries.values() for p in paths),
            )
        )
    return tuple(others)


def _memory(limits: Limits, lines: tuple[str, ...]) -> Explanation:
    if limits.enclave_size:
        value = next_power_of_two(limits.enclave_size + 1)
        how = (
            f"from {size_text(limits.enclave_size)} to {size_text(value)} at least (the next "
            "power of two; `enclave-build profile` measures the peak)"
        )
    else:
        value = None
        how = "double it (a power of two; `enclave-build profile` measures the peak)"
    return Explanation(
        "memory",
        "the enclave ran out of memory (its address space, sgx.enclave_size, is full).",
        "[enclave] size",
        how,
        lines,
        value,
    )


def _stack(limits: Limits, lines: tuple[str, ...]) -> Explanation:
    current = limits.stack_size
    return Explanation(
        "stack",
        "the service died of a segmentation fault with nothing else logged: most often a "
        "thread's stack overflowed (deep recursion in native code)"
        + (f"; the stack is {size_text(current)}" if current else "")
        + ".",
        "the enclave's stack size (sys.stack.size; a framework plugin's stack_size)",
        (
            f"raise it from {size_text(current)} to {size_text(next_power_of_two(current + 1))}"
            if current
            else "raise it (Gramine's own default, 256K, is too small for most ML stacks; 8M "
            "matches a native process)"
        )
        + '; if it persists, run with [enclave] log_level = "debug" to see the faulting code',
        lines,
    )


def report_lines(explanations: list[Explanation], prefix: str = "") -> list[str]:
    """The explanations as text lines (each line starting with *prefix*)."""
    out: list[str] = []
    for explanation in explanations:
        out += [prefix + line for line in explanation.text()]
    return out


__all__ = [
    "EXPLAINED",
    "Explanation",
    "Limits",
    "explain",
    "report_lines",
    "parse_size",
    "size_text",
    "next_power_of_two",
    "THREAD_MARGIN",
]
