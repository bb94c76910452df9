"""Plan and run a ``cpt pipeline`` recipe (:mod:`.pipeline`), step by step, skipping the
steps that are done and unchanged (:mod:`.pipeline_state`).

Every step calls the library function its ``cpt`` command calls: ``tokenizer`` ->
:func:`cptcore.tokenizer.train.train_sentencepiece`, ``expand`` ->
:func:`cptcore.tokenizer.expand.expand_tokenizer`, ``resize`` ->
:func:`cptcore.model.resize.resize_model_folder`, ``prepare`` ->
:func:`cptcore.data.pipeline.prepare` (one folder per set), ``train`` ->
:func:`cptcore.train.loop.train` on a generated run config (``OUT/steps/train/config.yaml``,
loaded by :func:`cptcore.config.load_config` like ``cpt train --config``), ``export`` ->
a copy of the run's exported ``final/`` folder, or with ``merge_lora``
:func:`cptcore.train.export_cli.export_checkpoint` of its last checkpoint.
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .pipeline import PATH_KEYS, Recipe, parse_tokens, resolve_path
from .pipeline_state import HASH_CACHE, STARTED, ContentHasher, StepPlan, now, plan_step, read_record, write_record

UPSTREAM = {"tokenizer": [], "expand": ["tokenizer"], "resize": ["expand"], "prepare": ["resize"],
            "train": ["resize", "prepare"], "export": ["train"]}
PREPARED = "prepared/"  # run-config references to prepared sets: "prepared/NAME[:WEIGHT]"


def model_dir(recipe: Recipe) -> Path:
    """The base model folder (``smollm2``: imported once and cached)."""
    if recipe.model == "smollm2":
        from ..assets import smollm2_hf_dir

        return smollm2_hf_dir()
    return resolve_path(recipe.model, recipe.base_dir)


def step_dir(recipe: Recipe, name: str) -> Path:
    return recipe.out / "steps" / name


def _hashed_key(recipe: Recipe, name: str, hasher: ContentHasher) -> dict[str, Any]:
    key = copy.deepcopy(recipe.steps[name])
    for (step, opt) in PATH_KEYS:
        if step == name and key.get(opt) is not None:
            vals = key[opt] if isinstance(key[opt], list) else [key[opt]]
            hashed = [hasher.hash(resolve_path(v, recipe.base_dir)) for v in vals]
            key[opt] = hashed if isinstance(key[opt], list) else hashed[0]
    if name == "prepare":
        for group in ("sets", "eval"):
            key[group] = {s: [hasher.hash(resolve_path(f, recipe.base_dir)) for f in (fs if isinstance(fs, list) else [fs])]
                          for s, fs in (key[group] or {}).items()}
    if name in ("expand", "resize") or (name in ("prepare", "train") and "resize" not in recipe.steps):
        key["base_model"] = hasher.hash(model_dir(recipe))  # the base model (its tokenizer) is an input
    return key


def make_plan(recipe: Recipe) -> list[StepPlan]:
    """Hash every step's inputs and options and decide what runs (no step is run)."""
    hasher = ContentHasher(recipe.out / HASH_CACHE if recipe.out.exists() else None)
    plans: dict[str, StepPlan] = {}
    for name in recipe.steps:
        ups = [u for u in UPSTREAM[name] if u in plans]
        plans[name] = plan_step(name, step_dir(recipe, name), _hashed_key(recipe, name, hasher),
                                {u: plans[u].hash for u in ups}, [u for u in ups if plans[u].run])
    if recipe.out.exists():
        hasher.save()
    return list(plans.values())


# ---------------------------------------------------------------- the train step's config
def _resolve_refs(value: Any, prepared: Path) -> Any:
    if isinstance(value, str) and value.startswith(PREPARED):
        return str(prepared / value[len(PREPARED):])
    if isinstance(value, list):
        return [_resolve_refs(v, prepared) for v in value]
    if isinstance(value, dict):
        return {k: _resolve_refs(v, prepared) for k, v in value.items()}
    return value


