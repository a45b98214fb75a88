"""TFLite framework plugin.

TFLite has no standard model server, so this plugin runs enclave-build's own model server
(``model_server``: KServe Open Inference Protocol v2 over gRPC and REST) with its ``tflite``
backend (LiteRT, ``ai-edge-litert``). The server's code ships into the image from the installed
enclave-build; the base image (``enclave-build/gramine-python``) supplies Debian's Python 3.11
and the runtimes. The server fetches its own keys inside the enclave, so every model may have
its own key.
"""

from __future__ import annotations

from pathlib import Path

from enclave_build.plugin import (
    Field,
    Framework,
    ModelCheck,
    ModelSpec,
    Section,
    ServicePlan,
    Spec,
    hookimpl,
    python_server_plan,
    spec_error,
    tflite_problem,
    tflite_state,
)

#: What this framework serves (for the error about a model it does not).
ACCEPTS = (
    "a TFLite model: one FlatBuffer file (.tflite) with the identifier TFL3 at bytes "
    "4..8; convert SavedModel or Keras models with the TFLite converter"
)

SECTION = Section(
    "tflite",
    "TFLite model server options",
    (
        Field("grpc_port", "int", "gRPC port (KServe v2)", default=8001, minimum=1, maximum=65535),
        Field("rest_port", "int", "REST port (KServe v2)", default=8000, minimum=1, maximum=65535),
        Field(
            "threads",
            "int",
            "interpreter threads per model instance",
            default=1,
            minimum=1,
            maximum=256,
        ),
        Field(
            "instances",
            "int",
            "interpreter instances per model (concurrent requests served)",
            default=2,
            minimum=1,
            maximum=256,
        ),
    ),
    owner="tflite",
)


def plan(spec: Spec) -> ServicePlan:
    opts = spec.section("tflite")
    for index, model in enumerate(spec.models):
        if Path(model.path).is_dir():  # LiteRT opens one flatbuffer file, never a directory
            raise spec_error(
                spec,
                ("models", index, "path"),
                f"{model.path} is a directory; the tflite framework serves one "
                ".tflite file per model: name that file as path",
            )
    return python_server_plan(
        spec,
        FRAMEWORK,
        backend="tflite",
        grpc_port=opts["grpc_port"],
        rest_port=opts["rest_port"],
        instances=opts["instances"],
        threads=opts["threads"],
    )


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


@hookimpl
def enclave_build_check_model(framework: str, model: ModelSpec, spec: Spec) -> ModelCheck | None:
    """A TFLite FlatBuffer (header and size); its resource variables make it stateful."""
    if framework != FRAMEWORK.name:
        return None
    if Path(model.path).is_dir():
        return ModelCheck(
            ACCEPTS,
            "it is a directory; the tflite framework serves one .tflite "
            "file per model: name that file as path",
        )
    problem = tflite_problem(model.path)
    return ModelCheck(ACCEPTS, problem, None if problem else tflite_state(model.path))
