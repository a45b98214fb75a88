"""TensorFlow Serving framework plugin.

Runs the real ``tensorflow_model_server`` binary from the base image inside the enclave. Models
are laid out as TF Serving expects (``/models/NAME/VERSION/saved_model.pb``); with more than one
model a ``model_config_file`` is generated and shipped as a trusted file. Only the binary and
its shared-library closure (resolved in the base image) are trusted. Keys come from Gramine's
provisioning constructor: one key per service.
"""

from __future__ import annotations

import json

from enclave_build.plugin import (
    MODEL_ROOT,
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
    add_secret_file,
    base_plan,
    hookimpl,
    refuse_model_server_keys,
    require_models,
    require_one_key,
    require_tls_file,
    saved_model_problem,
)

BINARY = "/usr/bin/tensorflow_model_server"
CONFIG_DEST = "/enclave/tfserving-models.config"
#: What this framework serves (for the error about a model it does not).
ACCEPTS = (
    "a TensorFlow SavedModel: the directory of one version, holding saved_model.pb (or "
    "saved_model.pbtxt) and variables/, shipped as /models/NAME/VERSION/ (TFLite, ONNX "
    "or OpenVINO files: use framework tflite or openvino)"
)

SECTION = Section(
    "tfserving",
    "TensorFlow Serving options",
    (
        Field(
            "grpc_port",
            "int",
            "gRPC port (PredictionService)",
            default=8500,
            minimum=1,
            maximum=65535,
        ),
        Field(
            "rest_port",
            "int",
            "REST port (/v1/models/NAME:predict)",
            default=8501,
            minimum=1,
            maximum=65535,
        ),
        Field("enable_batching", "bool", "server-side request batching", default=False),
        Field("extra_args", "list[str]", "more tensorflow_model_server flags", default=[]),
    ),
    owner="tfserving",
)


def model_config(spec: Spec) -> str:
    entries = "".join(
        f'  config {{\n    name: "{m.name}"\n    base_path: "{MODEL_ROOT}/{m.name}"\n'
        f'    model_platform: "tensorflow"\n  }}\n'
        for m in spec.models
    )
    return f"model_config_list {{\n{entries}}}\n"


def _ssl_config(spec: Spec) -> bytes:
    """TF Serving's --ssl_config_file (an SSLConfig text proto with the PEMs inline)."""
    assert spec.tls is not None and spec.tls.cert is not None and spec.tls.key is not None
    cert = spec.tls.cert.read_text()
    key = spec.tls.key.read_text()
    return (
        f"server_key: {json.dumps(key)}\nserver_cert: {json.dumps(cert)}\n"
        'custom_ca: ""\nclient_verify: false\n'
    ).encode()


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("tfserving")
    require_models(spec, "tfserving")
    require_one_key(spec, "tfserving")
    refuse_model_server_keys(spec, "tfserving")
    require_tls_file(spec, "TF Serving")
    argv = [BINARY, f"--port={opts['grpc_port']}", f"--rest_api_port={opts['rest_port']}"]
    if opts["enable_batching"]:
        argv.append("--enable_batching=true")
    result = base_plan(
        spec,
        FRAMEWORK,
        entrypoint=BINARY,
        argv=argv,
        env={"LD_LIBRARY_PATH": "/lib:/usr/lib/x86_64-linux-gnu", "HOME": "/tmp"},
        trusted=[BINARY],
        ports=[
            Port(opts["grpc_port"], "grpc", spec_key="tfserving.grpc_port"),
            Port(opts["rest_port"], "http", spec_key="tfserving.rest_port"),
        ],
    )
    result.trusted_if_present += ["/etc/ld.so.cache", "/etc/nsswitch.conf"]
    result.allowed += ["/etc/hosts", "/etc/resolv.conf"]
    for model in spec.models:
        add_model(result, spec, model, f"{MODEL_ROOT}/{model.name}/{model.version}")
    if len(spec.models) == 1:
        model = spec.models[0]
        result.argv += [
            f"--model_name={model.name}",
            f"--model_base_path={MODEL_ROOT}/{model.name}",
        ]
    elif spec.models:
        result.add_file(None, CONFIG_DEST, FileKind.TRUSTED, data=model_config(spec).encode())
        result.argv.append(f"--model_config_file={CONFIG_DEST}")
    if spec.tls is not None:
        config = add_secret_file(result, spec, "ssl.cfg", data=_ssl_config(spec))
        result.argv.append(f"--ssl_config_file={config}")
    result.argv += list(opts["extra_args"])
    return result


FRAMEWORK = Framework(
    name="tfserving",
    description="TensorFlow Serving (tensorflow_model_server) in Gramine",
    default_base="docker-daemon:enclave-build/gramine-tfserving:1.9-2.15.1",
    plan=plan,
    section=SECTION,
    default_enclave_size=8 << 30,
    default_max_threads=256,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]


@hookimpl
def enclave_build_check_model(framework: str, model: ModelSpec, spec: Spec) -> ModelCheck | None:
    """A SavedModel version directory. (TF Serving runs one session per model: no
    instances whose state could differ, so state is not examined.)"""
    if framework != FRAMEWORK.name:
        return None
    return ModelCheck(ACCEPTS, saved_model_problem(model.path))
