"""Compare two builds' facts (:mod:`builder.compare.facts`) into a :class:`BuildDiff`: each
difference in what determines MRENCLAVE (manifest keys, named as spec keys where one spec key
sets them; trusted files with both digests and their packages; the Gramine that measures
them), in the SIGSTRUCT, and in the image beyond the measurement."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from enclave_build.contract.names import MODEL_ROOT
from enclave_build.contract.sbom import SBOM_PATH

from ..gramine.spec_keys import spec_key
from ..hashing import HashCache
from .facts import BuildFacts
from .image_files import entries, layer_paths, real_paths, shared_layers
from .result import BuildDiff, Change, FileChange, ValueChange

#: Spec keys of the identity and SIGSTRUCT fields the spec sets.
IDENTITY_SPEC_KEYS = {
    "service": "service.name",
    "framework": "service.framework",
    "libos": "service.libos",
    "mr_signer": "signing.key",
}
SIGSTRUCT_SPEC_KEYS = {
    "isv_prod_id": "enclave.isv_prod_id",
    "isv_svn": "enclave.isv_svn",
    "debug": "enclave.debug",
    "date": "signing.date",
}


def value_changes(
    a: Mapping[str, Any] | None,
    b: Mapping[str, Any] | None,
    spec_keys: Callable[[str], str | None] = lambda key: None,
    common_only: bool = False,
) -> tuple[ValueChange, ...]:
    """Every key of *a* and *b* whose value differs (nothing when either is None); with
    *common_only* only the keys both have."""
    if a is None or b is None:
        return ()
    out = []
    keys = set(a) & set(b) if common_only else set(a) | set(b)
    for key in sorted(keys):
        if key in a and key in b:
            if a[key] != b[key]:
                out.append(ValueChange(key, "changed", a[key], b[key], spec_keys(key)))
        elif key in a:
            out.append(ValueChange(key, "removed", a[key], None, spec_keys(key)))
        else:
            out.append(ValueChange(key, "added", None, b[key], spec_keys(key)))
    return tuple(out)


def trusted_changes(a: BuildFacts, b: BuildFacts) -> tuple[FileChange, ...]:
    if a.trusted is None or b.trusted is None:
        return ()
    out = []
    for path in sorted(set(a.trusted) | set(b.trusted)):
        left, right = a.trusted.get(path), b.trusted.get(path)
        if left is not None and right is not None and left.sha256 == right.sha256:
            continue
        change: Change = "changed" if left and right else ("removed" if left else "added")
        image_path = (left or right).image_path  # type: ignore[union-attr]  # one is set
        out.append(
            FileChange(
                path,
                change,
                left.sha256 if left else None,
                right.sha256 if right else None,
                image_path,
                a.packages.get(left.image_path) if left else None,
                b.packages.get(right.image_path) if right else None,
            )
        )
    return tuple(out)


def file_changes(
    a: BuildFacts,
    b: BuildFacts,
    cache: HashCache | None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> tuple[FileChange, ...]:
    """The image files that differ, outside the manifest's trusted files and the enclave's
    own files (compared as the manifest and the SIGSTRUCT)."""
    if a.image is None or b.image is None or a.rootfs is None or b.rootfs is None:
        return ()
    if a.image.manifest_digest is not None and a.image.manifest_digest == b.image.manifest_digest:
        return ()
    shared = shared_layers(a.image, b.image)
    paths = layer_paths(a.image, shared) | layer_paths(b.image, shared)
    skip: set[str] = set()
    for facts in (a, b):
        assert facts.rootfs is not None
        measured = [f.image_path for f in (facts.trusted or {}).values()]
        skip |= real_paths(facts.rootfs, [*measured, *facts.own_files])
    paths -= skip
    advance = progress("comparing image files", None) if progress else None
    left = entries(a.rootfs, paths, cache, advance)
    right = entries(b.rootfs, paths, cache, advance)
    out = []
    for path in sorted(set(left) | set(right)):
        x, y = left.get(path), right.get(path)
        if x == y:
            continue
        change: Change = "changed" if x and y else ("removed" if x else "added")
        out.append(
            FileChange(
                path,
                change,
                _shown(x),
                _shown(y),
                path,
                a.packages.get(path) if x else None,
                b.packages.get(path) if y else None,
            )
        )
    return tuple(out)


def _shown(entry: Any) -> str | None:
    """A file's digest; a symlink as ``-> TARGET``; another kind by its name."""
    if entry is None:
        return None
    if entry.kind == "file":
        return entry.value
    if entry.kind == "symlink":
        return f"-> {entry.value}"
    return entry.kind


def _is_model_file(item: FileChange) -> bool:
    """A file of a model outside the measurement: an encrypted model's (clear ones are
    trusted files)."""
    return any(
        owner is not None and owner.startswith("model ")
        for owner in (item.a_package, item.b_package)
    ) or (item.image_path or item.path).startswith(MODEL_ROOT + "/")


def diff_facts(
    a: BuildFacts,
    b: BuildFacts,
    cache: HashCache | None = None,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> BuildDiff:
    """Every difference between *a* and *b* at the level both sides have."""
    notes = list(a.notes) + list(b.notes)
    # a provenance records fewer SIGSTRUCT fields (no date) than an image holds
    partial = "provenance" in (a.side.kind, b.side.kind)
    trusted = trusted_changes(a, b)
    manifest = value_changes(a.manifest, b.manifest, spec_key)
    libos = value_changes(a.libos, b.libos)
    sbom = [item for item in trusted if item.image_path == SBOM_PATH]
    if sbom and (len(trusted) > 1 or manifest or libos):
        # the SBOM lists every trusted file with its digest: it changes with any of them
        trusted = tuple(item for item in trusted if item.image_path != SBOM_PATH)
        notes.append(
            f"the SBOM ({SBOM_PATH}, a trusted file) differs too: it follows from the "
            "differences above"
        )
    if (a.manifest is None) != (b.manifest is None) and not partial:
        notes.append("only one side has a Gramine manifest: manifests not compared")
    image_files = file_changes(a, b, cache, progress)
    if any(_is_model_file(item) for item in image_files):
        notes.append(
            "encrypted model files differ: encrypting the same model twice gives other bytes "
            "(fresh nonces) unless both builds set [build] reproducible = true, which makes the "
            "same model under the same wrap key encrypt to the same file"
        )
    return BuildDiff(
        a.side,
        b.side,
        identity=value_changes(a.identity, b.identity, IDENTITY_SPEC_KEYS.get),
        manifest=manifest,
        trusted_files=trusted,
        libos=libos,
        sigstruct=value_changes(a.sigstruct, b.sigstruct, SIGSTRUCT_SPEC_KEYS.get, partial),
        occlum_config=value_changes(a.occlum_config, b.occlum_config),
        image_config=value_changes(a.image_config, b.image_config),
        image_files=image_files,
        inputs=value_changes(a.inputs, b.inputs),
        notes=tuple(notes),
    )


__all__ = ["diff_facts", "value_changes", "trusted_changes", "file_changes"]
