"""Signed build provenance: what a build of an image took in (spec, base, models, enclave-build)
and what it produced (the image digest, the enclave identity, the manifest and SBOM digests), as
an in-toto Statement with an SLSA Provenance v1 predicate signed into a DSSE envelope
(enclave_build.contract.provenance), and its verification against an image."""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from enclave_build import __version__
from enclave_build.contract.measurements import Measurements
from enclave_build.contract.provenance import (
    PAYLOAD_TYPE,
    PROVENANCE_FILE,
    Digested,
    DsseEnvelope,
    ModelDigest,
    Provenance,
    ProvenanceError,
    SgxAttributes,
)
from enclave_build.contract.sbom import SBOM_PATH, Sbom

from .errors import EnclaveBuildError, UsageError
from .gramine.sigstruct import ARCH_LAYOUT, Sigstruct
from .image.inspect import enclave_app, read_file
from .image.oci import Image, oci_manifest, sha256_digest
from .image.reference import TRANSPORTS, names_registry_host
from .plan import ServicePlan
from .plugin_types import LibOSArtifacts
from .provenance_key import load_private_key, sign_envelope, verify_envelope
from .spec import Spec


def sgx_attributes(sigstruct: bytes) -> SgxAttributes:
    body = Sigstruct.from_bytes(sigstruct, ARCH_LAYOUT).body
    return SgxAttributes(
        body.attribute_flags,
        body.attribute_xfrm,
        body.attribute_flags_mask,
        body.attribute_xfrm_mask,
        body.misc_select,
        body.misc_mask,
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def base_digest_of(base: Image) -> str:
    """The digest a provenance records for a base (and ``verify-build`` checks a base against):
    the base image's manifest digest; for a base read from a directory (which has no manifest),
    the digest of the OCI manifest of the layer the build made of it."""
    if base.manifest_digest is not None:
        return base.manifest_digest
    return sha256_digest(oci_manifest(base.config_descriptor, list(base.layers)))


def make_provenance(
    spec: Spec,
    plan: ServicePlan,
    artifacts: LibOSArtifacts,
    measurements: Measurements,
    image: Image,
    base: Image,
    base_ref: str,
) -> Provenance:
    """The statement of this build (nothing in it depends on the clock or the machine)."""
    assert artifacts.identity is not None and image.manifest_digest is not None
    if not artifacts.sbom or not artifacts.sigstruct:
        raise EnclaveBuildError(
            f"[provenance]: the {artifacts.libos} backend produced no SBOM or SIGSTRUCT, which "
            "the provenance records (signed provenance is made for Gramine builds)"
        )
    manifest_file = next(f for f in artifacts.files if f.data is artifacts.manifest)
    staged = {f.dest: f.source for f in artifacts.files if f.ciphertext and f.source is not None}
    models = tuple(
        ModelDigest(
            model.name,
            model.version,
            item.path,
            item.sha256,
            _file_sha256(staged[item.path]) if item.path in staged else None,
        )
        for model in Sbom.parse(artifacts.sbom.decode()).models
        for item in model.files
    )
    return Provenance(
        image_name=measurements.image.ref or plan.image_tag,
        image_digest=image.manifest_digest,
        service=plan.service,
        framework=plan.framework,
        libos=artifacts.libos,
        image_tag=plan.image_tag,
        reproducible=spec.build.reproducible,
        identity=artifacts.identity,
        attributes=sgx_attributes(artifacts.sigstruct),
        manifest=Digested(manifest_file.dest, _sha256(artifacts.manifest)),
        sbom=Digested(SBOM_PATH, _sha256(artifacts.sbom)),
        spec=Digested(spec.path.name, _sha256(spec.path.read_bytes())),
        base_ref=base_ref,
        base_digest=base_digest_of(base),
        models=models,
        enclave_build_version=__version__,
    )


def sign_provenance(provenance: Provenance, key: Path) -> DsseEnvelope:
    return sign_envelope(PAYLOAD_TYPE, provenance.statement_bytes(), load_private_key(key))


@dataclass
class ProvenanceCheck:
    """The outcome of :func:`check_provenance`: *problems* is empty when everything holds."""

    provenance: Provenance | None = None
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def holds(self) -> bool:
        return not self.problems


def check_provenance(
    envelope: DsseEnvelope, public_key: object, image: Image, source: str = "provenance"
) -> ProvenanceCheck:
    """Check *envelope*'s signature with *public_key*, then that its statement names *image*
    (subject = the image's manifest digest), that the SBOM and the LibOS manifest in the image
    have the recorded digests (and the manifest trusts that SBOM), and that the enclave
    identity is the one the image's SIGSTRUCT carries."""
    result = ProvenanceCheck()
    try:
        verify_envelope(envelope, public_key)  # type: ignore[arg-type]
    except EnclaveBuildError as exc:
        result.problems.append(f"signature: {exc}")
        return result
    result.checked.append("the DSSE signature verifies with the key")
    if envelope.payload_type != PAYLOAD_TYPE:
        result.problems.append(f"payloadType is {envelope.payload_type!r}, not {PAYLOAD_TYPE}")
        return result
    try:
        prov = Provenance.from_statement(envelope.payload, source)
    except ProvenanceError as exc:
        result.problems.append(str(exc))
        return result
    result.provenance = prov
    if prov.image_digest != image.manifest_digest:
        result.problems.append(
            f"subject: the statement is about image {prov.image_digest}, "
            f"this image is {image.manifest_digest}"
        )
    else:
        result.checked.append(f"subject = the image's manifest digest {image.manifest_digest}")

    def digest_of(path: str, what: str) -> bytes | None:
        data = read_file(image, path)
        if data is None:
            result.problems.append(f"{what}: the image has no {path}")
        elif _sha256(data) != (prov.sbom if what == "sbom" else prov.manifest).sha256:
            result.problems.append(
                f"{what}: {path} in the image has SHA-256 {_sha256(data)}, the provenance "
                f"records {(prov.sbom if what == 'sbom' else prov.manifest).sha256}"
            )
        else:
            result.checked.append(f"{what}: {path} has the recorded SHA-256")
        return data

    digest_of(prov.sbom.path, "sbom")
    manifest = digest_of(prov.manifest.path, "manifest")
    if manifest is not None:
        try:
            trusted = tomllib.loads(manifest.decode())["sgx"]["trusted_files"]
            bound = {t["uri"]: t["sha256"] for t in trusted}
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, KeyError, TypeError):
            bound = {}
        if bound.get(f"file:{prov.sbom.path}") != prov.sbom.sha256:
            result.problems.append(
                f"sbom: the manifest does not trust {prov.sbom.path} with the recorded SHA-256"
            )
        else:
            result.checked.append("the manifest (hence MRENCLAVE) binds the SBOM's SHA-256")

    sig_path = enclave_app(image, prov.service) + ".sig"
    raw = read_file(image, sig_path)
    if raw is None:
        result.problems.append(f"identity: the image has no SIGSTRUCT {sig_path}")
        return result
    try:
        sig = Sigstruct.from_bytes(raw, ARCH_LAYOUT, sig_path)
    except EnclaveBuildError as exc:
        result.problems.append(f"identity: {exc}")
        return result
    found = {
        "mr_enclave": sig.body.enclave_hash.hex(),
        "mr_signer": sig.mr_signer.hex(),
        "isv_prod_id": sig.body.isv_prod_id,
        "isv_svn": sig.body.isv_svn,
        "attributes": sgx_attributes(raw).to_dict(),
    }
    i = prov.identity
    recorded = {
        "mr_enclave": i.mr_enclave,
        "mr_signer": i.mr_signer,
        "isv_prod_id": i.isv_prod_id,
        "isv_svn": i.isv_svn,
        "attributes": prov.attributes.to_dict(),
    }
    for key, value in recorded.items():
        if found[key] != value:
            result.problems.append(
                f"identity: {key} is {json.dumps(value)} in the provenance, "
                f"{json.dumps(found[key])} in the image's SIGSTRUCT"
            )
    if all(found[k] == v for k, v in recorded.items()):
        result.checked.append(f"identity: the image's SIGSTRUCT has MRENCLAVE {i.mr_enclave}")
    return result


