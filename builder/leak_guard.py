"""Keep key material out of the image: refuse what would ship a private key or a wrap key.

Three checks, each failing closed with exit code 2 before anything is written:

1. :func:`check_model_paths` (from the spec): a model path may not contain or lie inside
   ``[secrets] keys_dir`` (the wrap keys), may not contain or be the signing key, and may not
   contain the directory of the ``[tls]`` certificate and key (a model directory that is the
   project directory would ship all of them). Every file of a model directory (encrypted or
   not) must have a UTF-8 name (its path in the image is written into the Gramine manifest,
   which is TOML) and, up to :data:`SMALL_FILE` bytes, must hold no private key nor a wrap key
   of this build. The error names ``models[N].path`` with its line and the file.
2. :func:`scan_plan`: every byte the plan adds (trusted and allowed files: models with
   ``encrypt = false``, configurations, code, extra files of plugins, the secret server's CA;
   and the plaintext of encrypted models: whoever holds a model's key may read it) is scanned
   with :class:`~builder.key_scan.KeyScanner` for private keys (PEM, DER, OpenSSH) and for the
   16 raw bytes of every wrap key this build uses. Only the ``[tls]`` material under
   ``SECRETS_DIR`` is meant to hold a key, and ships encrypted.
3. :func:`scan_artifacts`: whatever the libOS backend adds besides (the manifest and SIGSTRUCT,
   Occlum's whole instance directory) is scanned the same way; Gramine protected files are
   ciphertext and skipped.

A file found clean is remembered in the hash cache (by path, inode, size, mtime and ctime, and
the scanner's fingerprint, which covers the wrap keys), so an unchanged rebuild reads nothing.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from enclave_build.contract.names import MODEL_ROOT, SECRETS_DIR

from .errors import UsageError
from .hashing import HashCache
from .key_scan import KeyFinding, KeyScanner, parses_as_private_key
from .model_files import SkippedModelFile, regular_files
from .plan import FileKind, ServicePlan
from .planning import spec_error
from .plugin_types import ArtifactFile
from .spec import Spec

#: Files of an encrypted model up to this size are checked for keys too (key files are small;
#: the model itself ships encrypted).
SMALL_FILE = 1 << 20
#: The progress stage of the scans (what :func:`scan_plan` and :func:`scan_artifacts` read).
SCAN_STAGE = "scanning for key material"

ProgressTask = Callable[[str, "int | None"], Callable[[int], None]]


class KeyMaterialError(UsageError):
    """A file the build would add to the image holds key material (exit code 2)."""


@dataclass(frozen=True)
class SecretPlace:
    """A place on the build machine that holds secrets, and what the spec calls it."""

    key: str  # the spec key, e.g. "secrets.keys_dir"
    what: str  # e.g. "the wrap keys"
    path: Path  # resolved
    inside_too: bool  # a model inside it is refused as well (a directory of keys)


def _resolve(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def secret_places(spec: Spec) -> list[SecretPlace]:
    places = [
        SecretPlace(
            "secrets.keys_dir", "the wrap keys' directory", _resolve(spec.secrets.keys_dir), True
        )
    ]
    if spec.signing.key is not None:
        places.append(
            SecretPlace("signing.key", "the enclave signing key", _resolve(spec.signing.key), True)
        )
    if spec.tls is not None:
        for key, path in (("tls.key", spec.tls.key), ("tls.cert", spec.tls.cert)):
            if path is None:  # a key made inside the enclave: nothing on disk to guard
                continue
            places.append(
                SecretPlace(
                    key, f"the directory of the [tls] {key[4:]}", _resolve(path).parent, False
                )
            )
    return places


def _quiet_files(top: Path) -> list[Path]:
    """regular_files() without its warnings (the backend walks the same directory and warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedModelFile)
        return regular_files(top)


def _model_files(path: Path) -> list[Path]:
    if path.is_dir():
        return _quiet_files(path)
    return [path] if path.is_file() else []


