"""sbom.spdx.json: the bill of materials of an enclave (SPDX 2.3 JSON), as enclave-build writes it.

The builder writes it with the SPDX project's library (``builder.sbom``; the one writer) into the
output directory (``SBOM_FILE``) and into the image as a trusted file (``SBOM_PATH``), so the
manifest, hence MRENCLAVE, binds its SHA-256. :meth:`Sbom.parse` / :meth:`Sbom.load` are the
one reader (standard library only): they read the conventions below back into typed objects.
Any valid SPDX 2.3 tool reads the file too; the conventions only add meaning to SPDX ids.

Conventions (all in an ordinary SPDX 2.3 JSON document):

* Every **trusted file** of the enclave is a ``files`` entry with id ``SPDXRef-File-<n>``;
  ``fileName`` is ``"." + the path as the enclave sees it`` (``./usr/lib/libfoo.so``), its
  ``checksums`` hold ``SHA1`` and ``SHA256`` (the SHA-256 the manifest holds), and its
  ``comment`` is ``"image path: /PATH"`` — where the file lies in the image (the manifest's
  ``file:`` URI), which differs from the enclave path under a LibOS mount (Gramine's ``/lib``).
* **Packages**, by id prefix:

  - ``SPDXRef-Python-<n>``: a Python distribution (name, ``versionInfo``, ``licenseDeclared`` an
    SPDX expression or ``NOASSERTION``; the metadata's licence text, when it is no SPDX
    expression, in ``licenseComments`` as ``"METADATA: <text>"``), purl ``pkg:pypi/...``;
  - ``SPDXRef-Deb-<n>``: a Debian package owning base files (from the base's dpkg database),
    purl ``pkg:deb/debian/...``;
  - ``SPDXRef-EnclaveBuild``: enclave-build's own code shipped into the image;
  - ``SPDXRef-LibOS``: the LibOS (``name`` ``gramine``, its version); it CONTAINS the file
    ``SPDXRef-LibPAL`` (libpal.so, measured into the enclave; its ``fileName`` is its image path);
  - ``SPDXRef-Model-<n>``: a model (``name``, ``versionInfo`` = the model version). It CONTAINS
    per model file a plaintext entry ``SPDXRef-ModelFile-<n>`` (checksums of the plaintext,
    ``fileName`` its enclave path, ``comment`` MODEL_ENCRYPTED or MODEL_CLEAR) and, for an
    encrypted file in a reproducible build (``[build] reproducible``), the file as stored in
    the image, ``SPDXRef-ModelCipher-<n>`` (same ``fileName``, checksums of the ciphertext),
    ``GENERATED_FROM`` the plaintext one. Without reproducible encryption the ciphertext
    changes with every build and is left out (it would change MRENCLAVE); the provenance
    records it (annotation ``encrypted_sha256``).
  - ``SPDXRef-Enclave``: the enclave (name = the service); the document DESCRIBES it, and it
    CONTAINS every package and every trusted file.

* A file's **owning package** is the package (other than ``SPDXRef-Enclave``) whose
  relationship ``CONTAINS`` names it.
* The SBOM lists every trusted file but itself (its own hash is in the manifest).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import read_text
from .schema import Problem

#: The SBOM in a build's output directory.
SBOM_FILE = "sbom.spdx.json"
#: The SBOM inside the image (and the enclave): a trusted file.
SBOM_PATH = "/enclave/sbom.spdx.json"
SPDX_VERSION = "SPDX-2.3"
IMAGE_PATH_PREFIX = "image path: "
LICENSE_PREFIX = "METADATA: "
#: The comment of a model file's plaintext entry: shipped encrypted, or in clear.
MODEL_ENCRYPTED = "model file: plaintext of a file the image holds encrypted"
MODEL_CLEAR = "model file: shipped in clear"

ENCLAVE_ID = "SPDXRef-Enclave"
LIBOS_ID = "SPDXRef-LibOS"
LIBPAL_ID = "SPDXRef-LibPAL"
ENCLAVE_BUILD_ID = "SPDXRef-EnclaveBuild"
FILE_PREFIX = "SPDXRef-File-"
PYTHON_PREFIX = "SPDXRef-Python-"
DEB_PREFIX = "SPDXRef-Deb-"
MODEL_PREFIX = "SPDXRef-Model-"
MODEL_FILE_PREFIX = "SPDXRef-ModelFile-"
MODEL_CIPHER_PREFIX = "SPDXRef-ModelCipher-"


class SbomError(ContractError):
    """An SBOM file is missing or is not one enclave-build wrote."""


@dataclass(frozen=True)
class SbomPackage:
    """A package of the SBOM; *kind* is ``python``, ``deb``, ``enclave-build``, ``libos`` or
    ``model``."""

    spdx_id: str
    kind: str
    name: str
    version: str | None
    license: str | None  # an SPDX expression, or the metadata's own licence text, or None


@dataclass(frozen=True)
class SbomFile:
    """A trusted file: its path in the enclave and in the image, its digests, and the package
    that owns it (None when no package does)."""

    path: str
    image_path: str
    sha256: str
    sha1: str
    package: SbomPackage | None


@dataclass(frozen=True)
class SbomModelFile:
    path: str  # in the enclave
    sha256: str  # of the plaintext
    encrypted: bool  # the image holds it encrypted
    encrypted_sha256: str | None  # of the file in the image, when the SBOM lists it


@dataclass(frozen=True)
class SbomModel:
    name: str
    version: str
    files: tuple[SbomModelFile, ...]


@dataclass(frozen=True)
class SbomLibOS:
    name: str
    version: str | None
    libpal_sha256: str | None


@dataclass(frozen=True)
class Sbom:
    service: str
    files: tuple[SbomFile, ...]
    packages: tuple[SbomPackage, ...]
    models: tuple[SbomModel, ...]
    libos: SbomLibOS | None

    def file(self, path: str) -> SbomFile | None:
        """The trusted file at *path* in the enclave (or, failing that, in the image)."""
        for item in self.files:
            if item.path == path:
                return item
        return next((f for f in self.files if f.image_path == path), None)

    def by_image_path(self) -> dict[str, SbomFile]:
        return {f.image_path: f for f in self.files}

    @classmethod
    def parse(cls, text: str, source: str = SBOM_FILE) -> Sbom:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise SbomError(source, [Problem((), f"not JSON ({exc})")]) from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Sbom:
        return cls.parse(read_text(path, SbomError, "the SBOM"), str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = SBOM_FILE) -> Sbom:
        def fail(message: str, *key: str | int) -> SbomError:
            return SbomError(source, [Problem(tuple(key), message)])

        if not isinstance(data, dict):
            raise fail("not a JSON object")
        if data.get("spdxVersion") != SPDX_VERSION:
            raise fail(f"expected {SPDX_VERSION}, found {data.get('spdxVersion')!r}", "spdxVersion")
        packages_raw = _list(data, "packages", fail)
        files_raw = _list(data, "files", fail)
        relationships = _list(data, "relationships", fail)

        contains: dict[str, str] = {}  # file id -> owning package id
        generated: dict[str, str] = {}  # cipher id -> plaintext id
        members: dict[str, list[str]] = {}
        for index, rel in enumerate(relationships):
            if not isinstance(rel, dict):
                raise fail("not an object", "relationships", index)
            a, kind, b = (
                rel.get(k) for k in ("spdxElementId", "relationshipType", "relatedSpdxElement")
            )
            if not (isinstance(a, str) and isinstance(b, str)):
                raise fail("element ids must be strings", "relationships", index)
            if kind == "CONTAINS" and a != ENCLAVE_ID:
                contains.setdefault(b, a)
                members.setdefault(a, []).append(b)
            elif kind == "GENERATED_FROM":
                generated[a] = b

        service = ""
        packages: dict[str, SbomPackage] = {}
        libos_pkg: dict[str, Any] | None = None
        for index, raw in enumerate(packages_raw):
            if not isinstance(raw, dict) or not isinstance(raw.get("SPDXID"), str):
                raise fail("a package needs an SPDXID", "packages", index)
            spdx_id = raw["SPDXID"]
            name = raw.get("name")
            if not isinstance(name, str):
                raise fail("a package needs a name", "packages", index, "name")
            if spdx_id == ENCLAVE_ID:
                service = name
                continue
            kind = _package_kind(spdx_id)
            if kind is None:
                continue  # another tool's addition: not ours to interpret
            version = raw.get("versionInfo") if isinstance(raw.get("versionInfo"), str) else None
            packages[spdx_id] = SbomPackage(spdx_id, kind, name, version, _license(raw))
            if kind == "libos":
                libos_pkg = raw

        by_id: dict[str, dict[str, Any]] = {}
        for index, raw in enumerate(files_raw):
            if not isinstance(raw, dict) or not isinstance(raw.get("SPDXID"), str):
                raise fail("a file needs an SPDXID", "files", index)
            if not isinstance(raw.get("fileName"), str):
                raise fail("a file needs a fileName", "files", index, "fileName")
            by_id[raw["SPDXID"]] = raw

        def digests(raw: dict[str, Any]) -> dict[str, str]:
            out: dict[str, str] = {}
            for item in raw.get("checksums") or ():
                if isinstance(item, dict) and isinstance(item.get("checksumValue"), str):
                    out[str(item.get("algorithm"))] = item["checksumValue"]
            return out

        def enclave_path(raw: dict[str, Any]) -> str:
            name = raw["fileName"]
            return name[1:] if name.startswith("./") else name

        files: list[SbomFile] = []
        for spdx_id, raw in by_id.items():
            if not spdx_id.startswith(FILE_PREFIX):
                continue
            sums = digests(raw)
            if "SHA256" not in sums or "SHA1" not in sums:
                raise fail(
                    f"trusted file {raw['fileName']} lacks a SHA1 or SHA256 checksum", spdx_id
                )
            comment = raw.get("comment")
            path = enclave_path(raw)
            image_path = (
                comment[len(IMAGE_PATH_PREFIX) :]
                if isinstance(comment, str) and comment.startswith(IMAGE_PATH_PREFIX)
                else path
            )
            owner = packages.get(contains.get(spdx_id, ""))
            files.append(SbomFile(path, image_path, sums["SHA256"], sums["SHA1"], owner))

        plaintext_to_cipher = {plain: cipher for cipher, plain in generated.items()}
        models: list[SbomModel] = []
        for spdx_id, package in packages.items():
            if package.kind != "model":
                continue
            model_files = []
            for member in members.get(spdx_id, ()):
                if not member.startswith(MODEL_FILE_PREFIX) or member not in by_id:
                    continue
                plain = by_id[member]
                cipher = by_id.get(plaintext_to_cipher.get(member, ""))
                model_files.append(
                    SbomModelFile(
                        enclave_path(plain),
                        digests(plain).get("SHA256", ""),
                        plain.get("comment") != MODEL_CLEAR,
                        digests(cipher).get("SHA256") if cipher is not None else None,
                    )
                )
            models.append(SbomModel(package.name, package.version or "", tuple(model_files)))

        libos = None
        if libos_pkg is not None:
            pal = by_id.get(LIBPAL_ID)
            libos = SbomLibOS(
                libos_pkg["name"],
                packages[LIBOS_ID].version,
                digests(pal).get("SHA256") if pal is not None else None,
            )
        files.sort(key=lambda f: f.path)
        return cls(service, tuple(files), tuple(packages.values()), tuple(models), libos)


def _list(data: dict[str, Any], key: str, fail: Any) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise fail("must be a list", key)
    return value


def _package_kind(spdx_id: str) -> str | None:
    if spdx_id == LIBOS_ID:
        return "libos"
    if spdx_id == ENCLAVE_BUILD_ID:
        return "enclave-build"
    for prefix, kind in ((PYTHON_PREFIX, "python"), (DEB_PREFIX, "deb"), (MODEL_PREFIX, "model")):
        if spdx_id.startswith(prefix):
            return kind
    return None


def _license(raw: dict[str, Any]) -> str | None:
    declared = raw.get("licenseDeclared")
    if isinstance(declared, str) and declared not in ("NOASSERTION", "NONE"):
        return declared
    comment = raw.get("licenseComments")
    if isinstance(comment, str) and comment.startswith(LICENSE_PREFIX):
        return comment[len(LICENSE_PREFIX) :]
    return None


__all__ = [
    "SBOM_FILE",
    "SBOM_PATH",
    "Sbom",
    "SbomError",
    "SbomFile",
    "SbomLibOS",
    "SbomModel",
    "SbomModelFile",
    "SbomPackage",
]
