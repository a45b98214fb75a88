"""TFLite framework plugin.

TFLite has no standard model server, so this plugin runs enclave-build's own Python model server
(KServe Open Inference Protocol v2 over gRPC and REST) with the base image's Python runtime and
``tflite-runtime``. The server module is installed in the base image
(``enclave-build/gramine-python``) at SERVER_DIR.
"""

from __future__ import annotations

from builder.plugin_api import (Field, Framework, Port, Section, Spec, ServicePlan, add_model,
                                add_secret_file, base_plan, hookimpl)

PYTHON = "/usr/bin/python3"
SERVER_DIR = "/opt/enclave-build/server/"
MODEL_ROOT = "/models"

SECTION = Section("tflite", "TFLite model server options", (
    Field("grpc_port", "int", "gRPC port (KServe v2)", default=8001, minimum=1, maximum=65535),
    Field("rest_port", "int", "REST port (KServe v2)", default=8000, minimum=1, maximum=65535),
    Field("threads", "int", "interpreter threads per model", default=2, minimum=1, maximum=256),
), owner="tflite")


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("tflite")
    argv = [PYTHON, "-m", "enclave_model_server", "--grpc-port", str(opts["grpc_port"]),
            "--rest-port", str(opts["rest_port"]), "--threads", str(opts["threads"])]
    result = base_plan(
        spec, FRAMEWORK, entrypoint=PYTHON, argv=argv,
        env={"PYTHONPATH": SERVER_DIR.rstrip("/"), "PYTHONDONTWRITEBYTECODE": "1"},
        trusted=[PYTHON, "/usr/lib/python3/", "/usr/lib/x86_64-linux-gnu/", SERVER_DIR,
                 "/etc/ld.so.cache"],
        ports=[Port(opts["grpc_port"], "grpc"), Port(opts["rest_port"], "http")])
    result.allowed += ["/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf"]
    for model in spec.models:
        dest = f"{MODEL_ROOT}/{model.name}/{model.version}"
        add_model(result, spec, model, dest)
        result.argv += ["--model", f"{model.name}={dest}"]
    if spec.tls is not None:
        cert = add_secret_file(result, spec, "tls.crt", source=spec.tls.cert)
        key = add_secret_file(result, spec, "tls.key", source=spec.tls.key)
        result.argv += ["--tls-cert", cert, "--tls-key", key]
    return result


FRAMEWORK = Framework(
    name="tflite",
    description="TFLite models behind enclave-build's KServe v2 model server (Python)",
    default_base="docker-daemon:enclave-build/gramine-python:1.9-3.11",
    plan=plan,
    section=SECTION,
    default_enclave_size=2 << 30,
    default_max_threads=32,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]
