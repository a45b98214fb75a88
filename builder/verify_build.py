"""``enclave-build verify-build PROVENANCE --spec SPEC``: rebuild what a provenance describes
and confirm that the same enclave and image come out, without any private key of the publisher.

1. **The inputs first.** The spec file's SHA-256, the plaintext SHA-256 of every model file
   (by its path in the enclave), the base image's manifest digest and the enclave-build version
   must be the ones the provenance's resolved dependencies name; any that is not is named (with
   both values) and nothing is built. The spec is loaded without its private keys: the files
   its ``[signing]`` and ``[provenance]`` name need not exist, and are not read.
2. **A clean rebuild**: the spec is built on the provenance's base (or ``--base``, which must
   have the same digest) into a fresh temporary directory, with a fresh file-digest cache; blobs
   and unpacked images are shared with the machine's cache, which holds them by content digest.
   The build writes nothing into the project: no output, no build stamp, no new wrap key (the
   wrap keys of encrypted models must exist, and ``[build] reproducible`` must be on, or the
   encrypted files could never be byte-identical: both are usage errors), and signs no
   provenance. The SIGSTRUCT: with the spec's enclave signing key at hand, signed with it; else
   the published image's SIGSTRUCT is put in (builder.published_sigstruct) when its RSA
   signature verifies and it signs exactly what the rebuild measures, so the image digest can
   match with no key at all.
3. **The comparison**: MRENCLAVE and the image manifest digest against the provenance's. When
   either differs, the published image is compared with the rebuild by :mod:`builder.compare`
   and the difference returned.

The published image (where the SIGSTRUCT comes from, and what a differing rebuild is compared
with) is ``--image``, else the build output the provenance lies in, else the pushed image the
provenance's subject names (``NAME@sha256:...``); a differing rebuild with none of these is
compared with the provenance's own statement.

The provenance's signature is not checked here (``verify-provenance`` does that).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from enclave_build import __version__
from enclave_build.contract.names import MEASUREMENTS_FILE
from enclave_build.contract.provenance import Provenance

from .build import Rebuild, load, make_plan, write_output
from .build import build as run_build
from .cache import cache_root
from .compare.diff import diff_facts
from .compare.facts import BuildFacts, load_provenance, provenance_facts
from .compare.result import BuildDiff
from .compare.sides import locate, open_facts
from .errors import UsageError
from .hashing import HashCache
from .image.blob_cache import BlobCache
from .image.sources import open_base
from .model_digests import model_digests
from .plan import FileKind
from .plugin_types import NullProgress, Progress
from .plugins import PluginRegistry
from .provenance import base_digest_of
from .published_sigstruct import PublishedSigner, read_published


@dataclass(frozen=True)
class InputMismatch:
    """An input that is not the one the provenance names: *found* is None when it is missing
    here, *expected* None when the provenance does not name it."""

    input: str
    expected: str | None
    found: str | None

    def describe(self) -> str:
        if self.found is None:
            return f"{self.input}: named by the provenance ({self.expected}), not given here"
        if self.expected is None:
            return f"{self.input}: given here ({self.found}), not named by the provenance"
        return f"{self.input}: is {self.found}, the provenance names {self.expected}"

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "expected": self.expected, "found": self.found}


@dataclass(frozen=True)
class Rebuilt:
    mr_enclave: str
    image_digest: str | None


@dataclass
class VerifyBuildResult:
    provenance: Provenance
    mismatches: list[InputMismatch] = field(default_factory=list)
    rebuilt: Rebuilt | None = None
    diff: BuildDiff | None = None
    #: How the rebuilt SIGSTRUCT was signed (a sentence; None before the rebuild).
    signature: str | None = None

    @property
    def holds(self) -> bool:
        return (
            not self.mismatches
            and self.rebuilt is not None
            and self.rebuilt.mr_enclave == self.provenance.identity.mr_enclave
            and self.rebuilt.image_digest == self.provenance.image_digest
        )

    def to_json(self) -> dict[str, Any]:
        p = self.provenance
        return {
            "holds": self.holds,
            "provenance": {"mr_enclave": p.identity.mr_enclave, "image_digest": p.image_digest},
            "mismatches": [m.to_json() for m in self.mismatches],
            "rebuilt": (
                {"mr_enclave": self.rebuilt.mr_enclave, "image_digest": self.rebuilt.image_digest}
                if self.rebuilt
                else None
            ),
            "signature": self.signature,
            "diff": self.diff.to_json() if self.diff else None,
        }


def _sha256_file(path: Path, what: str) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the {what}: {exc.strerror}") from None


def check_inputs(
    provenance: Provenance,
    spec_path: Path,
    base: str,
    registry: PluginRegistry,
    progress: Progress,
    cache: HashCache,
) -> list[InputMismatch]:
    """Every input that is not the one *provenance* names (empty: all are)."""
    found: list[InputMismatch] = []
    spec_digest = _sha256_file(spec_path, "spec file")
    if spec_digest != provenance.spec.sha256:
        found.append(
            InputMismatch(
                f"spec {spec_path}", f"sha256:{provenance.spec.sha256}", f"sha256:{spec_digest}"
            )
        )
    if provenance.enclave_build_version != __version__:
        found.append(
            InputMismatch(
                "enclave-build (it writes the manifest and the model server's code)",
                provenance.enclave_build_version,
                __version__,
            )
        )
    spec, registry = load(spec_path, registry, private_keys=False)
    plan = make_plan(spec, registry)
    given = {f.path: f for f in model_digests(plan, cache)}
    named = {m.path: m for m in provenance.models}
    for path in sorted(set(given) | set(named)):
        mine, theirs = given.get(path), named.get(path)
        if mine is not None and theirs is not None and mine.sha256 == theirs.sha256:
            continue
        label = (
            f"model {mine.model} {path}" + (f" ({mine.source})" if mine.source else "")
            if mine is not None
            else f"model {theirs.name} {path}"  # type: ignore[union-attr]  # one is set
        )
        found.append(
            InputMismatch(
                label,
                f"sha256:{theirs.sha256}" if theirs else None,
                f"sha256:{mine.sha256}" if mine else None,
            )
        )
    with BlobCache(cache_root()).in_use():
        base_digest = base_digest_of(open_base(base, progress.task, hash_cache=cache).image)
    if base_digest != provenance.base_digest:
        found.append(InputMismatch(f"base {base}", provenance.base_digest, base_digest))
    _check_reproducible(spec, plan)
    return found


def _check_reproducible(spec: Any, plan: Any) -> None:
    """A rebuild that could never give the same image is a usage error, before building."""
    encrypted = [f.dest for f in plan.files if f.kind is FileKind.ENCRYPTED]
    if encrypted and not spec.build.reproducible:
        raise UsageError(
            f"{spec.path}: [build] reproducible is off, so the encrypted files "
            f"({', '.join(encrypted[:3])}) get random nonces on every build and the image can "
            "never be reproduced; the original build must set [build] reproducible = true"
        )
    if plan.secrets is not None:
        keys_dir = spec.secrets.keys_dir
        missing = [
            str(keys_dir / f"{k.name}.key")
            for k in plan.secrets.keys
            if not (keys_dir / f"{k.name}.key").is_file()
        ]
        if missing:
            raise UsageError(
                f"{spec.path}: the wrap keys the original build encrypted with are needed to "
                f"reproduce its encrypted files: no {', '.join(missing)} ([secrets] keys_dir)"
            )


def published_image(provenance_path: Path, provenance: Provenance, image: str | None) -> str | None:
    """The published image: *image*, else the build output the provenance lies in, else the
    pushed image its subject names (``NAME@sha256:...``); None when there is none of these."""
    if image is not None:
        return image
    directory = provenance_path.resolve().parent
    if (directory / "oci").is_dir() and (directory / MEASUREMENTS_FILE).is_file():
        return str(directory)
    if "@sha256:" in provenance.image_name:  # written by a build that pushed it
        return f"docker://{provenance.image_name}"
    return None


def rebuild_signer(
    spec_path: Path, registry: PluginRegistry, provenance: Provenance, published: str | None
) -> PublishedSigner | None:
    """None when the spec's enclave signing key is here (the rebuild signs with it, as the
    build did); else the signer that puts in *published*'s SIGSTRUCT."""
    spec, _ = load(spec_path, registry, private_keys=False)
    key = spec.signing.key
    if key is not None and key.is_file():
        return None
    if published is None:
        raise UsageError(
            f"{spec_path}: the enclave signing key is not here "
            f"({key or 'external signing'}), so the rebuild needs the published SIGSTRUCT: "
            "give the published image with --image, or keep the provenance in its build output "
            "directory (the provenance names no pushed image)"
        )
    with BlobCache(cache_root()).in_use():
        return PublishedSigner(read_published(published, provenance.service))


