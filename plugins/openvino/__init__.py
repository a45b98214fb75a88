"""OpenVINO Model Server framework plugin.

Runs the real ``ovms`` binary from the base image. Models are laid out as OVMS expects
(``/models/NAME/VERSION/model.xml`` + ``.bin``) and served over gRPC (TF Serving and KServe v2
APIs) and REST.
"""

from __future__ import annotations

from builder.plugin_api import (Field, Framework, Port, Section, Spec, ServicePlan, add_model,
                                EnclaveBuildError, base_plan, hookimpl)

BINARY = "/ovms/bin/ovms"
MODEL_ROOT = "/models"

SECTION = Section("openvino", "OpenVINO Model Server options", (
    Field("grpc_port", "int", "gRPC port", default=9000, minimum=1, maximum=65535),
    Field("rest_port", "int", "REST port", default=8000, minimum=1, maximum=65535),
    Field("target_device", "str", "OpenVINO device", default="CPU", choices=("CPU",)),
    Field("extra_args", "list[str]", "more ovms flags", default=[]),
), owner="openvino")


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("openvino")
    if spec.tls is not None:
        raise EnclaveBuildError(
            "[tls]: OpenVINO Model Server has no built-in TLS; terminate TLS in front of it "
            "(e.g. an ingress) and remove [tls] from the spec")
    argv = [BINARY, "--port", str(opts["grpc_port"]), "--rest_port", str(opts["rest_port"])]
    result = base_plan(
        spec, FRAMEWORK, entrypoint=BINARY, argv=argv,
        env={"LD_LIBRARY_PATH": "/lib:/ovms/lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"},
        trusted=[BINARY, "/ovms/lib/", "/usr/lib/x86_64-linux-gnu/", "/etc/ld.so.cache"],
        ports=[Port(opts["grpc_port"], "grpc"), Port(opts["rest_port"], "http")])
    result.allowed += ["/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf"]
    for model in spec.models:
        add_model(result, spec, model, f"{MODEL_ROOT}/{model.name}/{model.version}")
    if len(spec.models) == 1:
        model = spec.models[0]
        result.argv += ["--model_name", model.name, "--model_path", f"{MODEL_ROOT}/{model.name}",
                 "--target_device", opts["target_device"]]
    result.argv += list(opts["extra_args"])
    return result


FRAMEWORK = Framework(
    name="openvino",
    description="OpenVINO Model Server (ovms) in Gramine",
    default_base="docker-daemon:enclave-build/gramine-openvino:1.9-2024.5",
    plan=plan,
    section=SECTION,
    default_enclave_size=8 << 30,
    default_max_threads=128,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]
