"""Attach a signed provenance (a DSSE envelope) to a pushed image, and find it again.

Two ways, so that both kinds of tools find it:

* **cosign's layout**: an OCI manifest tagged ``sha256-<hex>.att`` in the image's repository,
  whose one layer is the envelope (media type ``application/vnd.dsse.envelope.v1+json``,
  annotations ``dev.cosignproject.cosign/signature`` = "" and ``predicateType``): what
  ``cosign verify-attestation --key`` reads.
* **an OCI 1.1 referrer**: a manifest with ``artifactType`` ``application/vnd.in-toto+json``, the
  empty config, the envelope as its layer and ``subject`` = the image. A registry with the
  referrers API indexes it (it answers ``OCI-Subject``); otherwise the referrers tag schema's
  fallback is kept up to date: an index tagged ``sha256-<hex>`` listing the referrers.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from enclave_build.contract.provenance import PREDICATE_TYPE, DsseEnvelope

from .oci import OCI_INDEX, OCI_MANIFEST, Image, canonical_json, sha256_digest
from .reference import RegistryRef, parse_registry_ref
from .registry import RegistryClient, RegistryError

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
ARTIFACT_TYPE = "application/vnd.in-toto+json"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PREDICATE_ANNOTATION = "predicateType"
#: The largest attestation manifest layer read back (an envelope is a few KiB).
MAX_ENVELOPE = 4 << 20


def cosign_tag(digest: str) -> str:
    return digest.replace(":", "-") + ".att"


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-")


def _layer(envelope_bytes: bytes, digest: str) -> dict:
    return {
        "mediaType": DSSE_MEDIA_TYPE,
        "digest": digest,
        "size": len(envelope_bytes),
        "annotations": {SIGNATURE_ANNOTATION: "", PREDICATE_ANNOTATION: PREDICATE_TYPE},
    }


def attach_provenance(
    pushed: str,
    image: Image,
    envelope: DsseEnvelope,
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None,
) -> tuple[str, ...]:
    """Attach *envelope* to the image pushed as *pushed* (``NAME@sha256:...``); the references
    written (the cosign tag, the referrer, and the fallback index tag when used)."""
    ref = parse_registry_ref(pushed)
    digest = image.manifest_digest
    assert digest is not None and image.manifest_bytes is not None
    client = RegistryClient(ref.host)
    repo = ref.repository
    advance = progress("attaching the provenance", 3) if progress else None
    body = envelope.to_json().encode()
    layer_digest = client.put_blob_bytes(repo, body)
    layer = _layer(body, layer_digest)

    # cosign: a config naming the layer as its one diff, then the manifest under the .att tag.
    config = canonical_json(
        {
            "architecture": "",
            "os": "",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
    )
    config_digest = client.put_blob_bytes(repo, config)
    cosign = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [layer],
        }
    )
    written = [f"{ref.host}/{repo}:{cosign_tag(digest)}"]
    client.put_manifest(repo, cosign_tag(digest), cosign, OCI_MANIFEST)
    if advance:
        advance(1)

    # OCI 1.1 referrer.
    client.put_blob_bytes(repo, EMPTY)
    referrer = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {
                "mediaType": EMPTY_MEDIA_TYPE,
                "digest": sha256_digest(EMPTY),
                "size": len(EMPTY),
            },
            "layers": [layer],
            "subject": {
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": len(image.manifest_bytes),
            },
            "annotations": {PREDICATE_ANNOTATION: PREDICATE_TYPE},
        }
    )
    referrer_digest = sha256_digest(referrer)
    answer = client.put_manifest(repo, referrer_digest, referrer, OCI_MANIFEST)
    written.append(f"{ref.host}/{repo}@{referrer_digest}")
    if advance:
        advance(1)
    if not answer.headers.get("OCI-Subject"):
        # No referrers API: the fallback index (tag sha256-<hex>), keeping other referrers.
        index = _fallback_index(client, ref, digest)
        entry = {
            "mediaType": OCI_MANIFEST,
            "digest": referrer_digest,
            "size": len(referrer),
            "artifactType": ARTIFACT_TYPE,
            "annotations": {PREDICATE_ANNOTATION: PREDICATE_TYPE},
        }
        index["manifests"] = [m for m in index["manifests"] if m.get("digest") != referrer_digest]
        index["manifests"].append(entry)
        client.put_manifest(repo, fallback_tag(digest), canonical_json(index), OCI_INDEX)
        written.append(f"{ref.host}/{repo}:{fallback_tag(digest)}")
    if advance:
        advance(1)
    return tuple(written)


def _fallback_index(client: RegistryClient, ref: RegistryRef, digest: str) -> dict:
    found = client.manifest_bytes(ref, fallback_tag(digest))
    if found is not None:
        try:
            data = json.loads(found[0])
            if isinstance(data, dict) and isinstance(data.get("manifests"), list):
                return data
        except ValueError:
            pass
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


def _envelopes_of(client: RegistryClient, ref: RegistryRef, manifest: bytes) -> list[bytes]:
    try:
        data = json.loads(manifest)
    except ValueError:
        raise RegistryError(f"{ref}: an attestation manifest that is not JSON") from None
    out = []
    for layer in data.get("layers") or []:
        if isinstance(layer, dict) and layer.get("mediaType") == DSSE_MEDIA_TYPE:
            out.append(client.blob_bytes(ref.repository, str(layer.get("digest")), MAX_ENVELOPE))
    return out


def find_attestations(ref: RegistryRef, digest: str, via: str = "cosign") -> list[bytes]:
    """The DSSE envelopes attached to the image *digest* in *ref*'s repository: through cosign's
    ``.att`` tag (*via* ``cosign``) or the referrers (*via* ``referrers``: the API, else the
    fallback tag)."""
    client = RegistryClient(ref.host)
    if via == "cosign":
        found = client.manifest_bytes(ref, cosign_tag(digest))
        return [] if found is None else _envelopes_of(client, ref, found[0])
    index = client.referrers(ref, digest)
    if index is None:
        found = client.manifest_bytes(ref, fallback_tag(digest))
        if found is None:
            return []
        index = found[0]
    envelopes = []
    for entry in json.loads(index).get("manifests") or []:
        if entry.get("artifactType") != ARTIFACT_TYPE:
            continue
        manifest = client.manifest_bytes(ref, str(entry.get("digest")))
        if manifest is not None:
            envelopes += _envelopes_of(client, ref, manifest[0])
    return envelopes
