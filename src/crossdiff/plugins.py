"""The one plugin manager: built-in and third-party plugins load through the same entry points.

Every plugin, first-party ones included, is an entry point of group ``crossdiff``. A plugin that
fails to import or register is recorded as a :class:`PluginFailure` and the others still load.
A name is one plugin: registering in code the very module an installed entry point already
registered is a no-op, and another object under a taken name is refused with
:class:`PluginNameCollision` naming both (never a silent unregistration).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pluggy

from crossdiff import hookspecs
from crossdiff.errors import ConfigError

ENTRY_POINT_GROUP = "crossdiff"

HOOK_KINDS: dict[str, str] = {
    "crossdiff_corpus_sources": "corpus source",
    "crossdiff_model_adapters": "model adapter",
    "crossdiff_model_loaders": "model loader",
    "crossdiff_analyses": "analysis",
}
"""Hook name -> the kind of provider it yields, as ``crossdiff plugins`` shows it."""


class PluginNameCollision(ConfigError):
    """A plugin registered in code under a name another plugin already holds."""


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported or registered."""

    name: str
    origin: str
    error: str


@dataclass
class CrossdiffPluginManager:
    """A pluggy manager plus the record of where each plugin came from and what failed."""

    pm: pluggy.PluginManager
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    @property
    def hook(self) -> pluggy.HookRelay:
        """The hook relay: ``manager.hook.crossdiff_analyses()``."""
        return self.pm.hook

    def register(self, plugin: object, name: str, origin: str = "registered in code") -> None:
        """Register ``plugin`` under ``name``, recording a failure instead of raising.

        The same object already registered under ``name`` (an installed entry point that the
        code registers again) is kept as it is; another object under a taken name raises
        :class:`PluginNameCollision`, leaving the registered one in place.
        """
        holder = self.pm.get_plugin(name)
        if holder is plugin:
            return
        if holder is not None:
            raise PluginNameCollision(
                f"plugin name {name!r} is already taken by {self.origins.get(name, 'a plugin')}; "
                f"{origin} is another object of that name: register it under another name, or "
                "uninstall the installed distribution (an installed plugin needs no registration)"
            )
        if self.pm.is_registered(plugin):
            raise PluginNameCollision(
                f"plugin {name!r} ({origin}) is already registered under the name "
                f"{self.pm.get_name(plugin)!r}; an installed plugin needs no registration in code"
            )
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except Exception as error:  # a broken plugin must not take the others down
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self.failures.append(PluginFailure(name, origin, f"{type(error).__name__}: {error}"))
            return
        self.origins[name] = origin

    def plugin_names(self) -> list[str]:
        """Names of the registered plugins, in registration order."""
        return [name for name in self.origins if self.pm.get_plugin(name) is not None]


def create_plugin_manager(
    plugins: Iterable[tuple[str, object]] = (), load_entry_points: bool = True
) -> CrossdiffPluginManager:
    """Make a fresh plugin manager: entry-point plugins first, then ``plugins`` (name, object)."""
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    manager = CrossdiffPluginManager(pm)
    if load_entry_points:
        for entry_point in _crossdiff_entry_points():
            origin = _entry_point_origin(entry_point)
            try:
                plugin = entry_point.load()
            except Exception as error:
                message = f"{type(error).__name__}: {error}"
                manager.failures.append(PluginFailure(entry_point.name, origin, message))
                continue
            manager.register(plugin, entry_point.name, origin)
        manager.failures.extend(_shadowed_entry_points())
    for name, plugin in plugins:
        manager.register(plugin, name)
    return manager


def _crossdiff_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of group ``crossdiff``, one per name (the first distribution found wins)."""
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(entry_point.name, entry_point)
    return list(seen.values())


def _shadowed_entry_points() -> list[PluginFailure]:
    """Entry points whose name an earlier distribution already took (they are not loaded)."""
    first: dict[str, importlib.metadata.EntryPoint] = {}
    shadowed = []
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name not in first:
            first[entry_point.name] = entry_point
        elif entry_point.value != first[entry_point.name].value:
            shadowed.append(
                PluginFailure(
                    entry_point.name,
                    _entry_point_origin(entry_point),
                    "NameCollision: the name is taken by "
                    f"{_entry_point_origin(first[entry_point.name])}; not loaded",
                )
            )
    return shadowed


def _entry_point_origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    where = f"{dist.name}=={dist.version}" if dist is not None else "unknown distribution"
    return f"{where} (entry point {entry_point.value})"


@dataclass(frozen=True)
class PluginInfo:
    """One row of ``crossdiff plugins``: a plugin, the kinds it provides and what exactly."""

    name: str
    origin: str
    module_path: str
    provides: dict[str, list[str]]
    error: str | None = None


def describe_plugins(manager: CrossdiffPluginManager) -> list[PluginInfo]:
    """Describe every plugin: each hook it implements, called alone, gives the names it provides."""
    rows: list[PluginInfo] = []
    for name in manager.plugin_names():
        plugin = manager.pm.get_plugin(name)
        provides: dict[str, list[str]] = {}
        error = None
        for caller in manager.pm.get_hookcallers(plugin) or ():
            kind = HOOK_KINDS.get(caller.name, caller.name)
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                try:
                    provided = impl.function()
                except Exception as exc:
                    error = f"{caller.name} raised {type(exc).__name__}: {exc}"
                    continue
                provides.setdefault(kind, []).extend(provider_name(item) for item in provided or ())
        rows.append(PluginInfo(name, manager.origins[name], _module_path(plugin), provides, error))
    for failure in manager.failures:
        rows.append(PluginInfo(failure.name, failure.origin, "-", {}, failure.error))
    return rows


def provider_name(provider: object) -> str:
    """The name a provider is known by: its ``name``, else its ``domain`` (corpus sources)."""
    return str(getattr(provider, "name", None) or getattr(provider, "domain", provider))


def _module_path(plugin: object) -> str:
    try:
        source = inspect.getsourcefile(plugin if inspect.ismodule(plugin) else type(plugin))
    except TypeError:
        source = None
    return str(Path(source)) if source else "-"


def collect(hook_results: Sequence[Iterable[object]]) -> list[object]:
    """Flatten the per-plugin lists a hook returns, newest plugin first (pluggy's order)."""
    return [item for result in hook_results for item in (result or ())]
