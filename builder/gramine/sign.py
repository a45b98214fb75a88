"""Measure a final Gramine manifest and produce its signed SIGSTRUCT (gramine-sgx-sign's job).

Pure library: bytes and files in, bytes out; no Docker, no Gramine installation needed.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from ..errors import EnclaveBuildError
from .measure import PalImage, measure_enclave
from .offsets import Offsets
from .sigstruct import SigDate, Sigstruct, body_from_manifest, enclave_attributes
from .signer import Signer


class ManifestNotFinalError(EnclaveBuildError):
    """The manifest still needs hashing before it can be measured."""


@dataclass(frozen=True)
class SignedEnclave:
    mr_enclave: bytes
    sigstruct: Sigstruct
    sigstruct_bytes: bytes

    @property
    def mr_signer(self) -> bytes:
        return self.sigstruct.mr_signer

    def summary(self) -> dict[str, Any]:
        body = self.sigstruct.body
        return {
            "mr_enclave": self.mr_enclave.hex(),
            "mr_signer": self.mr_signer.hex(),
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
        }


def parse_final_manifest(manifest: bytes, source: str = "manifest") -> dict[str, Any]:
    """Parse manifest bytes and check they are final: nothing left to hash at signing time."""
    try:
        data = tomllib.loads(manifest.decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestNotFinalError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestNotFinalError(f"{source}: invalid TOML: {exc}") from None
    entry = data.get("loader", {}).get("entrypoint")
    if not isinstance(entry, dict):
        raise ManifestNotFinalError(
            f"{source}: loader.entrypoint must be a table {{uri, sha256}} (Gramine 1.9)")
    if "sha256" not in entry:
        raise ManifestNotFinalError(
            f"{source}: loader.entrypoint has no sha256; render the final manifest first "
            "(`enclave-build build`), or add the hash")
    sgx = data.get("sgx", {})
    if not isinstance(sgx, dict):
        raise ManifestNotFinalError(f"{source}: [sgx] must be a table")
    for index, tf in enumerate(sgx.get("trusted_files", [])):
        uri = tf.get("uri") if isinstance(tf, dict) else tf
        if not isinstance(tf, dict) or "sha256" not in tf:
            raise ManifestNotFinalError(
                f"{source}: sgx.trusted_files[{index}] ({uri!r}) has no sha256: the manifest is not "
                "final; render it with `enclave-build build` so every trusted file is hashed")
        if str(uri).endswith("/"):
            raise ManifestNotFinalError(
                f"{source}: sgx.trusted_files[{index}] ({uri!r}) is a directory: expand it first")
    return data


def sign_manifest(manifest: bytes, pal: PalImage, offs: Offsets, signer: Signer,
                  date: SigDate, source: str = "manifest") -> SignedEnclave:
    """Measure *manifest* (its exact bytes) and return the signed SIGSTRUCT."""
    mr_enclave, unsigned = _unsigned(manifest, pal, offs, date, source)
    sig = signer.sign(unsigned.signing_data(offs))
    signed = unsigned.with_signature(sig.modulus, sig.signature, sig.exponent)
    return SignedEnclave(mr_enclave, signed, signed.to_bytes(offs))


def signing_data_for(manifest: bytes, pal: PalImage, offs: Offsets, date: SigDate,
                     source: str = "manifest") -> tuple[bytes, bytes]:
    """(MRENCLAVE, the 256 bytes to sign): step one of the detached-signature flow."""
    mr_enclave, unsigned = _unsigned(manifest, pal, offs, date, source)
    return mr_enclave, unsigned.signing_data(offs)


def _unsigned(manifest: bytes, pal: PalImage, offs: Offsets, date: SigDate,
              source: str) -> tuple[bytes, Sigstruct]:
    """MRENCLAVE of the final *manifest* and its SIGSTRUCT before signing."""
    sgx = parse_final_manifest(manifest, source).get("sgx", {})
    mr_enclave = measure_enclave(manifest, enclave_attributes(sgx), pal, offs)
    return mr_enclave, Sigstruct(body_from_manifest(sgx, mr_enclave, date, offs))
