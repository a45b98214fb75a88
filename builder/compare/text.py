"""A :class:`BuildDiff` as the lines ``enclave-build diff`` prints: ``identical`` for two
identical builds; otherwise whether MRENCLAVE, MRSIGNER and the image differ, then each
difference, grouped by what it is."""

from __future__ import annotations

import json
from typing import Any

from .result import BuildDiff, FileChange, ValueChange

_TITLES = {
    "identity": "identity",
    "manifest": "manifest keys (measured)",
    "trusted_files": "trusted files (measured)",
    "libos": "LibOS (measured with the manifest)",
    "sigstruct": "SIGSTRUCT",
    "occlum_config": "Occlum.json (measured)",
    "image_config": "image config (not measured)",
    "image_files": "image files outside the measurement",
    "inputs": "build inputs (provenance)",
}
_ORDER = (
    "identity",
    "manifest",
    "trusted_files",
    "libos",
    "sigstruct",
    "occlum_config",
    "inputs",
    "image_config",
    "image_files",
)
#: Longer values are cut in text output (--json has them whole).
_WIDTH = 120


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3] + "..."


def _value_line(item: ValueChange) -> str:
    name = f"{item.spec_key} ({item.key})" if item.spec_key else item.key
    if item.change == "added":
        return f"+ {name} = {_value(item.b)}"
    if item.change == "removed":
        return f"- {name} = {_value(item.a)}"
    return f"~ {name}: {_value(item.a)} -> {_value(item.b)}"


def _package(name: str | None) -> str:
    return f" [{name}]" if name else ""


def _file_line(item: FileChange) -> list[str]:
    where = (
        item.path
        if item.image_path in ("", item.path)
        else (f"{item.path} (image {item.image_path})")
    )
    if item.change == "added":
        return [f"+ {where} {item.b_sha256}{_package(item.b_package)}"]
    if item.change == "removed":
        return [f"- {where} {item.a_sha256}{_package(item.a_package)}"]
    return [
        f"~ {where}",
        f"    a {item.a_sha256}{_package(item.a_package)}",
        f"    b {item.b_sha256}{_package(item.b_package)}",
    ]


def _identity_line(what: str, equal: bool | None, a: str | None, b: str | None) -> str:
    if equal is None:
        return f"{what:<11} not compared (a: {a or 'unknown'}, b: {b or 'unknown'})"
    if equal:
        return f"{what:<11} equal {a}"
    return f"{what:<11} DIFFERS: a {a}, b {b}"


def _unexplained_mr_enclave(diff: BuildDiff) -> str:
    """Why MRENCLAVE differs though no measured input compared here does."""
    if "provenance" not in (diff.a.kind, diff.b.kind):
        return "MRENCLAVE differs, but no measured input compared here does: see the notes"
    manifests = [item.key for item in diff.inputs if item.key.startswith("manifest ")]
    recorded = (
        f"as does the digest of the {manifests[0]} it is measured from (above)"
        if manifests
        else "though the inputs a provenance records do not show why"
    )
    return (
        f"MRENCLAVE differs, {recorded}; a provenance file holds digests, not the manifest or "
        "the files: diff the build outputs or images to see which measured input differs"
    )


def render(diff: BuildDiff) -> list[str]:
    if diff.identical:
        return [
            "identical",
            f"mr_enclave  {diff.a.mr_enclave}",
            f"mr_signer   {diff.a.mr_signer}",
            f"image       {diff.a.image_digest or 'not compared'}",
            *[f"note: {note}" for note in diff.notes],
        ]
    lines = [
        "different",
        _identity_line("mr_enclave", diff.mr_enclave_equal, diff.a.mr_enclave, diff.b.mr_enclave),
        _identity_line("mr_signer", diff.mr_signer_equal, diff.a.mr_signer, diff.b.mr_signer),
        _identity_line("image", diff.image_equal, diff.a.image_digest, diff.b.image_digest),
    ]
    for name in _ORDER:
        items = getattr(diff, name)
        if not items:
            continue
        lines.append(f"{_TITLES[name]}:")
        for item in items:
            shown = _file_line(item) if isinstance(item, FileChange) else [_value_line(item)]
            lines += [f"  {line}" for line in shown]
    if diff.mr_enclave_equal is False and not (
        diff.manifest or diff.trusted_files or diff.libos or diff.occlum_config
    ):
        lines.append(_unexplained_mr_enclave(diff))
    lines += [f"note: {note}" for note in diff.notes]
    return lines


__all__ = ["render"]
