"""A rebuild that checks a published build holds no private key: the spec loads without the
files [signing] key and [provenance] key name (only when asked to), and the published
SIGSTRUCT signs the rebuild only when it verifies and covers exactly the rebuilt data."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from enclave_build.builder.build import load
from enclave_build.builder.gramine.signer import PemSigner, generate_key
from enclave_build.builder.gramine.sigstruct import ARCH_LAYOUT, SigDate, Sigstruct, SigstructBody
from enclave_build.builder.published_sigstruct import PublishedSigner, PublishedSigstruct
from enclave_build.builder.spec import SpecError

from .conftest import tflite_bytes, write_spec

SPEC = """[service]
name = "face"
framework = "tflite"

[[models]]
name = "face"
path = "model.tflite"
encrypt = false

[signing]
key = "absent-enclave-key.pem"

[provenance]
key = "absent-provenance.pem"
"""


def test_a_spec_loads_without_its_private_keys_only_when_asked(tmp_path):
    (tmp_path / "model.tflite").write_bytes(tflite_bytes())
    spec_path = write_spec(tmp_path, SPEC)
    with pytest.raises(SpecError) as caught:
        load(spec_path)
    text = str(caught.value)
    assert "signing.key" in text and "provenance.key" in text and "file not found" in text
    spec, _ = load(spec_path, private_keys=False)
    assert spec.signing.key == tmp_path / "absent-enclave-key.pem"
    assert spec.provenance is not None
    assert spec.provenance.key == tmp_path / "absent-provenance.pem"


def test_keyless_loading_still_reports_other_problems(tmp_path):
    (tmp_path / "model.tflite").write_bytes(tflite_bytes())
    spec_path = write_spec(tmp_path, SPEC.replace('path = "model.tflite"', 'path = "nope"'))
    with pytest.raises(SpecError) as caught:
        load(spec_path, private_keys=False)
    assert "models[0].path" in str(caught.value)
    assert "signing.key" not in str(caught.value)


def _body(mr_enclave: bytes) -> SigstructBody:
    return SigstructBody(
        enclave_hash=mr_enclave,
        date=SigDate(0, 0, 0),
        isv_prod_id=1,
        isv_svn=2,
        attribute_flags=0x4,
        attribute_xfrm=0x3,
        attribute_flags_mask=0xFFFFFFFFFFFFFFFD,
        attribute_xfrm_mask=0xFFFFFFFFFFFFFFFC,
        misc_select=0,
        misc_mask=0xFFFFFFFF,
    )


@pytest.fixture(scope="module")
def publisher():
    return PemSigner(generate_key(), "the publisher's key")


def _published(publisher, body: SigstructBody, tamper: bool = False) -> PublishedSigstruct:
    unsigned = Sigstruct(body)
    sig = publisher.sign(unsigned.signing_data(ARCH_LAYOUT))
    raw = bytearray(
        unsigned.with_signature(sig.modulus, sig.signature, sig.exponent).to_bytes(ARCH_LAYOUT)
    )
    if tamper:
        raw[ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_SIGNATURE + 7] ^= 0x01
    parsed = Sigstruct.from_bytes(bytes(raw), ARCH_LAYOUT, "published")
    return PublishedSigstruct(
        "/enclave/face.sig in out", parsed, parsed.signature_problem(ARCH_LAYOUT)
    )


def test_the_published_signature_signs_the_same_data(publisher):
    body = _body(hashlib.sha256(b"enclave").digest())
    published = _published(publisher, body)
    signer = PublishedSigner(published)
    signature = signer.sign(Sigstruct(body).signing_data(ARCH_LAYOUT))
    assert signer.used and signer.mismatch is None
    assert (signature.modulus, signature.signature) == (
        published.sigstruct.modulus,
        published.sigstruct.signature,
    )
    rebuilt = Sigstruct(body).with_signature(signature.modulus, signature.signature)
    assert rebuilt.to_bytes(ARCH_LAYOUT) == published.sigstruct.raw  # byte for byte


def test_another_mrenclave_gets_a_throwaway_signature(publisher):
    published = _published(publisher, _body(hashlib.sha256(b"enclave").digest()))
    other = _body(hashlib.sha256(b"another enclave").digest())
    signer = PublishedSigner(published)
    signature = signer.sign(Sigstruct(other).signing_data(ARCH_LAYOUT))
    assert not signer.used
    assert signer.mismatch == (
        f"the rebuild measures MRENCLAVE {other.enclave_hash.hex()}, /enclave/face.sig in out "
        f"signs {published.mr_enclave}"
    )
    assert signature.modulus != published.sigstruct.modulus
    # a real signature over the rebuilt data (the image is still well-formed)
    signed = Sigstruct(other).with_signature(signature.modulus, signature.signature)
    assert signed.signature_problem(ARCH_LAYOUT) is None


def test_other_signed_fields_are_named(publisher):
    body = _body(hashlib.sha256(b"enclave").digest())
    signer = PublishedSigner(_published(publisher, body))
    signer.sign(Sigstruct(replace(body, isv_svn=3)).signing_data(ARCH_LAYOUT))
    assert not signer.used
    assert signer.mismatch is not None and "other signed fields differ" in signer.mismatch


def test_a_signature_that_does_not_verify_is_never_used(publisher):
    body = _body(hashlib.sha256(b"enclave").digest())
    published = _published(publisher, body, tamper=True)
    assert published.problem is not None
    signer = PublishedSigner(published)
    signer.sign(Sigstruct(body).signing_data(ARCH_LAYOUT))
    assert not signer.used
    assert signer.mismatch is not None and "its signature does not verify" in signer.mismatch
