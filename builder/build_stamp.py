"""Whether a build output is up to date with what it was built from.

Every build that writes an output directory records, in the spec's project directory
(``.enclave-build/builds/ID.json``, one file per output directory), a digest of its inputs and
of the ``measurements.json`` it wrote. :func:`check` computes the inputs' digest again and
compares: the output is up to date when both digests match and the output still holds the
measurements recorded. ``enclave-build dev`` builds only when it is not.

The inputs, each digested on its own so that a change can be named:

* ``enclave-build``: this package's version and the size and modification time of every file
  of its installed code (a code change in a checkout counts), plus the distributions that
  provide plugins (name and version);
* ``spec``: the spec file's bytes;
* ``base``: the base reference the build used; for a local one (``dir:``, ``oci:``,
  ``oci-archive:``, ``docker-archive:``) also every file's path, type, mode, size and
  modification time under it. A registry or Docker-engine base is recorded by reference only
  (a tag that moves is not noticed: rebuild with ``dev --rebuild``);
* ``files``: the content of every file the plan takes from disk (models, CA, the model
  server's code), by its path relative to the spec (through the build's
  :class:`~builder.hashing.HashCache`, so unchanged files are not read again);
* ``layout``: where the plan puts each file and how (destination, kind, mode, key), and the
  content of the files it generates from the spec (configurations): a change here follows
  from the spec or the code, and is named only when neither changed;
* ``keys``: the signing key and the wrap keys by file identity (device, inode, size,
  modification time) only: nothing derived from key bytes is written anywhere.

Nothing here is secret; the stamp files hold digests and paths.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from enclave_build import __version__
from enclave_build.contract.names import MEASUREMENTS_FILE

from .hashing import HashCache, hash_files
from .image.reference import parse_source
from .plan import PlanFile, ServicePlan
from .spec import Spec

#: The project's state directory (next to spec.toml): build stamps, and what `dev` keeps.
STATE_DIR = ".enclave-build"
STAMP_VERSION = 2  # 2: the plan's files split into files (content) and layout
_LOCAL_TRANSPORTS = ("dir", "oci", "oci-archive", "docker-archive")
_PLUGIN_GROUPS = ("enclave_build", "enclave_model_server.backends")


@dataclass(frozen=True)
class BuildInputs:
    """The digest of everything a build reads, and its parts by name."""

    parts: dict[str, str] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.parts):
            h.update(f"{name}={self.parts[name]}\n".encode())
        return h.hexdigest()

    def changed(self, other: BuildInputs) -> list[str]:
        """The parts that differ from *other*'s (in a fixed order)."""
        names = sorted(set(self.parts) | set(other.parts))
        return [n for n in names if self.parts.get(n) != other.parts.get(n)]


@dataclass(frozen=True)
class Staleness:
    """What :func:`check` found: *up_to_date*, else *reason* (one line)."""

    up_to_date: bool
    reason: str


def _digest_lines(lines: Iterator[str]) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()


def _tree_lines(root: Path) -> Iterator[str]:
    """path, type, mode, size, mtime of everything under *root* (sorted; symlinks not
    followed, their targets recorded)."""
    try:
        top = os.lstat(root)
    except OSError as exc:
        yield f"missing {exc.errno}"
        return
    if not stat.S_ISDIR(top.st_mode):
        yield f". {top.st_mode:o} {top.st_size} {top.st_mtime_ns}"
        return
    stack = [""]
    while stack:
        relative = stack.pop()
        try:
            entries = sorted(
                os.scandir(root / relative if relative else root), key=lambda e: e.name
            )
        except OSError as exc:
            yield f"{relative}/ unreadable {exc.errno}"
            continue
        subdirs = []
        for entry in entries:
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                yield f"{name} -> {os.readlink(entry.path)}"
            elif stat.S_ISDIR(st.st_mode):
                yield f"{name}/ {st.st_mode:o}"
                subdirs.append(name)
            else:
                yield f"{name} {st.st_mode:o} {st.st_size} {st.st_mtime_ns}"
        stack.extend(reversed(subdirs))


def code_digest() -> str:
    """enclave-build's version, its installed code (stat of every file) and the plugin
    distributions' names and versions."""
    import enclave_build

    roots = {Path(p).resolve() for p in enclave_build.__path__}
    for name in ("builder", "plugins", "model_server", "attestation", "contract", "base_images"):
        try:
            module = __import__(f"enclave_build.{name}", fromlist=["__path__"])
        except ImportError:
            continue
        roots.update(Path(p).resolve() for p in getattr(module, "__path__", []))

    def lines() -> Iterator[str]:
        yield f"enclave-build {__version__}"
        for root in sorted(roots):
            yield f"[{root}]"
            for line in _tree_lines(root):
                if "__pycache__" not in line:
                    yield line
        plugins = set()
        for group in _PLUGIN_GROUPS:
            for point in importlib.metadata.entry_points(group=group):
                dist = getattr(point, "dist", None)
                if dist is not None:
                    plugins.add(f"{dist.metadata['Name']}=={dist.version}")
        yield from sorted(plugins)

    return _digest_lines(lines())


def base_digest(reference: str) -> str:
    source = parse_source(reference)
    lines = [f"reference {reference}"]
    if source.transport in _LOCAL_TRANSPORTS:
        lines.extend(_tree_lines(Path(source.location).resolve()))
    return _digest_lines(iter(lines))


def _identity(path: Path | None) -> str:
    if path is None:
        return "none"
    try:
        st = os.stat(path)
    except OSError:
        return f"{path} missing"
    return f"{path} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"


