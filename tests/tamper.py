"""Tamper with a build's image the way an attacker who can write the build directory would:
change or add files in the image's layers, then fix up everything that is not signed -- each
rewritten layer's digest, size and diff_id, the config, the manifest, index.json, and
measurements.json's ``image.digest`` -- so that only the enclave's own identity can tell."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

Edit = bytes | Callable[[bytes], bytes]


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return digest, len(data)


def _members(raw: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw)), mode="r:") as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]


def _name(member: tarfile.TarInfo) -> str:
    return member.name.lstrip("./").rstrip("/")


def tamper(out: Path, edits: Mapping[str, Edit], *, repoint: bool = True) -> str:
    """Apply *edits* (image path -> new bytes, or a function of the old bytes) to the image in
    OUT/oci: a path is changed in the topmost layer that holds it; a path no layer holds is
    added to the top layer (its directory must exist in the image). Returns the new manifest
    digest, which measurements.json then names (unless *repoint* is false)."""
    layout = out / "oci"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    layers = [_members(_blob(layout, d["digest"]).read_bytes()) for d in manifest["layers"]]
    changed: set[int] = set()
    for path, edit in edits.items():
        want = path.lstrip("/")
        where = next(
            (
                i
                for i in reversed(range(len(layers)))
                if any(_name(m) == want and m.isfile() for m, _ in layers[i])
            ),
            None,
        )
        if where is None:
            if callable(edit):
                raise AssertionError(f"{path}: not in any layer, nothing to edit")
            info = tarfile.TarInfo(want)
            info.mode, info.uid, info.gid = 0o644, 0, 0
            layers[-1].append((info, edit))
            changed.add(len(layers) - 1)
            continue
        members = layers[where]
        for position, (member, data) in enumerate(members):
            if _name(member) == want and member.isfile():
                new = edit(data or b"") if callable(edit) else edit
                members[position] = (member, new)
        changed.add(where)
    for i in sorted(changed):
        tar_buf = io.BytesIO()
        with tarfile.open(fileobj=tar_buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for member, data in layers[i]:
                if data is not None:
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
                else:
                    tar.addfile(member)
        raw = tar_buf.getvalue()
        digest, size = _put(layout, gzip.compress(raw, mtime=0))
        manifest["layers"][i].update(digest=digest, size=size)
        config["rootfs"]["diff_ids"][i] = "sha256:" + hashlib.sha256(raw).hexdigest()
    digest, size = _put(layout, json.dumps(config).encode())
    manifest["config"].update(digest=digest, size=size)
    digest, size = _put(layout, json.dumps(manifest).encode())
    index["manifests"][0].update(digest=digest, size=size)
    (layout / "index.json").write_text(json.dumps(index))
    if repoint:
        measurements = out / "measurements.json"
        data = json.loads(measurements.read_text())
        data["image"]["digest"] = digest
        measurements.write_text(json.dumps(data, indent=2))
    return digest


def replace_text(old: str, new: str) -> Callable[[bytes], bytes]:
    def edit(data: bytes) -> bytes:
        text = data.decode()
        assert old in text, f"{old!r} not found"
        return text.replace(old, new, 1).encode()

    return edit


def append(code: str) -> Callable[[bytes], bytes]:
    return lambda data: data + code.encode()
