"""The SIGSTRUCT of a published Gramine enclave image, put into a rebuild instead of signing it.

A rebuild that verifies a published build (``verify-build``) has no enclave signing key: the
checker is not the publisher. MRENCLAVE does not depend on the signer, but the image does (it
carries the SIGSTRUCT). :class:`PublishedSigner` is the rebuild's signer: when the 256 bytes
the rebuild would sign are exactly the ones the published SIGSTRUCT signed (the same
MRENCLAVE, ISV ids, attributes and date) and its RSA signature verifies over them, it answers
with the published modulus and signature, so the rebuilt SIGSTRUCT is byte for byte the
published one. Otherwise it signs with a throwaway key made for this rebuild only, so that the
rebuild still yields an image to compare, and records why (:attr:`PublishedSigner.mismatch`).
"""

from __future__ import annotations

from dataclasses import dataclass

from enclave_build.contract.identity import mr_signer_of

from .errors import UsageError
from .gramine.identity import read_sigstruct
from .gramine.signer import PemSigner, Signature, generate_key
from .gramine.sigstruct import ARCH_LAYOUT, Sigstruct
from .image.inspect import enclave_app, open_image, read_file

#: Where MRENCLAVE lies in the 256 signed bytes (the first 128 bytes of the SIGSTRUCT, then the
#: 128 from MISC_SELECT on).
_MR_ENCLAVE_AT = (
    128 + ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_ENCLAVE_HASH - ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_MISC_SELECT
)


@dataclass(frozen=True)
class PublishedSigstruct:
    """A SIGSTRUCT read from a published image: *source* says where (image and path);
    *problem* is why its signature does not verify (None: it does)."""

    source: str
    sigstruct: Sigstruct
    problem: str | None

    @property
    def mr_enclave(self) -> str:
        return self.sigstruct.body.enclave_hash.hex()

    @property
    def mr_signer(self) -> str | None:
        return mr_signer_of(self.sigstruct.modulus) if self.sigstruct.modulus else None


def read_published(image: str, service: str) -> PublishedSigstruct:
    """The SIGSTRUCT of the Gramine enclave *service* in *image* (a build output directory, an
    OCI layout or an image reference); a UsageError when the image holds none."""
    opened, _ = open_image(image)
    path = enclave_app(opened, service) + ".sig"
    raw = read_file(opened, path)
    if raw is None:
        raise UsageError(
            f"{image}: the image has no SIGSTRUCT {path} to put into the rebuild (is it the "
            "image the provenance describes?)"
        )
    sig, _info, problems = read_sigstruct(raw, f"{path} in {image}")
    if sig is None:
        raise UsageError(f"{image}: {problems[0]}")
    return PublishedSigstruct(f"{path} in {image}", sig, problems[0] if problems else None)


class PublishedSigner:
    """Signs with *published*'s signature when it covers exactly the data, else with a
    throwaway key (see the module docstring). After the build, :attr:`used` says which, and
    :attr:`mismatch` why the published signature could not be used."""

    def __init__(self, published: PublishedSigstruct):
        self.published = published
        self.used = False
        self.mismatch: str | None = None

    def sign(self, data: bytes) -> Signature:
        published = self.published
        signed = published.sigstruct.signed_bytes(ARCH_LAYOUT)
        if published.problem is not None:
            self.mismatch = (
                f"{published.source}: its signature does not verify: {published.problem}"
            )
        elif data != signed:
            mine = data[_MR_ENCLAVE_AT : _MR_ENCLAVE_AT + 32].hex()
            self.mismatch = (
                f"the rebuild measures MRENCLAVE {mine}, {published.source} signs "
                f"{published.mr_enclave}"
                if mine != published.mr_enclave
                else f"the rebuild's MRENCLAVE is the one {published.source} signs, but other "
                "signed fields differ (ISV ids, attributes or [signing] date)"
            )
        if self.mismatch is not None:
            return PemSigner(generate_key(), "a throwaway key").sign(data)
        self.used = True
        sig = published.sigstruct
        return Signature(sig.modulus, sig.signature, sig.exponent)


__all__ = ["PublishedSigstruct", "PublishedSigner", "read_published"]
