"""``enclave-build verify-provenance``: check a build's signed provenance against its image."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .output import errors, print_json


@click.command(
    "verify-provenance",
    epilog="""\b
Exit status: 0 when the provenance holds; 1 when it does not (bad signature, another image,
an SBOM or identity that differs), or when it cannot be checked (a registry that cannot be
reached: an error line says so, as for every command); 2 for a usage problem (no such file,
build output or image, a key that is no ECDSA P-256 public key).

\b
Examples:
  enclave-build verify-provenance out/ --key provenance.pub
  enclave-build verify-provenance provenance.dsse.json --image out/ --key provenance.pub
  enclave-build verify-provenance registry.example.com/face@sha256:... --key provenance.pub
""",
)
@click.argument("target", metavar="IMAGE|FILE")
@click.option(
    "--key",
    "key",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The provenance key's public half (PEM, ECDSA P-256).",
)
@click.option(
    "--image",
    metavar="DIR|REF",
    help="The image a provenance FILE is about (default: the build output holding it).",
)
@click.option(
    "--via",
    type=click.Choice(["cosign", "referrers"]),
    default="cosign",
    show_default=True,
    help="For a registry IMAGE: find the provenance through cosign's .att tag or the OCI "
    "referrers (the API, else the fallback tag).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print as JSON: holds, image, mr_enclave, checked, problems.",
)
def verify_provenance(target: str, key: Path, image: str | None, via: str, as_json: bool) -> None:
    """Check a build's signed provenance: its DSSE signature, that its subject is the image's
    manifest digest, that the image's SBOM and LibOS manifest have the recorded digests, and
    that the enclave identity is the one in the image's SIGSTRUCT. Offline for a file or build
    output; a registry IMAGE is pulled with the provenance attached to it."""
    from ..provenance import verify_provenance as verify

    with errors():
        result = verify(target, key, image, via)
    prov = result.provenance
    if as_json:
        print_json(
            {
                "holds": result.holds,
                "image": prov.image_digest if prov else None,
                "mr_enclave": prov.identity.mr_enclave if prov else None,
                "checked": result.checked,
                "problems": result.problems,
            }
        )
    else:
        for line in result.checked:
            click.echo(f"ok    {line}")
        for line in result.problems:
            click.echo(f"FAIL  {line}")
        click.echo("provenance holds" if result.holds else "provenance does NOT hold")
    sys.exit(0 if result.holds else 1)
