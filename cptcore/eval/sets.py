"""Named eval sets and budgets in the run config (torch-free).

``--eval-data NAME=PATH`` (repeatable) or ``data.eval: {NAME: PATH}`` in YAML; an
unnamed ``PATH`` (the old form, also a YAML list) is named after its folder.
``eval.budget.NAME: 0.05`` is the largest bpb increase over step 0 allowed on the
retained set NAME; ``eval.on_budget`` says what happens past it (``warn``, ``stop``,
``keep_best``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ON_BUDGET = ("warn", "stop", "keep_best")


def check_name(name: str, where: str) -> str:
    """``name`` if it is a valid set name (letters, digits, ``_ . -``; it becomes part of
    metric keys ``eval/NAME/bpb``).

    Raises:
        ConfigError: invalid name.
    """
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{where}: eval set name {name!r} must be letters, digits, '_', '.' or '-' (NAME=PATH)")
    return name


def folder_name(path: str) -> str:
    """The name an unnamed ``PATH`` gets: its last folder component (a ``:WEIGHT``
    suffix dropped), with characters a name cannot hold replaced by ``_``."""
    base = Path(path.rstrip("/\\")).name or "eval"
    if ":" in base and not os.path.exists(path):
        head, tail = base.rsplit(":", 1)
        if re.fullmatch(r"[0-9.eE+-]+", tail):
            base = head
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
    return name if NAME_RE.match(name) else f"set_{name}"


def parse_named(spec: str, where: str, file: bool = False) -> tuple[str, str]:
    """``"NAME=PATH"`` or ``"PATH"`` -> ``(name, path)``. A spec that exists as a path
    as written is a path (a folder may contain ``=``). An unnamed PATH is named by
    :func:`folder_name`; with ``file`` (a JSONL file such as ``data.eval_mc``'s) its
    extension is dropped first (``mmlu.jsonl`` -> ``mmlu``).

    Raises:
        ConfigError: empty path or invalid name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{where}: expected NAME=PATH or PATH, got {spec!r}")
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        if not path:
            raise ConfigError(f"{where}: {spec!r} has no PATH after '='")
        return check_name(name, where), path
    return folder_name(str(Path(spec.rstrip("/\\")).with_suffix("")) if file else spec), spec


def named_sets(value: Any, where: str = "data.eval", file: bool = False) -> dict[str, str]:
    """Normalise ``data.eval`` (a mapping NAME -> PATH, or a list of ``NAME=PATH`` /
    ``PATH``) to an ordered ``{name: path}``.

    Raises:
        ConfigError: a name used twice, an invalid name, a path that is not a string.
    """
    if value is None:
        return {}
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        items = []
        for name, path in value.items():
            if not isinstance(path, str) or not path:
                raise ConfigError(f"{where}.{name}: expected a folder path, got {path!r}")
            items.append((check_name(str(name), where), path))
    elif isinstance(value, (list, tuple)):
        items = [parse_named(v, where, file) for v in value]
    else:
        raise ConfigError(f"{where}: expected a mapping NAME: PATH or a list of NAME=PATH, got {value!r}")
    for name, path in items:
        if name in out:
            raise ConfigError(f"{where}: two eval sets named '{name}' ({out[name]}, {path}): name them with NAME=PATH")
        out[name] = path
    return out


def check_budget(budget: Mapping[str, Any], on_budget: str, sets: Mapping[str, str], source: Any = None,
                 mc_sets: Mapping[str, str] | None = None) -> dict[str, float]:
    """Validate ``eval.budget`` against the eval sets and ``eval.on_budget``.

    Args:
        budget: NAME -> largest allowed bpb increase over step 0 (bits/byte, >= 0).
        sets: the named eval sets (``data.eval``).
        source: ``f(dotted_key) -> where it was set`` for messages.
        mc_sets: the multiple-choice sets (``data.eval_mc``): no budget may name one,
            and no name may be both.

    Returns:
        ``{name: float}``.

    Raises:
        ConfigError: unknown ``on_budget``; a budget naming no eval set (or a
            multiple-choice set); a budget that is not a finite number >= 0;
            ``keep_best`` without a domain set (a bpb set without a budget); a name in
            both ``data.eval`` and ``data.eval_mc``.
    """
    src = source or (lambda key: "config")
    mc_sets = mc_sets or {}
    for name in mc_sets:
        if name in sets:
            raise ConfigError(f"{src('data.eval_mc')}: eval set name '{name}' is in both data.eval and data.eval_mc")
    if on_budget not in ON_BUDGET:
        raise ConfigError(f"{src('eval.on_budget')}: eval.on_budget must be one of {', '.join(ON_BUDGET)}, got {on_budget!r}")
    out: dict[str, float] = {}
    for name, value in budget.items():
        key = f"eval.budget.{name}"
        if name in mc_sets:
            raise ConfigError(f"{src(key)}: {key}: '{name}' is a multiple-choice set; budgets are bpb increases on "
                              "data.eval sets")
        if name not in sets:
            known = ", ".join(sets) or "none (add --eval-data NAME=PATH)"
            raise ConfigError(f"{src(key)}: {key}: no eval set named '{name}' (eval sets: {known})")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{src(key)}: {key}: expected a number of bits per byte, got {value!r}") from None
        if isinstance(value, bool) or not (number >= 0 and math.isfinite(number)):
            raise ConfigError(f"{src(key)}: {key}: must be a finite number >= 0 (bits per byte), got {value!r}")
        out[name] = number
    if on_budget == "keep_best" and not [n for n in sets if n not in out]:
        raise ConfigError(f"{src('eval.on_budget')}: eval.on_budget keep_best needs a domain set: a data.eval set "
                          "without a budget (the set whose bpb gain picks the best step)")
    return out
