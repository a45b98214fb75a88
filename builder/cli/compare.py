"""``enclave-build diff``: whether two builds have the same enclave identity and image, and
if not, exactly why; ``verify-build``: rebuild what a provenance describes and check that."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import FAILURE, RichProgress, errors, print_json

DIFF_JSON_HELP = (
    "Print the comparison as JSON: identical, mr_enclave_equal, mr_signer_equal, image_equal, "
    "a and b (source, kind, libos, mr_enclave, mr_signer, image_digest), the lists identity, "
    "manifest, libos, sigstruct, occlum_config, image_config, inputs (key, spec_key, change, "
    "a, b), trusted_files and image_files (path, image_path, change, a_sha256, b_sha256, "
    "a_package, b_package), and notes."
)


@click.command(
    "diff",
    epilog="""\b
Examples:
  enclave-build diff out/ rebuild/
  enclave-build diff my-model docker://registry.example.com/face@sha256:... --json
  enclave-build diff oci:release-1.2 oci:release-1.3
\b
Exit codes: 0 identical; 1 different; 2 usage (no such build output or image).
""",
)
@click.argument("a")
@click.argument("b")
@click.option("--json", "as_json", is_flag=True, help=DIFF_JSON_HELP)
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def diff(a: str, b: str, as_json: bool, quiet: bool) -> None:
    """Compare two builds A and B -- build output directories, project directories (their
    out/) or images (docker://HOST/NAME@sha256:..., oci:DIR, docker-archive:FILE) -- and say
    whether their MRENCLAVEs are equal and, if not, exactly why: manifest keys added, removed
    or changed (named as the spec key that sets them, e.g. enclave.max_threads), trusted files
    (path in the enclave, both SHA-256 digests, the owning package from the SBOM), the
    libpal.so and layout constants that measure them, the SIGSTRUCT (signer, ISV ids,
    attributes, date); and for the image, its config and the files outside the measurement
    (encrypted models). Two identical builds print `identical`. Images are unpacked into the
    cache, as `inspect` does."""
    from ..compare.sides import diff_builds
    from ..compare.text import render

    def log(line: str) -> None:
        click.echo(line, err=True)

    with errors(), RichProgress(not quiet and not as_json) as progress:
        result = diff_builds(a, b, progress=progress.task, log=log)
    if as_json:
        print_json(result.to_json())
    else:
        for line in render(result):
            click.echo(line)
    if not result.identical:
        sys.exit(FAILURE)


@click.command(
    "verify-build",
    epilog="""\b
Examples:
  enclave-build verify-build out/provenance.dsse.json --spec spec.toml
  enclave-build verify-build provenance.dsse.json --spec spec.toml \\
      --image docker://registry.example.com/face@sha256:... --json
\b
Exit codes: 0 the rebuild is the same enclave and image; 1 it is not, or an input is not
the one the provenance names; 2 usage (no such file, a rebuild that cannot be reproduced).
""",
)
@click.argument("provenance", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--spec",
    "spec",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The spec.toml the provenance names (its SHA-256 must match), with its models "
    "and, for encrypted models, the wrap keys in its [secrets] keys_dir.",
)
@click.option(
    "--base",
    metavar="REF",
    help="Read the base from REF instead of the reference the provenance names (a mirror); "
    "its digest must still be the provenance's.",
)
@click.option(
    "--image",
    metavar="REF",
    help="The published image: its SIGSTRUCT goes into the rebuild when the signing key is "
    "not here, and a differing rebuild is compared with it (default: the build output the "
    "provenance lies in, else the pushed image its subject names).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: holds, provenance (mr_enclave, image_digest), mismatches (input, "
    "expected, found), rebuilt (mr_enclave, image_digest), signature (how the rebuilt "
    "SIGSTRUCT was signed) and diff (as `diff --json`).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress on stderr.")
def verify_build(
    provenance: Path,
    spec: Path,
    base: str | None,
    image: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rebuild what PROVENANCE (provenance.dsse.json) describes from SPEC in a clean temporary
    directory, and confirm the same MRENCLAVE and image digest. First the inputs: the spec's
    SHA-256, each model file's SHA-256, the base's digest and the enclave-build version must be
    the ones the provenance names (any that is not is named, and nothing is built). No private
    key is needed: the [provenance] key is not read (the rebuild signs no provenance), and
    without the [signing] key the published image's SIGSTRUCT is put into the rebuild once its
    RSA signature verifies and it signs the rebuilt MRENCLAVE. A rebuild that differs prints
    the `diff` against the published image. Encrypted models reproduce only with [build]
    reproducible = true and the original wrap keys. The provenance's signature is not checked
    here: `verify-provenance` does that."""
    from ..compare.text import render
    from ..verify_build import verify_build as run

    def log(line: str) -> None:
        click.echo(line, err=True)

    with errors(), RichProgress(not quiet and not as_json) as progress:
        result = run(provenance, spec, base=base, image=image, progress=progress, log=log)
    if as_json:
        print_json(result.to_json())
    else:
        expected = result.provenance
        for mismatch in result.mismatches:
            click.echo(f"input differs: {mismatch.describe()}")
        if result.rebuilt is not None:
            click.echo(
                f"mr_enclave  rebuilt {result.rebuilt.mr_enclave}, provenance "
                f"{expected.identity.mr_enclave}"
            )
            click.echo(
                f"image       rebuilt {result.rebuilt.image_digest}, provenance "
                f"{expected.image_digest}"
            )
            click.echo(f"sigstruct   {result.signature}")
        if result.diff is not None:
            for line in render(result.diff):
                click.echo(line)
        click.echo("holds" if result.holds else "does not hold")
    if not result.holds:
        sys.exit(FAILURE)
