"""The typed objects of the plugin API: what framework and libOS plugins hand to the core
(:class:`Framework`, :class:`LibOS`) and what a libOS backend returns (:class:`LibOSArtifacts`).

Plugins import them from :mod:`enclave_build.plugin`, the stable API. The identity a backend
reports is the contract's one :class:`~enclave_build.contract.identity.EnclaveIdentity`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from enclave_build.contract.identity import EnclaveIdentity
from enclave_build.contract.schema import Section

from .plan import ServicePlan
from .rootfs import RootFS
from .spec import LibOSSection, SectionOptions, Spec


@dataclass(frozen=True)
class Framework:
    """A serving framework: how to turn a spec into a :class:`ServicePlan`."""

    name: str
    description: str
    default_base: str
    plan: Callable[[Spec], ServicePlan]
    section: Section | None = None
    default_enclave_size: int = 4 << 30
    default_max_threads: int = 64
    #: Why ``[tls]`` does not apply to this framework's server (its TLS identity is its own):
    #: a spec with ``[tls]`` is then a located spec error with this message. None: it applies.
    tls_refusal: str | None = None


class Progress(Protocol):
    """Reports long-running work; the CLI shows it as progress bars."""

    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        """Start a task of *total* units (bytes, files); returns a function to advance it."""


class NullProgress:
    def task(self, description: str, total: int | None) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class BuildOptions:
    """What a libOS backend needs besides the plan and the rootfs."""

    signer: object | None  # builder.gramine.signer.Signer; None = detached step one
    sig_date: str = "0000-00-00"
    progress: Progress = field(default_factory=NullProgress)
    hash_cache: object | None = None  # builder.hashing.HashCache
    log_level: str = "error"
    wrap_keys: dict[str, bytes] = field(default_factory=dict, repr=False)  # never logged
    staging: Path | None = None  # private directory for files the build generates
    reproducible: bool = False  # deterministic protected files


@dataclass(frozen=True)
class ArtifactFile:
    """A file the libOS backend adds to the image (content given as bytes or a host path)."""

    dest: str
    data: bytes | None = None
    source: Path | None = None
    mode: int = 0o644
    #: Owned by (and writable for) the image's runtime user, e.g. Gramine protected files,
    #: whose host file the LibOS opens read-write; the directory holding it too.
    writable: bool = False
    #: The content is ciphertext (e.g. a Gramine protected file): not scanned for key material.
    ciphertext: bool = False


@dataclass(frozen=True)
class PendingSignature:
    """Step one of external signing: these bytes must be signed before the build can finish."""

    mr_enclave: str
    signing_data: bytes


#: How a secret server hands a wrap key over: its 16 bytes as they are, or (Occlum's image key)
#: the text ``xx-xx-...-xx`` + newline that Occlum's init parses (``occlum gen-image-key``).
SECRET_ENCODINGS = ("raw", "hex-dashes")


@dataclass(frozen=True)
class SecretRelease:
    """A secret the enclave asks its secret server for, as its libOS backend knows it: wrap key
    *key* (``keys_dir/KEY.key``), asked for under the name *request*, in *encoding* (one of
    SECRET_ENCODINGS). The policy fragment (secrets-policy.toml) carries one rule for each."""

    key: str
    request: str
    encoding: str = "raw"


@dataclass(frozen=True)
class LibOSArtifacts:
    libos: str
    files: tuple[ArtifactFile, ...]
    entrypoint: tuple[str, ...]  # the image's ENTRYPOINT
    identity: EnclaveIdentity | None  # None while a signature is pending
    pending: PendingSignature | None = None
    manifest: bytes = b""
    sigstruct: bytes = b""
    #: What the enclave asks the secret server for; empty: each provisioned key, raw, under its
    #: own name (Gramine). Occlum's init also asks for ``image_key`` (see builder.occlum).
    releases: tuple[SecretRelease, ...] = ()
    #: The enclave's SBOM (SPDX 2.3 JSON, enclave_build.contract.sbom), shipped in the image as
    #: a trusted file; empty when the backend makes none.
    sbom: bytes = b""


@dataclass(frozen=True)
class LibOS:
    """A library OS backend: renders, measures and signs a plan against a root filesystem.

    *section*: the backend's own spec section (e.g. ``[occlum]``), validated like every other
    section and allowed only when ``service.libos`` names this backend. *options* turns its
    validated values into the object the backend reads from ``plan.libos_options`` (appending a
    located :class:`~enclave_build.contract.schema.Problem` for each value it cannot use); without it the plan
    carries the validated values themselves. *secrets_ca*: the enclave checks its secret server
    against ``[secrets] ca``; False when the libOS fetches the keys and verifies the server by
    its quote itself (Occlum's init), so no CA is required.
    """

    name: str
    description: str
    build: Callable[[ServicePlan, RootFS, BuildOptions], LibOSArtifacts]
    section: Section | None = None
    options: SectionOptions | None = None
    secrets_ca: bool = True

    def spec_section(self) -> LibOSSection:
        """What the spec engine needs to know of this backend."""
        return LibOSSection(self.section, self.options, self.secrets_ca)
