"""``cpt train`` as a library call: :func:`train` = precheck -> process group ->
:class:`~cptcore.train.trainer.Trainer` ``.fit()``.

The checks live in :mod:`cptcore.train.plan`, the run in :mod:`cptcore.train.trainer`;
the names below are re-exported for existing callers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .launch import check_fingerprints, process_group
from .plan import absolute_inputs, check_fresh_out, check_optimizer
from .plan import precheck as plan_precheck
from ..recipes.stage_run import train_stages
from ..recipes.stages import precheck_stages
from .runlock import run_folder

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..plugins import CptPluginManager

__all__ = ["absolute_inputs", "check_fresh_out", "check_optimizer", "precheck", "train"]


def precheck(config: "RunConfig", pm: "CptPluginManager", world_size: int | None = None, **kw: Any) -> Any:
    """:func:`cptcore.train.plan.precheck`, or for a config with ``stages:``
    :func:`cptcore.recipes.stages.precheck_stages` (a ``RecipePlan``)."""
    if config.stages:
        return precheck_stages(config, pm, world_size, dry_run=kw.get("dry_run", False))
    return plan_precheck(config, pm, world_size, **kw)


def train(config: "RunConfig", pm: "CptPluginManager") -> dict[str, Any]:
    """Run a whole training job as described by ``config``; returns the summary dict
    (also written to ``OUT/summary.json`` by rank 0).

    Raises:
        CptError subclasses for user mistakes (before heavy work where possible).
    """
    import os
    from pathlib import Path

    if config.stages:  # a multi-stage recipe: one Trainer per stage (cptcore.recipes.stage_run)

        return train_stages(config, pm)
    plan = plan_precheck(config, pm)
    # rank 0 locks OUT for the run; every rank reports write failures under OUT in one line
    with run_folder(Path(plan.config.training.out_dir), int(os.environ.get("RANK", "0") or 0)):
        with process_group(config.training.seed):
            check_fingerprints(pm)
            from .trainer import Trainer  # lazy: pulls torch, only once the checks have passed

            return Trainer(plan, pm).fit()
