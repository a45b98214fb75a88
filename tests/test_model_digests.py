"""The model files a plan ships, one list for the SBOM (hence the provenance) and verify-build:
an OpenVINO IR named by its graph ships its weights beside it, and both are model files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from enclave_build.builder.build import load, make_plan
from enclave_build.builder.model_digests import model_digests, plan_model_files


def _plan(tmp_path: Path, signing_key: Path):
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / "face.xml").write_text("<net name='face'/>\n")
    (ir / "face.bin").write_bytes(bytes(range(256)))
    spec = tmp_path / "spec.toml"
    spec.write_text(
        '[service]\nname = "ov"\nframework = "openvino"\n\n'
        f'[[models]]\nname = "face"\npath = "{ir / "face.xml"}"\nencrypt = false\n\n'
        f'[signing]\nkey = "{signing_key}"\n'
    )
    loaded, registry = load(spec)
    return make_plan(loaded, registry), ir


def test_an_ir_graph_and_the_weights_beside_it_are_both_model_files(tmp_path, signing_key):
    plan, ir = _plan(tmp_path, signing_key)
    digests = model_digests(plan)
    assert [(d.model, d.version, d.path) for d in digests] == [
        ("face", "1", "/models/face/1/face.bin"),
        ("face", "1", "/models/face/1/face.xml"),
    ]
    for d, name in zip(digests, ("face.bin", "face.xml"), strict=True):
        assert d.source == ir / name
        assert d.sha256 == hashlib.sha256((ir / name).read_bytes()).hexdigest()
    # the server configuration beside the models is none of them
    assert all(f.path.count("/") >= 4 for f in plan_model_files(plan))
    assert not any(f.encrypted for f in plan_model_files(plan))
