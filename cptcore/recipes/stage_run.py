"""Run a :class:`~cptcore.recipes.stages.RecipePlan`: one Trainer per stage, weights
carried through each stage's ``final/``, one summary.

Outputs (``OUT = training.out_dir``)::

    config.yaml                 the run config with its stages
    baseline.json               eval sets as stage 1 scored them at its step 0 (when data.eval is set)
    stages/NAME/stage.json      {name, index, recipe_sha256}, written when the stage starts
    stages/NAME/...             the stage's Trainer outputs: config.yaml, logs/, checkpoints/,
                                final/, summary.json (its presence marks the stage finished)
    final/                      the last stage's final/ (hard links where possible)
    summary.json                every stage's steps, tokens, final loss and eval per set

Every rank runs every stage; rank 0 writes the files; the ranks meet in a barrier after
each stage's export (the next stage loads it).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import write_resolved
from .stages import STAGE_FILE, RecipePlan, StagePlan, precheck_stages
from .trainable import resolve as resolve_trainable

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager
    from ..train.plan import Plan

BASELINE = "baseline.json"


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def carried_plan(plan: "Plan", previous_final: Path, base: "RunConfig") -> "Plan":
    """``plan`` with ``model.path`` = the previous stage's ``final/`` (the tokenizer stays
    the run's: ``model.tokenizer`` or the base model folder)."""
    import dataclasses

    model = plan.config.model
    tokenizer = model.tokenizer or (base.model.path if Path(base.model.path).is_dir() else None)
    model = dataclasses.replace(model, path=str(previous_final), tokenizer=tokenizer and os.path.abspath(tokenizer))
    return dataclasses.replace(plan, config=dataclasses.replace(plan.config, model=model))


def _last_loss(out: Path) -> float | None:
    """The last logged training loss of a stage (a stage resumed at its last step
    trains no step in that process, so its Trainer summary has none)."""
    f = out / "logs" / "metrics.jsonl"
    if not f.is_file():
        return None
    for line in reversed(f.read_text(encoding="utf-8").splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "loss" in row:
            return row["loss"]
    return None


def stage_entry(stage: StagePlan, summary: dict) -> dict:
    """The stage's line of ``OUT/summary.json``."""
    kind, arg = resolve_trainable(stage.config)
    return {
        "name": stage.name, "index": stage.index, "trainable": kind if arg is None else {kind: arg},
        "budget": dict(stage.budget), "steps": summary.get("steps"), "tokens": summary.get("tokens_trained"),
        "tokens_per_step": stage.tokens_per_step,
        "final_loss": summary.get("final_loss") if summary.get("final_loss") is not None else _last_loss(stage.out),
        "eval": summary.get("final_eval") or {}, "recipe_sha256": stage.recipe_sha256,
        "resumed_from": summary.get("resumed_from"), "out": str(stage.out),
        # realised per-source shares of the stage and why it ended early (cptcore.recipes.mixing)
        "data_mixing": summary.get("data_mixing"), "stopped": summary.get("stopped"),
    }


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_final(src: Path, dst: Path) -> None:
    """``dst`` replaced by a copy of ``src`` (files hard-linked when on one filesystem)."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=_link_or_copy)


def read_baseline(out: Path) -> dict:
    """``OUT/baseline.json``: the eval sets as stage 1's Trainer scored them at its step 0
    (``{NAME: {loss, perplexity, bpb, tokens, ...}}``; ``{}`` before that)."""
    f = out / BASELINE
    return json.loads(f.read_text(encoding="utf-8")) if f.is_file() else {}


def run_recipe(recipe: RecipePlan, pm: "CptPluginManager") -> dict[str, Any]:
    """Run the stages not yet finished, in order (inside the process group); returns
    the summary (``OUT/summary.json`` on rank 0)."""
    from ..train.trainer import Trainer

    t0 = time.time()
    out, base = recipe.out, recipe.config
    if _rank() == 0:
        out.mkdir(parents=True, exist_ok=True)
        write_resolved(base, out)
    entries, baseline, previous, last_summary = [], {}, None, {}
    for stage in recipe.stages:
        if stage.finished:
            last_summary = json.loads((stage.out / "summary.json").read_text(encoding="utf-8"))
        else:
            plan = stage.plan if previous is None else carried_plan(stage.plan, previous, base)
            if _rank() == 0:
                stage.out.mkdir(parents=True, exist_ok=True)
                (stage.out / STAGE_FILE).write_text(json.dumps(stage.record, indent=2), encoding="utf-8")
            # stage 1's Trainer scores the eval sets at its step 0 (the baseline, also kept in its
            # checkpoints); every later stage is handed it: bpb_delta and budgets against it, no rescoring
            baseline = baseline or read_baseline(out)
            trainer = Trainer(plan, pm, baseline=baseline or None).setup()
            trainer.state.stage = stage.record  # recorded in every checkpoint of the stage
            last_summary = trainer.fit()
            if not baseline and trainer.baseline:
                baseline = {name: dict(v) for name, v in trainer.baseline.items()}
                if _rank() == 0:
                    (out / BASELINE).write_text(json.dumps(baseline, indent=2), encoding="utf-8")
            _barrier()  # rank 0 has exported final/, which the next stage loads
        entries.append(stage_entry(stage, last_summary))
        previous = stage.out / "final"
    baseline = baseline or read_baseline(out)
    summary = {
        "stages": entries, "baseline_eval": baseline,
        "steps": sum(e["steps"] or 0 for e in entries), "tokens_trained": sum(e["tokens"] or 0 for e in entries),
        "final_loss": entries[-1]["final_loss"], "final_eval": entries[-1]["eval"],
        "wall_time_s": round(time.time() - t0, 3), "world_size": recipe.world_size,
        "strategy": last_summary.get("strategy", base.strategy.name), "final_dir": str(out / "final"),
    }
    if _rank() == 0:
        publish_final(previous, out / "final")
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    _barrier()
    return summary


def train_stages(config: "RunConfig", pm: "CptPluginManager") -> dict[str, Any]:
    """``cpt train`` for a config with ``stages:``: :func:`precheck_stages`, then the
    run folder lock on ``OUT`` and the process group, then :func:`run_recipe`."""
    from ..train.launch import check_fingerprints, process_group
    from ..train.runlock import run_folder

    recipe = precheck_stages(config, pm)
    with run_folder(recipe.out, _rank()):
        with process_group(config.training.seed):
            check_fingerprints(pm)
            return run_recipe(recipe, pm)
