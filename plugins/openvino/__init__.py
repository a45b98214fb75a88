"""OpenVINO framework plugin, in two modes.

- ``mode = "python"`` (default): enclave-build's own model server (KServe v2 over gRPC and
  REST) with its ``openvino`` backend (the OpenVINO runtime from PyPI: IR, ONNX and TFLite
  files) on the gramine-python base. The server fetches its own keys inside the enclave, so
  every model may have its own key.
- ``mode = "ovms"``: the real OpenVINO Model Server binary (``/ovms/bin/ovms``) from the
  gramine-openvino base. Models are laid out as OVMS expects (``/models/NAME/VERSION/``); one
  model is passed on the command line, several through a generated ``config.json``. Keys come
  from Gramine's provisioning constructor: one key per service.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from enclave_build.plugin import (
    MODEL_ROOT,
    EnclaveBuildError,
    Field,
    FileKind,
    Framework,
    ModelCheck,
    ModelSpec,
    Port,
    Section,
    ServicePlan,
    Spec,
    add_model,
    base_plan,
    hookimpl,
    onnx_problem,
    openvino_ir_problem,
    openvino_ir_state,
    python_server_plan,
    refuse_model_server_keys,
    require_models,
    require_one_key,
    saved_model_problem,
    spec_error,
    tflite_problem,
    tflite_state,
)

BINARY = "/ovms/bin/ovms"
OVMS_LIBS = "/ovms/lib/"
CONFIG_DEST = "/enclave/ovms-config.json"
PYTHON_BASE = "docker-daemon:enclave-build/gramine-python:1.9-3.11"
OVMS_BASE = "docker-daemon:enclave-build/gramine-openvino:1.9-2024.5"

SECTION = Section(
    "openvino",
    "OpenVINO options",
    (
        Field(
            "mode",
            "str",
            'what serves the models: "python" (enclave-build\'s KServe v2 server '
            'on the OpenVINO runtime) or "ovms" (the OpenVINO Model Server binary)',
            default="python",
            choices=("python", "ovms"),
        ),
        Field("grpc_port", "int", "gRPC port", default=9000, minimum=1, maximum=65535),
        Field("rest_port", "int", "REST port", default=8000, minimum=1, maximum=65535),
        Field("target_device", "str", "OpenVINO device", default="CPU", choices=("CPU",)),
        Field(
            "instances",
            "int",
            "python mode: compiled-model instances per model",
            default=2,
            minimum=1,
            maximum=256,
        ),
        Field(
            "threads",
            "int",
            "python mode: inference threads per instance",
            default=1,
            minimum=1,
            maximum=256,
        ),
        Field("extra_args", "list[str]", "ovms mode: more ovms flags", default=[]),
    ),
    owner="openvino",
)


def ovms_config(spec: Spec, target_device: str) -> bytes:
    """OVMS's --config_path file: every model of the spec with its base path and device."""
    config = {
        "model_config_list": [
            {
                "config": {
                    "name": m.name,
                    "base_path": f"{MODEL_ROOT}/{m.name}",
                    "target_device": target_device,
                }
            }
            for m in spec.models
        ]
    }
    return (json.dumps(config, indent=2) + "\n").encode()


