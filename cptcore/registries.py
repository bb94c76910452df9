"""Build the registries from the registration hooks, naming each spec's provider."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import PluginError
from .registry import Registry
from .specs import REGISTRY_KINDS, RegistryKind

if TYPE_CHECKING:
    import pluggy


def registry_kind(key: str) -> RegistryKind:
    for kind in REGISTRY_KINDS:
        if key in (kind.key, kind.command):
            return kind
    raise KeyError(key)


def build_registry(pm: "pluggy.PluginManager", key: str) -> Registry:
    """Call every implementation of ``kind.hook`` and collect the specs.

    Raises:
        RegistryError: two providers register the same name or alias.
        PluginError: an implementation returns something that is not a list of specs.
    """
    kind = registry_kind(key)
    registry: Registry = Registry(kind.singular)
    hook = getattr(pm.hook, kind.hook)
    # Built-ins are registered first; hookimpls are returned in registration order.
    for impl in hook.get_hookimpls():
        specs = impl.function()
        if specs is None:
            continue
        if not isinstance(specs, (list, tuple)):
            raise PluginError(
                f"plugin '{impl.plugin_name}': {kind.hook} must return a list, got {type(specs).__name__}"
            )
        for spec in specs:
            registry.add(spec, impl.plugin_name)
    return registry


def call_provider(pm: "pluggy.PluginManager", hook_name: str, **kwargs: Any) -> Any:
    """Call a firstresult provider hook; ``None`` from every implementation is an error.

    Raises:
        PluginError: no plugin provided a result.
    """
    result = getattr(pm.hook, hook_name)(**kwargs)
    if result is None:
        raise PluginError(f"no plugin provided {hook_name} (is a provider blocked?)")
    return result
