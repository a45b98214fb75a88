"""The stable plugin API of enclave-build: the one module a plugin imports.

Framework plugins, libOS backends and any plugin that adjusts plans or adds commands use only
the names below (the builtin plugins do too). They are re-exported from enclave-build's own
modules, which may change between releases; these names, their signatures and their meaning
do not change within a major version. The hooks are documented in
:mod:`enclave_build.builder.hookspecs`; a plugin is any module or object with functions marked
``@hookimpl``, registered through the entry-point group ``enclave_build``::

    # pyproject.toml
    [project.entry-points.enclave_build]
    echo = "echo_framework"

    # echo_framework.py
    from enclave_build.plugin import Field, Framework, Port, Section, base_plan, hookimpl

    SECTION = Section("echo", "echo service options", (
        Field("port", "int", "TCP port", default=7007, minimum=1, maximum=65535),), owner="echo")

    def plan(spec):
        port = spec.section("echo")["port"]
        return base_plan(spec, FRAMEWORK, entrypoint="/usr/bin/python3",
                         argv=["/usr/bin/python3", "-m", "echo", "--port", str(port)],
                         trusted=["/usr/bin/python3", "/usr/lib/python3/"],
                         ports=[Port(port, "echo")])

    FRAMEWORK = Framework(name="echo", description="an echo service",
                          default_base="example/echo-base:1", plan=plan, section=SECTION)

    @hookimpl
    def enclave_build_frameworks():
        return [FRAMEWORK]

What is here:

* hooks: :data:`hookimpl`;
* what plugins provide: :class:`Framework`, :class:`LibOS` (with :class:`BuildOptions`,
  :class:`Progress`, and what a backend returns: :class:`LibOSArtifacts`,
  :class:`ArtifactFile`, :class:`EnclaveIdentity`, :class:`PendingSignature`,
  :class:`SecretRelease`, :data:`SECRET_ENCODINGS`);
* the validated spec: :class:`Spec`, :class:`ModelSpec`, spec sections (:class:`Section`,
  :class:`Field`, :class:`Problem`, :class:`SectionContext`), :class:`SpecError` and
  :func:`spec_error` (an error located at a key's line);
* the plan a framework makes and other plugins adjust: :class:`ServicePlan` and its parts;
* checking models (hook ``enclave_build_check_model``): :class:`ModelCheck` and the format
  checks :func:`tflite_problem`, :func:`onnx_problem`, :func:`openvino_ir_problem`,
  :func:`saved_model_problem`, :func:`tflite_state`, :func:`openvino_ir_state`;
* building plans: :func:`base_plan`, :func:`add_model`, :func:`add_secret_file`, key names,
  :func:`require_models`, :func:`require_one_key`, :func:`refuse_model_server_keys`,
  :func:`require_tls_file` (``[tls] issuer`` "file" for servers that read files);
* plans that run enclave-build's model server: :func:`python_server_plan`,
  :func:`server_config`, :func:`ship_python_package`, :func:`add_python_system_files`,
  :func:`deliver_keys_as_files` and the paths they use. The server's configuration (model-server.json) is the plan's typed
  ``server_config``, an :class:`enclave_build.contract.server_config.ServerConfig`: adjust it
  with ``dataclasses.replace``; :func:`server_config` also takes its models and ``tls`` as
  dicts of their fields;
* the base image as a filesystem: :class:`RootFS`;
* errors: :class:`EnclaveBuildError` (the root: the CLI prints its message, no traceback) and
  :class:`UsageError` (exit code 2).

A model-server backend (the serving side of a framework) implements
:class:`enclave_build.model_server.backends.Backend` instead; see that module.
"""

from __future__ import annotations

from .builder.errors import EnclaveBuildError, UsageError
from .builder.hookspecs import hookimpl
from .builder.model_formats import (
    ModelCheck,
    onnx_problem,
    openvino_ir_problem,
    openvino_ir_state,
    saved_model_problem,
    tflite_problem,
    tflite_state,
)
from .builder.plan import (
    EnclaveResources,
    FileKind,
    KeyDelivery,
    Mount,
    MountType,
    PlanFile,
    Port,
    ProvisionedKey,
    PythonRuntime,
    SecretProvisioning,
    ServicePlan,
)
from .builder.planning import (
    add_model,
    add_secret_file,
    base_plan,
    default_key_name,
    model_image_path,
    model_key_name,
    refuse_model_server_keys,
    require_models,
    require_one_key,
    require_tls_file,
    service_key_name,
    spec_error,
)
from .builder.plugin_types import (
    SECRET_ENCODINGS,
    ArtifactFile,
    BuildOptions,
    Framework,
    LibOS,
    LibOSArtifacts,
    PendingSignature,
    Progress,
    SecretRelease,
)
from .builder.python_server import (
    BACKEND_ENTRY_POINTS,
    add_python_system_files,
    deliver_keys_as_files,
    python_server_plan,
    server_config,
    ship_python_package,
)
from .builder.rootfs import RootFS, RootFSError
from .builder.spec import ModelSpec, SectionContext, Spec, SpecError
from .contract.identity import EnclaveIdentity
from .contract.names import (
    MODEL_ROOT,
    PYTHON,
    SECRET_SERVER_CA,
    SECRETS_DIR,
    SERVER_CONFIG,
    SERVER_PYTHONPATH,
)
from .contract.schema import Field, Problem, Section

__all__ = [
    # hooks
    "hookimpl",
    # what plugins provide, and what a libOS backend returns
    "Framework",
    "LibOS",
    "BuildOptions",
    "Progress",
    "LibOSArtifacts",
    "ArtifactFile",
    "EnclaveIdentity",
    "PendingSignature",
    "SecretRelease",
    "SECRET_ENCODINGS",
    # the validated spec and spec sections
    "Spec",
    "ModelSpec",
    "Section",
    "Field",
    "Problem",
    "SectionContext",
    "SpecError",
    "spec_error",
    # checking models
    "ModelCheck",
    "tflite_problem",
    "tflite_state",
    "onnx_problem",
    "openvino_ir_problem",
    "openvino_ir_state",
    "saved_model_problem",
    # the plan
    "ServicePlan",
    "PlanFile",
    "FileKind",
    "Mount",
    "MountType",
    "Port",
    "EnclaveResources",
    "KeyDelivery",
    "ProvisionedKey",
    "SecretProvisioning",
    "PythonRuntime",
    # building plans
    "base_plan",
    "add_model",
    "add_secret_file",
    "model_image_path",
    "default_key_name",
    "model_key_name",
    "service_key_name",
    "require_models",
    "require_one_key",
    "refuse_model_server_keys",
    "require_tls_file",
    "MODEL_ROOT",
    "SECRETS_DIR",
    "SECRET_SERVER_CA",
    # plans running enclave-build's model server
    "python_server_plan",
    "server_config",
    "ship_python_package",
    "add_python_system_files",
    "deliver_keys_as_files",
    "PYTHON",
    "SERVER_PYTHONPATH",
    "SERVER_CONFIG",
    "BACKEND_ENTRY_POINTS",
    # the base image's files
    "RootFS",
    "RootFSError",
    # errors
    "EnclaveBuildError",
    "UsageError",
]