def _ovms_plan(spec: Spec, opts) -> ServicePlan:
    require_models(spec, "openvino")
    if spec.tls is not None:
        raise EnclaveBuildError(
            "[tls]: OpenVINO Model Server has no built-in TLS; terminate TLS in front of it "
            '(e.g. an ingress), remove [tls] from the spec, or use mode = "python"'
        )
    require_one_key(spec, 'openvino (mode "ovms")')
    refuse_model_server_keys(spec, 'openvino (mode "ovms")')
    argv = [BINARY, "--port", str(opts["grpc_port"]), "--rest_port", str(opts["rest_port"])]
    result = base_plan(
        spec,
        FRAMEWORK,
        entrypoint=BINARY,
        argv=argv,
        default_base=OVMS_BASE,
        env={"LD_LIBRARY_PATH": "/lib:/ovms/lib:/usr/lib/x86_64-linux-gnu", "HOME": "/tmp"},
        # OpenVINO dlopens its device plugins and frontends from /ovms/lib, so that directory
        # is trusted whole; system libraries come from the ELF closure.
        trusted=[BINARY, OVMS_LIBS],
        ports=[
            Port(opts["grpc_port"], "grpc", spec_key="openvino.grpc_port"),
            Port(opts["rest_port"], "http", spec_key="openvino.rest_port"),
        ],
    )
    result.trusted_if_present += ["/etc/ld.so.cache", "/etc/nsswitch.conf"]
    result.allowed += ["/etc/hosts", "/etc/resolv.conf"]
    for index, model in enumerate(spec.models):
        add_model(result, spec, model, f"{MODEL_ROOT}/{model.name}/{model.version}")
        weights = _ir_weights(spec, index, model)
        if weights is not None:
            add_model(result, spec, weights, f"{MODEL_ROOT}/{model.name}/{model.version}")
    if len(spec.models) == 1:
        model = spec.models[0]
        result.argv += [
            "--model_name",
            model.name,
            "--model_path",
            f"{MODEL_ROOT}/{model.name}",
            "--target_device",
            opts["target_device"],
        ]
    elif spec.models:
        result.add_file(
            None, CONFIG_DEST, FileKind.TRUSTED, data=ovms_config(spec, opts["target_device"])
        )
        result.argv += ["--config_path", CONFIG_DEST]
    result.argv += list(opts["extra_args"])
    return result


#: What the OpenVINO runtime of mode "python" opens in a model directory, preferred first.
_MODEL_SUFFIXES = (".xml", ".onnx", ".tflite")


def _ir_weights(spec: Spec, index: int, model: ModelSpec) -> ModelSpec | None:
    """An IR graph named as the model's path (``X.xml``) is read with its weights ``X.bin``
    next to it: that file ships too, into the same directory, encrypted as the graph is."""
    source = Path(model.path)
    if source.is_dir() or source.suffix.lower() != ".xml":
        return None
    problem = _weights_problem(source)
    if problem is not None:
        raise spec_error(spec, ("models", index, "path"), problem)
    return dataclasses.replace(model, path=source.with_suffix(".bin"))


def _weights_problem(graph: Path) -> str | None:
    """Why the weights (``X.bin``) of the IR graph *graph* (``X.xml``) cannot ship with it."""
    weights = graph.with_suffix(".bin")
    if weights.is_symlink():
        return (
            f"the weights {weights.name} of the IR graph {graph.name} are a symbolic link "
            f"(to {os.readlink(weights)}); only a regular file next to the graph ships "
            "with it: copy the weights in (cp -L)"
        )
    if not weights.is_file():
        return (
            f"{graph.name} is an OpenVINO IR graph, but its weights {weights.name} are not "
            f"next to it ({weights}); the runtime reads both: put the .bin there"
        )
    return None


def _model_file(spec: Spec, index: int, model: ModelSpec) -> str | None:
    """For a model directory: the one file in it the runtime opens (mode "python")."""
    source = Path(model.path)
    if not source.is_dir():
        return None
    names = sorted(p.name for p in source.iterdir() if p.is_file() and not p.is_symlink())
    for suffix in _MODEL_SUFFIXES:
        found = [n for n in names if n.lower().endswith(suffix)]
        if len(found) > 1:
            raise spec_error(
                spec,
                ("models", index, "path"),
                f"the directory {source} holds several {suffix} models "
                f"({', '.join(found)}); name the one to serve as path (an IR "
                ".xml brings its .bin)",
            )
        if found:
            if suffix == ".xml":  # the IR's weights must be there too
                _ir_weights(spec, index, dataclasses.replace(model, path=source / found[0]))
            return found[0]
    raise spec_error(
        spec,
        ("models", index, "path"),
        f'no model in the directory {source}: mode "python" serves an IR .xml '
        "(with its .bin), an .onnx or a .tflite file directly in it",
    )


