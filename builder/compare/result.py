"""The result of comparing two builds (:class:`BuildDiff`): whether their MRENCLAVEs and images
are equal and, where they are not, each difference that explains it. ``enclave-build diff
--json`` prints :meth:`BuildDiff.to_json`; its schema is below and in the manual ("Compare and
reproduce builds").

::

    {"identical": bool,             # same MRENCLAVE, signer and image, no difference found
     "mr_enclave_equal": bool | null,   # null: a side has no MRENCLAVE to compare
     "mr_signer_equal": bool | null,
     "image_equal": bool | null,        # the image manifest digests; null: a side has none
     "a": SIDE, "b": SIDE,
     "identity":      [VALUE, ...],  # service, framework, libos, mr_signer (signing.key)
     "manifest":      [VALUE, ...],  # manifest keys; spec_key when one spec key sets it
     "trusted_files": [FILE, ...],   # sgx.trusted_files (and the LibOS) by enclave path
     "libos":         [VALUE, ...],  # libpal.so digest, layout constants, Gramine version
     "sigstruct":     [VALUE, ...],  # ISV ids, attributes, debug, date
     "occlum_config": [VALUE, ...],  # Occlum.json keys (Occlum builds)
     "image_config":  [VALUE, ...],  # the image config (entrypoint, env, labels, ...)
     "image_files":   [FILE, ...],   # files outside the measurement (encrypted models, ...)
     "inputs":        [VALUE, ...],  # provenance: resolved dependencies
     "notes":         [str, ...]}    # what could not be compared, and why
    SIDE  = {"source": str, "kind": "build output" | "image" | "provenance",
             "libos": str | null, "mr_enclave": str | null, "mr_signer": str | null,
             "image_digest": str | null}
    VALUE = {"key": str, "spec_key": str | null, "change": "added" | "removed" | "changed",
             "a": any, "b": any}        # a is null when added, b when removed
    FILE  = {"path": str, "image_path": str, "change": "added" | "removed" | "changed",
             "a_sha256": str | null, "b_sha256": str | null,
             "a_package": str | null, "b_package": str | null}   # "NAME VERSION" (SBOM)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Change = Literal["added", "removed", "changed"]
#: The sections of a diff that hold :class:`ValueChange` items, in the order they are shown.
VALUE_SECTIONS = (
    "identity",
    "manifest",
    "libos",
    "sigstruct",
    "occlum_config",
    "image_config",
    "inputs",
)
FILE_SECTIONS = ("trusted_files", "image_files")


@dataclass(frozen=True)
class Side:
    """What one of the two compared things is."""

    source: str
    kind: str  # "build output", "image" or "provenance"
    libos: str | None
    mr_enclave: str | None
    mr_signer: str | None
    image_digest: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "libos": self.libos,
            "mr_enclave": self.mr_enclave,
            "mr_signer": self.mr_signer,
            "image_digest": self.image_digest,
        }


@dataclass(frozen=True)
class ValueChange:
    """A key whose value differs: *a* is None when the key was added in B, *b* when removed."""

    key: str
    change: Change
    a: Any
    b: Any
    spec_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "spec_key": self.spec_key,
            "change": self.change,
            "a": self.a,
            "b": self.b,
        }


@dataclass(frozen=True)
class FileChange:
    """A file that differs: its path in the enclave (*path*) and in the image (*image_path*),
    both SHA-256 digests (None where it is absent, or not a regular file) and the package that
    owns it on each side, from the side's SBOM (``NAME VERSION``; None without one)."""

    path: str
    change: Change
    a_sha256: str | None
    b_sha256: str | None
    image_path: str = ""
    a_package: str | None = None
    b_package: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "image_path": self.image_path or self.path,
            "change": self.change,
            "a_sha256": self.a_sha256,
            "b_sha256": self.b_sha256,
            "a_package": self.a_package,
            "b_package": self.b_package,
        }


@dataclass(frozen=True)
class BuildDiff:
    a: Side
    b: Side
    identity: tuple[ValueChange, ...] = ()
    manifest: tuple[ValueChange, ...] = ()
    trusted_files: tuple[FileChange, ...] = ()
    libos: tuple[ValueChange, ...] = ()
    sigstruct: tuple[ValueChange, ...] = ()
    occlum_config: tuple[ValueChange, ...] = ()
    image_config: tuple[ValueChange, ...] = ()
    image_files: tuple[FileChange, ...] = ()
    inputs: tuple[ValueChange, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def mr_enclave_equal(self) -> bool | None:
        return _equal(self.a.mr_enclave, self.b.mr_enclave)

    @property
    def mr_signer_equal(self) -> bool | None:
        return _equal(self.a.mr_signer, self.b.mr_signer)

    @property
    def image_equal(self) -> bool | None:
        return _equal(self.a.image_digest, self.b.image_digest)

    @property
    def differences(self) -> int:
        return sum(len(getattr(self, name)) for name in VALUE_SECTIONS + FILE_SECTIONS)

    @property
    def identical(self) -> bool:
        """Same MRENCLAVE and signer, the same image where both sides name one, and no
        difference found anywhere."""
        return (
            self.mr_enclave_equal is True
            and self.mr_signer_equal is True
            and self.image_equal is not False
            and not self.differences
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "mr_enclave_equal": self.mr_enclave_equal,
            "mr_signer_equal": self.mr_signer_equal,
            "image_equal": self.image_equal,
            "a": self.a.to_json(),
            "b": self.b.to_json(),
            **{name: [item.to_json() for item in getattr(self, name)] for name in VALUE_SECTIONS},
            **{name: [item.to_json() for item in getattr(self, name)] for name in FILE_SECTIONS},
            "notes": list(self.notes),
        }


def _equal(a: str | None, b: str | None) -> bool | None:
    return None if a is None or b is None else a == b


__all__ = [
    "BuildDiff",
    "Side",
    "ValueChange",
    "FileChange",
    "Change",
    "VALUE_SECTIONS",
    "FILE_SECTIONS",
]
