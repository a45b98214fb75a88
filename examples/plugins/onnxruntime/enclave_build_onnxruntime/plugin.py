"""The ``onnxruntime`` framework: ONNX models behind enclave-build's model server.

Everything here is enclave-build's public plugin API: a spec section (validated like the
builtin ones, errors with file, line and key), a :class:`~enclave_build.plugin.Framework`, and
:func:`~enclave_build.plugin.python_server_plan`, which runs our KServe v2 server with the
``onnxruntime`` backend this package registers, ships this package's code into the image, and
trusts ONNX Runtime's files from the base image.
"""

from __future__ import annotations

from enclave_build.plugin import (
    Field,
    Framework,
    ModelCheck,
    ModelSpec,
    Section,
    ServicePlan,
    Spec,
    hookimpl,
    onnx_problem,
    python_server_plan,
)

BACKEND = "onnxruntime"
GRAPH_OPTIMIZATION = ("disabled", "basic", "extended", "all")

SECTION = Section(
    "onnxruntime",
    "ONNX Runtime model server options",
    (
        Field("grpc_port", "int", "gRPC port (KServe v2)", default=8001, minimum=1, maximum=65535),
        Field("rest_port", "int", "REST port (KServe v2)", default=8000, minimum=1, maximum=65535),
        Field("threads", "int", "intra-op threads per session", default=1, minimum=1, maximum=256),
        Field(
            "instances",
            "int",
            "sessions per model (concurrent requests served)",
            default=2,
            minimum=1,
            maximum=256,
        ),
        Field(
            "graph_optimization",
            "str",
            "ONNX Runtime graph optimization level",
            default="all",
            choices=GRAPH_OPTIMIZATION,
        ),
    ),
    owner="onnxruntime",
)


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("onnxruntime")
    return python_server_plan(
        spec,
        FRAMEWORK,
        backend=BACKEND,
        packages=["onnxruntime"],
        grpc_port=opts["grpc_port"],
        rest_port=opts["rest_port"],
        instances=opts["instances"],
        threads=opts["threads"],
        options={"graph_optimization": opts["graph_optimization"]},
    )


FRAMEWORK = Framework(
    name="onnxruntime",
    description="ONNX models on ONNX Runtime behind enclave-build's KServe v2 model server",
    default_base="docker-daemon:enclave-build/gramine-onnxruntime:1.9-3.11",
    plan=plan,
    section=SECTION,
    default_enclave_size=2 << 30,
    default_max_threads=32,
)


@hookimpl
def enclave_build_frameworks():
    return [FRAMEWORK]


@hookimpl
def enclave_build_check_model(framework: str, model: ModelSpec, spec: Spec) -> ModelCheck | None:
    """An ONNX model file (the build refuses anything else, before encrypting it). An ONNX
    Runtime session keeps no state between runs: nothing to warn about."""
    if framework != FRAMEWORK.name:
        return None
    return ModelCheck("an ONNX model file (.onnx)", onnx_problem(model.path))