def _name_problem(top: Path, path: Path) -> str | None:
    rel = os.fsencode(path.relative_to(top) if path != top else path.name)
    try:
        rel.decode("utf-8")
    except UnicodeDecodeError:
        return (
            f"{os.fsdecode(path)!a}: the file name is not UTF-8, so its path in the image "
            "cannot be written into the Gramine manifest (TOML); rename it"
        )
    return None


def check_model_paths(spec: Spec, scanner: KeyScanner, wrap_key_files: Iterable[Path] = ()) -> None:
    """Refuse model paths that would take secrets along (see the module's point 1);
    *wrap_key_files* (the build's, existing or about to be made) are named in the error."""
    places = secret_places(spec)
    key_names = ", ".join(sorted(p.name for p in wrap_key_files))
    for index, model in enumerate(spec.models):
        where = ("models", index, "path")
        path = _resolve(model.path)
        for place in places:
            if _within(place.path, path) or (place.inside_too and _within(path, place.path)):
                relation = (
                    "is inside"
                    if _within(path, place.path) and path != place.path
                    else "is"
                    if path == place.path
                    else "contains"
                )
                holding = (
                    f", holding this build's {key_names}"
                    if place.key == "secrets.keys_dir" and key_names
                    else ""
                )
                raise spec_error(
                    spec,
                    where,
                    f"{path} {relation} {place.what} ({place.key}: "
                    f"{place.path}{holding}): it would ship in the image; point "
                    "path at the model file, or a directory holding only the model",
                )
        for file in _model_files(path):
            problem = _name_problem(path, file)
            if problem is None and file.stat().st_size <= SMALL_FILE:
                problem = _small_file_problem(file, scanner)
            if problem is not None:
                raise spec_error(spec, where, problem)


def _small_file_problem(file: Path, scanner: KeyScanner) -> str | None:
    try:
        data = file.read_bytes()
    except OSError as exc:
        return f"{file}: cannot read: {exc.strerror}"
    found = scanner.scan_bytes(data, str(file))
    if found is None and parses_as_private_key(data):
        found = KeyFinding(str(file), 0, "a private key")
    return None if found is None else _refusal(found)


def _refusal(found: KeyFinding) -> str:
    return (
        f"{found}: key material never ships in the image (move it out of the model's "
        "path; a key the service needs goes in [tls], which ships encrypted)"
    )


@dataclass(frozen=True)
class _Item:
    """One file to scan: a host file or generated bytes, and where it goes in the image."""

    dest: str
    source: Path | None
    data: bytes | None


def _plan_items(plan: ServicePlan) -> Iterator[_Item]:
    for item in plan.image_files():
        if item.kind is FileKind.ENCRYPTED and _is_secret_file(item.dest):
            continue  # [tls] material: the one key that is meant to ship (encrypted)
        if item.data is not None:
            yield _Item(item.dest, None, item.data)
        elif item.source is not None and item.source.is_dir():
            for path in _quiet_files(item.source):
                rel = path.relative_to(item.source).as_posix()
                yield _Item(item.dest.rstrip("/") + "/" + rel, path, None)
        elif item.source is not None:
            yield _Item(item.dest, item.source, None)
    if plan.secrets is not None and plan.secrets.ca_cert is not None:
        yield _Item("the secret server's CA certificate", plan.secrets.ca_cert, None)
    # what reaches the image's configuration (labels are not in any manifest)
    for name, value in sorted(plan.labels.items()):
        yield _Item(f"the image label {name}", None, f"{name}={value}".encode())
    for name, value in sorted(plan.env.items()):
        yield _Item(f"the environment variable {name}", None, f"{name}={value}".encode())
    yield _Item("the command line", None, "\n".join([plan.entrypoint, *plan.argv]).encode())


def _is_secret_file(dest: str) -> bool:
    return dest == SECRETS_DIR or dest.startswith(SECRETS_DIR + "/")


