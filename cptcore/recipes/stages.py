"""``stages:`` in the run config: a multi-stage recipe run as one resumable ``cpt train``.

Schema (docs/stages.md)::

    stages:
      - name: align               # [a-z0-9_-]+, unique
        trainable: new_rows       # cptcore.recipes.trainable (default: training.trainable)
        budget: {steps: 50}       # or {tokens: 2M}; exactly one
        data: {train: [...]}      # overrides of the data section (mappings merge, lists replace)
        schedule: {...}           # likewise schedule, optimizer, training, lora, noise, eval,
        optimizer: {lr: 1.0e-3}   # logging, checkpointing; strategy, model, plugins may not change

Each stage is the run config with its overrides merged in (:func:`stage_config`), run as
one :class:`~cptcore.train.trainer.Trainer` in ``OUT/stages/NAME/`` (fresh optimizer and
schedule, step counter from 0, weights from the previous stage's ``final/``). A token
budget becomes ``ceil(tokens / tokens_per_step)`` optimizer steps (at least 1), where
``tokens_per_step = micro_batch_size x max_length x dp x accumulation`` (token slots of
the stage's packed rows; :func:`budget_steps`).

This module validates and plans (torch-free, :func:`precheck_stages`);
:mod:`.stage_run` runs the plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..config import RunConfig, build_config
from ..errors import ConfigError, CptError, DataError
from ..units import parse_count as parse_tokens  # "2M", "1.5B", "2e6" -> tokens (one parser for every count)
from . import trainable as trainable_mod
from ..train.build import accumulation_steps
from ..train.data import parse_source, read_manifest_any, seq_length
from ..train.plan import absolute_inputs, check_fresh_out, log, precheck, resolve_plugins, world_size_default
from ..train.runlock import ensure_writable

if TYPE_CHECKING:
    from ..plugins import CptPluginManager
    from ..train.plan import Plan

NAME = re.compile(r"^[a-z0-9_-]+$")
#: sections a stage may override
SECTIONS = ("data", "schedule", "optimizer", "training", "lora", "noise", "eval", "logging", "checkpointing")
#: sections a stage may not override, and why
FIXED = {"strategy": "the strategy stays the same across stages",
         "model": "a stage's weights are the previous stage's final/",
         "plugins": "plugin files are the run's", "stages": "stages do not nest"}
#: keys of an override section that the recipe decides
DERIVED = {"training.max_steps": "use the stage's budget", "training.out_dir": "it is OUT/stages/NAME",
           "checkpointing.resume": "resume the whole run with --resume auto"}
STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class StagePlan:
    """One stage, validated.

    Attributes:
        name, index: the stage's name and 0-based position.
        config: the stage's merged config (``training.max_steps`` from its budget,
            ``training.out_dir`` = ``OUT/stages/NAME``, the run's base ``model.path``).
        steps: optimizer steps; tokens_per_step: token slots per step (``None`` if unknown).
        budget: the stage's budget as written.
        recipe_sha256: hash of the stage's recipe (:func:`recipe_hash`).
        out: ``OUT/stages/NAME``; finished: its ``summary.json`` exists (skipped on resume).
        plan: the stage's :class:`~cptcore.train.plan.Plan` (``None`` when finished).
    """

    name: str
    index: int
    config: RunConfig
    steps: int
    tokens_per_step: int | None
    budget: Mapping[str, Any]
    recipe_sha256: str
    out: Path
    finished: bool = False
    plan: "Plan | None" = None

    @property
    def record(self) -> dict:
        """What ``stage.json`` and every checkpoint's ``trainer_state.json`` record."""
        return {"name": self.name, "index": self.index, "recipe_sha256": self.recipe_sha256}


@dataclass(frozen=True)
class RecipePlan:
    """The whole run: the config as given, ``OUT``, the stages in order."""

    config: RunConfig
    out: Path
    stages: tuple[StagePlan, ...]
    world_size: int = 1



