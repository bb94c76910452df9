"""AdamW parameter groups and the learning-rate schedule."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ConfigError


def param_groups(model: Any, weight_decay: float, embedding_weight_decay: bool = False) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    No weight decay on biases and normalisation weights: every parameter with fewer than
    2 dimensions (``*.bias``, RMSNorm/LayerNorm ``weight``), as in GPT-2/nanoGPT
    (karpathy/nanoGPT ``model.py: configure_optimizers``), nor, unless
    ``embedding_weight_decay`` (``optimizer.embedding_weight_decay``), on the input
    embedding and output head matrices
    (:func:`cptcore.recipes.trainable.embedding_parameters`): AdamW's decoupled decay
    shrinks every row every step, also the rows the data never touches (measured on
    SmolLM2-135M: 49,151 of 49,152 rows changed in 3 steps; docs/stages.md). Frozen
    parameters (``requires_grad=False``) are left out. Order follows
    ``model.named_parameters()``.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay, "names": [...]},
        {"params": [...], "weight_decay": 0.0, "names": [...]}]`` (empty groups dropped).

    Raises:
        ConfigError: no parameter is trainable.
    """
    from ..recipes.trainable import embedding_parameters

    embeddings = set() if embedding_weight_decay else {id(p) for _, p in embedding_parameters(model)}
    decay, no_decay, decay_names, no_decay_names = [], [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in embeddings:
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    if not decay and not no_decay:
        raise ConfigError("no trainable parameters (check training.trainable / --freeze and lora settings)")
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


def strip_names(groups: list[dict]) -> list[dict]:
    """``groups`` without the ``names`` key (torch optimizers keep unknown keys in
    their state dict, which is harmless but noisy)."""
    return [{k: v for k, v in g.items() if k != "names"} for g in groups]


@dataclass(frozen=True)
class Schedule:
    """A resolved ``schedule`` section: the registry's spec, its parsed options and the
    common keys. What :func:`scheduler_factory` takes; a stage resolves its own."""

    spec: Any
    options: Any = None
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    @property
    def name(self) -> str:
        return self.spec.name

    def multiplier(self, max_steps: int) -> Callable[[int], float]:
        """``f(step)``: the peak-LR multiplier of the 0-based update ``step`` for a run of
        ``max_steps`` updates (``ScheduleSpec.build``).

        Raises:
            ConfigError: values the schedule cannot honour (e.g. warm-up > max_steps).
        """
        return self.spec.build(self.options, warmup_steps=self.warmup_steps, max_steps=max_steps,
                               min_lr_ratio=self.min_lr_ratio)


def resolve_schedule(schedule_cfg: Any, registry: Any, config: Any = None, section: str = "schedule") -> Schedule:
    """``schedule_cfg`` (a :class:`cptcore.config.ScheduleConfig`) through the schedule
    registry (:meth:`cptcore.registry.Registry.resolve`): spec, options, common keys.

    Args:
        registry: ``pm.registry("schedules")``.
        config, section: where the values came from, for messages (a stage passes its own
            section, e.g. ``"stages.align.schedule"``).

    Raises:
        RegistryError: unknown name (did-you-mean). ConfigError: an unknown or mistyped
            option; a key close to a common one (``warmup_step``) names that key.
    """
    import difflib

    common = ("name", "warmup_steps", "min_lr_ratio")
    spec = registry.get(schedule_cfg.name)
    declared = [f.name for f in dataclasses.fields(spec.options)] if spec.options is not None else []
    for key in schedule_cfg.options:
        close = difflib.get_close_matches(key, common, n=1)
        if key not in declared and close:
            where = config.source(f"{section}.{key}") if config is not None else section
            raise ConfigError(f"{where}: unknown key '{section}.{key}'; did you mean '{close[0]}'?")
    spec, options = registry.resolve(schedule_cfg.name, schedule_cfg.options, config=config, section=section)
    return Schedule(spec, options, int(schedule_cfg.warmup_steps), float(schedule_cfg.min_lr_ratio))


def scheduler_factory(schedule: Schedule, max_steps: int) -> Callable[[Any], Any]:
    """``f(optimizer) -> torch.optim.lr_scheduler.LambdaLR`` following
    ``schedule.multiplier(max_steps)`` (the run's or the stage's resolved steps). Stepped
    once per optimizer step; its ``last_epoch`` is the number of updates done and is
    restored from checkpoints.

    Raises:
        ConfigError: see :meth:`Schedule.multiplier` (raised here, before any optimizer exists).
    """
    fn = schedule.multiplier(max_steps)

    def make(optimizer: Any) -> Any:
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

    return make