def train_tree(recipe: Recipe, model: Path | None, resume: bool) -> dict[str, Any]:
    """The run config the train step hands to ``cpt train``'s code path: the recipe's
    ``steps.train.config`` with ``prepared/NAME`` references made paths under
    ``OUT/steps/prepare``, ``data.train`` defaulting to every prepared set (weight 1),
    ``data.eval`` to every eval set, ``model.path`` the resized (or base) model,
    ``training.out_dir`` ``OUT/steps/train/run``."""
    prep = recipe.steps["prepare"]
    tree = copy.deepcopy(recipe.steps["train"]["config"])
    if tree.get("stages", ...) is None:  # `--set steps.train.config.stages=null`: one implicit stage
        del tree["stages"]
    data = tree.setdefault("data", {})
    data.setdefault("train", [f"{PREPARED}{s}" for s in prep["sets"]])
    if prep["eval"]:
        data.setdefault("eval", {s: f"{PREPARED}{s}" for s in prep["eval"]})
    tree = _resolve_refs(tree, step_dir(recipe, "prepare"))
    if model is not None:
        tree.setdefault("model", {})["path"] = str(model)
    tree.setdefault("training", {})["out_dir"] = str(step_dir(recipe, "train") / "run")
    if resume:
        tree.setdefault("checkpointing", {})["resume"] = "auto"
    return tree


def stage_budgets(recipe: Recipe) -> list[tuple[str, int, str]]:
    """``[(stage, tokens, how)]``: each stage's budget in training tokens (one stage,
    ``train``, without ``stages:``). A step is ``micro_batch_size × accumulation_steps ×
    max_length`` tokens (one process; ``training.global_batch_tokens`` when set)."""
    cfg = recipe.steps["train"]["config"]
    tr = cfg.get("training") or {}
    max_length = int(recipe.steps["prepare"]["max_length"])
    per_step = int(tr.get("global_batch_tokens") or int(tr.get("micro_batch_size", 1)) * int(tr.get("accumulation_steps", 1)) * max_length)
    stages = cfg.get("stages")
    if not stages:
        if tr.get("max_tokens"):
            return [("train", parse_tokens(tr["max_tokens"], "training.max_tokens"), "training.max_tokens")]
        steps = int(tr.get("max_steps", 100))
        return [("train", steps * per_step, f"{steps} steps × {per_step} tokens")]
    out = []
    for i, stage in enumerate(stages):
        budget = (stage or {}).get("budget") or {}
        name = str((stage or {}).get("name", f"stage{i}"))
        s_tr = {**tr, **((stage or {}).get("training") or {})}
        s_per = int(s_tr.get("global_batch_tokens") or int(s_tr.get("micro_batch_size", 1)) * int(s_tr.get("accumulation_steps", 1)) * max_length)
        if "tokens" in budget:
            out.append((name, parse_tokens(budget["tokens"], f"stages[{i}].budget.tokens"), "budget.tokens"))
        elif "steps" in budget:
            out.append((name, int(budget["steps"]) * s_per, f"{budget['steps']} steps × {s_per} tokens"))
        else:
            out.append((name, 0, "no budget"))
    return out


def measured_tokens_per_second(recipe: Recipe) -> float | None:
    """Training tokens/s a previous run of this OUT recorded (train step record, else the
    run's ``summary.json``), or None."""
    rec = read_record(step_dir(recipe, "train")) or {}
    tps = (rec.get("result") or {}).get("tokens_per_second")
    if not tps:
        summary = read_record(step_dir(recipe, "train") / "run", "summary.json") or {}
        tps = summary.get("tokens_per_second")
    return float(tps) if isinstance(tps, (int, float)) and tps > 0 else None


