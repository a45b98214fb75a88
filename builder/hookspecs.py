"""The plugin hooks of enclave-build, hook by hook.

A plugin is a module (or any object) with functions marked ``@hookimpl``; it implements the
hooks it needs and leaves out the others. Third-party plugins are ordinary Python packages that
declare an entry point in the group ``enclave_build`` and import only
:mod:`enclave_build.plugin`, the stable plugin API::

    # pyproject.toml of a third-party plugin
    [project.entry-points.enclave_build]
    myframework = "myframework_plugin"

    # myframework_plugin.py
    from enclave_build.plugin import Framework, hookimpl

    @hookimpl
    def enclave_build_frameworks():
        return [Framework(name="myframework", ...)]

The builtin plugins (frameworks tfserving, tflite, openvino, secret-server; libOS backends
gramine and occlum; the ``k8s`` and ``attest`` commands) implement the same hooks and are
registered from the module list ``builder.plugins.DEFAULT_PLUGINS``. ``enclave-build plugins``
lists what is installed, and which plugins failed to load (a broken plugin is reported, never
hides the others).

Hooks run in this order during a build:

1. :func:`enclave_build_frameworks` and :func:`enclave_build_libos`, when the plugin manager
   starts, to learn what can be built (and the spec sections plugins declare);
2. :func:`enclave_build_check_model` checks each model of the spec against what the chosen
   framework serves (before anything is planned, encrypted or written);
3. the chosen framework's ``plan(spec)`` makes the :class:`~enclave_build.plugin.ServicePlan`;
4. :func:`enclave_build_configure` lets every plugin adjust that plan;
5. the chosen libOS backend's ``build(plan, rootfs, options)`` renders, measures and signs it;
   the image and the outputs are written;
6. :func:`enclave_build_finished` receives the build's result.

:func:`enclave_build_register_commands` runs once when the command line starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # types only: this module is imported by everything that registers plugins
    import click

    from .build import BuildResult
    from .model_formats import ModelCheck
    from .plan import ServicePlan
    from .plugin_types import Framework, LibOS
    from .spec import ModelSpec, Spec

PROJECT = "enclave_build"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's implementation of a hook (``@hookimpl``).
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def enclave_build_frameworks() -> Sequence[Framework]:
    """Return the serving frameworks this plugin provides.

    Each :class:`~enclave_build.plugin.Framework` has a unique ``name`` (what ``[service]
    framework`` in spec.toml selects; two plugins offering the same name are reported as a
    conflict, and neither is used), a default base image, an optional spec section
    (a :class:`~enclave_build.plugin.Section`, validated with the rest of the spec: every error
    names file, line and key; the values reach ``plan`` as ``spec.section(NAME)``) and a
    ``plan(spec) -> ServicePlan`` callable::

        from enclave_build.plugin import Field, Framework, Section, hookimpl, python_server_plan

        SECTION = Section("onnxruntime", "ONNX Runtime options", (
            Field("threads", "int", "intra-op threads", default=1, minimum=1, maximum=256),
        ), owner="onnxruntime")

        def plan(spec):
            return python_server_plan(spec, FRAMEWORK, backend="onnxruntime",
                                      packages=["onnxruntime"],
                                      threads=spec.section("onnxruntime")["threads"])

        FRAMEWORK = Framework(name="onnxruntime", description="ONNX models on ONNX Runtime",
                              default_base="docker-daemon:my/gramine-onnxruntime:1",
                              plan=plan, section=SECTION)

        @hookimpl
        def enclave_build_frameworks():
            return [FRAMEWORK]
    """


@hookspec
def enclave_build_libos() -> Sequence[LibOS]:
    """Return the library OS backends this plugin provides.

    Each :class:`~enclave_build.plugin.LibOS` has a unique ``name`` (what ``[service] libos``
    selects) and a ``build(plan, rootfs, options) -> LibOSArtifacts`` callable that renders the
    plan into the libOS's own artifacts, measures and signs them (*rootfs* is the base image as
    a :class:`~enclave_build.plugin.RootFS`, *options* a
    :class:`~enclave_build.plugin.BuildOptions` carrying the signer, wrap keys, progress and
    staging directory). A backend may declare a spec section of its own: ``section`` is
    validated like every other one and allowed only when ``service.libos`` selects the backend;
    ``options(values, context, problems)`` turns its validated values into the object the
    backend reads from ``plan.libos_options``::

        from enclave_build.plugin import Field, LibOS, LibOSArtifacts, Section, hookimpl

        SECTION = Section("mylibos", "options of my libOS", (
            Field("heap", "size", "heap size", default="64M"),), owner="mylibos")

        def build(plan, rootfs, options) -> LibOSArtifacts:
            heap = plan.libos_options["heap"]      # the validated values (no ``options``)
            ...

        @hookimpl
        def enclave_build_libos():
            return [LibOS(name="mylibos", description="my libOS", build=build, section=SECTION)]
    """


@hookspec
def enclave_build_check_model(framework: str, model: ModelSpec, spec: Spec) -> ModelCheck | None:
    """Say whether *model* (one ``[[models]]`` entry of *spec*) is something *framework* (the
    spec's ``[service] framework``) serves; called for each model before the framework plans
    anything, before any file is encrypted or any layer written.

    Return ``None`` for a framework that is not yours. For yours, return a
    :class:`~enclave_build.plugin.ModelCheck`: ``accepted`` says in words what the framework
    serves, ``problem`` why this model is not that (None when it is), and ``stateful`` the
    state the model keeps between requests (None when it keeps none). The build stops with
    exit code 2 listing every model with a problem as ``FILE:LINE: models[N].path: PATH:
    PROBLEM; framework F serves ACCEPTED``; a stateful model served by several instances (the
    plan's ``server_config``) gets a warning. Read the file, never run it (``model.path`` is
    the model in clear on the build machine); the helpers :func:`~enclave_build.plugin.tflite_problem`,
    :func:`~enclave_build.plugin.onnx_problem`, :func:`~enclave_build.plugin.openvino_ir_problem`,
    :func:`~enclave_build.plugin.saved_model_problem` and the ``*_state`` functions check the
    common formats. A framework whose plugin does not implement this hook is not checked::

        from enclave_build.plugin import ModelCheck, hookimpl, onnx_problem

        @hookimpl
        def enclave_build_check_model(framework, model, spec):
            if framework != "onnxruntime":
                return None
            return ModelCheck("an ONNX model file (.onnx)", onnx_problem(model.path))
    """


@hookspec
def enclave_build_configure(spec: Spec, plan: ServicePlan) -> None:
    """Adjust the service plan after the framework made it, before anything is rendered.

    Add files, environment variables, mounts, trusted paths or labels by mutating *plan* (a
    :class:`~enclave_build.plugin.ServicePlan`); *spec* is the validated
    :class:`~enclave_build.plugin.Spec` and must not be modified. Every plugin's implementation
    runs (for every build, whatever its framework and libOS: check ``plan.framework`` and
    ``plan.libos``); the return value is ignored. Raise
    :class:`~enclave_build.plugin.EnclaveBuildError` to stop the build with a message::

        from enclave_build.plugin import EnclaveBuildError, FileKind, hookimpl

        @hookimpl
        def enclave_build_configure(spec, plan):
            if plan.enclave.debug:
                raise EnclaveBuildError("policy: DEBUG enclaves are not built here")
            plan.add_file("corp-ca.pem", "/etc/ssl/corp-ca.pem", FileKind.TRUSTED)
            plan.labels["org.example.team"] = "ml-platform"
    """


@hookspec
def enclave_build_finished(result: BuildResult) -> None:
    """Called once a build succeeded, with its :class:`~enclave_build.builder.build.BuildResult`
    (``result.measurements``, ``result.output``, ``result.image``, ``result.plan``).

    For side effects after the build: push elsewhere, notify, write an SBOM. Exceptions are
    reported as build failures, but the outputs already written stay in place::

        import json
        from enclave_build.plugin import hookimpl

        @hookimpl
        def enclave_build_finished(result):
            if result.output is not None:
                (result.output / "files.json").write_text(json.dumps(
                    sorted(f.dest for f in result.plan.image_files())))
    """


@hookspec
def enclave_build_register_commands(cli: click.Group) -> None:
    """Add command groups (or commands) to ``enclave-build``: *cli* is the top-level
    :class:`click.Group`. Runs once when the command line starts, so keep imports of heavy
    modules inside the commands. A command that fails raises
    :class:`~enclave_build.plugin.EnclaveBuildError` (exit 1) or
    :class:`~enclave_build.plugin.UsageError` (exit 2): the command line prints the message
    as ``error: ...``, never a traceback::

        import click
        from enclave_build.plugin import hookimpl

        @hookimpl
        def enclave_build_register_commands(cli):
            @cli.group()
            def sbom():
                \"\"\"Software bills of materials of built images.\"\"\"

            @sbom.command()
            @click.argument("build_dir")
            def show(build_dir):
                \"\"\"Print the SBOM of BUILD_DIR.\"\"\"
                click.echo(...)
    """
