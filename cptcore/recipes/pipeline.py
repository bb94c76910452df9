"""``cpt pipeline`` recipes: one YAML file from raw text to the trained model.

A recipe (see docs/multistage.md) names a base model, an output folder and six steps run
in this order: ``tokenizer`` (train a SentencePiece model on domain text), ``expand``
(add its pieces to the base tokenizer), ``resize`` (grow the model's embeddings),
``prepare`` (domain, replay and eval sets), ``train`` (a run config, ``stages:`` allowed)
and ``export``. ``tokenizer``/``expand``/``resize`` may be left out (the base model is
trained as it is); ``export`` may be ``null``. Paths are relative to the recipe's folder;
``bundled:NAME`` is a file shipped in ``cptcore/assets/data``; model ``smollm2`` is
SmolLM2-135M (:func:`cptcore.assets.smollm2_hf_dir`).

This module loads, merges (preset, file, ``--set``) and validates recipes; it imports no
torch. Running them is :mod:`cptcore.recipes.pipeline_run`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..config import read_yaml
from ..errors import ConfigError
from ..units import parse_count as parse_tokens  # "2M", "1.5B", "2e6" -> tokens (one parser for every count)

STEPS = ("tokenizer", "expand", "resize", "prepare", "train", "export")
TOP_KEYS = ("description", "sources", "model", "out", "steps")

#: keys each step takes, with their defaults (``...`` = required)
STEP_KEYS: dict[str, dict[str, Any]] = {
    "tokenizer": {"input": ..., "vocab_size": ..., "model_type": "bpe", "character_coverage": 0.9995,
                  "byte_fallback": False, "max_sentence_length": 16384, "input_sentence_size": 2_000_000,
                  "shuffle_input_sentence": True, "split_digits": True, "seed": 0, "num_threads": 2,
                  "text_field": "text"},
    "expand": {"add": None, "method": "auto", "vocab_size": None, "eval_text": None},
    "resize": {"init": "mean", "init_options": {}, "seed": 0, "retain": None, "domain": None,
               "check_tokens": 512, "max_kl": 0.1, "allow_unsafe": False},
    "prepare": {"sets": ..., "eval": {}, "max_length": 2048, "packer": "splice", "packer_options": {},
                "text_field": "text", "long_doc": "split", "add_bos": None, "add_eos": None, "mix": "downsample",
                "seed": 0, "shuffle_window": 0, "num_proc": 1, "num_shards": 1, "on_error": "stop"},
    "train": {"config": {}},
    "export": {"merge_lora": False},
}
#: option keys holding input file paths (hashed by content, checked to exist)
PATH_KEYS = {("tokenizer", "input"), ("expand", "add"), ("expand", "eval_text"), ("resize", "retain"),
             ("resize", "domain")}
#: run-config sections the pipeline fills itself
TRAIN_OWNED = ("model.path", "model.tokenizer", "training.out_dir", "checkpointing.resume")

PRESET_PACKAGE = "cptcore.recipes.presets"


@dataclass(frozen=True)
class Recipe:
    """A merged, validated recipe.

    Attributes:
        label: where it came from, for messages (``run.yaml``, ``preset chinese-llama``).
        base_dir: folder relative paths are resolved against.
        model: base model folder (or ``smollm2``).
        out: output folder OUT (steps in ``OUT/steps/NAME``).
        steps: ``{step: options}`` for the steps that run, in :data:`STEPS` order,
            defaults filled in.
        tree: the merged recipe as written (what ``--print`` shows).
    """

    label: str
    base_dir: Path
    model: str
    out: Path
    steps: dict[str, dict[str, Any]]
    tree: dict[str, Any]


def preset_names() -> list[str]:
    """Names of the presets shipped in ``cptcore/recipes/presets`` (sorted)."""
    return sorted(p.name[:-5] for p in resources.files(PRESET_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``.

    Raises:
        ConfigError: unknown preset (with "did you mean").
    """
    names = preset_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"--preset {name}: unknown preset{hint} (cpt recipes lists: {', '.join(names)})")
    return Path(str(resources.files(PRESET_PACKAGE) / f"{name}.yaml"))


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, label: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{label}: {dotted}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def _unknown(label: str, key: str, name: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(valid)})"
    return ConfigError(f"{label}: {key}: unknown key{hint}")


def merged_tree(recipe: str | Path | None, preset: str | None, sets: Sequence[str] = ()) -> tuple[dict[str, Any], str, Path]:
    """Merge preset ``preset``, then the YAML file ``recipe``, then ``--set key=value``
    items (dotted keys, values read as YAML).

    Returns:
        ``(tree, label, base_dir)``: the merged mapping, a label naming its sources, and
        the folder relative paths resolve against (the recipe's folder, else the current
        folder: a preset's ``bundled:`` paths need none).

    Raises:
        ConfigError: no recipe and no preset, unknown preset, unreadable YAML, a bad
            ``--set``.
    """
    if recipe is None and preset is None:
        raise ConfigError("cpt pipeline: give a RECIPE.yaml or --preset NAME (cpt recipes lists the presets)")
    tree: dict[str, Any] = {}
    labels = []
    base_dir = Path.cwd()
    if preset is not None:
        tree = _merge(tree, read_yaml(preset_path(preset)))
        labels.append(f"preset {preset}")
    if recipe is not None:
        tree = _merge(tree, read_yaml(recipe))
        labels.append(str(recipe))
        base_dir = Path(recipe).resolve().parent
    import yaml

    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item}: expected dotted.key=value (e.g. steps.prepare.max_length=512)")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError:
            value = text
        _set_dotted(tree, key.strip(), value, f"--set {item}")
    if sets:
        labels.append("--set")
    return tree, " + ".join(labels), base_dir


