"""Plugin manager: loads every ``enclave_build`` entry point and indexes what they provide."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import hookspecs
from .errors import EnclaveBuildError
from .plugin_api import Framework, LibOS

ENTRY_POINT_GROUP = "enclave_build"


class PluginError(EnclaveBuildError):
    """A plugin failed to load or conflicts with another."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    version: str
    source: str        # distribution (or module) that provides it
    hooks: tuple[str, ...]
    frameworks: tuple[str, ...]
    libos: tuple[str, ...]


class PluginRegistry:
    """Holds the pluggy manager plus the frameworks and libOS backends plugins provide."""

    def __init__(self, extra_plugins: Iterable[Any] = (), load_entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._dist: dict[str, tuple[str, str]] = {}
        if load_entry_points:
            self._load_entry_points()
        for plugin in extra_plugins:
            self.pm.register(plugin, name=getattr(plugin, "__name__", None))
        self.frameworks = self._collect(self.pm.hook.enclave_build_frameworks(), Framework,
                                        "framework")
        self.libos = self._collect(self.pm.hook.enclave_build_libos(), LibOS, "libOS backend")

    def _load_entry_points(self) -> None:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.get_plugin(ep.name) is not None:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not hide the others
                raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
            self.pm.register(plugin, name=ep.name)
            dist = ep.dist
            self._dist[ep.name] = ((dist.name, dist.version) if dist else (ep.value, "?"))

    def _collect(self, results: list[list[Any]], kind: type, what: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for items in results:
            for item in items or []:
                if not isinstance(item, kind):
                    raise PluginError(f"a plugin returned {item!r} where a {kind.__name__} was expected")
                if item.name in out:
                    raise PluginError(f"two plugins provide the {what} {item.name!r}")
                out[item.name] = item
        return dict(sorted(out.items()))

    def framework(self, name: str) -> Framework:
        try:
            return self.frameworks[name]
        except KeyError:
            raise PluginError(f"framework {name!r} is not installed; installed: "
                              f"{', '.join(self.frameworks) or 'none'}") from None

    def libos_backend(self, name: str) -> LibOS:
        try:
            return self.libos[name]
        except KeyError:
            raise PluginError(f"libOS backend {name!r} is not installed; installed: "
                              f"{', '.join(self.libos) or 'none'}") from None

    def framework_sections(self) -> dict[str, Any]:
        return {name: fw.section for name, fw in self.frameworks.items()}

    def describe(self) -> list[PluginInfo]:
        infos = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0] or ""):
            if name is None:
                continue
            hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or []))
            provided_fw = tuple(_provided(plugin, "enclave_build_frameworks"))
            provided_os = tuple(_provided(plugin, "enclave_build_libos"))
            dist_name, version = self._dist.get(name, (_module_name(plugin), "-"))
            infos.append(PluginInfo(name, version, dist_name, hooks, provided_fw, provided_os))
        return infos


def _provided(plugin: Any, hook: str) -> list[str]:
    impl = getattr(plugin, hook, None)
    if impl is None:
        return []
    return [item.name for item in impl() or []]


def _module_name(plugin: Any) -> str:
    return plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__name__
