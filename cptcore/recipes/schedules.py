"""Learning-rate schedules as plain functions of the optimizer step (torch-free).

Every function returns the *multiplier* of the peak learning rate (``optimizer.lr``) for
the update with 0-based index ``s`` (``s = 0`` is the first update); ``LambdaLR`` in
:func:`cptcore.train.optim.scheduler_factory` multiplies it in. Notation used in every
docstring: ``N`` = the run's (or stage's) optimizer steps, ``W`` = ``warmup_steps``,
``m`` = ``min_lr_ratio``. The registered specs (``cpt schedules``) are in
:mod:`cptcore.builtin_plugins.schedules`; formulas and sources are in docs/training.md.

Errors are :class:`cptcore.errors.ConfigError` with one line naming the ``schedule.*`` key.
"""

from __future__ import annotations

import math
from typing import Callable

from ..errors import ConfigError

DECAY_SHAPES = ("linear", "cosine", "1-sqrt")


def check_common(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
    """The checks every built-in makes.

    Raises:
        ConfigError: ``W`` outside ``[0, N]``, ``m`` outside ``[0, 1]``.
    """
    if not 0 <= warmup_steps <= max_steps:
        raise ConfigError(f"schedule.warmup_steps ({warmup_steps}) must be in [0, max_steps={max_steps}]")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ConfigError(f"schedule.min_lr_ratio ({min_lr_ratio}) must be in [0, 1]")


def warmup(step: int, warmup_steps: int) -> float:
    """Linear warm-up ``(s + 1) / W`` for ``s < W`` (from ``1/W`` to 1: the first update
    never uses LR 0), else 1."""
    return (step + 1) / warmup_steps if step < warmup_steps else 1.0


def decay(shape: str, progress: float) -> float:
    """Decay curve ``g(p)`` from 1 at ``p = 0`` to 0 at ``p = 1`` (``p`` clamped to [0, 1]):
    ``linear`` ``1 - p``; ``cosine`` ``0.5 * (1 + cos(pi * p))`` (Loshchilov & Hutter 2017,
    SGDR, without restarts); ``1-sqrt`` ``1 - sqrt(p)`` (Hägele et al. 2024, "Scaling Laws
    and Compute-Optimal Training Beyond Fixed Training Durations", the cooldown they find
    best).

    Raises:
        ConfigError: unknown shape.
    """
    p = min(1.0, max(0.0, progress))
    if shape == "linear":
        return 1.0 - p
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "1-sqrt":
        return 1.0 - math.sqrt(p)
    raise ConfigError(f"schedule: unknown decay shape '{shape}' (valid: {', '.join(DECAY_SHAPES)})")


def check_shape(shape: str, key: str) -> None:
    """Raises ConfigError: ``shape`` is not one of :data:`DECAY_SHAPES` (naming ``key``)."""
    if shape not in DECAY_SHAPES:
        raise ConfigError(f"schedule.{key}: unknown decay shape '{shape}' (valid: {', '.join(DECAY_SHAPES)})")


def cosine(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warm-up then cosine decay to ``m``:
    ``f(s) = (s + 1) / W`` for ``s < W``, else ``m + (1 - m) * 0.5 * (1 + cos(pi * t))`` with
    ``t = (s - W) / max(1, N - W)`` clamped to [0, 1]; the last update (``s = N - 1``)
    approaches ``m``, reached at ``s = N``.

    Raises:
        ConfigError: see :func:`check_common`.
    """
    check_common(warmup_steps, max_steps, min_lr_ratio)

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, max_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return f


def constant(warmup_steps: int, max_steps: int, min_lr_ratio: float) -> Callable[[int], float]:
    """Warm-up then constant: ``f(s) = (s + 1) / W`` for ``s < W``, else 1 (``m`` unused).

    Raises:
        ConfigError: see :func:`check_common`.
    """
    check_common(warmup_steps, max_steps, min_lr_ratio)
    return lambda step: warmup(step, warmup_steps)


def wsd_decay_steps(max_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """``K = min(N - W, round(decay_fraction * N))`` (Python's ``round``: half to even)."""
    return min(max_steps - warmup_steps, round(decay_fraction * max_steps))


def wsd(warmup_steps: int, max_steps: int, min_lr_ratio: float, decay_fraction: float,
        decay_shape: str) -> Callable[[int], float]:
    """Warmup-stable-decay (Hu et al. 2024, "MiniCPM", sec. 4; Hägele et al. 2024): warm
    up, hold the peak, then decay over the last ``K`` updates
    (:func:`wsd_decay_steps`), which start at ``D = N - K``:

    ``f(s) = (s + 1) / W`` for ``s < W``; ``1`` for ``W <= s < D``; else
    ``m + (1 - m) * g((s - D) / K)`` with ``g`` = :func:`decay` (``decay_shape``), so
    ``s = D`` still uses the peak and the last update ``m + (1 - m) * g((K - 1) / K)``.

    Raises:
        ConfigError: :func:`check_common`; ``decay_fraction`` outside [0, 1]; unknown shape.
    """
    check_common(warmup_steps, max_steps, min_lr_ratio)
    if not 0.0 <= decay_fraction <= 1.0:
        raise ConfigError(f"schedule.decay_fraction ({decay_fraction}) must be in [0, 1]")
    check_shape(decay_shape, "decay_shape")
    k = wsd_decay_steps(max_steps, warmup_steps, decay_fraction)
    start = max_steps - k

    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if step < start or k == 0:
            return 1.0
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay(decay_shape, (step - start) / k)

    return f


def rewarm(warmup_steps: int, max_steps: int, min_lr_ratio: float, start_ratio: float | None,
           decay_shape: str) -> Callable[[int], float]:
    """Re-warm then re-decay, for a continual-pretraining stage that starts from a model
    whose LR was already decayed (Gupta et al. 2023, "Continual Pre-Training of Large
    Language Models: How to (re)warm your model?"; Ibrahim et al. 2024, "Simple and
    Scalable Strategies to Continually Pre-train Large Language Models": warm the LR from
    its minimum back to the peak, then decay it again to the minimum).

    With ``a = start_ratio`` (``None``: ``a = m``, continuing where a decayed schedule
    ended): ``f(s) = a + (1 - a) * s / W`` for ``s < W`` (the first update uses exactly
    ``a * lr``; ``W = 0`` skips it), else ``m + (1 - m) * g(t)``, ``t = (s - W) / max(1, N - W)``,
    ``g`` = :func:`decay` (``decay_shape``: ``cosine`` or ``linear``).

    Raises:
        ConfigError: :func:`check_common`; ``start_ratio`` outside [0, 1]; unknown shape.
    """
    check_common(warmup_steps, max_steps, min_lr_ratio)
    a = min_lr_ratio if start_ratio is None else start_ratio
    if not 0.0 <= a <= 1.0:
        raise ConfigError(f"schedule.start_ratio ({start_ratio}) must be in [0, 1]")
    check_shape(decay_shape, "decay_shape")

    def f(step: int) -> float:
        if step < warmup_steps:
            return a + (1.0 - a) * step / warmup_steps
        t = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * decay(decay_shape, t)

    return f