def _files_digests(plan: ServicePlan, cache: HashCache | None, base_dir: Path) -> tuple[str, str]:
    """(files, layout): the content of every file the plan takes from disk (by its path
    relative to *base_dir*), and where the plan puts each file and how, with the content of
    the files it generates (configurations made from the spec) -- so a change of the spec
    alone is told from a changed model."""
    contents: list[str] = []
    layout: list[str] = []
    sources: list[Path] = []
    planned: list[tuple[PlanFile, tuple[Path, list[Path]] | None]] = []
    for item in plan.image_files():
        if item.source is None:
            planned.append((item, None))
            continue
        source = Path(item.source)
        files = (
            [p for p in sorted(source.rglob("*")) if p.is_file()]
            if source.is_dir()
            else [source]
            if source.is_file()
            else []
        )
        sources.extend(files)
        planned.append((item, (source, files)))
    digests = hash_files(sources, cache) if sources else {}
    for item, found in planned:
        head = f"{item.dest} {item.kind.value} {item.mode:o} {item.key_name}"
        if found is None:
            layout.append(f"{head} data {hashlib.sha256(item.data or b'').hexdigest()}")
            continue
        source, files = found
        where = os.path.relpath(source, base_dir)
        layout.append(f"{head} {where}")
        if not files:
            contents.append(f"{where} missing")
        for path in files:
            inner = path.relative_to(source) if path != source else "."
            contents.append(f"{where} {inner} {digests[path]}")
    layout.extend(f"trusted {p}" for p in plan.trusted)
    return _digest_lines(iter(contents)), _digest_lines(iter(layout))


def _keys_digest(spec: Spec, plan: ServicePlan) -> str:
    keys = [
        _identity(spec.signing.key),
        _identity(spec.signing.public_key),
        _identity(spec.signing.signature),
    ]
    if plan.secrets is not None:
        keys += [_identity(spec.secrets.keys_dir / f"{k.name}.key") for k in plan.secrets.keys]
    return _digest_lines(iter(keys))


def build_inputs(
    spec: Spec, plan: ServicePlan, base: str | None, cache: HashCache | None = None
) -> BuildInputs:
    """The inputs of building *spec* (planned as *plan*) on *base* (None: the plan's)."""
    files, layout = _files_digests(plan, cache, spec.directory)
    return BuildInputs(
        {
            "enclave-build": code_digest(),
            "spec": hashlib.sha256(spec.path.read_bytes()).hexdigest(),
            "base": base_digest(base or plan.base_image),
            "files": files,
            "layout": layout,
            "keys": _keys_digest(spec, plan),
        }
    )


def with_keys_after(inputs: BuildInputs, spec: Spec, plan: ServicePlan) -> BuildInputs:
    """*inputs* with the keys as a finished build left them (it creates missing wrap keys)."""
    return BuildInputs({**inputs.parts, "keys": _keys_digest(spec, plan)})


# --------------------------------------------------------------------------- stamps


def stamp_path(spec: Spec, output: Path) -> Path:
    """Where the stamp of *output* built from *spec* lives."""
    ident = hashlib.sha256(str(output.resolve()).encode()).hexdigest()[:16]
    return spec.directory / STATE_DIR / "builds" / f"{ident}.json"


def _measurements_digest(output: Path) -> str | None:
    try:
        return hashlib.sha256((output / MEASUREMENTS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def record(spec: Spec, output: Path, inputs: BuildInputs) -> Path | None:
    """Write the stamp of a build of *spec* into *output* made from *inputs* (atomically);
    None (nothing written) when the output has no measurements.json or the project directory
    is not writable."""
    measured = _measurements_digest(output)
    if measured is None:
        return None
    target = stamp_path(spec, output)
    data = {
        "version": STAMP_VERSION,
        "output": str(output.resolve()),
        "inputs": inputs.digest,
        "parts": inputs.parts,
        "measurements": measured,
    }
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out, indent=1, sort_keys=True)
        os.replace(tmp, target)
    except OSError:
        return None
    return target


_PART_NAMES = {
    "enclave-build": "enclave-build's code or plugins changed",
    "spec": "the spec changed",
    "base": "the base changed",
    "files": "a file the image holds changed (a model, the CA, ...)",
    "layout": "the files generated for the image changed",
    "keys": "a signing or wrap key changed",
}
#: Parts that follow from others: not named when one of those changed too (a spec that sets
#: other threads changes the generated configuration; that is the spec's change).
_DERIVED = {"layout": ("spec", "enclave-build")}


def _reasons(changed: list[str]) -> str:
    named = [n for n in changed if not any(cause in changed for cause in _DERIVED.get(n, ()))]
    return "; ".join(_PART_NAMES.get(n, n) for n in named)


def check(spec: Spec, output: Path, inputs: BuildInputs) -> Staleness:
    """Is *output* the build of *inputs*? (see the module doc)"""
    if not (output / "oci").is_dir() or _measurements_digest(output) is None:
        return Staleness(False, f"no build in {output} yet")
    try:
        data = json.loads(stamp_path(spec, output).read_text())
    except (OSError, ValueError):
        return Staleness(False, f"{output} was not built by a build that recorded its inputs")
    if not isinstance(data, dict) or data.get("version") != STAMP_VERSION:
        return Staleness(False, "the build record has another format")
    if data.get("measurements") != _measurements_digest(output):
        return Staleness(False, f"{output} was replaced since it was recorded")
    if data.get("inputs") != inputs.digest:
        parts = data.get("parts")
        if not isinstance(parts, dict):
            parts = {}
        changed = inputs.changed(BuildInputs({str(k): str(v) for k, v in parts.items()}))
        return Staleness(False, _reasons(changed) or "the inputs changed")
    return Staleness(True, "up to date")


__all__ = [
    "BuildInputs",
    "Staleness",
    "build_inputs",
    "with_keys_after",
    "check",
    "record",
    "stamp_path",
    "code_digest",
    "STATE_DIR",
]
