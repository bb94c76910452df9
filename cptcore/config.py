"""The typed run config: YAML file, then CLI flags, then ``--set section.key=value``.

One nested config of frozen dataclasses (:class:`RunConfig`, defined in
:mod:`cptcore.config_schema`). Loading is strict: an
unknown key or a value of the wrong type is a :class:`~cptcore.errors.ConfigError` that
names the key and where it came from (the YAML file, a flag, or ``--set``).

The ``strategy`` and ``noise`` sections hold plugin-specific options besides their fixed
keys (``name``, ``precision``); those go to ``options`` and are validated later, against
the options dataclass the chosen plugin declares, by :func:`parse_options`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ConfigError
from .config_schema import (  # the sections (re-exported: cptcore.config.RunConfig etc.)
    _OPEN_SECTIONS, CheckpointingConfig, DataConfig, EvalConfig, LoggingConfig, LoraConfig, ModelConfig,
    NoiseConfig, OptimizerConfig, PluginsConfig, RunConfig, ScheduleConfig, StrategyConfig, TrainingConfig,
)
from .eval.sets import check_budget


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (lightly coerced)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if errors else ConfigError(f"{source}: {key}: bad value {value!r}")
    if origin in (list, tuple, Sequence):
        if isinstance(value, str) and "," in value:
            value = [v.strip() for v in value.split(",")]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list, got {type(value).__name__} {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{source}: {key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {key}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # PyYAML reads "1e-4" as a string
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {key}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: str, valid: Sequence[str], source: str, what: str = "config key") -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown {what} '{key}'{hint} (valid: {', '.join(sorted(valid))})")


def _source_of(dotted: str, sources: Mapping[str, str]) -> str:
    """Where ``dotted`` was set: its own source, else that of a key below it (a whole
    unknown section such as ``modle:`` is only recorded through its leaves)."""
    if dotted in sources:
        return sources[dotted]
    below = [src for key, src in sources.items() if key.startswith(dotted + ".")]
    return below[-1] if below else "config"


def _build(cls: type, values: Mapping[str, Any], prefix: str, sources: Mapping[str, str]) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "sources"]
    kwargs: dict[str, Any] = {}
    options: dict[str, Any] = {}
    section = prefix.rstrip(".")
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        src = _source_of(dotted, sources)
        if key not in names or (key == "options" and section in _OPEN_SECTIONS):
            if section in _OPEN_SECTIONS:
                if key == "options" and isinstance(value, Mapping):  # section.options.KEY = section.KEY
                    for inner, v in value.items():
                        if inner in options:
                            raise ConfigError(f"{src}: '{section}.{inner}' is set twice (also as "
                                              f"'{section}.options.{inner}')")
                        options[inner] = v
                    continue
                if key in options:
                    raise ConfigError(f"{src}: '{dotted}' is set twice (also as '{section}.options.{key}')")
                options[key] = value
                continue
            raise _unknown(dotted, names, src)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{src}: '{dotted}' must be a mapping of keys, got {value!r}")
            kwargs[key] = _build(tp, value, f"{dotted}.", sources)
        else:
            kwargs[key] = _coerce(value, tp, dotted, src)
    if options:
        kwargs["options"] = options
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def parse_set(item: str) -> tuple[str, Any]:
    """Parse one ``--set section.key=value``; the value is read as YAML (so ``2`` is an
    int, ``true`` a bool, ``[a, b]`` a list).

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item}: expected section.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or "." not in key:
        raise ConfigError(f"--set {item}: expected section.key=value (e.g. training.max_steps=10)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses a key repeated in one mapping (PyYAML keeps
    the last one silently: ``model:`` written twice dropped the first section)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Raises:
        ConfigError: missing file, not UTF-8, YAML syntax error or a key repeated in a
            mapping (with its line), or a top level that is not a mapping.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: invalid UTF-8") from None
    try:
        data = yaml.load(text, Loader=_unique_key_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections")
    return data


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    sets: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Resolve a :class:`RunConfig` from, in increasing priority: ``base`` (a dict, e.g. a
    checkpoint's saved config), the YAML file at ``path``, ``overrides`` (dotted key ->
    value from CLI flags; ``None`` values are ignored; a key may be ``"--flag"``-labelled
    as ``{"training.max_steps": (10, "--max-steps")}``), then ``sets`` (``--set k=v``).

    Raises:
        ConfigError: unknown key or wrong type, naming the key and its source.
    """
    tree: dict[str, Any] = {}
    sources: dict[str, str] = {}

    def apply(flat: Mapping[str, Any], label: str) -> None:
        for dotted, value in flat.items():
            if value is None and label == "command line":
                continue
            _set_dotted(tree, dotted, value)
            sources[dotted] = label

    if base:
        apply(_flatten(base), "checkpoint config")
    if path is not None:
        apply(_flatten(read_yaml(path)), str(path))
    if overrides:
        apply(dict(overrides), "command line")
    for item in sets:
        key, value = parse_set(item)
        apply({key: value}, f"--set {item}")
    return build_config(tree, sources)


def build_config(tree: Mapping[str, Any], sources: Mapping[str, str]) -> RunConfig:
    """A :class:`RunConfig` from a nested dict (the form :meth:`RunConfig.to_dict`
    gives), ``sources`` naming where each dotted key came from (used in errors).

    Raises:
        ConfigError: unknown key or wrong type, naming the key and its source; an empty
            ``stages`` list (it ran as one implicit stage, as if absent).
    """
    sources = dict(sources)
    cfg = _build(RunConfig, tree, "", sources)
    if "stages" in tree and not cfg.stages:
        raise ConfigError(f"{_source_of('stages', sources)}: stages is an empty list (leave the key out for one stage)")
    cfg = dataclasses.replace(cfg, sources=sources)
    budget = check_budget(cfg.eval.budget, cfg.eval.on_budget, cfg.data.eval, lambda key: _source_of(key, sources),
                          mc_sets=cfg.data.eval_mc)
    return dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, budget=budget))


def parse_options(cls: type | None, values: Mapping[str, Any], *, owner: str, config: RunConfig | None = None, section: str = "") -> Any:
    """Validate plugin options against the plugin's options dataclass.

    Args:
        cls: the plugin's options dataclass, or ``None`` if it takes none.
        values: the user's options (``config.strategy.options`` etc.).
        owner: how to name the plugin in errors, e.g. ``"strategy 'hybrid3d'"``.
        config, section: used to say where each key came from.

    Returns:
        An instance of ``cls`` (``None`` when ``cls`` is ``None`` and no values given).

    Raises:
        ConfigError: unknown option (with did-you-mean) or wrong type.
    """
    def src(key: str) -> str:
        if config is None:  # plain options (cpt prepare's --set packer.KEY=...)
            return f"--set {section}.{key}" if section else owner
        return config.source(f"{section}.{key}" if section else key)

    if cls is None:
        if values:
            key = next(iter(values))
            raise ConfigError(f"{src(key)}: {owner} takes no options, got '{key}'")
        return None
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown(f"{section}.{key}" if section else key, names, src(key), what=f"option for {owner}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}" if section else key, src(key))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{owner}: {exc}") from exc


def write_resolved(config: RunConfig, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config as YAML into ``directory`` (created) and return its path."""
    import yaml

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = d / name
    out.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
    return out


def options_to_dict(options: Any) -> dict[str, Any]:
    """A plugin options instance as a plain dict ({} for None)."""
    return dataclasses.asdict(options) if options is not None else {}
