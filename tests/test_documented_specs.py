"""Specs a user might write that the docs call valid (or invalid), built as a user would.

Found by building such specs on the real Gramine base and booting them with gramine-direct:

- openvino ``mode = "python"`` with a model *directory* (the layout of examples/openvino: an IR
  ``.xml`` + ``.bin``) built, but the server handed the directory to OpenVINO, which read it as
  a TensorFlow SavedModel and refused to start; naming the ``.xml`` itself shipped no ``.bin``.
  The plugin now points the server at the one model file of a directory and ships an IR's
  weights with its graph; a directory with no model or several is a located spec error.
- a tflite model given as a directory built an image whose server could never open it.
- ``[secrets] server`` with a port above 65535 was accepted.
- an ``[enclave] size`` too small for the enclave failed without the spec's file, line and key.
- the same spec built from another directory, with absolute instead of relative paths or
  through a symlinked directory must give the same MRENCLAVE and image digest.

The last test boots the openvino multi-model shape under the real LibOS (gramine-direct) and
compares each answer with a direct OpenVINO call; it skips (with the reason) without
../shared/gramine or root, and fails instead under CI=true, like tests/test_serving_real_libos.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from enclave_build.builder.build import build, load, make_plan
from enclave_build.builder.spec import SpecError
from enclave_build.plugin import SERVER_CONFIG

from . import serving_env as se
from .conftest import tflite_bytes


def _spec(directory: Path, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "spec.toml"
    path.write_text(text)
    return path


def _ir(directory: Path, stem: str = "face") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stem}.xml").write_text("<net name='face'/>\n")
    (directory / f"{stem}.bin").write_bytes(bytes(range(256)))
    return directory


def _openvino(models: str, signing_key: Path) -> str:
    return (
        f'[service]\nname = "ov"\nframework = "openvino"\n\n{models}\n'
        f'[signing]\nkey = "{signing_key}"\n'
    )


def _model(name: str, path: Path | str) -> str:
    return f'[[models]]\nname = "{name}"\npath = "{path}"\nencrypt = false\n\n'


def _server_config(plan) -> dict:
    data = next(f.data for f in plan.image_files() if f.dest == SERVER_CONFIG)
    return json.loads(data)


def _plan(spec: Path):
    loaded, registry = load(spec)
    return make_plan(loaded, registry)


def test_openvino_python_mode_points_the_server_at_the_model_file_of_a_directory(
    tmp_path, signing_key
):
    ir = _ir(tmp_path / "ir")
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"\x08\x07:\x00")  # ir_version 7, an empty graph
    plan = _plan(
        _spec(tmp_path / "p", _openvino(_model("face", ir) + _model("cls", onnx), signing_key))
    )
    paths = {m["name"]: m["path"] for m in _server_config(plan)["models"]}
    assert paths == {"face": "/models/face/1/face.xml", "cls": "/models/cls/1/model.onnx"}


def test_openvino_ir_graph_named_as_path_ships_its_weights(tmp_path, signing_key):
    ir = _ir(tmp_path / "ir")
    models = (
        f'[[models]]\nname = "face"\npath = "{ir / "face.xml"}"\nencrypt = true\n\n'
        f'[secrets]\nserver = "localhost:4433"\nca = "{signing_key}"\n'
    )
    plan = _plan(_spec(tmp_path / "p", _openvino(models, signing_key)))
    shipped = {f.dest: f for f in plan.files if f.dest.startswith("/models/")}
    assert sorted(shipped) == ["/models/face/1/face.bin", "/models/face/1/face.xml"]
    # the weights are encrypted under the graph's key, in the graph's encrypted mount
    assert {f.kind.name for f in shipped.values()} == {"ENCRYPTED"}
    assert {f.key_name for f in shipped.values()} == {"ov-key"}
    assert [m.path for m in plan.mounts if m.path.startswith("/models")] == ["/models/face/1"]
    assert _server_config(plan)["models"][0]["path"] == "/models/face/1/face.xml"


def test_openvino_ovms_mode_ships_the_weights_of_a_named_graph(tmp_path, signing_key):
    ir = _ir(tmp_path / "ir")
    text = _openvino(_model("face", ir / "face.xml"), signing_key) + '[openvino]\nmode = "ovms"\n'
    plan = _plan(_spec(tmp_path / "p", text))
    assert sorted(f.dest for f in plan.files if f.dest.startswith("/models/")) == [
        "/models/face/1/face.bin",
        "/models/face/1/face.xml",
    ]


@pytest.mark.parametrize(
    "layout, message",
    [
        ("empty", "no model in the directory"),
        ("two", "holds several .xml models (a.xml, face.xml); name the one to serve as path"),
        ("lonely", "its weights face.bin are not next to it"),
        ("nobin", "its weights face.bin are not next to it"),
    ],
)
def test_openvino_models_the_runtime_cannot_open_are_located_spec_errors(
    tmp_path, signing_key, layout, message
):
    if layout == "empty":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "README").write_text("no model here\n")
        path = tmp_path / "m"
    elif layout == "two":
        path = _ir(tmp_path / "m")
        shutil.copy(path / "face.xml", path / "a.xml")
    else:
        _ir(tmp_path / "m")
        (tmp_path / "m" / "face.bin").unlink()
        path = tmp_path / "m" / ("face.xml" if layout == "lonely" else "")
    spec = _spec(tmp_path / "p", _openvino(_model("face", path), signing_key))
    with pytest.raises(SpecError) as info:
        _plan(spec)
    text = str(info.value)
    assert "spec.toml:7: models[0].path: " in text, text  # file, line, key
    assert message in text, text


def test_tflite_model_directory_is_a_located_spec_error(tmp_path, signing_key):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.tflite").write_bytes(tflite_bytes())
    spec = _spec(
        tmp_path / "p",
        '[service]\nname = "t"\nframework = "tflite"\n\n'
        + _model("m", tmp_path / "models")
        + f'[signing]\nkey = "{signing_key}"\n',
    )
    with pytest.raises(
        SpecError,
        match=r"spec\.toml:7: models\[0\]\.path: .* is a directory; "
        r"the tflite framework serves one \.tflite file",
    ):
        _plan(spec)


@pytest.mark.parametrize(
    "framework, extra",
    [
        ("tflite", ""),
        ("tfserving", ""),
        ("openvino", ""),
        ("openvino", '[openvino]\nmode = "ovms"\n'),
    ],
)
def test_a_model_server_without_models_is_a_spec_error(tmp_path, signing_key, framework, extra):
    spec = _spec(
        tmp_path / "p",
        f'[service]\nname = "t"\nframework = "{framework}"\n\n'
        f'[signing]\nkey = "{signing_key}"\n{extra}',
    )
    with pytest.raises(
        SpecError,
        match=rf"spec\.toml: models: framework {framework} serves "
        r"models, and the spec has no \[\[models\]\] table",
    ):
        _plan(spec)


@pytest.mark.parametrize("port", ["0", "65536", "99999"])
def test_secret_server_port_out_of_range_is_refused(tmp_path, signing_key, port):
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    spec = _spec(
        tmp_path / "p",
        f'[service]\nname = "t"\nframework = "tflite"\n\n'
        f'[[models]]\nname = "m"\npath = "{tmp_path / "m.tflite"}"\n\n'
        f'[secrets]\nserver = "localhost:{port}"\nca = "{signing_key}"\n\n'
        f'[signing]\nkey = "{signing_key}"\n',
    )
    with pytest.raises(SpecError) as info:
        load(spec)
    assert (
        f"spec.toml:10: secrets.server: port {int(port)} of 'localhost:{port}' is out of "
        "range; allowed: 1 to 65535" in str(info.value)
    )


def test_enclave_too_small_names_the_spec_key_and_the_smallest_size(
    tmp_path, standin_root, signing_key
):
    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    text = (
        f'[service]\nname = "t"\nframework = "tflite"\n\n'
        f'[[models]]\nname = "m"\npath = "{tmp_path / "m.tflite"}"\nencrypt = false\n\n'
        f'[enclave]\nsize = "4K"\n\n[signing]\nkey = "{signing_key}"\n'
    )
    spec = _spec(tmp_path / "p", text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave_build",
            "build",
            str(spec),
            "--base",
            f"dir:{standin_root}",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path / "p",
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: spec.toml:11: enclave.size: '4K' is too small for 32 threads" in proc.stderr
    assert not out.exists()
    smallest = proc.stderr.split("at least '")[1].split("'")[0]
    spec.write_text(text.replace('"4K"', f'"{smallest}"'))
    assert build(spec, base=f"dir:{standin_root}").measurements is not None  # it fits


def test_same_spec_from_anywhere_gives_the_same_identity_and_image(
    tmp_path, standin_root, signing_key, monkeypatch
):
    models = tmp_path / "project" / "models"
    models.mkdir(parents=True)
    (models / "face.tflite").write_bytes(tflite_bytes(bytes(300)))
    shutil.copy(signing_key, tmp_path / "project" / "key.pem")
    ca = tmp_path / "project" / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")

    def text(root: str) -> str:
        return (
            f'[service]\nname = "rep"\nframework = "tflite"\n\n'
            f'[[models]]\nname = "secret"\npath = "{root}models/face.tflite"\n\n'
            f'[[models]]\nname = "public"\npath = "{root}models/face.tflite"\n'
            f"encrypt = false\nversion = 2\n\n"
            f'[secrets]\nserver = "localhost:4433"\nca = "{root}ca.pem"\n'
            f'keys_dir = "{root}keys"\n\n'
            f'[signing]\nkey = "{root}key.pem"\n\n[build]\nreproducible = true\n'
        )

    relative = _spec(tmp_path / "project", text(""))
    absolute = _spec(tmp_path / "elsewhere" / "deep", text(f"{tmp_path / 'project'}/"))
    os.symlink(tmp_path / "project", tmp_path / "link")
    results = []
    for spec, cwd in (
        (relative, tmp_path / "project"),
        (relative, Path("/")),
        (absolute, tmp_path),
        (tmp_path / "link" / "spec.toml", tmp_path),
    ):
        monkeypatch.chdir(cwd)
        m = build(
            spec, base=f"dir:{standin_root}", output=tmp_path / f"out{len(results)}"
        ).measurements
        results.append((m.mr_enclave, m.image.digest))
    assert len(set(results)) == 1, results


# --------------------------------------------------------------------------- real LibOS


@pytest.fixture(scope="module")
def real_base(tmp_path_factory) -> Path:
    from .gramine_base import GramineBaseUnavailable, gramine_base

    in_ci = os.environ.get("CI", "").lower() == "true"
    if os.geteuid() != 0:
        if in_ci:
            pytest.fail(
                "gramine-direct needs root (CI=true: the real-LibOS tests must run)", pytrace=False
            )
        pytest.skip("gramine-direct needs root (chroot and bind mounts)")
    try:
        return gramine_base()
    except GramineBaseUnavailable as exc:
        if in_ci:
            pytest.fail(f"CI=true: the real Gramine base is required: {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.mark.integration
def test_openvino_python_mode_ir_directory_and_onnx_serve_under_the_real_libos(
    tmp_path, real_base, signing_key, monkeypatch
):
    """examples/openvino's layout (an IR directory, encrypted) next to an encrypted ONNX model
    with a key of its own and a clear-text IR named by its .xml, booted with gramine-direct."""
    from .models import get_or_skip, ocr_cls_onnx

    graph = get_or_skip("face_detection_ov/face_detection.xml")
    get_or_skip("face_detection_ov/face_detection.bin")
    onnx = ocr_cls_onnx()
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    env = {"XDG_CACHE_HOME": str(cache)}
    keys = se.Keys.make(tmp_path / "keys", signing_key)
    work = tmp_path / "svc"
    work.mkdir()
    ir_dir = work / "face dir"  # a space in the path, too
    shutil.copytree(graph.parent, ir_dir)
    grpc_port, rest_port = se.free_port(), se.free_port()
    spec = se.write_spec(
        work,
        keys,
        service="ovmulti",
        framework="openvino",
        models=[("face_ir", ir_dir, None), ("cls", onnx, "ocr-owner")],
        section=f'[openvino]\nmode = "python"\ninstances = 1\n'
        f"grpc_port = {grpc_port}\nrest_port = {rest_port}\n",
    )
    spec.write_text(
        spec.read_text() + f'\n[[models]]\nname = "face_xml"\npath = "{graph}"\n'
        "encrypt = false\nversion = 4\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "enclave_build",
            "build",
            str(spec),
            "--base",
            f"dir:{real_base}",
            "--output",
            str(work / "out"),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    config = se.secret_server_config(keys, [work / "out"])
    server = se.start_secret_server(config)
    try:
        run, served = se.start_run(work / "out", keys, env=env, timeout=300)
        try:
            assert served is not None, run.output.text
            assert "mode gramine-direct" in run.output.text
            sys.modules.setdefault("openvino_telemetry", None)
            import openvino as ov

            core = ov.Core()
            face = np.ascontiguousarray(se.face_input().transpose(0, 3, 1, 2))  # NCHW IR
            crops = np.random.default_rng(3).random((2, 3, 48, 192), dtype=np.float32)
            for name, path, tensor in (
                ("face_ir", graph, face),
                ("face_xml", graph, face),
                ("cls", onnx, crops),
            ):
                compiled = core.compile_model(
                    core.read_model(str(path)),
                    "CPU",
                    {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"},
                )
                direct = compiled(tensor)
                expected = {o.get_any_name(): direct[o] for o in compiled.outputs}
                by_grpc, by_http = se.infer_both(
                    served, name, compiled.inputs[0].get_any_name(), tensor, list(expected)
                )
                for o in expected:
                    assert np.array_equal(by_grpc[o], expected[o]), (name, o)
                    assert np.array_equal(by_http[o], expected[o]), (name, o)
        finally:
            code = run.stop()
        assert code == 0, run.output.text
    finally:
        server.stop()
    released = sorted(a["secret"] for a in se.audit(config) if a.get("decision") == "allow")
    assert released == ["ocr-owner", "ovmulti-key"]


def test_debug_enclave_with_encrypted_models_is_told_it_gets_no_keys(
    tmp_path, standin_root, signing_key
):
    """The secret server refuses every DEBUG enclave (README: allow_debug is refused
    outright), so the build's warning must not suggest that an allowance exists."""
    from enclave_build.builder.build import DebugEnclaveWarning

    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    ca = tmp_path / "ca.pem"  # a certificate (a private key there is refused: it would ship)
    ca.write_text("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n")
    spec = _spec(
        tmp_path / "p",
        f'[service]\nname = "t"\nframework = "tflite"\n\n'
        f'[[models]]\nname = "m"\npath = "{tmp_path / "m.tflite"}"\n\n'
        "[enclave]\ndebug = true\n\n"
        f'[secrets]\nserver = "localhost:4433"\nca = "{ca}"\n\n'
        f'[signing]\nkey = "{signing_key}"\n',
    )
    with pytest.warns(
        DebugEnclaveWarning,
        match="refuses every DEBUG enclave, so this one will never get its keys",
    ):
        result = build(spec, base=f"dir:{standin_root}")
    assert result.measurements.debug is True