def verify_provenance(
    target: str, public_key: Path, image: str | None = None, via: str = "cosign"
) -> ProvenanceCheck:
    """`enclave-build verify-provenance`: *target* is a provenance file (its image: *image*, else
    the build output directory holding the file), a build output directory, or a registry
    reference (the image is pulled and the provenance found attached to it, through cosign's
    ``.att`` tag or, *via* ``referrers``, the OCI referrers). Problems of the envelope or the
    statement are reported as not holding; a missing file or bad key is a UsageError."""
    from .image.attach import find_attestations
    from .image.inspect import open_image
    from .image.reference import parse_source
    from .provenance_key import load_public_key

    key = load_public_key(public_key)
    path = Path(target)
    envelopes: list[tuple[str, bytes]] = []
    if image is not None and not Path(image).exists():
        _check_not_local(image, "--image")
    if not (path.is_file() or path.is_dir()):
        _check_not_local(target, "IMAGE|FILE")
        if target.startswith(TRANSPORTS) and not target.startswith("docker://"):
            raise UsageError(
                f"{target}: verify-provenance finds the provenance of an image only in a "
                f"registry ({_GIVE}); for another image, give its provenance file with "
                f"--image {target}"
            )
    if path.is_file() or path.is_dir():
        directory = path if path.is_dir() else path.parent
        file = path / PROVENANCE_FILE if path.is_dir() else path
        if not file.is_file():
            raise UsageError(f"{target}: no {PROVENANCE_FILE} in this directory")
        envelopes.append((str(file), file.read_bytes()))
        where = image or str(directory)
        if image is None and not (directory / "oci").is_dir():
            raise UsageError(
                f"{target}: name the image it is about with --image (a build output directory "
                "or a registry reference); this directory holds no oci/ image"
            )
        opened, _ = open_image(where)
    else:
        opened, _ = open_image(target)
        source = parse_source(target)
        if source.registry is None or opened.manifest_digest is None:
            raise UsageError(f"{target}: neither a file, a build output nor a registry image")
        for index, raw in enumerate(
            find_attestations(source.registry, opened.manifest_digest, via)
        ):
            envelopes.append((f"{target} attestation {index + 1} ({via})", raw))
        if not envelopes:
            result = ProvenanceCheck()
            result.problems.append(
                f"{target}: no provenance is attached to {opened.manifest_digest} ({via})"
            )
            return result
    last = ProvenanceCheck()
    for source_name, raw in envelopes:
        try:
            envelope = DsseEnvelope.parse(raw, source_name)
        except ProvenanceError as exc:
            last = ProvenanceCheck(problems=[str(exc)])
            continue
        last = check_provenance(envelope, key, opened, source_name)
        if last.holds:
            return last
    return last


_GIVE = (
    "give a provenance file, a build output directory, or a registry image as "
    "HOST/NAME@sha256:... or docker://NAME@sha256:..."
)


def _check_not_local(text: str, role: str) -> None:
    """*text* names no existing file or directory: a UsageError unless it reads as an image
    reference (a transport, or a registry host). A bare word is not taken for a Docker Hub
    name, and a path that does not exist is named as one."""
    if text.startswith(TRANSPORTS):
        return
    if os.path.lexists(text):
        raise UsageError(f"{text}: not a file or a directory ({role}; {_GIVE})")
    if text.startswith(("/", "./", "../", "~")) or text.endswith("/") or text in (".", ".."):
        raise UsageError(f"{text}: no such file or directory ({role})")
    if names_registry_host(text):
        return
    raise UsageError(
        f"no such file, build output or image: {text} ({role}; {_GIVE}; for a Docker Hub "
        f"image write docker://{text})"
    )