def describe_plan(recipe: Recipe, plans: list[StepPlan], echo: Callable[[str], None]) -> None:
    """Print the plan: each step, done or to run and why, stage budgets, time estimate."""
    echo(f"recipe: {recipe.label}; OUT {recipe.out}")
    for p in plans:
        echo(f"  {p.name:<10} {'RUN ' if p.run else 'skip'}  {p.reason}")
    budgets = stage_budgets(recipe)
    tps = measured_tokens_per_second(recipe)
    total = sum(t for _, t, _ in budgets)
    for name, tokens, how in budgets:
        eta = f"~{tokens / tps:.0f} s" if tps else "time unknown"
        echo(f"  stage {name:<12} {tokens:>12,} tokens ({how}); {eta}")
    if tps:
        echo(f"training: {total:,} tokens at {tps:,.0f} tokens/s measured by the previous run: ~{total / tps:.0f} s")
    else:
        echo(f"training: {total:,} tokens; time unknown (no previous run recorded tokens/s)")


# ---------------------------------------------------------------- the steps
def _run_tokenizer(recipe: Recipe, folder: Path, pm: Any) -> dict[str, Any]:
    from ..tokenizer.train import TrainOptions, train_sentencepiece

    opts = dict(recipe.steps["tokenizer"])
    inputs = [resolve_path(p, recipe.base_dir) for p in (opts.pop("input") if isinstance(opts["input"], list) else [opts.pop("input")])]
    model, stats = train_sentencepiece(inputs, folder, TrainOptions(**opts), overwrite=True)
    return {"model": str(model), "sentences": stats.sentences, "skipped_too_long": stats.skipped_too_long}


def _run_expand(recipe: Recipe, folder: Path, pm: Any) -> dict[str, Any]:
    from ..tokenizer.expand import expand_tokenizer

    o = recipe.steps["expand"]
    add = resolve_path(o["add"], recipe.base_dir) if o["add"] else step_dir(recipe, "tokenizer") / "tokenizer.model"
    eval_text = resolve_path(o["eval_text"], recipe.base_dir) if o["eval_text"] else None
    report = expand_tokenizer(model_dir(recipe), add, folder, method=o["method"], target_vocab=o["vocab_size"],
                              eval_text=eval_text, overwrite=True)
    return {k: report.get(k) for k in ("method", "vocab_before", "vocab_after", "added")}


def _run_resize(recipe: Recipe, folder: Path, pm: Any) -> dict[str, Any]:
    from ..model.resize import resize_model_folder
    from ..model.resize_check import CheckOptions

    o = recipe.steps["resize"]
    path = lambda v: resolve_path(v, recipe.base_dir) if v else None  # noqa: E731
    check = CheckOptions(retain=path(o["retain"]), domain=path(o["domain"]), max_tokens=o["check_tokens"],
                         max_kl=o["max_kl"], allow_unsafe=o["allow_unsafe"])
    summary = resize_model_folder(model_dir(recipe), step_dir(recipe, "expand"), folder, init=o["init"], overwrite=True,
                                  seed=o["seed"], init_options=o["init_options"], check=check, pm=pm)
    return {k: summary.get(k) for k in ("old_rows", "new_rows", "init", "tied")}


def trained_model(recipe: Recipe) -> Path:
    """The model the train step starts from: the resized one, else the base model."""
    return step_dir(recipe, "resize") if "resize" in recipe.steps else model_dir(recipe)


def _run_prepare(recipe: Recipe, folder: Path, pm: Any) -> dict[str, Any]:
    from ..data.pipeline import PrepareArgs, prepare

    o = dict(recipe.steps["prepare"])
    groups = {**o.pop("sets"), **(o.pop("eval") or {})}
    out = {}
    for name, files in groups.items():
        files = files if isinstance(files, list) else [files]
        args = PrepareArgs(kind="pretrain", tokenizer=str(trained_model(recipe)),
                           inputs=tuple(str(resolve_path(f, recipe.base_dir)) for f in files), out=str(folder / name),
                           overwrite=True, command="cpt pipeline", **o)
        manifest = prepare(pm, args)
        out[name] = {"rows": manifest.get("rows"), "tokens": manifest.get("tokens")}
    return {"sets": out}


