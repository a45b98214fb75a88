"""CLI for ``enclave-build cache ls|prune|clean``: parses, calls :mod:`builder.cache_admin`,
prints; registered by :func:`register`."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import click

from ..errors import UsageError
from .output import errors, print_json

if TYPE_CHECKING:
    from ..cache_admin import Pruned

_LS_KEYS = (
    "Print as JSON: root, blobs {count, bytes, shared_bytes, items [{digest, size, "
    "last_used, shared}]}, rootfs {count, bytes, keep, items [{chain_id, size, "
    "last_used}]}, limits {max_size, max_age_days}."
)
_PRUNE_KEYS = (
    "Print as JSON: removed (digests), freed, kept, kept_bytes, rootfs_freed, records_removed."
)


def _ago(seconds: float) -> str:
    age = max(0.0, time.time() - seconds)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if age >= size:
            n = int(age // size)
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "just now"


@click.group(
    epilog="""\b
Example:
  enclave-build cache ls
  enclave-build cache prune --max-size 5G --max-age 7
  enclave-build cache clean
\b
Builds bound the blob cache themselves after they finish (10 GiB, 30 days by default;
ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE and ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE change that).
"""
)
def cache() -> None:
    """Show and bound enclave-build's caches: image blobs, unpacked images, layer records and
    file digests (under $XDG_CACHE_HOME/enclave-build, default ~/.cache/enclave-build)."""


@cache.command(
    "ls",
    epilog="""\b
Example:
  enclave-build cache ls
  enclave-build cache ls --blobs --json
""",
)
@click.option(
    "--blobs",
    "show_blobs",
    is_flag=True,
    help="Also list every blob: digest, size, last use, and whether an output shares it.",
)
@click.option("--json", "as_json", is_flag=True, help=_LS_KEYS)
def cache_ls(show_blobs: bool, as_json: bool) -> None:
    """List what the caches hold: blobs (and how much of that is shared with build outputs,
    which pruning never removes), unpacked images, and the limits in force."""
    from ..cache_admin import cache_report
    from ..image.blob_cache import human

    report = cache_report()
    if as_json:
        print_json(report.to_json(), sort_keys=True)
        return
    limits = report.limits
    click.echo(
        f"blobs      {report.root / 'blobs'}: {len(report.blobs)} blob"
        f"{'s' if len(report.blobs) != 1 else ''}, {human(report.blob_bytes)} "
        f"({human(report.shared_bytes)} shared with outputs); limits "
        f"{human(limits.max_size)}, {limits.max_age_days:g} days"
    )
    if show_blobs:
        for blob in report.blobs:
            click.echo(
                f"  {blob.digest[:19]}  {human(blob.size):>10}  used "
                f"{_ago(blob.last_used)}{'  (in an output)' if blob.shared else ''}"
            )
    rootfs_bytes = sum(e.size for e in report.rootfs)
    click.echo(
        f"unpacked   {report.root / 'rootfs'}: {len(report.rootfs)} image"
        f"{'s' if len(report.rootfs) != 1 else ''}, {human(rootfs_bytes)}; keeps the "
        f"{report.rootfs_keep} most recently used"
    )


def _print_pruned(pruned: Pruned, as_json: bool) -> None:
    from ..image.blob_cache import human

    if as_json:
        print_json(pruned.to_json(), sort_keys=True)
        return
    click.echo(
        f"removed {len(pruned.blobs.removed)} blob"
        f"{'s' if len(pruned.blobs.removed) != 1 else ''}; {human(pruned.freed)} freed "
        f"in all; {pruned.blobs.kept} blob{'s' if pruned.blobs.kept != 1 else ''} "
        f"({human(pruned.blobs.kept_bytes)}) kept"
    )


@cache.command(
    "prune",
    epilog="""\b
Example:
  enclave-build cache prune                          # the limits in force (see cache ls)
  enclave-build cache prune --max-size 5G --max-age 7 --json
""",
)
@click.option(
    "--max-size",
    metavar="SIZE",
    help="Keep at most this much of blobs only the "
    "cache holds, e.g. 5G or 500M (default: ENCLAVE_BUILD_BLOB_CACHE_MAX_SIZE or "
    "10G).",
)
@click.option(
    "--max-age",
    metavar="DAYS",
    help="Remove blobs unused for longer (default: ENCLAVE_BUILD_BLOB_CACHE_MAX_AGE or 30).",
)
@click.option("--json", "as_json", is_flag=True, help=_PRUNE_KEYS)
def cache_prune(max_size: str | None, max_age: str | None, as_json: bool) -> None:
    """Remove blobs unused for longer than the maximum age, then the least recently used
    until the rest fits the maximum size; never a blob a build output shares, nor any while a
    build runs (exit 1). Unpacked images beyond the most recently used are removed too."""
    from ..cache_admin import prune_caches
    from ..image.blob_cache import Limits, parse_days, parse_size

    with errors():
        limits = Limits.from_env()
        try:
            size = parse_size(max_size) if max_size is not None else limits.max_size
        except ValueError as exc:
            raise UsageError(f"--max-size: {exc}") from None
        try:
            age = parse_days(max_age) if max_age is not None else limits.max_age_days
        except ValueError as exc:
            raise UsageError(f"--max-age: {exc}") from None
        pruned = prune_caches(Limits(size, age), log=lambda line: click.echo(line, err=True))
    _print_pruned(pruned, as_json)


@cache.command(
    "clean",
    epilog="""\b
Example:
  enclave-build cache clean
  enclave-build cache clean --json
""",
)
@click.option("--json", "as_json", is_flag=True, help=_PRUNE_KEYS)
def cache_clean(as_json: bool) -> None:
    """Empty the caches: every blob, layer record and unpacked image no running build or run
    holds, and the file-digest cache. Build outputs keep their own blobs. Refused (exit 1)
    while a build runs."""
    from ..cache_admin import clean_caches

    with errors():
        pruned = clean_caches(log=lambda line: click.echo(line, err=True))
    _print_pruned(pruned, as_json)
