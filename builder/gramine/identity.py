"""Re-derive a Gramine enclave's identity from its own files and compare it with its SIGSTRUCT.

A SIGSTRUCT says which MRENCLAVE its signer vouched for; it does not say that the manifest and
``libpal.so`` next to it measure to that value. :func:`check_identity` measures them again
(exactly as ``gramine-sgx-sign`` does, see :mod:`.measure`) and checks that the SIGSTRUCT's
signature verifies, that it was signed for the re-derived MRENCLAVE, and that the fields the
manifest implies (ISV ids, attributes, misc select) are the ones signed. On SGX hardware EINIT
makes the MRENCLAVE comparison; without hardware nothing else would.

Pure library: bytes in, a result out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EnclaveBuildError
from .measure import PalImage, measure_enclave
from .offsets import Offsets
from .sign import parse_final_manifest
from .sigstruct import (
    ARCH_LAYOUT,
    Sigstruct,
    SigstructBody,
    body_from_manifest,
    enclave_attributes,
    summarize,
)

#: SIGSTRUCT fields a manifest determines, with the manifest key each comes from.
_BODY_FIELDS = (
    ("isv_prod_id", "sgx.isvprodid"),
    ("isv_svn", "sgx.isvsvn"),
    ("attribute_flags", "sgx.debug"),
    ("attribute_flags_mask", "Gramine's constant mask"),
    ("attribute_xfrm", "sgx.cpu_features"),
    ("attribute_xfrm_mask", "sgx.cpu_features"),
    ("misc_select", "sgx.use_exinfo"),
    ("misc_mask", "Gramine's constant mask"),
)


@dataclass(frozen=True)
class IdentityCheck:
    """*mr_enclave*: re-derived from the manifest and libpal.so (None if they cannot be
    measured); *sigstruct*: :func:`~.sigstruct.summarize` of the SIGSTRUCT (None if it cannot be
    parsed); *problems*: every disagreement, each a sentence naming both values."""

    mr_enclave: str | None
    sigstruct: dict[str, Any] | None
    problems: tuple[str, ...]
    #: the manifest as parsed for measuring (None if it was not reached or is not TOML)
    manifest: dict[str, Any] | None = None

    @property
    def agrees(self) -> bool:
        return not self.problems


def check_identity(
    manifest: bytes,
    pal: PalImage,
    offs: Offsets,
    sigstruct: bytes,
    *,
    manifest_source: str = "manifest",
    pal_source: str = "libpal.so",
    sigstruct_source: str = "SIGSTRUCT",
) -> IdentityCheck:
    """Measure *manifest* (its exact bytes) with *pal* and *offs* and compare the result, and
    the fields the manifest implies, with the SIGSTRUCT in *sigstruct*."""
    sig, info, problems = read_sigstruct(sigstruct, sigstruct_source)
    if sig is None:
        return IdentityCheck(None, None, tuple(problems))
    nul = manifest.find(b"\0")
    if nul >= 0:
        # Gramine reads the measured manifest only up to its first NUL.
        problems.append(
            f"{manifest_source}: a NUL byte at offset {nul}; Gramine would read "
            "only the bytes before it, so it is not a manifest that can be checked"
        )
        return IdentityCheck(None, info, tuple(problems))
    data = None
    try:
        data = parse_final_manifest(manifest, manifest_source)
        sgx = data.get("sgx", {})
        mr_enclave = measure_enclave(manifest, enclave_attributes(sgx), pal, offs)
        implied = body_from_manifest(sgx, mr_enclave, sig.body.date, offs)
    except EnclaveBuildError as exc:
        problems.append(f"cannot measure {manifest_source}: {exc}")
        return IdentityCheck(None, info, tuple(problems), data)
    if mr_enclave != sig.body.enclave_hash:
        problems.append(
            f"MRENCLAVE re-derived from {manifest_source} and {pal_source} is "
            f"{mr_enclave.hex()}, but {sigstruct_source} was signed for "
            f"{sig.body.enclave_hash.hex()}: the manifest or libpal.so is not what was signed"
        )
    problems += body_differences(implied, sig.body, manifest_source)
    return IdentityCheck(mr_enclave.hex(), info, tuple(problems), data)


def read_sigstruct(
    sigstruct: bytes, source: str = "SIGSTRUCT"
) -> tuple[Sigstruct | None, dict[str, Any] | None, list[str]]:
    """Parse a SIGSTRUCT and check its signature: (the SIGSTRUCT, its
    :func:`~.sigstruct.summarize`, problems); the first two are None if it cannot be parsed."""
    try:
        sig = Sigstruct.from_bytes(sigstruct, ARCH_LAYOUT, source)
    except EnclaveBuildError as exc:
        return None, None, [str(exc)]
    info = summarize(sig)
    problems = []
    if info["signature_problem"] is not None:
        problems.append(f"{source}: the signature does not verify: {info['signature_problem']}")
    return sig, info, problems


def body_differences(
    implied: SigstructBody, signed: SigstructBody, manifest_source: str = "manifest"
) -> list[str]:
    """The SIGSTRUCT fields that differ from what the manifest implies (date not compared)."""
    out = []
    for name, key in _BODY_FIELDS:
        want, got = getattr(implied, name), getattr(signed, name)
        if want != got:
            out.append(
                f"the SIGSTRUCT's {name} is {got:#x}, but {manifest_source} ({key}) "
                f"implies {want:#x}"
            )
    return out


__all__ = ["check_identity", "read_sigstruct", "IdentityCheck", "body_differences"]
