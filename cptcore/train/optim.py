"""AdamW parameter groups and the learning-rate schedule."""

from __future__ import annotations

import math
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


def lr_lambda(name: str, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step ``s`` (0-based: the LR used by the
    ``s``-th update).

    * warm-up: ``(s + 1) / warmup_steps`` for ``s < warmup_steps`` (linear from
      ``1/warmup`` to 1; the first update never uses LR 0);
    * ``cosine``: then ``min + (1 - min) * 0.5 * (1 + cos(pi * t))`` with
      ``t = (s - warmup) / (max_steps - warmup)`` clamped to [0, 1], so the last update
      approaches ``min_lr_ratio`` (Loshchilov & Hutter 2017, SGDR, without restarts);
    * ``constant``: 1 after warm-up.

    Raises:
        ConfigError: unknown name, negative warm-up, warm-up > max_steps, ratio outside [0, 1].
    """
    if name not in ("cosine", "constant"):
        raise ConfigError(f"schedule.name: unknown schedule '{name}' (valid: constant, cosine)")
    if warmup_steps < 0 or warmup_steps > max_steps:
        raise ConfigError(f"schedule.warmup_steps ({warmup_steps}) must be in [0, max_steps={max_steps}]")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio ({min_lr_ratio}) must be in [0, 1]")

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if name == "constant":
            return 1.0
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def scheduler_factory(schedule_cfg: Any, max_steps: int) -> Callable[[Any], Any]:
    """``f(optimizer) -> torch.optim.lr_scheduler.LambdaLR`` following :func:`lr_lambda`.
    Stepped once per optimizer step; its ``last_epoch`` is the number of updates done
    and is restored from checkpoints."""
    fn = lr_lambda(schedule_cfg.name, schedule_cfg.warmup_steps, max_steps, schedule_cfg.min_lr_ratio)

    def make(optimizer: Any) -> Any:
        import torch

        return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)

    return make
