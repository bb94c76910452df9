"""The ledger's side of :class:`~cptcore.train.trainer.Trainer` (kept out of trainer.py):
multiple-choice eval sets during training, the step-0 baseline, ``OUT/best`` and the
end-of-run table. See docs/eval.md ("During training").

* :func:`build_ledger`: a :class:`~cptcore.eval.ledger_run.RunLedger` over the run's
  ``data.eval`` and ``data.eval_mc`` sets and ``eval.budget`` / ``eval.on_budget``.
* :func:`build_mc_sets`: NAME -> ``f() -> {"eval/NAME/acc", ...}`` (``--eval-mc NAME=FILE``),
  scored by :func:`cptcore.eval.mc.evaluate_mc` through the strategy's forward. Every
  rank scores every item (the same numbers on every rank; tensor/pipeline-parallel
  forwards need all ranks).
* :func:`start`: the step-0 evaluation (the baseline), unless the Trainer was handed one
  (:attr:`Trainer.baseline`, e.g. a later stage) or resumed a checkpoint that holds one.
* :func:`finish`: ``OUT/best`` (``keep_best``) and the ``ledger`` entry of the summary.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .ledger_run import RunLedger

if TYPE_CHECKING:
    from ..train.trainer import Trainer


def build_ledger(trainer: "Trainer") -> RunLedger:
    cfg = trainer.config
    names = list(trainer.plan.eval_names or ()) + [n for n in cfg.data.eval_mc if n not in (trainer.plan.eval_names or ())]
    return RunLedger(names, cfg.eval.budget, cfg.eval.on_budget)


def mc_metrics(name: str, result: Any) -> dict[str, float]:
    """``eval/NAME/acc`` (the ``letter`` method: ColossalEval's first-token protocol),
    ``eval/NAME/acc_METHOD`` per method of :mod:`cptcore.eval.mc`, ``eval/NAME/items``."""
    out = {f"eval/{name}/acc": result.accuracy["letter"], f"eval/{name}/items": result.items}
    out.update({f"eval/{name}/acc_{m}": v for m, v in result.accuracy.items()})
    return out


class _Forward:
    """``model(input_ids=, use_cache=)`` -> object with ``.logits``, through the strategy."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer

    def __call__(self, input_ids: Any, use_cache: bool = False, **_: Any) -> Any:
        from types import SimpleNamespace

        t = self.trainer
        return SimpleNamespace(logits=t.strategy.forward(t.model, {"input_ids": input_ids.to(t.strategy.device)}))


def build_mc_sets(trainer: "Trainer") -> dict[str, Callable[[], dict[str, float]]]:
    """NAME -> ``f()`` returning the set's metrics (:func:`mc_metrics`); items are read
    (and checked, one line naming FILE:LINE) here, once.

    Raises:
        DataError: a bad item file; CptError: multiple-choice sets without a tokenizer.
    """
    from ..errors import CptError
    from .mc import evaluate_mc, read_items

    sets = trainer.config.data.eval_mc
    if not sets:
        return {}
    tok = trainer.plan.tokenizer
    if tok is None:
        raise CptError("data.eval_mc needs the run's tokenizer (a run with data.train)")
    loglik = trainer.config.eval.mc_loglik

    def scorer(name: str, items: list) -> Callable[[], dict[str, float]]:
        return lambda: mc_metrics(name, evaluate_mc(_Forward(trainer), tok, items, device=trainer.strategy.device,
                                                    loglik=loglik))

    return {name: scorer(name, read_items(path)) for name, path in sets.items()}


def start(trainer: "Trainer", loggers: list) -> dict[str, Any]:
    """The baseline: :attr:`Trainer.baseline` when given, the resumed checkpoint's, or
    the evaluation at step 0 (logged at step 0). Returns what was logged ({} if none)."""
    ledger = trainer.ledger
    if trainer.baseline is not None and ledger.baseline is None:
        ledger.set_baseline(trainer.baseline, trainer.state.step)
    if ledger.baseline is not None or not (trainer.eval_sets or trainer.mc_sets):
        trainer.baseline = ledger.baseline
        return {}
    if trainer.state.step > 0:  # an old checkpoint without a ledger: the next evaluation becomes the baseline
        from ..train.plan import log

        log("the resumed checkpoint holds no step-0 baseline: the next evaluation is taken as the baseline")
        return {}
    metrics = trainer.evaluate()
    ledger.set_baseline(metrics, 0)
    metrics.update(ledger.deltas(metrics))
    metrics["tokens_seen"] = trainer.state.tokens_seen
    trainer.baseline = ledger.baseline
    for lg in loggers:
        lg.log(metrics, 0)
    return metrics


def finish(trainer: "Trainer", rank: int) -> dict[str, Any]:
    """``OUT/best`` for ``keep_best`` (the marked checkpoint exported through
    :func:`cptcore.train.export_cli.export_checkpoint`, rank 0), then the summary's
    ``ledger`` entry (with ``best_dir``), and the table printed on rank 0."""
    ledger = trainer.ledger
    out = ledger.summary()
    out["best_dir"] = None
    if ledger.on_budget == "keep_best":
        from ..train.checkpoint import checkpoints_dir
        from ..train.plan import log

        if ledger.best is None:
            out["note"] = "no evaluation lowered the domain sets' bpb with every retained set within budget: no OUT/best"
            log(out["note"])
        elif rank == 0:
            ckpt = checkpoints_dir(trainer.out) / f"step-{ledger.best['step']}"
            best_dir = trainer.out / "best"
            if not ckpt.is_dir():
                out["note"] = f"the best step's checkpoint {ckpt} is gone: no OUT/best"
                log(out["note"])
            else:
                from ..train.export_cli import export_checkpoint

                if best_dir.exists():
                    shutil.rmtree(best_dir)
                export_checkpoint(trainer.pm, ckpt, best_dir, merge_lora=trainer.config.lora.merge_on_export)
                out["best_dir"] = str(best_dir)
                log(f"keep_best: step {ledger.best['step']} (mean domain bpb gain {ledger.best['gain']:.4f}) "
                    f"exported to {best_dir}")
    if rank == 0 and out["sets"]:
        from rich.console import Console

        Console(file=sys.stderr, width=max(shutil.get_terminal_size((120, 24)).columns, 110)).print(ledger.render())
        if ledger.stopped:
            print(f"cpt train: stopped early: {ledger.stopped['reason']}", file=sys.stderr, flush=True)
    return out
