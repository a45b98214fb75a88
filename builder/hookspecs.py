"""The plugin hooks of enclave-build.

Plugins are ordinary Python packages that declare an entry point in the group ``enclave_build``
pointing at a module (or object) with functions marked ``@hookimpl``::

    # pyproject.toml of a third-party plugin
    [project.entry-points.enclave_build]
    myframework = "myframework_plugin"

    # myframework_plugin.py
    from enclave_build.builder.plugin_api import hookimpl, Framework

    @hookimpl
    def enclave_build_frameworks():
        return [Framework(name="myframework", ...)]

The builtin frameworks (tfserving, tflite, openvino) and libOS backends (gramine) register
through exactly this mechanism. ``enclave-build plugins`` lists what is installed.

Hooks run in this order during a build:

1. :func:`enclave_build_frameworks` and :func:`enclave_build_libos`, when the plugin manager
   starts, to learn what can be built;
2. the chosen framework's ``plan(spec)`` makes the :class:`~builder.plan.ServicePlan`;
3. :func:`enclave_build_configure` lets every plugin adjust that plan;
4. the libOS backend renders, measures and signs it; the image is written;
5. :func:`enclave_build_finished` receives the :class:`~builder.build.BuildResult`.
"""

from __future__ import annotations

import pluggy

PROJECT = "enclave_build"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def enclave_build_frameworks():
    """Return the serving frameworks this plugin provides.

    :return: a list of :class:`builder.plugin_api.Framework`. Each has a unique ``name`` (what
        ``service.framework`` in spec.toml selects), a default base image, an optional spec
        section schema (a :class:`builder.schema.Section` named after the framework) and a
        ``plan(spec) -> ServicePlan`` callable. Two plugins offering the same name is an error.
    """


@hookspec
def enclave_build_libos():
    """Return the library OS backends this plugin provides.

    :return: a list of :class:`builder.plugin_api.LibOS`, each with a unique ``name`` (what
        ``service.libos`` selects) and a ``build(plan, rootfs, signer, options)`` callable that
        renders the plan into the libOS's artifacts, measures and signs them.
    """


@hookspec
def enclave_build_configure(spec, plan):
    """Adjust the service plan after the framework made it, before anything is rendered.

    Add files, environment variables, mounts, trusted paths or labels by mutating *plan* (a
    :class:`builder.plan.ServicePlan`); *spec* is the validated :class:`builder.spec.Spec` and
    must not be modified. Every plugin's implementation runs; the return value is ignored.
    Raise :class:`builder.errors.EnclaveBuildError` to stop the build with a message.
    """


@hookspec
def enclave_build_finished(result):
    """Called once a build succeeded, with its :class:`builder.build.BuildResult`.

    For side effects after the build: push elsewhere, notify, write an SBOM. Exceptions are
    reported as build failures, but the outputs already written stay in place.
    """