def _scan(
    items: Iterable[_Item],
    scanner: KeyScanner,
    cache: HashCache | None,
    seen: set[Path],
    progress: ProgressTask | None = None,
) -> tuple[_Item, KeyFinding] | None:
    fingerprint = scanner.fingerprint()
    files: list[tuple[_Item, Path, os.stat_result]] = []
    for item in items:
        if item.data is not None:
            found = scanner.scan_bytes(item.data, item.dest)
            if found is not None:
                return item, found
            continue
        assert item.source is not None
        path = _resolve(item.source)
        if path in seen:
            continue
        seen.add(path)
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            files.append((item, path, st))
    clean = (
        cache.clean_files([(str(p), st) for _, p, st in files], fingerprint)
        if cache is not None
        else set()
    )
    todo = [(item, path, st) for item, path, st in files if str(path) not in clean]
    advance = (
        progress(SCAN_STAGE, sum(st.st_size for _, _, st in todo))
        if progress is not None and todo
        else None
    )
    newly_clean = []
    try:
        for item, path, st in todo:
            with open(path, "rb") as handle:
                found = scanner.scan_stream(_Counted(handle, advance), str(item.source))
            if found is not None:
                return item, found
            newly_clean.append((str(path), st))
    finally:
        if cache is not None:
            cache.mark_clean(newly_clean, fingerprint)
    return None


class _Counted:
    """A file being scanned: each chunk read advances the progress."""

    def __init__(self, handle: BinaryIO, advance: Callable[[int], None] | None):
        self.handle = handle
        self.advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        if self.advance is not None and data:
            self.advance(len(data))
        return data


def _model_of(spec: Spec, item: _Item) -> int | None:
    """The model a file belongs to: under its path on the build machine, or under its
    directory in the image (``MODEL_ROOT/NAME/VERSION``, where files a framework adds beside
    the model -- an IR graph's weights -- go too)."""
    path = _resolve(item.source) if item.source is not None else None
    for index, model in enumerate(spec.models):
        if path is not None and _within(path, _resolve(model.path)):
            return index
        if item.dest.startswith(f"{MODEL_ROOT}/{model.name}/{model.version}/"):
            return index
    return None


def scan_plan(
    spec: Spec,
    plan: ServicePlan,
    scanner: KeyScanner,
    cache: HashCache | None = None,
    seen: set[Path] | None = None,
    progress: ProgressTask | None = None,
) -> set[Path]:
    """Scan every file the plan adds (in clear, or encrypted but a model); returns the host
    files scanned (for
    :func:`scan_artifacts`). Raises a spec error naming ``models[N].path`` for a model's file,
    :class:`KeyMaterialError` naming the image path for any other."""
    seen = set() if seen is None else seen
    hit = _scan(_plan_items(plan), scanner, cache, seen, progress)
    if hit is not None:
        item, found = hit
        index = _model_of(spec, item)
        if index is not None:
            raise spec_error(spec, ("models", index, "path"), _refusal(found))
        raise KeyMaterialError(
            f"{found}: the build would add it to the image in clear as "
            f"{item.dest}; key material never ships in clear (a key the "
            "service needs goes in [tls], which ships encrypted)"
        )
    return seen


def scan_artifacts(
    files: Iterable[ArtifactFile],
    scanner: KeyScanner,
    cache: HashCache | None = None,
    seen: set[Path] | None = None,
    progress: ProgressTask | None = None,
) -> None:
    """Scan what the libOS backend adds (manifest, SIGSTRUCT, Occlum's instance), skipping
    ciphertext and host files :func:`scan_plan` already scanned."""
    items = [_Item(f.dest, f.source, f.data) for f in files if not f.ciphertext]
    expanded: list[_Item] = []
    for item in items:
        if item.source is not None and item.source.is_dir():
            expanded += [
                _Item(item.dest.rstrip("/") + "/" + p.relative_to(item.source).as_posix(), p, None)
                for p in _quiet_files(item.source)
            ]
        else:
            expanded.append(item)
    hit = _scan(expanded, scanner, cache, set() if seen is None else seen, progress)
    if hit is not None:
        item, found = hit
        raise KeyMaterialError(
            f"{found}: the build would add it to the image as {item.dest}; "
            "key material never ships in clear"
        )