def _run_train(recipe: Recipe, folder: Path, pm: Any, resume: bool = False) -> dict[str, Any]:
    import yaml

    from ..config import load_config
    from ..train.loop import train

    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(train_tree(recipe, trained_model(recipe), resume), sort_keys=False,
                                          allow_unicode=True), encoding="utf-8")
    summary = train(load_config(config_file), pm)
    result = {k: summary.get(k) for k in ("steps", "tokens_trained", "tokens_per_second", "final_loss", "final_dir",
                                          "final_eval", "baseline_eval")}
    if summary.get("stages"):  # the ledger across stages (cptcore.recipes.stage_run)
        result["stages"] = [{k: e.get(k) for k in ("name", "steps", "tokens", "final_loss", "eval", "out")}
                            for e in summary["stages"]]
    if not result["tokens_per_second"] and summary.get("wall_time_s"):  # a staged run records wall time only
        result["tokens_per_second"] = (summary.get("tokens_trained") or 0) / max(float(summary["wall_time_s"]), 1e-9)
    return result


def _run_export(recipe: Recipe, folder: Path, pm: Any) -> dict[str, Any]:
    trained = (read_record(step_dir(recipe, "train")) or {}).get("result", {})
    final = Path(trained.get("final_dir") or "")
    if not final.is_dir():
        raise ConfigError(f"{recipe.label}: steps.export: the train step recorded no final/ folder ({final})")
    target = folder / "model"
    if recipe.steps["export"]["merge_lora"]:
        from ..train.checkpoint import list_checkpoints
        from ..train.export_cli import export_checkpoint

        stages = trained.get("stages") or []
        ckpts = list_checkpoints(Path(stages[-1]["out"]) if stages else final.parent)  # the last stage's
        if not ckpts:
            raise ConfigError(f"{recipe.label}: steps.export.merge_lora: no checkpoint in {final.parent}")
        export_checkpoint(pm, ckpts[-1], target, merge_lora=True)
    else:
        shutil.copytree(final, target)
    return {"model": str(target)}


RUNNERS = {"tokenizer": _run_tokenizer, "expand": _run_expand, "resize": _run_resize, "prepare": _run_prepare,
           "train": _run_train, "export": _run_export}


def run_pipeline(recipe: Recipe, pm: Any, echo: Callable[[str], None] = print) -> list[StepPlan]:
    """Run the steps that are not done, in order; returns the plan it followed.

    A step to run gets a fresh folder (the train step keeps its folder and resumes from
    its newest checkpoint when an interrupted start record has the same hash), then its
    completion record. Errors of a step propagate (CptError: one line).
    """
    recipe.out.mkdir(parents=True, exist_ok=True)
    plans = make_plan(recipe)
    for p in plans:
        if not p.run:
            echo(f"[{p.name}] skipped: {p.reason}")
            continue
        started = read_record(p.folder, STARTED)
        resume = p.name == "train" and started is not None and started.get("hash") == p.hash
        if p.folder.exists() and not resume:
            shutil.rmtree(p.folder)
        p.folder.mkdir(parents=True, exist_ok=True)
        (p.folder / ".cpt_step.json").unlink(missing_ok=True)
        write_record(p.folder, {"step": p.name, "hash": p.hash, "started": now()}, STARTED)
        echo(f"[{p.name}] running: {p.reason}" + (" (resuming its last checkpoint)" if resume else ""))
        t0 = time.perf_counter()
        result = RUNNERS[p.name](recipe, p.folder, pm, resume) if p.name == "train" else RUNNERS[p.name](recipe, p.folder, pm)
        seconds = time.perf_counter() - t0
        write_record(p.folder, {"step": p.name, "hash": p.hash, "key": p.key, "upstream": p.upstream,
                                "seconds": round(seconds, 3), "finished": now(), "result": result})
        echo(f"[{p.name}] done in {seconds:.1f} s")
    return plans
