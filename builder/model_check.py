"""Models checked against what the spec's framework serves, before anything is planned,
encrypted or written; a warning for a stateful model served by several instances.

Each framework plugin answers the hook ``enclave_build_check_model`` for its own framework
(:mod:`builder.hookspecs`) with a :class:`~builder.model_formats.ModelCheck`; a framework
whose plugin does not implement it is not checked.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from enclave_build.contract.schema import Problem

from .model_formats import ModelCheck
from .plan import ServicePlan
from .planning import spec_errors
from .plugins import PluginRegistry
from .spec import Spec


class StatefulModelWarning(UserWarning):
    """A model that keeps state between requests is served by more than one instance."""


@dataclass(frozen=True)
class ModelChecks:
    """The framework's verdict on each model (by index in ``spec.models``; models its plugin
    did not check are absent)."""

    framework: str
    by_index: dict[int, ModelCheck]


def check_models(spec: Spec, registry: PluginRegistry) -> ModelChecks:
    """Ask the plugins about every model of *spec*; a located SpecError (exit 2) listing each
    model the framework does not serve, with what it serves."""
    framework = spec.service.framework
    checks: dict[int, ModelCheck] = {}
    problems: list[Problem] = []
    for index, model in enumerate(spec.models):
        answers = [
            a
            for a in registry.pm.hook.enclave_build_check_model(
                framework=framework, model=model, spec=spec
            )
            if a is not None
        ]
        for answer in answers:
            if not isinstance(answer, ModelCheck):
                raise TypeError(
                    f"enclave_build_check_model returned {answer!r} where a "
                    "ModelCheck (or None) was expected"
                )
        if not answers:
            continue
        failed = next((a for a in answers if a.problem), None)
        checks[index] = failed or next((a for a in answers if a.stateful), answers[0])
        if failed is not None:
            problems.append(
                Problem(
                    ("models", index, "path"),
                    f"{model.path}: {failed.problem}; framework {framework} "
                    f"serves {failed.accepted}",
                )
            )
    if problems:
        raise spec_errors(spec, problems)
    return ModelChecks(framework, checks)


def warn_stateful(
    spec: Spec, plan: ServicePlan, checks: ModelChecks, instances_key: str | None
) -> None:
    """Warn about each stateful model that *plan* serves with more than one instance (each
    instance keeps its own state, so consecutive requests may see different state).
    *instances_key*: the spec key that sets the instances (``[tflite] instances``)."""
    if plan.server_config is None:
        return
    instances = {m.name: m.instances for m in plan.server_config.models}
    for index, check in sorted(checks.by_index.items()):
        model = spec.models[index]
        count = instances.get(model.name, 1)
        if not check.stateful or count <= 1:
            continue
        where = spec_errors(spec, [Problem(("models", index, "path"), "")]).lines()[0].rstrip()
        setting = f"{instances_key} = {count}" if instances_key else f"{count} instances"
        fix = f"set {instances_key} = 1" if instances_key else "serve it with one instance"
        warnings.warn(
            f"{where} {model.path} keeps state between requests ({check.stateful}); "
            f"with {setting} each instance has its own state, so a client's "
            f"consecutive requests may meet different state: {fix} if the state "
            "must be shared",
            StatefulModelWarning,
            stacklevel=3,
        )
