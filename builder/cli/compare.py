"""``enclave-build diff``: whether two builds have the same enclave identity and image, and
if not, exactly why."""

from __future__ import annotations

import sys

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