def _point_at_model_files(plan: ServicePlan, files: dict[str, str]) -> None:
    """Make the server configuration's path of each model in *files* (name -> file name in its
    directory) that file, so the runtime opens the model, not its directory."""
    config = plan.server_config
    assert config is not None
    plan.server_config = dataclasses.replace(
        config,
        models=tuple(
            dataclasses.replace(m, path=m.path.rstrip("/") + "/" + files[m.name])
            if m.name in files
            else m
            for m in config.models
        ),
    )


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("openvino")
    if opts["mode"] == "ovms":
        return _ovms_plan(spec, opts)
    if opts["extra_args"]:
        raise spec_error(
            spec,
            ("openvino", "extra_args"),
            'only for mode = "ovms" (the python mode\'s server takes no ovms flags): '
            'remove extra_args or set mode = "ovms"',
        )
    files = {
        m.name: name
        for i, m in enumerate(spec.models)
        if (name := _model_file(spec, i, m)) is not None
    }
    weights = [
        (m, w) for i, m in enumerate(spec.models) if (w := _ir_weights(spec, i, m)) is not None
    ]
    result = python_server_plan(
        spec,
        FRAMEWORK,
        backend="openvino",
        grpc_port=opts["grpc_port"],
        rest_port=opts["rest_port"],
        instances=opts["instances"],
        threads=opts["threads"],
        options={"device": opts["target_device"]},
        default_base=PYTHON_BASE,
    )
    for model, bin_model in weights:
        add_model(result, spec, bin_model, f"{MODEL_ROOT}/{model.name}/{model.version}")
    _point_at_model_files(result, files)
    return result


FRAMEWORK = Framework(
    name="openvino",
    description="OpenVINO: enclave-build's KServe v2 server on the OpenVINO runtime, or OVMS",
    default_base=PYTHON_BASE,
    plan=plan,
    section=SECTION,
    default_enclave_size=8 << 30,
    default_max_threads=128,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]


#: What each mode serves (for the error about a model it does not).
ACCEPTS = {
    "python": (
        "an OpenVINO IR .xml with its .bin next to it, an .onnx or a .tflite file, or a "
        "directory holding one of them"
    ),
    "ovms": (
        "a directory of one model version as OVMS reads it (an IR .xml with its .bin, an "
        ".onnx, a .tflite or a TensorFlow saved_model.pb), or one such file"
    ),
}


def _file_check(path: Path) -> tuple[str | None, str | None]:
    """(problem, state) of one model file, by its suffix."""
    suffix = path.suffix.lower()
    if suffix == ".xml":
        problem = openvino_ir_problem(path) or _weights_problem(path)
        return problem, None if problem else openvino_ir_state(path)
    if suffix == ".onnx":
        return onnx_problem(path), None
    if suffix == ".tflite":
        problem = tflite_problem(path)
        return problem, None if problem else tflite_state(path)
    return (
        f"its suffix ({suffix or 'none'}) is not one the OpenVINO runtime opens here "
        "(.xml, .onnx, .tflite)"
    ), None


def _directory_check(source: Path, mode: str) -> tuple[str | None, str | None]:
    names = sorted(p.name for p in source.iterdir() if p.is_file() and not p.is_symlink())
    if mode == "ovms" and any(n in ("saved_model.pb", "saved_model.pbtxt") for n in names):
        return saved_model_problem(source), None
    for suffix in _MODEL_SUFFIXES:
        found = [n for n in names if n.lower().endswith(suffix)]
        if len(found) > 1:
            return (
                f"the directory holds several {suffix} models ({', '.join(found)}); name "
                "the one to serve as path (an IR .xml brings its .bin)"
            ), None
        if found:
            return _file_check(source / found[0])
    return "no model in the directory", None


@hookimpl
def enclave_build_check_model(framework: str, model: ModelSpec, spec: Spec) -> ModelCheck | None:
    """The file the runtime (or OVMS) opens, by its format; ReadValue/Assign layers of an IR
    and resource variables of a TFLite model make it stateful."""
    if framework != FRAMEWORK.name:
        return None
    mode = spec.section("openvino").get("mode", "python")
    source = Path(model.path)
    problem, state = _directory_check(source, mode) if source.is_dir() else _file_check(source)
    return ModelCheck(ACCEPTS[mode], problem, state)
