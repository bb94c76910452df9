"""Name -> spec registries built from the collecting ``cpt_register_*`` hooks."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Iterator, Mapping, TypeVar

from .config import parse_options
from .errors import RegistryError

if TYPE_CHECKING:
    from .config import RunConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    spec: T
    provider: str  # plugin name that registered it


class Registry(Generic[T]):
    """Maps names (and aliases) to specs, remembering which plugin provided each.

    Raises:
        RegistryError: on a duplicate name or alias (naming both providers), or on
            :meth:`get` of an unknown name (with a did-you-mean suggestion).
    """

    def __init__(self, singular: str):
        self.singular = singular
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def add(self, spec: T, provider: str) -> None:
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{provider} registered a {self.singular} without a name: {spec!r}")
        for key in (name, *getattr(spec, "aliases", ())):
            owner = self._owner(key)
            if owner is not None:
                raise RegistryError(
                    f"{self.singular} '{key}' is registered twice: by {owner} and by {provider}"
                )
        self._entries[name] = Entry(spec, provider)
        for alias in getattr(spec, "aliases", ()):
            self._aliases[alias] = name

    def _owner(self, key: str) -> str | None:
        if key in self._entries:
            return self._entries[key].provider
        if key in self._aliases:
            return self._entries[self._aliases[key]].provider
        return None

    def get(self, name: str) -> T:
        return self.entry(name).spec

    def resolve(self, name: str, values: Mapping[str, Any] | None = None, *, config: "RunConfig | None" = None,
                section: str = "") -> tuple[T, Any]:
        """The one options path of every registry: ``name`` -> ``(spec, options)``, with
        the spec's ``preset`` (if it has one) under the user's ``values``, parsed into the
        spec's options dataclass by :func:`cptcore.config.parse_options`.

        Args:
            values: the user's options for this plugin (e.g. ``config.strategy.options``).
            config, section: where the values came from, for error messages
                (``section`` is the dotted prefix, e.g. ``"logging.options.mlflow"``).

        Raises:
            RegistryError: unknown name (did-you-mean). ConfigError: unknown option or
                wrong type, naming the key and its source.
        """
        spec = self.get(name)
        merged = {**dict(getattr(spec, "preset", None) or {}), **dict(values or {})}
        options = parse_options(getattr(spec, "options", None), merged, owner=f"{self.singular} '{spec.name}'",
                                config=config, section=section)
        return spec, options

    def entry(self, name: str) -> Entry[T]:
        key = self._aliases.get(name, name)
        if key in self._entries:
            return self._entries[key]
        valid = self.all_names()
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        listing = ", ".join(valid) if valid else "none registered"
        raise RegistryError(f"unknown {self.singular} '{name}'{hint} (valid: {listing})")

    def names(self) -> list[str]:
        """Primary names, sorted."""
        return sorted(self._entries)

    def all_names(self) -> list[str]:
        """Primary names and aliases, sorted."""
        return sorted([*self._entries, *self._aliases])

    def aliases_of(self, name: str) -> list[str]:
        return sorted(a for a, n in self._aliases.items() if n == name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.names())

    def __len__(self) -> int:
        return len(self._entries)