def _describe_signature(signer: PublishedSigner | None) -> str:
    if signer is None:
        return "signed with the spec's enclave signing key"
    published = signer.published
    if signer.used:
        return (
            f"the published SIGSTRUCT ({published.source}, MRSIGNER {published.mr_signer}): "
            "its RSA signature verifies and it signs the rebuilt MRENCLAVE"
        )
    return (
        f"signed with a throwaway key, not the published SIGSTRUCT: {signer.mismatch}; "
        "signers are not compared"
    )


def verify_build(
    provenance_path: str | Path,
    spec_path: str | Path,
    *,
    base: str | None = None,
    image: str | None = None,
    registry: PluginRegistry | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> VerifyBuildResult:
    """Check the inputs, rebuild, compare (see the module docstring)."""
    provenance_path, spec_path = Path(provenance_path), Path(spec_path)
    if not provenance_path.is_file():
        raise UsageError(f"{provenance_path}: no such provenance file")
    provenance = load_provenance(provenance_path)
    registry = registry or PluginRegistry()
    progress = progress or NullProgress()
    base = base or provenance.base_ref
    if image is not None:
        locate(image)  # a usage error before anything is built
    published = published_image(provenance_path, provenance, image)
    work = Path(tempfile.mkdtemp(prefix="enclave-build-verify-"))
    cache = HashCache(work / "digests.sqlite")
    try:
        result = VerifyBuildResult(provenance)
        result.mismatches = check_inputs(provenance, spec_path, base, registry, progress, cache)
        if result.mismatches:
            return result
        signer = rebuild_signer(spec_path, registry, provenance, published)
        built = run_build(
            spec_path,
            base=base,
            registry=registry,
            progress=progress,
            hash_cache=cache,
            rebuild=Rebuild(signer),
        )
        assert built.measurements is not None and built.image is not None
        result.rebuilt = Rebuilt(built.measurements.mr_enclave, built.image.manifest_digest)
        result.signature = _describe_signature(signer)
        if result.holds:
            return result
        out = work / "rebuild"
        write_output(
            out,
            built.image,
            built.plan.image_tag,
            built.measurements,
            progress=progress.task,
        )
        rebuilt = open_facts(str(out), "build output", progress.task, log)
        rebuilt.side = replace(rebuilt.side, source="the rebuild")
        if published is not None:
            where, kind = locate(published, log)
            left = open_facts(where, kind, progress.task, log)
        else:
            left = provenance_facts(str(provenance_path), provenance)
        if signer is not None and not signer.used:
            _without_signer(left, rebuilt, signer)
        result.diff = diff_facts(left, rebuilt, cache, progress.task)
        return result
    finally:
        cache.close()
        shutil.rmtree(work, ignore_errors=True)


def _without_signer(published: BuildFacts, rebuilt: BuildFacts, signer: PublishedSigner) -> None:
    """A rebuild signed with a throwaway key: its signer says nothing about the inputs, so it
    is left out of the comparison (with a note saying why)."""
    rebuilt.side = replace(rebuilt.side, mr_signer=None)
    published.identity.pop("mr_signer", None)
    rebuilt.identity.pop("mr_signer", None)
    rebuilt.notes.append(
        f"the rebuild is signed with a throwaway key ({signer.mismatch}): signers not compared"
    )


__all__ = [
    "verify_build",
    "VerifyBuildResult",
    "InputMismatch",
    "Rebuilt",
    "check_inputs",
    "published_image",
    "rebuild_signer",
]