def budget_steps(budget: Mapping[str, Any], tokens_per_step: int | None, where: str) -> int:
    """Optimizer steps of a stage: ``steps``, or ``ceil(tokens / tokens_per_step)``
    (at least 1): the stage trains at least its token budget, overshooting by less than
    one step.

    Raises:
        ConfigError: not a mapping with exactly one of ``steps``/``tokens``; a bad
            value; ``tokens`` without a known row length.
    """
    if not isinstance(budget, Mapping) or len(set(budget) & {"steps", "tokens"}) != 1 \
            or set(budget) - {"steps", "tokens"}:
        raise ConfigError(f"{where}.budget: give exactly one of {{steps: N}} or {{tokens: 2M}}, got {budget!r}")
    if "steps" in budget:
        steps = budget["steps"]
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ConfigError(f"{where}.budget.steps must be an integer >= 1, got {steps!r}")
        return steps
    tokens = parse_tokens(budget["tokens"], f"{where}.budget.tokens")
    if not tokens_per_step:
        raise ConfigError(f"{where}.budget.tokens needs max_length in the stage's data manifests "
                          "(or give budget: {steps: N})")
    return max(1, -(-tokens // tokens_per_step))


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _flat_keys(tree: Mapping[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        keys += _flat_keys(v, f"{prefix}{k}.") if isinstance(v, Mapping) and v else [f"{prefix}{k}"]
    return keys


def check_entries(config: RunConfig) -> list[tuple[str, dict]]:
    """The ``stages`` entries checked for shape: ``[(name, entry), ...]``.

    Raises:
        ConfigError: one line naming the stage (by position when it has no name):
            not a mapping, bad/duplicate name, unknown or fixed key, a derived key.
    """
    where0 = config.source("stages")
    out, seen = [], set()
    for i, entry in enumerate(config.stages):
        label = f"{where0}: stages[{i}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{label}: a stage is a mapping with name, budget, ..., got {entry!r:.60}")
        name = entry.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise ConfigError(f"{label}: name must match [a-z0-9_-]+, got {name!r}")
        label = f"{where0}: stage '{name}'"
        if name in seen:
            raise ConfigError(f"{label}: the name appears twice in stages")
        seen.add(name)
        for key, value in entry.items():
            if key in FIXED:
                raise ConfigError(f"{label}: '{key}' may not be overridden per stage ({FIXED[key]})")
            if key in ("name", "trainable", "budget"):
                continue
            if key not in SECTIONS:
                raise ConfigError(f"{label}: unknown key '{key}' (valid: name, trainable, budget, "
                                  f"{', '.join(SECTIONS)})")
            if not isinstance(value, Mapping):
                raise ConfigError(f"{label}: '{key}' must be a mapping of overrides, got {value!r:.60}")
            for dotted in _flat_keys(value, f"{key}."):
                if dotted in DERIVED:
                    raise ConfigError(f"{label}: '{dotted}' may not be set per stage ({DERIVED[dotted]})")
        if "budget" not in entry:
            raise ConfigError(f"{label}: no budget (give {{steps: N}} or {{tokens: 2M}})")
        budget_steps(entry["budget"], 1, label)  # shape only; tokens are converted later
        out.append((name, dict(entry)))
    if not out:
        raise ConfigError(f"{where0}: stages is an empty list (leave it out for one stage)")
    return out


def stage_config(config: RunConfig, name: str, entry: Mapping[str, Any], last: bool) -> RunConfig:
    """The run config with the stage's overrides merged in (mappings merge key by key,
    other values replace), ``trainable`` as ``training.trainable``
    (``lora``: ``lora.enabled`` on), ``training.out_dir = OUT/stages/NAME``, no
    ``stages``. A stage that is not the last exports merged LoRA weights
    (``lora.merge_on_export``: the next stage loads a plain model).

    Raises:
        ConfigError: an unknown key or bad value in an override, naming the stage; the
            stage's trainable set refused (:func:`cptcore.recipes.trainable.check`).
    """
    label = f"{config.source('stages')}: stage '{name}'"
    tree = config.to_dict()
    tree.pop("stages", None)
    sources = {k: v for k, v in config.sources.items() if not k.startswith("stages")}
    over = {k: v for k, v in entry.items() if k in SECTIONS}
    if "trainable" in entry:
        over = _merge(over, {"training": {"trainable": entry["trainable"], "freeze": "none"}})
        if entry["trainable"] == "lora":
            over = _merge(over, {"lora": {"enabled": True}})
    tree = _merge(tree, over)
    tree["training"]["out_dir"] = str(Path(config.training.out_dir) / "stages" / name)
    sources.update({k: label for k in _flat_keys(over)})
    cfg = build_config(tree, sources)
    if cfg.lora.enabled and not last and not cfg.lora.merge_on_export:
        cfg = dataclasses.replace(cfg, lora=dataclasses.replace(cfg.lora, merge_on_export=True))
    try:
        kind, arg = trainable_mod.check(cfg, where="trainable")
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    if kind == "new_rows":  # the count from the base model's record: later stages load final/ without it
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(
            cfg.training, trainable={"new_rows_from": arg}, freeze="none"))
    return cfg


def recipe_hash(cfg: RunConfig, name: str, index: int) -> str:
    """SHA-256 of what decides a stage's weights: its name and position and its merged
    config (absolute input paths) without ``logging``, ``training.out_dir``, ``plugins``
    and ``checkpointing`` (other than ``new_data``)."""
    tree = cfg.to_dict()
    tree.pop("logging", None)
    tree.pop("plugins", None)
    tree["training"].pop("out_dir", None)
    tree["checkpointing"] = {"new_data": tree["checkpointing"].get("new_data")}
    blob = json.dumps({"name": name, "index": index, "config": tree}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokens_per_step(cfg: RunConfig, pm: "CptPluginManager", world: int) -> int | None:
    """``micro_batch_size x max_length x dp x accumulation`` of a stage (token slots per
    optimizer step), ``None`` when the manifests name no ``max_length``.

    Raises:
        DataError: a training folder or its manifest missing.
    """
    manifests = []
    for spec in cfg.data.train:
        src = parse_source(spec)
        if not src.path.exists():
            raise DataError("prepared data folder not found", path=str(src.path))
        manifests.append(read_manifest_any(src.path))
    seq = seq_length(manifests)
    if not seq:
        return None
    dp = resolve_plugins(cfg, pm, world)["layout"].dp
    return cfg.training.micro_batch_size * seq * dp * accumulation_steps(cfg, seq, dp)


def read_record(out: Path) -> dict | None:
    """``OUT/stages/NAME/stage.json`` (``None`` when absent).

    Raises:
        CptError: unreadable or not a ``{name, index, recipe_sha256}`` object.
    """
    f = out / STAGE_FILE
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
        if not (isinstance(rec, dict) and isinstance(rec.get("recipe_sha256"), str)):
            raise ValueError("no recipe_sha256")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CptError(f"{f}: corrupt stage record ({exc})") from None
    return rec


def _refuse_changed(name: str, out: Path, finished: bool) -> ConfigError:
    what = "finished" if finished else "was started"
    return ConfigError(f"stage '{name}' {what} with a different recipe ({out / STAGE_FILE}): a finished stage is "
                       f"never rerun; restore its recipe, or start a new --out (or delete {out} and the stages "
                       "after it to redo them)")


def _started_stages(out: Path) -> bool:
    """Whether ``OUT/stages/`` holds a started stage (its ``stage.json``, or what
    :func:`check_fresh_out` refuses). Not an empty stage folder: every rank's precheck
    creates those (``ensure_writable``), so under ``--nproc-per-node`` rank 0's would
    otherwise make rank 1 refuse a fresh run."""
    stages = out / "stages"
    if not stages.is_dir():
        return False
    for p in stages.iterdir():
        if not p.is_dir() or (p / STAGE_FILE).exists():
            return True
        try:
            check_fresh_out(p)
        except ConfigError:
            return True
    return False


def precheck_stages(config: RunConfig, pm: "CptPluginManager", world_size: int | None = None, *,
                    dry_run: bool = False) -> RecipePlan:
    """Validate every stage (shape, overrides, trainable set, budget) and plan the run:
    each stage not yet finished gets the full :func:`~cptcore.train.plan.precheck` of its
    merged config (resuming its newest checkpoint with ``--resume auto``).

    Resume rules (``checkpointing.resume: auto``): a stage with ``summary.json`` is
    finished and skipped; a stage whose recorded recipe hash (``stage.json``, and its
    checkpoint's ``stage`` entry) differs from the current one is refused naming it;
    a folder under ``OUT/stages/`` that is no stage of the recipe is refused.

    Raises:
        ConfigError / DataError: one line naming the stage.
    """
    world = world_size_default(world_size)
    out = Path(config.training.out_dir)
    resume = config.checkpointing.resume
    if resume not in (None, "auto"):
        raise ConfigError(f"--resume {resume}: a run with stages resumes with --resume auto (it finds the stage "
                          "and its newest checkpoint)")
    entries = check_entries(config)
    names = [n for n, _ in entries]
    if resume is None:
        check_fresh_out(out)
        if _started_stages(out):
            raise ConfigError(f"{out} already holds a staged run ({out / 'stages'}): continue it with --resume auto, "
                              "or choose another --out")
    elif (out / "stages").is_dir():
        stray = sorted(p.name for p in (out / "stages").iterdir() if p.is_dir() and p.name not in names)
        if stray:
            raise ConfigError(f"{out / 'stages' / stray[0]} is not a stage of this recipe (stages: "
                              f"{', '.join(names)}): a renamed or removed stage; restore it or use another --out")
    ensure_writable(out, create=not dry_run)
    plans, open_seen = [], False
    for i, (name, entry) in enumerate(entries):
        label = f"stage '{name}'"
        cfg = absolute_inputs(stage_config(config, name, entry, last=i == len(entries) - 1))
        try:
            tps = tokens_per_step(cfg, pm, world) if "tokens" in entry["budget"] else None
            steps = budget_steps(entry["budget"], tps, label)
            for key in ("epochs", "max_tokens"):  # the stage's budget decides its length
                if getattr(cfg.training, key) is not None:
                    raise ConfigError(f"training.{key}: a run with stages takes each stage's length from its "
                                      "budget ({steps: N} or {tokens: 2M}), not from training.epochs/max_tokens")
            cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, max_steps=steps))
        except CptError as exc:
            raise type(exc)(f"{label}: {exc}") from None
        digest = recipe_hash(cfg, name, i)
        sout = Path(cfg.training.out_dir)
        rec = read_record(sout) if resume == "auto" else None
        finished = resume == "auto" and (sout / "summary.json").is_file() and (sout / "final").is_dir()
        if rec is not None and rec.get("recipe_sha256") != digest:
            raise _refuse_changed(name, sout, finished)
        if finished and rec is None:
            raise CptError(f"{sout}: a finished stage without {STAGE_FILE}; cannot tell its recipe")
        if finished and open_seen:
            raise CptError(f"{sout}: stage '{name}' is finished but an earlier stage is not")
        stage = StagePlan(name=name, index=i, config=cfg, steps=steps, tokens_per_step=tps,
                          budget=dict(entry["budget"]), recipe_sha256=digest, out=sout, finished=finished)
        if not finished:
            open_seen = True
            try:
                plan = precheck(cfg, pm, world, dry_run=dry_run)
            except CptError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            saved = (plan.resume_state or {}).get("stage")
            if saved is not None and saved.get("recipe_sha256") != digest:
                raise _refuse_changed(name, sout, False)
            stage = dataclasses.replace(stage, plan=plan)
        elif i == len(entries) - 1:
            log(f"every stage is finished ({', '.join(names)}); rewriting {out / 'final'} and the summary")
        plans.append(stage)
    return RecipePlan(config=config, out=out, stages=tuple(plans), world_size=world)


def describe(recipe: RecipePlan) -> list[str]:
    """One line per stage for ``cpt train --dry-run``."""
    lines = []
    for s in recipe.stages:
        kind, arg = trainable_mod.resolve(s.config)
        tokens = f", {s.steps * s.tokens_per_step:,} token slots ({s.tokens_per_step:,}/step)" if s.tokens_per_step else ""
        state = "finished (skipped)" if s.finished else (
            f"resume {s.plan.resume.name}" if s.plan is not None and s.plan.resume is not None else "runs")
        what = kind if arg is None else f"{kind} {arg}"
        lines.append(f"stage {s.index + 1} {s.name}: {s.steps} steps{tokens}; trainable {what}; "
                     f"lr {s.config.optimizer.lr:g}, schedule {s.config.schedule.name}; {state}")
    return lines
