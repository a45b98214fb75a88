"""Plugin manager: registers the builtin plugins and every ``enclave_build`` entry point, and
indexes what they provide.

Builtins come from :data:`DEFAULT_PLUGINS` (a list of modules, like pytest's
``default_plugins``); third-party plugins from the entry-point group ``enclave_build``. Both
implement the same hooks (:mod:`builder.hookspecs`). A plugin that fails to import, whose hook
raises, or that returns something else than it should is recorded as a
:class:`PluginFailure` and left out; the others keep working, and only what needs the broken
plugin fails (naming it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pluggy

from enclave_build.contract.schema import Section

from . import hookspecs
from .errors import EnclaveBuildError
from .plugin_types import Framework, LibOS
from .spec import LibOSSection

ENTRY_POINT_GROUP = "enclave_build"

#: The builtin plugins: (name, module), registered like third-party plugins, before them.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("gramine", "enclave_build.builder.gramine.plugin"),
    ("occlum", "enclave_build.builder.occlum.plugin"),
    ("tfserving", "enclave_build.plugins.tfserving"),
    ("tflite", "enclave_build.plugins.tflite"),
    ("openvino", "enclave_build.plugins.openvino"),
    ("secret-server", "enclave_build.plugins.secret_server"),
    ("k8s", "enclave_build.builder.cli.k8s"),
    ("attest", "enclave_build.builder.cli.attest"),
)
#: The distribution the builtins belong to (``enclave-build plugins`` shows it as their source).
DISTRIBUTION = "enclave-build"


class PluginError(EnclaveBuildError):
    """A plugin failed to load, or what a build needs is missing or provided twice."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str  # distribution (or module) that provides it
    hooks: tuple[str, ...]
    frameworks: tuple[str, ...]
    libos: tuple[str, ...]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be used: *name* (entry-point or builtin name), *source* (its
    distribution, or the module it names), *error* (what went wrong)."""

    name: str
    source: str
    error: str

    def describe(self) -> str:
        return f"{self.name} ({self.source}): {self.error}"


class PluginRegistry:
    """Holds the pluggy manager plus the frameworks and libOS backends plugins provide.

    *extra_plugins* are registered after the builtins and the entry points (tests, embedding);
    *load_entry_points* False leaves third-party plugins out; *builtins* False leaves the
    builtins out. Failures are in :attr:`failures`; nothing here raises for a broken plugin.
    """

    def __init__(
        self,
        extra_plugins: Iterable[Any] = (),
        load_entry_points: bool = True,
        builtins: bool = True,
        entry_points: Iterable[Any] | None = None,
    ):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.failures: list[PluginFailure] = []
        self._dist: dict[str, tuple[str, str]] = {}
        self._provided: dict[str, dict[str, tuple[str, ...]]] = {}
        self._conflicts: dict[tuple[str, str], list[str]] = {}
        self.frameworks: dict[str, Framework] = {}
        self.libos: dict[str, LibOS] = {}
        if builtins:
            self._load_builtins()
        if load_entry_points:
            self._load_entry_points(entry_points)
        for plugin in extra_plugins:
            self._register(
                plugin,
                getattr(plugin, "__name__", None) or _object_name(plugin),
                (_module_name(plugin), "-"),
            )
        frameworks = self._collect("enclave_build_frameworks", Framework, "framework")
        libos = self._collect("enclave_build_libos", LibOS, "libOS backend")
        # (a plugin dropped by its libOS hook takes its frameworks with it)
        self.frameworks = {
            n: item for n, (item, owner) in frameworks.items() if owner in self._dist
        }
        self.libos = {n: item for n, (item, owner) in libos.items() if owner in self._dist}

    # ------------------------------------------------------------------ loading

    def _load_builtins(self) -> None:
        from enclave_build import __version__

        for name, module in DEFAULT_PLUGINS:
            try:
                plugin = importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                self._fail(name, module, f"failed to load: {_error(exc)}")
                continue
            self._register(plugin, name, (DISTRIBUTION, __version__))

    def _load_entry_points(self, entry_points: Iterable[Any] | None) -> None:
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        for ep in entry_points:
            if self.pm.has_plugin(ep.name) or ep.value in {m for _, m in DEFAULT_PLUGINS}:
                continue  # a builtin (an older install may still list it as an entry point)
            dist = getattr(ep, "dist", None)
            source = (dist.name, dist.version) if dist else (ep.value, "?")
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not hide the others
                label = f"{dist.name}: {ep.value}" if dist else ep.value
                self._fail(ep.name, label, f"failed to load: {_error(exc)}")
                continue
            self._register(plugin, ep.name, source)

    def _register(self, plugin: Any, name: str, source: tuple[str, str]) -> None:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001 - e.g. an implementation of a hook that does not exist
            self._fail(name, source[0], f"cannot be registered: {_error(exc)}")
            return
        self._dist[name] = source

    def _fail(self, name: str, source: str, error: str) -> None:
        self.failures.append(PluginFailure(name, source, error))

    def _drop(self, name: str, error: str) -> None:
        """Unregister a plugin whose hook failed: none of its hooks runs any more."""
        source = self._dist.pop(name, (name, "-"))[0]
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        for item, provided in self._provided.pop(name, {}).items():
            index = self.frameworks if item == "enclave_build_frameworks" else self.libos
            for provided_name in provided:
                index.pop(provided_name, None)
        self._fail(name, source, error)

    def _collect(self, hook: str, kind: type, what: str) -> dict[str, tuple[Any, str]]:
        """Call *hook* of each plugin on its own, so that one that raises or returns the wrong
        thing is recorded and dropped; a name two plugins provide is a conflict: neither is
        used, and :meth:`framework`/:meth:`libos_backend` name both. Returns each name's
        object and the plugin that provides it."""
        owners: dict[str, list[str]] = {}
        items: dict[str, Any] = {}
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            name = impl.plugin_name
            try:
                result = list(impl.function() or [])
                wrong = [item for item in result if not isinstance(item, kind)]
                if wrong:
                    raise TypeError(f"returned {wrong[0]!r} where a {kind.__name__} was expected")
            except Exception as exc:  # noqa: BLE001 - a failing plugin is dropped, the others go on
                self._drop(name, f"failed in {hook}: {_error(exc)}")
                continue
            self._provided.setdefault(name, {})[hook] = tuple(item.name for item in result)
            for item in result:
                owners.setdefault(item.name, []).append(name)
                items[item.name] = item
        out: dict[str, tuple[Any, str]] = {}
        for item_name, plugins in owners.items():
            if len(plugins) > 1:
                self._conflicts[(what, item_name)] = sorted(plugins)
                self._fail(
                    ", ".join(sorted(plugins)),
                    "conflict",
                    f"both provide the {what} {item_name!r}: neither is used",
                )
            else:
                out[item_name] = (items[item_name], plugins[0])
        return dict(sorted(out.items()))

    # ------------------------------------------------------------------ look-ups

    def framework(self, name: str) -> Framework:
        try:
            return self.frameworks[name]
        except KeyError:
            raise PluginError(self._missing("framework", name, self.frameworks)) from None

    def libos_backend(self, name: str) -> LibOS:
        try:
            return self.libos[name]
        except KeyError:
            raise PluginError(self._missing("libOS backend", name, self.libos)) from None

    def _missing(self, what: str, name: str, installed: dict[str, Any]) -> str:
        conflict = self._conflicts.get((what, name))
        if conflict:
            return (
                f"two plugins provide the {what} {name!r} ({', '.join(conflict)}): "
                "uninstall one of them"
            )
        return (
            f"{what} {name!r} is not installed; installed: "
            f"{', '.join(installed) or 'none'}{self.failure_note()}"
        )

    def failure_note(self) -> str:
        """``"; plugins that failed to load (one may provide it): ..."`` or ``""``: what an
        error about something not installed adds, naming the broken plugins."""
        if not self.failures:
            return ""
        return (
            "; plugins that could not be used (one may provide it): "
            + "; ".join(f.describe() for f in self.failures)
            + " (see `enclave-build plugins`)"
        )

    def framework_sections(self) -> dict[str, Section | None]:
        return {name: fw.section for name, fw in self.frameworks.items()}

    def tls_refusals(self) -> dict[str, str]:
        """Framework name -> why ``[tls]`` does not apply to it (frameworks it applies to are
        left out)."""
        return {name: fw.tls_refusal for name, fw in self.frameworks.items() if fw.tls_refusal}

    def libos_sections(self) -> dict[str, LibOSSection]:
        return {name: backend.spec_section() for name, backend in self.libos.items()}

    def call_each(self, hook: str, **kwargs: Any) -> None:
        """Call *hook* of every plugin on its own; a plugin whose implementation raises is
        recorded in :attr:`failures` and dropped, the others still run (for hooks whose
        failure must not stop anything else, such as ``enclave_build_register_commands``)."""
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - a failing plugin is dropped, the others go on
                self._drop(impl.plugin_name, f"failed in {hook}: {_error(exc)}")

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0] or ""):
            if name is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            provided = self._provided.get(name, {})
            dist_name, version = self._dist.get(name, (_module_name(plugin), "-"))
            infos.append(
                PluginInfo(
                    name,
                    version,
                    dist_name,
                    hooks,
                    provided.get("enclave_build_frameworks", ()),
                    provided.get("enclave_build_libos", ()),
                )
            )
        return infos


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _module_name(plugin: Any) -> str:
    return plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__


def _object_name(plugin: Any) -> str:
    return f"{_module_name(plugin)}-{id(plugin):x}"


__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginFailure",
    "PluginInfo",
    "PluginRegistry",
]
