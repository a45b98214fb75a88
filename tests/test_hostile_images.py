"""Hostile base images: layers, layouts and archives that try to read or write the build
machine's files outside the cache. Every such input stays confined or is refused with an
ImageError naming the layer and member."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from enclave_build.builder.image.oci import (
    OCI_CONFIG,
    OCI_LAYER,
    BlobStore,
    Descriptor,
    ImageError,
    canonical_json,
    check_digest,
    oci_manifest,
    sha256_digest,
)
from enclave_build.builder.image.sources import read_docker_archive, read_oci_layout
from enclave_build.builder.image.unpack import apply_layer


def layer(*entries) -> io.BytesIO:
    """A tar from (name, kind, arg) entries: kind file (arg = bytes), dir, sym / lnk (arg =
    link name), chr, fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, *arg in entries:
            info = tarfile.TarInfo(name)
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                info.size = len(arg[0])
                tar.addfile(info, io.BytesIO(arg[0]))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "lnk": tarfile.LNKTYPE,
                "chr": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            if arg:
                info.linkname = arg[0]
            tar.addfile(info)
    buf.seek(0)
    return buf


@pytest.fixture
def box(tmp_path):
    """(root, outside): an unpack root and, next to it, a host directory with a file in it
    that no layer may touch."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("host file")
    return root, outside


def snapshot(directory: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for path in sorted(directory.rglob("*")):
        out[str(path.relative_to(directory))] = (
            f"-> {os.readlink(path)}"
            if path.is_symlink()
            else path.read_bytes()
            if path.is_file()
            else "dir"
        )
    return out


def test_symlink_to_a_host_directory_cannot_be_written_through(box):
    root, outside = box
    before = snapshot(outside)
    apply_layer(root, layer(("a", "sym", str(outside)), ("a/job", "file", b"* * * * * root x")))
    assert snapshot(outside) == before  # nothing written on the host
    inner = root / str(outside).lstrip("/") / "job"  # ... but inside the root, as the
    assert inner.read_bytes() == b"* * * * * root x"  # image would see it


def test_symlink_loop_cannot_turn_into_a_host_write(box):
    """Resolution inside the root fails (a loop), and the old applier then fell back to the raw
    path, whose mkdir(parents=True) and open() followed `a` to the host directory."""
    root, outside = box
    before = snapshot(outside)
    mirror = str(outside).lstrip("/")  # the same path, inside the root
    with pytest.raises(ImageError, match="too many levels of symbolic links"):
        apply_layer(
            root,
            layer(
                (f"{mirror}/l", "sym", "l"),
                ("a", "sym", str(outside)),
                ("a/l/job", "file", b"* * * * * root x"),
            ),
            "base layer 0",
        )
    assert snapshot(outside) == before
    assert not (outside / "l").exists()


def test_relative_symlink_cannot_climb_out_of_the_root(box):
    root, outside = box
    before = snapshot(outside)
    apply_layer(
        root,
        layer(
            ("b", "sym", "../../../../outside"),
            ("b/victim", "file", b"x"),
            ("c", "sym", "../outside/victim"),
            ("c", "file", b"replaced"),
        ),
    )
    assert snapshot(outside) == before
    assert (root / "outside" / "victim").read_bytes() == b"x"
    assert (root / "c").read_bytes() == b"replaced" and not (root / "c").is_symlink()


def test_symlinked_parent_in_a_lower_layer(box):
    root, outside = box
    apply_layer(root, layer(("lib", "sym", str(outside))))
    before = snapshot(outside)
    apply_layer(root, layer(("lib/libevil.so", "file", b"ELF"), ("lib/.wh.victim", "file", b"")))
    assert snapshot(outside) == before


@pytest.mark.parametrize(
    "entries,message",
    [
        ([("../escape", "file", b"x")], "path contains '..'"),
        ([("a/../../escape", "file", b"x")], "path contains '..'"),
        ([("l", "lnk", "/etc/passwd")], "hard link target '/etc/passwd' is absolute"),
        ([("l", "lnk", "../outside/victim")], "hard link target '../outside/victim' contains '..'"),
        ([("d", "dir"), ("d/.wh..", "file", b"")], "whiteout names '.'"),
        ([("d", "dir"), ("d/.wh...", "file", b"")], "whiteout names '..'"),
        ([(".wh.", "file", b"")], "whiteout names ''"),
        ([("f", "file", b"x"), ("f/g", "file", b"y")], r"component \('f'\) is not a directory"),
        ([("l", "lnk", "missing")], "does not exist"),
    ],
)
def test_refused_members_name_the_layer_and_member(box, entries, message):
    root, outside = box
    before = snapshot(outside)
    with pytest.raises(ImageError, match=message) as info:
        apply_layer(root, layer(*entries), "base layer 3")
    assert str(info.value).startswith("base layer 3: member ")
    assert snapshot(outside) == before and outside.exists()


def test_hard_link_through_a_symlink_to_the_host_is_refused(box):
    root, outside = box
    with pytest.raises(ImageError, match="does not exist"):
        apply_layer(root, layer(("a", "sym", str(outside)), ("l", "lnk", "a/victim")))
    assert os.stat(outside / "victim").st_nlink == 1


def test_whiteout_of_dotdot_does_not_remove_the_parent(box):
    root, outside = box
    with pytest.raises(ImageError):
        apply_layer(root, layer((".wh..", "file", b"")))
    with pytest.raises(ImageError):
        apply_layer(root, layer((".wh...", "file", b"")))
    assert root.is_dir() and (outside / "victim").exists()


def test_device_nodes_are_not_created_but_hide_what_was_below(box):
    root, _ = box
    apply_layer(root, layer(("dev", "dir"), ("dev/console", "file", b"lower")))
    apply_layer(root, layer(("dev/console", "chr"), ("dev/null", "chr"), ("dev/fifo", "fifo")))
    assert sorted(os.listdir(root / "dev")) == []


def test_ordinary_layers_still_apply(box):
    root, _ = box
    apply_layer(
        root,
        layer(
            ("usr", "dir"),
            ("usr/lib", "dir"),
            ("usr/lib/a.so", "file", b"A"),
            ("lib", "sym", "usr/lib"),
            ("etc", "dir"),
            ("etc/x", "file", b"X"),
            ("etc/y", "file", b"Y"),
        ),
    )
    apply_layer(
        root,
        layer(
            ("lib/b.so", "file", b"B"),
            ("usr/lib/c.so", "lnk", "usr/lib/a.so"),
            ("etc/.wh.x", "file", b""),
            ("opt", "dir"),
            ("opt/o", "file", b"O"),
        ),
    )
    apply_layer(root, layer(("opt/.wh..wh..opq", "file", b""), ("opt/n", "file", b"N")))
    assert (root / "usr/lib/b.so").read_bytes() == b"B"
    assert os.path.samefile(root / "usr/lib/c.so", root / "usr/lib/a.so")
    assert sorted(os.listdir(root / "etc")) == ["y"]
    assert sorted(os.listdir(root / "opt")) == ["n"]


# ------------------------------------------------------------------ digests name no paths


HOSTILE_DIGESTS = [
    "sha256:" + "/" * 54 + "etc/passwd",
    "sha256:" + "../" * 21 + "x",
    "sha256:" + "A" * 64,
    "sha256:" + "a" * 63,
    "sha512:" + "a" * 64,
    5,
]


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
def test_blob_store_accepts_only_lowercase_hex_digests(tmp_path, digest):
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(ImageError, match="invalid digest"):
        store.read(digest)
    with pytest.raises(ImageError, match="invalid digest"):
        check_digest(digest)


@pytest.mark.parametrize("digest", HOSTILE_DIGESTS[:3])
def test_oci_layout_index_with_a_path_as_digest(tmp_path, digest):
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest,
                        "size": 10,
                    }
                ],
            }
        )
    )
    with pytest.raises(ImageError, match="invalid digest"):
        read_oci_layout(layout, None, BlobStore(tmp_path / "store"), "oci:layout")


def test_oci_layout_manifest_with_a_path_as_layer_digest(tmp_path):
    layout = tmp_path / "layout"
    local = BlobStore(layout / "blobs")
    config = canonical_json({"rootfs": {"type": "layers", "diff_ids": []}})
    config_desc = Descriptor(OCI_CONFIG, local.put_bytes(config), len(config))
    manifest = json.loads(oci_manifest(config_desc, []))
    manifest["layers"] = [{"mediaType": OCI_LAYER, "digest": HOSTILE_DIGESTS[0], "size": 1}]
    raw = canonical_json(manifest)
    digest = local.put_bytes(raw)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": digest,
                        "size": len(raw),
                    }
                ],
            }
        )
    )
    with pytest.raises(ImageError, match="layer 0: invalid digest"):
        read_oci_layout(layout, None, BlobStore(tmp_path / "store"), "oci:layout")


# ------------------------------------------------------------------ docker-archive


def _docker_archive(path: Path, manifest, files: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


CONFIG = canonical_json({"rootfs": {"type": "layers", "diff_ids": []}})


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"Config": "/etc/passwd", "Layers": []}, "Config '/etc/passwd' points outside"),
        ({"Config": "../../../../etc/passwd", "Layers": []}, "points outside"),
        (
            {"Config": "c.json", "Layers": ["/etc/shadow"]},
            r"Layers\[0\] '/etc/shadow' points outside",
        ),
        ({"Config": "c.json", "Layers": ["a/../../x"]}, "points outside"),
        ({"Config": "c.json", "Layers": ["missing.tar"]}, "is not a file in the archive"),
        ({"Config": 7, "Layers": []}, "is not a file name"),
        ({"Config": "c.json"}, "lacks Config or Layers"),
    ],
)
def test_docker_archive_manifest_cannot_name_host_files(tmp_path, entry, message):
    archive = _docker_archive(tmp_path / "save.tar", [entry], {"c.json": CONFIG})
    store = BlobStore(tmp_path / "store")
    with pytest.raises(ImageError, match=message):
        read_docker_archive(archive, store, "docker-archive:save.tar")
    assert sha256_digest(Path("/etc/passwd").read_bytes()) not in {
        "sha256:" + p.name for p in (tmp_path / "store" / "sha256").iterdir()
    }


def test_docker_archive_symlink_out_of_the_archive_is_refused(tmp_path):
    archive = tmp_path / "save.tar"
    with tarfile.open(archive, "w") as tar:
        data = json.dumps([{"Config": "c.json", "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("c.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ImageError):
        read_docker_archive(archive, BlobStore(tmp_path / "store"), "docker-archive:save.tar")


def test_docker_archive_still_reads(tmp_path):
    layer_bytes = layer(("hello", "file", b"hi")).getvalue()
    archive = _docker_archive(
        tmp_path / "save.tar",
        [{"Config": "c.json", "Layers": ["l/layer.tar"]}],
        {"c.json": CONFIG, "l/layer.tar": layer_bytes},
    )
    image = read_docker_archive(archive, BlobStore(tmp_path / "store"), "docker-archive:x")
    assert [d.digest for d in image.layers] == [sha256_digest(layer_bytes)]
