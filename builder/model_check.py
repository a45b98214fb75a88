"""Models checked against what the spec's framework serves, before anything is planned,
encrypted or written; a warning for a stateful model served by several instances.

Each framework plugin answers the hook ``enclave_build_check_model`` for its own framework
(:mod:`builder.hookspecs`) with a :class:`~builder.model_formats.ModelCheck`; a framework
whose plugin does not implement it is not checked.

``enclave-build init --model PATH`` asks the same hook before any spec exists
(:func:`check_model_file`, against a spec of the framework's defaults), to pick the framework
that serves the model when none is named (:func:`choose_framework_for`) and to refuse one that
does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from enclave_build.contract.schema import Problem

from .errors import UsageError
from .model_formats import ModelCheck
from .plan import ServicePlan
from .planning import spec_errors
from .plugin_types import Framework
from .plugins import PluginRegistry
from .spec import (
    EnclaveSpec,
    ImageSpec,
    ModelSpec,
    SecretsSpec,
    ServiceSpec,
    SigningSpec,
    Spec,
)
from .spec_file import SPEC_NAME

#: The framework `init --model` picks, by the model's suffix (a directory: a TensorFlow
#: SavedModel, for tfserving), when it serves the model; else the first other that does.
PREFERRED_FRAMEWORKS = {".tflite": "tflite", ".onnx": "openvino", ".xml": "openvino"}
DIRECTORY_FRAMEWORK = "tfserving"


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
        answer = _answer(registry, spec, model)
        if answer is None:
            continue
        checks[index] = answer
        if answer.problem:
            problems.append(
                Problem(
                    ("models", index, "path"),
                    f"{model.path}: {answer.problem}; framework {framework} "
                    f"serves {answer.accepted}",
                )
            )
    if problems:
        raise spec_errors(spec, problems)
    return ModelChecks(framework, checks)


def _answer(registry: PluginRegistry, spec: Spec, model: ModelSpec) -> ModelCheck | None:
    """The plugins' verdict on one model: the first problem, else the first answer that
    reports state, else the first answer; None when no plugin checks the framework."""
    answers = [
        a
        for a in registry.pm.hook.enclave_build_check_model(
            framework=spec.service.framework, model=model, spec=spec
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
        return None
    failed = next((a for a in answers if a.problem), None)
    return failed or next((a for a in answers if a.stateful), answers[0])


def probe_spec(framework: Framework, model: Path, directory: Path) -> Spec:
    """A spec of *framework*'s defaults serving *model* from ``DIRECTORY/spec.toml``: what
    `init` checks a model against before it writes a spec."""
    values = {f.name: f.default for f in framework.section.fields} if framework.section else {}
    sections = {framework.section.name: values} if framework.section is not None else {}
    directory = directory.resolve()
    return Spec(
        path=directory / SPEC_NAME,
        service=ServiceSpec(directory.name, framework.name, "gramine"),
        models=(ModelSpec("model", model.resolve(), True, 1, None),),
        enclave=EnclaveSpec(None, None, False, False, 0, 0),
        image=ImageSpec(None, None),
        signing=SigningSpec(None, None, None, None, "0000-00-00"),
        secrets=SecretsSpec(None, None, directory / "keys"),
        plugin_sections=sections,
    )


def check_model_file(
    registry: PluginRegistry, framework: Framework, model: Path, directory: Path
) -> ModelCheck | None:
    """*framework*'s verdict on the model file or directory *model* for a project in
    *directory* (its section's defaults); None when its plugin does not check models."""
    spec = probe_spec(framework, model, directory)
    return _answer(registry, spec, spec.models[0])


def _preferred(model: Path) -> str | None:
    if model.is_dir():
        return DIRECTORY_FRAMEWORK
    return PREFERRED_FRAMEWORKS.get(model.suffix.lower())


def _candidates(model: Path, names: list[str]) -> list[str]:
    preferred = _preferred(model)
    first = [preferred] if preferred in names else []
    return first + sorted(n for n in names if n != preferred)


def choose_framework_for(
    registry: PluginRegistry,
    frameworks: Mapping[str, Framework],
    model: Path,
    directory: Path,
    *,
    named: str | None = None,
) -> tuple[Framework, list[str]]:
    """The framework for the model *model* (`init --model`): *named* if given and it serves
    the model (or does not check models), else the preferred one that serves it
    (:data:`PREFERRED_FRAMEWORKS`); with the names of every framework whose check accepts
    the model. UsageError (exit 2) naming them, and why, when *named* does not serve it or
    none does."""
    verdicts = {
        name: check_model_file(registry, frameworks[name], model, directory)
        for name in _candidates(model, list(frameworks))
    }
    serving = [n for n, v in verdicts.items() if v is not None and v.problem is None]
    if named is not None:
        verdict = verdicts.get(named)
        if verdict is None or verdict.problem is None:
            return frameworks[named], serving
        others = (
            f"frameworks that serve it: {', '.join(serving)} (--framework {serving[0]}, or "
            "leave --framework out to pick it)"
            if serving
            else "no installed framework serves it"
        )
        raise UsageError(
            f"--model {model}: framework {named} does not serve it: {verdict.problem}; "
            f"{named} serves {verdict.accepted}. {others[0].upper()}{others[1:]}"
        )
    if serving:
        return frameworks[serving[0]], serving
    checked = {n: v for n, v in verdicts.items() if v is not None and v.problem}
    if not checked:
        raise UsageError(
            f"--model {model}: no installed framework says it serves this model; name one "
            "with --framework"
        )
    preferred = _preferred(model)
    if preferred in checked:
        verdict = checked[preferred]
        raise UsageError(
            f"--model {model}: {verdict.problem}; no installed framework serves it "
            f"(framework {preferred} serves {verdict.accepted})"
        )
    reasons = "; ".join(f"{n}: {v.problem}" for n, v in checked.items())
    raise UsageError(f"--model {model}: no installed framework serves it ({reasons})")


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
