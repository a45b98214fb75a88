"""builder.gramine.identity: MRENCLAVE re-derived from a manifest, libpal.so and the offsets,
compared with a SIGSTRUCT -- on gramine-sgx-sign 1.9's own output (../shared/vectors/sgx-sign)."""

from __future__ import annotations

import json

import pytest

from enclave_build.builder.gramine.identity import check_identity
from enclave_build.builder.gramine.measure import PalImage
from enclave_build.builder.gramine.offsets import Offsets
from enclave_build.builder.gramine.sigstruct import ARCH_LAYOUT

from .conftest import vectors_dir


@pytest.fixture(scope="module")
def vector():
    """gramine-sgx-sign 1.9's own output: a manifest, its libpal and offsets, its SIGSTRUCT."""
    directory = vectors_dir("sgx-sign")
    case = json.loads((directory / "s1.json").read_text())
    return (
        (directory / "s1.manifest.sgx").read_bytes(),
        PalImage.load(directory / case["libpal"]),
        Offsets.load(directory / "_graminelibos_offsets.py"),
        (directory / "s1.sig").read_bytes(),
        case,
        directory,
    )


@pytest.mark.parametrize("case", ["s1", "s2", "s3", "s4"])
def test_identity_of_gramine_sgx_sign_output_agrees(case):
    directory = vectors_dir("sgx-sign")
    expected = json.loads((directory / f"{case}.json").read_text())
    result = check_identity(
        (directory / f"{case}.manifest.sgx").read_bytes(),
        PalImage.load(directory / expected["libpal"]),
        Offsets.load(directory / "_graminelibos_offsets.py"),
        (directory / f"{case}.sig").read_bytes(),
    )
    assert result.agrees, result.problems
    assert result.mr_enclave == expected["mr_enclave"]
    assert result.sigstruct["mr_signer"] == expected["mr_signer"]
    assert result.manifest is not None and "sgx" in result.manifest


def test_identity_names_each_disagreement(vector):
    manifest, pal, offs, sig, case, directory = vector
    other_pal = PalImage.load(
        directory / ("fakepal_b.so" if case["libpal"] == "fakepal_a.so" else "fakepal_a.so")
    )
    moved = check_identity(manifest, other_pal, offs, sig)
    assert not moved.agrees and moved.mr_enclave != case["mr_enclave"]
    assert any(f"but SIGSTRUCT was signed for {case['mr_enclave']}" in p for p in moved.problems), (
        moved.problems
    )

    edited = check_identity(manifest.replace(b"\n", b"\n\n", 1), pal, offs, sig)
    assert any(
        p.startswith("MRENCLAVE re-derived from manifest and libpal.so is ")
        for p in edited.problems
    ), edited.problems

    nul = check_identity(manifest + b"\0", pal, offs, sig)
    assert any("a NUL byte at offset" in p for p in nul.problems), nul.problems

    flipped = bytearray(sig)
    flipped[ARCH_LAYOUT.SGX_ARCH_SIGSTRUCT_ISV_SVN] ^= 1
    forged = check_identity(manifest, pal, offs, bytes(flipped))
    assert any("the signature does not verify" in p for p in forged.problems)
    assert any(
        "the SIGSTRUCT's isv_svn is 0x1, but manifest (sgx.isvsvn) implies 0x0" in p
        for p in forged.problems
    ), forged.problems

    assert check_identity(manifest, pal, offs, sig[:100]).problems == (
        "SIGSTRUCT: 100 bytes; a SIGSTRUCT is 1808",
    )
