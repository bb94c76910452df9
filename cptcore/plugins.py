"""The plugin-manager factory: built-ins, entry points, plugin files.

Nothing happens at import time; :func:`make_plugin_manager` builds a fresh manager every
time it is called, so tests and custom trainers get a reproducible set of plugins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

import pluggy

from . import __version__, builtin_plugins, hookspecs
from .errors import PluginError
from .registries import build_registry

ENTRY_POINT_GROUP = hookspecs.PROJECT


@dataclass(frozen=True)
class LoadFailure:
    """A plugin that could not be loaded (shown by ``cpt plugins``)."""

    name: str
    source: str  # "entry point" | "file" | "builtin"
    error: str


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered plugin came from."""

    name: str
    source: str  # "builtin" | "entry point" | "file" | "extra"
    version: str = ""


class CptPluginManager(pluggy.PluginManager):
    """A ``pluggy.PluginManager`` that also remembers where each plugin came from and
    which plugins failed to load."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.load_failures: list[LoadFailure] = []
        self._registries: dict[str, Any] = {}
        #: plugin files registered (``cpt --plugin``): ``(absolute path, sha256 of the bytes imported)``
        self.plugin_files: list[tuple[str, str]] = []

    def add_plugin_file(self, path: str | os.PathLike) -> None:
        """Import the plugin file ``path`` and register it (as ``file:NAME``), recording
        its absolute path and sha256 in :attr:`plugin_files`; cached registries are
        dropped so they include it. A file already registered is skipped.

        Raises:
            PluginError: missing file, an import error, or a misspelled hook name.
        """
        resolved = str(Path(path).resolve())
        if any(p == resolved for p, _ in self.plugin_files):
            return
        digest = file_sha256(path) if Path(path).is_file() else ""
        module = load_plugin_file(path)
        name = f"file:{Path(path).name}"
        if self.is_blocked(name):
            return
        self.register_from(module, name, "file")
        self.plugin_files.append((resolved, digest))
        self._registries.clear()
        try:
            self.check_pending()
        except pluggy.PluginValidationError as exc:
            problem = str(exc).split(" in plugin ")[0]
            raise PluginError(f"plugin '{name}': {problem}") from exc

    def register_from(self, plugin: Any, name: str, source: str, version: str = "") -> None:
        self.register(plugin, name=name)
        self.info[name] = PluginInfo(name=name, source=source, version=version)

    def registry(self, key: str):
        """The :class:`~cptcore.registry.Registry` for ``key`` ("strategies", "noise",
        "packers", "templates", "loggers"), built on first use and cached."""
        if key not in self._registries:
            self._registries[key] = build_registry(self, key)
        return self._registries[key]


def _env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def _strict() -> bool:
    return os.environ.get("CPT_STRICT_PLUGINS", "") not in ("", "0", "false", "no")


def builtin_modules() -> list[str]:
    """Dotted names of the built-in plugin modules (every public module of
    ``cptcore.builtin_plugins``), sorted so registration order is reproducible."""
    return sorted(
        f"{builtin_plugins.__name__}.{m.name}"
        for m in pkgutil.iter_modules(builtin_plugins.__path__)
        if not m.name.startswith("_")
    )


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


#: Module name prefix of plugin files (``cpt --plugin FILE`` imports ``FILE`` as
#: ``cpt_file_plugin_STEM``); the Ray executor pickles these modules by value, since no
#: worker can import them.
FILE_PLUGIN_PREFIX = "cpt_file_plugin_"


def load_plugin_file(path: str | os.PathLike) -> ModuleType:
    """Import a plugin from a ``.py`` file (``cpt --plugin FILE``).

    Raises:
        PluginError: the file is missing or raises on import.
    """
    p = Path(path)
    if not p.is_file():
        raise PluginError(f"plugin file not found: {p}")
    mod_name = f"{FILE_PLUGIN_PREFIX}{p.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot import plugin file {p}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        sys.modules.pop(mod_name, None)
        raise PluginError(f"plugin file {p} failed to import: {type(exc).__name__}: {exc}") from exc
    return module


def _report(failure: LoadFailure) -> None:
    print(
        f"cptcore: skipping plugin '{failure.name}' ({failure.source}): {failure.error}",
        file=sys.stderr,
    )


def make_plugin_manager(
    builtins: bool = True,
    entrypoints: bool = True,
    extra: Iterable[Any] = (),
    blocked: Iterable[str] = (),
    files: Iterable[str | os.PathLike] = (),
) -> CptPluginManager:
    """Build a fresh plugin manager.

    Args:
        builtins: register the modules of ``cptcore.builtin_plugins`` (first, so that
            third-party implementations of firstresult hooks run before them).
        entrypoints: load the ``cptcore`` entry-point group, one plugin at a time. A
            plugin that fails to import is reported on stderr, recorded in
            ``pm.load_failures`` and skipped; with ``CPT_STRICT_PLUGINS=1`` it is fatal.
        extra: plugin objects (modules, classes or instances) to register after those.
        blocked: plugin names not to register; ``CPT_DISABLE_PLUGINS=a,b`` adds to them.
        files: ``.py`` files to import and register as plugins (``cpt --plugin``).

    Returns:
        A :class:`CptPluginManager` on which ``check_pending()`` has passed.

    Raises:
        PluginError: a plugin implements a hook that does not exist (a misspelling),
            a plugin file fails to import, or any load failure under strict mode.
    """
    pm = CptPluginManager()
    blocked_names = set(blocked) | set(_env_list("CPT_DISABLE_PLUGINS"))
    for name in blocked_names:
        pm.set_blocked(name)

    if builtins:
        for dotted in builtin_modules():
            short = dotted.rsplit(".", 1)[1]
            if short in blocked_names or dotted in blocked_names:
                continue
            pm.register_from(importlib.import_module(dotted), short, "builtin", _cptcore_version())

    if entrypoints:
        _load_entry_points(pm, blocked_names)

    for path in files:
        if f"file:{Path(path).name}" not in blocked_names:
            pm.add_plugin_file(path)

    for obj in extra:
        name = getattr(obj, "__name__", None) or type(obj).__name__
        if name not in blocked_names:
            pm.register_from(obj, name, "extra")

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        problem = str(exc).split(" in plugin ")[0]  # pluggy appends the plugin's repr
        raise PluginError(f"plugin '{name}': {problem}") from exc
    return pm


def _cptcore_version() -> str:
    return f"cptcore {__version__}"


def _load_entry_points(pm: CptPluginManager, blocked: set[str]) -> None:
    eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in blocked or pm.is_blocked(ep.name):
            continue
        version = ""
        dist = getattr(ep, "dist", None)
        if dist is not None:
            version = f"{dist.metadata['Name']} {dist.version}"
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not take the CLI down
            failure = LoadFailure(ep.name, "entry point", f"{type(exc).__name__}: {exc}")
            if _strict():
                raise PluginError(
                    f"plugin '{ep.name}' failed to load: {failure.error} (CPT_STRICT_PLUGINS is set)"
                ) from exc
            pm.load_failures.append(failure)
            _report(failure)
            continue
        try:
            pm.register_from(plugin, ep.name, "entry point", version)
        except ValueError as exc:  # already registered under that name or object
            failure = LoadFailure(ep.name, "entry point", str(exc))
            if _strict():
                raise PluginError(f"plugin '{ep.name}': {exc}") from exc
            pm.load_failures.append(failure)
            _report(failure)
