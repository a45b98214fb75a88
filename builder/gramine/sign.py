"""Measure a final Gramine manifest and produce its signed SIGSTRUCT (gramine-sgx-sign's job).

Pure library: bytes and files in, bytes out; no Docker, no Gramine installation needed.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EnclaveBuildError, UsageError
from .measure import PalImage, measure_enclave
from .offsets import Offsets
from .signer import DetachedSigner, PemSigner, Signer
from .sigstruct import SigDate, Sigstruct, body_from_manifest, enclave_attributes


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
            f"{source}: loader.entrypoint must be a table {{uri, sha256}} (Gramine 1.9)"
        )
    if "sha256" not in entry:
        raise ManifestNotFinalError(
            f"{source}: loader.entrypoint has no sha256; render the final manifest first "
            "(`enclave-build build`), or add the hash"
        )
    sgx = data.get("sgx", {})
    if not isinstance(sgx, dict):
        raise ManifestNotFinalError(f"{source}: [sgx] must be a table")
    for index, tf in enumerate(sgx.get("trusted_files", [])):
        uri = tf.get("uri") if isinstance(tf, dict) else tf
        if not isinstance(tf, dict) or "sha256" not in tf:
            raise ManifestNotFinalError(
                f"{source}: sgx.trusted_files[{index}] ({uri!r}) has no sha256: the manifest is not "
                "final; render it with `enclave-build build` so every trusted file is hashed"
            )
        if str(uri).endswith("/"):
            raise ManifestNotFinalError(
                f"{source}: sgx.trusted_files[{index}] ({uri!r}) is a directory: expand it first"
            )
    return data


def sign_manifest(
    manifest: bytes,
    pal: PalImage,
    offs: Offsets,
    signer: Signer,
    date: SigDate,
    source: str = "manifest",
) -> SignedEnclave:
    """Measure *manifest* (its exact bytes) and return the signed SIGSTRUCT."""
    mr_enclave, unsigned = _unsigned(manifest, pal, offs, date, source)
    sig = signer.sign(unsigned.signing_data(offs))
    signed = unsigned.with_signature(sig.modulus, sig.signature, sig.exponent)
    return SignedEnclave(mr_enclave, signed, signed.to_bytes(offs))


def signing_data_for(
    manifest: bytes, pal: PalImage, offs: Offsets, date: SigDate, source: str = "manifest"
) -> tuple[bytes, bytes]:
    """(MRENCLAVE, the 256 bytes to sign): step one of the detached-signature flow."""
    mr_enclave, unsigned = _unsigned(manifest, pal, offs, date, source)
    return mr_enclave, unsigned.signing_data(offs)


def _unsigned(
    manifest: bytes, pal: PalImage, offs: Offsets, date: SigDate, source: str
) -> tuple[bytes, Sigstruct]:
    """MRENCLAVE of the final *manifest* and its SIGSTRUCT before signing."""
    sgx = parse_final_manifest(manifest, source).get("sgx", {})
    mr_enclave = measure_enclave(manifest, enclave_attributes(sgx), pal, offs)
    return mr_enclave, Sigstruct(body_from_manifest(sgx, mr_enclave, date, offs))


@dataclass(frozen=True)
class SignFileResult:
    """What :func:`sign_manifest_file` did: wrote the SIGSTRUCT (*signed* is set) or, in step
    one of external signing, the bytes to sign (*signed* is None)."""

    mr_enclave: bytes
    written: Path
    signed: SignedEnclave | None = None
    tbs_size: int = 0


def sign_manifest_file(
    manifest: Path,
    libpal: Path,
    offsets: Path,
    *,
    key: Path | None = None,
    passphrase: bytes | None = None,
    public_key: Path | None = None,
    signature: Path | None = None,
    tbs_out: Path | None = None,
    date: str | None = None,
    sigfile: Path | None = None,
) -> SignFileResult:
    """`gramine-sgx-sign` on files: measure *manifest* with Gramine's *libpal* and *offsets*
    and write its SIGSTRUCT to *sigfile* (atomically), signed with one of: the PEM *key*; a
    detached *signature* over the bytes to sign with the signer's *public_key*; or, with
    *tbs_out*, write the 256 bytes to sign there and stop (external signing, step one).
    *date* is YYYY-MM-DD or 0000-00-00 (default: today)."""
    modes = [key is not None, public_key is not None or signature is not None, tbs_out is not None]
    if sum(modes) != 1:
        raise UsageError("give exactly one of --key, --public-key with --signature, or --tbs-out")
    if tbs_out is None and sigfile is None:
        raise UsageError("--sigfile is required (where to write the SIGSTRUCT)")
    if key is None and tbs_out is None and (public_key is None or signature is None):
        raise UsageError("external signing needs both --public-key and --signature")
    sig_date = SigDate.parse(date) if date else SigDate.today()
    offs = Offsets.load(offsets)
    pal = PalImage.load(libpal)
    data = manifest.read_bytes()
    if tbs_out is not None:
        mr_enclave, tbs = signing_data_for(data, pal, offs, sig_date, str(manifest))
        atomic_write(tbs_out, tbs)
        return SignFileResult(mr_enclave, tbs_out, None, len(tbs))
    signer: Signer
    if key is not None:
        signer = PemSigner.from_file(key, passphrase)
    else:
        # the command line asks for a key, or for the public key and the signature
        assert public_key is not None and signature is not None
        signer = DetachedSigner.from_files(public_key, signature)
    signed = sign_manifest(data, pal, offs, signer, sig_date, str(manifest))
    assert sigfile is not None
    atomic_write(sigfile, signed.sigstruct_bytes)
    return SignFileResult(signed.mr_enclave, sigfile, signed)


def atomic_write(path: Path, data: bytes) -> None:
    """Write *data* to *path* through a temp file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EnclaveBuildError(f"{path}: cannot write: {exc.strerror}") from exc
