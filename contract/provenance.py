"""provenance.dsse.json: signed build provenance (an in-toto Statement v1 with an SLSA
Provenance v1 predicate, in a DSSE envelope).

The builder writes it (``builder.provenance``: :meth:`Provenance.statement_bytes` signed into
a :class:`DsseEnvelope`, :meth:`DsseEnvelope.to_json`); `verify-provenance`, `diff` and
`verify-build` read it (:meth:`DsseEnvelope.load`, then :meth:`Provenance.from_statement`).
Signature checks need a crypto library and live in the builder; :func:`pae` (DSSE's
pre-authentication encoding) is here so that signer and verifier share it.

The envelope (DSSE v1)::

    {"payloadType": "application/vnd.in-toto+json",
     "payload": "<base64 of the statement's JSON bytes>",
     "signatures": [{"keyid": "<hex SHA-256 of the key's DER SubjectPublicKeyInfo>",
                     "sig": "<base64 of a DER ECDSA P-256 / SHA-256 signature over PAE>"}]}

The statement::

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "<image name>", "digest": {"sha256": "<image manifest digest hex>"}}],
     "predicateType": "https://slsa.dev/provenance/v1",
     "predicate": {
       "buildDefinition": {
         "buildType": "https://enclave-build.dev/provenance/build/v1",
         "externalParameters": {"spec": "spec.toml", "service": ..., "framework": ...,
                                "libos": ..., "image": "<tag>", "reproducible": bool},
         "internalParameters": {
           "enclave": {"mr_enclave", "mr_signer", "isv_prod_id", "isv_svn",
                       "attributes": {"flags", "xfrm", "flags_mask", "xfrm_mask",
                                      "misc_select", "misc_mask"} (hex strings "0x...")},
           "manifest": {"path": "<LibOS manifest path in the image>", "sha256": "<hex>"},
           "sbom": {"path": "/enclave/sbom.spdx.json", "sha256": "<hex>"}},
         "resolvedDependencies": [
           {"name": "spec.toml", "digest": {"sha256": <spec file bytes>},
            "annotations": {"kind": "spec"}},
           {"name": "base", "uri": "<base reference>", "digest": {"sha256": <manifest digest>},
            "annotations": {"kind": "base"}},
           {"name": "<model file path in the enclave>", "digest": {"sha256": <plaintext>},
            "annotations": {"kind": "model", "model": NAME, "version": "N"}}, ...,
           {"name": "enclave-build", "uri": "pkg:pypi/enclave-build@V",
            "annotations": {"kind": "enclave-build", "version": V}}]},
       "runDetails": {"builder": {"id": "https://enclave-build.dev/builder/cli",
                                  "version": {"enclave-build": V}},
                      "metadata": {}}}}

Nothing in it depends on the clock or the machine: two identical builds write the same
statement (and, ECDSA signatures being randomized, envelopes that differ only in ``sig``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ContractError
from .files import read_text
from .identity import EnclaveIdentity, is_hex64
from .schema import Problem

PROVENANCE_FILE = "provenance.dsse.json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "https://enclave-build.dev/provenance/build/v1"
BUILDER_ID = "https://enclave-build.dev/builder/cli"
#: SGX's DEBUG attribute bit.
_FLAG_DEBUG = 0x2
_ATTRIBUTE_FIELDS = ("flags", "xfrm", "flags_mask", "xfrm_mask", "misc_select", "misc_mask")


class ProvenanceError(ContractError):
    """A provenance file is missing, malformed, or not one enclave-build wrote."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what a signature covers."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class DsseSignature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class DsseEnvelope:
    payload_type: str
    payload: bytes
    signatures: tuple[DsseSignature, ...]

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_json(self) -> str:
        """The file's text (the one writer)."""
        data = {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def parse(cls, text: str | bytes, source: str = PROVENANCE_FILE) -> DsseEnvelope:
        def fail(message: str, *key: str | int) -> ProvenanceError:
            return ProvenanceError(source, [Problem(tuple(key), message)])

        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise fail(f"not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise fail("not a DSSE envelope (a JSON object)")
        kind, payload, signatures = (
            data.get("payloadType"),
            data.get("payload"),
            data.get("signatures"),
        )
        if not isinstance(kind, str):
            raise fail("missing or not a string", "payloadType")
        if not isinstance(payload, str):
            raise fail("missing or not a string", "payload")
        if not isinstance(signatures, list) or not signatures:
            raise fail("a non-empty list of signatures is required", "signatures")
        sigs = []
        for index, item in enumerate(signatures):
            if not isinstance(item, dict) or not isinstance(item.get("sig"), str):
                raise fail("needs a base64 'sig'", "signatures", index)
            keyid = item.get("keyid", "")
            if not isinstance(keyid, str):
                raise fail("not a string", "signatures", index, "keyid")
            sigs.append(DsseSignature(keyid, _b64(item["sig"], fail, "signatures", index, "sig")))
        return cls(kind, _b64(payload, fail, "payload"), tuple(sigs))

    @classmethod
    def load(cls, path: str | Path) -> DsseEnvelope:
        return cls.parse(read_text(path, ProvenanceError, "the provenance"), str(path))


def _b64(text: str, fail: Any, *key: str | int) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise fail("not base64", *key) from None


@dataclass(frozen=True)
class SgxAttributes:
    """The SIGSTRUCT's ATTRIBUTES, their masks and MISCSELECT (and its mask)."""

    flags: int
    xfrm: int
    flags_mask: int
    xfrm_mask: int
    misc_select: int
    misc_mask: int

    @property
    def debug(self) -> bool:
        return bool(self.flags & _FLAG_DEBUG)

    def to_dict(self) -> dict[str, str]:
        width = {"misc_select": 10, "misc_mask": 10}
        return {k: f"{getattr(self, k):#0{width.get(k, 18)}x}" for k in _ATTRIBUTE_FIELDS}


@dataclass(frozen=True)
class Digested:
    """A file named by its path (in the image or as given) and its SHA-256 (hex)."""

    path: str
    sha256: str


@dataclass(frozen=True)
class ModelDigest:
    name: str
    version: str
    path: str  # the model file's path in the enclave
    sha256: str  # of the plaintext


@dataclass(frozen=True)
class Provenance:
    """What the statement says, typed."""

    image_name: str
    image_digest: str  # sha256:<hex> of the image manifest
    service: str
    framework: str
    libos: str
    image_tag: str
    reproducible: bool
    identity: EnclaveIdentity
    attributes: SgxAttributes
    manifest: Digested  # the LibOS manifest
    sbom: Digested  # the SBOM inside the image
    spec: Digested  # the spec file (its name and the SHA-256 of its bytes)
    base_ref: str
    base_digest: str  # sha256:<hex> of the base image manifest
    models: tuple[ModelDigest, ...]
    enclave_build_version: str

    def statement(self) -> dict[str, Any]:
        i = self.identity
        deps: list[dict[str, Any]] = [
            {
                "name": self.spec.path,
                "digest": {"sha256": self.spec.sha256},
                "annotations": {"kind": "spec"},
            },
            {
                "name": "base",
                "uri": self.base_ref,
                "digest": {"sha256": _hex(self.base_digest)},
                "annotations": {"kind": "base"},
            },
        ]
        deps += [
            {
                "name": m.path,
                "digest": {"sha256": m.sha256},
                "annotations": {"kind": "model", "model": m.name, "version": m.version},
            }
            for m in self.models
        ]
        deps.append(
            {
                "name": "enclave-build",
                "uri": f"pkg:pypi/enclave-build@{self.enclave_build_version}",
                "annotations": {"kind": "enclave-build", "version": self.enclave_build_version},
            }
        )
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.image_name, "digest": {"sha256": _hex(self.image_digest)}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "externalParameters": {
                        "spec": self.spec.path,
                        "service": self.service,
                        "framework": self.framework,
                        "libos": self.libos,
                        "image": self.image_tag,
                        "reproducible": self.reproducible,
                    },
                    "internalParameters": {
                        "enclave": {
                            "mr_enclave": i.mr_enclave,
                            "mr_signer": i.mr_signer,
                            "isv_prod_id": i.isv_prod_id,
                            "isv_svn": i.isv_svn,
                            "attributes": self.attributes.to_dict(),
                        },
                        "manifest": {"path": self.manifest.path, "sha256": self.manifest.sha256},
                        "sbom": {"path": self.sbom.path, "sha256": self.sbom.sha256},
                    },
                    "resolvedDependencies": deps,
                },
                "runDetails": {
                    "builder": {
                        "id": BUILDER_ID,
                        "version": {"enclave-build": self.enclave_build_version},
                    },
                    "metadata": {},
                },
            },
        }

    def statement_bytes(self) -> bytes:
        """The payload: the statement as compact JSON with sorted keys (deterministic)."""
        return json.dumps(self.statement(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_statement(cls, payload: bytes, source: str = PROVENANCE_FILE) -> Provenance:
        """The statement in an envelope's payload, checked to be one enclave-build wrote."""
        problems: list[Problem] = []

        def fail(message: str, *key: str | int) -> ProvenanceError:
            return ProvenanceError(source, [Problem(("payload", *key), message)])

        try:
            data = json.loads(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise fail(f"not JSON ({exc})") from None

        def get(obj: Any, *path: str | int, kind: type | tuple[type, ...] = str) -> Any:
            node = obj
            for key in path:
                if isinstance(key, int):
                    ok = isinstance(node, list) and len(node) > key
                else:
                    ok = isinstance(node, dict) and key in node
                if not ok:
                    raise fail("missing", *path)
                node = node[key]
            if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
                raise fail(f"expected {getattr(kind, '__name__', kind)}", *path)
            return node

        if get(data, "_type") != STATEMENT_TYPE:
            raise fail(f"not an in-toto Statement v1 ({STATEMENT_TYPE})", "_type")
        if get(data, "predicateType") != PREDICATE_TYPE:
            raise fail(f"not SLSA provenance v1 ({PREDICATE_TYPE})", "predicateType")
        subjects = get(data, "subject", kind=list)
        if len(subjects) != 1:
            raise fail("exactly one subject (the image) is expected", "subject")
        image_hex = get(data, "subject", 0, "digest", "sha256")
        bd = get(data, "predicate", "buildDefinition", kind=dict)
        if get(bd, "buildType") != BUILD_TYPE:
            raise fail(
                f"not an enclave-build provenance ({BUILD_TYPE})",
                "predicate",
                "buildDefinition",
                "buildType",
            )
        ext = get(bd, "externalParameters", kind=dict)
        enclave = get(bd, "internalParameters", "enclave", kind=dict)
        attrs = get(enclave, "attributes", kind=dict)
        try:
            attributes = SgxAttributes(*(int(get(attrs, k), 16) for k in _ATTRIBUTE_FIELDS))
        except ValueError:
            raise fail("attributes must be hex numbers", "predicate", "attributes") from None
        for key in ("mr_enclave", "mr_signer"):
            if not is_hex64(enclave.get(key)):
                problems.append(
                    Problem(("payload", "enclave", key), "not 64 lower-case hex digits")
                )
        if problems:
            raise ProvenanceError(source, problems)
        identity = EnclaveIdentity(
            get(enclave, "mr_enclave"),
            get(enclave, "mr_signer"),
            get(enclave, "isv_prod_id", kind=int),
            get(enclave, "isv_svn", kind=int),
            attributes.debug,
        )
        internal = get(bd, "internalParameters", kind=dict)
        manifest = Digested(get(internal, "manifest", "path"), get(internal, "manifest", "sha256"))
        sbom = Digested(get(internal, "sbom", "path"), get(internal, "sbom", "sha256"))
        spec: Digested | None = None
        base_ref, base_digest = "", ""
        models: list[ModelDigest] = []
        version = get(data, "predicate", "runDetails", "builder", "version", "enclave-build")
        for dep in get(bd, "resolvedDependencies", kind=list):
            kind = get(dep, "annotations", "kind")
            if kind == "spec":
                spec = Digested(get(dep, "name"), get(dep, "digest", "sha256"))
            elif kind == "base":
                base_ref, base_digest = get(dep, "uri"), "sha256:" + get(dep, "digest", "sha256")
            elif kind == "model":
                models.append(
                    ModelDigest(
                        get(dep, "annotations", "model"),
                        get(dep, "annotations", "version"),
                        get(dep, "name"),
                        get(dep, "digest", "sha256"),
                    )
                )
        if spec is None:
            raise fail("no spec among the resolved dependencies", "resolvedDependencies")
        return cls(
            image_name=get(data, "subject", 0, "name"),
            image_digest="sha256:" + image_hex,
            service=get(ext, "service"),
            framework=get(ext, "framework"),
            libos=get(ext, "libos"),
            image_tag=get(ext, "image"),
            reproducible=get(ext, "reproducible", kind=bool),
            identity=identity,
            attributes=attributes,
            manifest=manifest,
            sbom=sbom,
            spec=spec,
            base_ref=base_ref,
            base_digest=base_digest,
            models=tuple(models),
            enclave_build_version=version,
        )


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1] if digest.startswith("sha256:") else digest


__all__ = [
    "BUILD_TYPE",
    "BUILDER_ID",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PROVENANCE_FILE",
    "STATEMENT_TYPE",
    "Digested",
    "DsseEnvelope",
    "DsseSignature",
    "ModelDigest",
    "Provenance",
    "ProvenanceError",
    "SgxAttributes",
    "pae",
]