def resolve_path(value: str, base_dir: Path) -> Path:
    """``bundled:NAME`` -> the bundled data file; otherwise ``value`` relative to ``base_dir``."""
    if value.startswith("bundled:"):
        from ..assets import ASSETS_DIR

        return ASSETS_DIR / "data" / value[len("bundled:"):]
    p = Path(value).expanduser()
    return p if p.is_absolute() else base_dir / p


def _check_paths(label: str, key: str, value: Any, base_dir: Path) -> None:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v for v in values):
        raise ConfigError(f"{label}: {key}: expected a file path or a list of them, got {value!r}")
    for v in values:
        if not resolve_path(v, base_dir).exists():
            raise ConfigError(f"{label}: {key}: input file not found: {v}")


def _check_sets(label: str, key: str, sets: Any, base_dir: Path, required: bool) -> None:
    if not isinstance(sets, Mapping) or (required and not sets):
        raise ConfigError(f"{label}: {key}: expected a mapping NAME: [files], got {sets!r}")
    for name, files in sets.items():
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{label}: {key}.{name}: set names are [A-Za-z0-9_-]+")
        _check_paths(label, f"{key}.{name}", files, base_dir)


def load_recipe(recipe: str | Path | None = None, preset: str | None = None, sets: Sequence[str] = ()) -> Recipe:
    """Merge and validate a recipe (see :func:`merged_tree`).

    Raises:
        ConfigError: one line naming the recipe and the key: unknown top-level or step
            key (with "did you mean"), a missing required key, a missing input file,
            ``expand`` without ``tokenizer`` or ``expand.add``, ``resize`` without
            ``expand``, a run-config key the pipeline owns (``model.path`` ...).
    """
    tree, label, base_dir = merged_tree(recipe, preset, sets)
    for key in tree:
        if key not in TOP_KEYS:
            raise _unknown(label, key, key, TOP_KEYS)
    for key in ("model", "out"):
        if not isinstance(tree.get(key), str) or not tree[key]:
            raise ConfigError(f"{label}: {key}: required (a folder path)")
    raw_steps = tree.get("steps") or {}
    if not isinstance(raw_steps, Mapping):
        raise ConfigError(f"{label}: steps: expected a mapping of {', '.join(STEPS)}")
    steps: dict[str, dict[str, Any]] = {}
    for name, opts in raw_steps.items():
        if name not in STEPS:
            raise _unknown(label, f"steps.{name}", name, STEPS)
        if opts is None:  # `export: null` switches a step off
            continue
        if not isinstance(opts, Mapping):
            raise ConfigError(f"{label}: steps.{name}: expected a mapping of options, got {opts!r}")
        full = copy.deepcopy(STEP_KEYS[name])
        for key, value in opts.items():
            if key not in full:
                raise _unknown(label, f"steps.{name}.{key}", key, list(full))
            full[key] = value
        for key, value in full.items():
            if value is ...:
                raise ConfigError(f"{label}: steps.{name}.{key}: required")
            if (name, key) in PATH_KEYS and value is not None:
                _check_paths(label, f"steps.{name}.{key}", value, base_dir)
        steps[name] = full
    for name in ("prepare", "train"):
        if name not in steps:
            raise ConfigError(f"{label}: steps.{name}: required")
    if "export" not in raw_steps:
        steps["export"] = dict(STEP_KEYS["export"])
    if "expand" in steps and "tokenizer" not in steps and not steps["expand"]["add"]:
        raise ConfigError(f"{label}: steps.expand: needs steps.tokenizer or steps.expand.add (the pieces to add)")
    if "tokenizer" in steps and "expand" not in steps:
        steps["expand"] = dict(STEP_KEYS["expand"])
    if "expand" in steps and "resize" not in steps:
        steps["resize"] = copy.deepcopy(STEP_KEYS["resize"])
    if "resize" in steps and "expand" not in steps:
        raise ConfigError(f"{label}: steps.resize: needs steps.expand (the tokenizer to resize to)")
    prep = steps["prepare"]
    _check_sets(label, "steps.prepare.sets", prep["sets"], base_dir, required=True)
    _check_sets(label, "steps.prepare.eval", prep["eval"] or {}, base_dir, required=False)
    both = set(prep["sets"]) & set(prep["eval"] or {})
    if both:
        raise ConfigError(f"{label}: steps.prepare.eval.{sorted(both)[0]}: also a name in steps.prepare.sets")
    cfg = steps["train"]["config"]
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"{label}: steps.train.config: expected a run config mapping (see docs/training.md)")
    for dotted in TRAIN_OWNED:
        head, _, tail = dotted.partition(".")
        if isinstance(cfg.get(head), Mapping) and tail in cfg[head]:
            raise ConfigError(f"{label}: steps.train.config.{dotted}: set by the pipeline (remove it)")
    if not isinstance(tree["model"], str):
        raise ConfigError(f"{label}: model: expected a folder path")
    if tree["model"] != "smollm2" and not resolve_path(tree["model"], base_dir).exists():
        raise ConfigError(f"{label}: model: model folder not found: {tree['model']}")
    ordered = {name: steps[name] for name in STEPS if name in steps}
    return Recipe(label=label, base_dir=base_dir, model=tree["model"], out=resolve_path(tree["out"], base_dir),
                  steps=ordered, tree=tree)
