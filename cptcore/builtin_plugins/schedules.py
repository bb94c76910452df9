"""Built-in learning-rate schedules (``schedule.name``; ``cpt schedules``): ``cosine``,
``constant``, ``wsd`` and ``rewarm``. The formulas (and their sources) are in
:mod:`cptcore.recipes.schedules` and docs/training.md#learning-rate-schedules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..hookspecs import hookimpl
from ..recipes import schedules as f
from ..specs import ScheduleSpec


@dataclass(frozen=True)
class WsdOptions:
    """``decay_fraction``: share of the steps spent decaying (Hägele et al. 2024 use 0.2);
    ``decay_shape``: ``linear`` | ``cosine`` | ``1-sqrt``."""

    decay_fraction: float = 0.2
    decay_shape: str = "1-sqrt"


@dataclass(frozen=True)
class RewarmOptions:
    """``start_ratio``: LR multiplier of the first update (``None``: ``min_lr_ratio``);
    ``decay_shape``: ``cosine`` | ``linear`` (``1-sqrt`` accepted too)."""

    start_ratio: float | None = None
    decay_shape: str = "cosine"


def build_cosine(options: Any, *, warmup_steps: int, max_steps: int, min_lr_ratio: float, **_: Any) -> Callable[[int], float]:
    return f.cosine(warmup_steps, max_steps, min_lr_ratio)


def build_constant(options: Any, *, warmup_steps: int, max_steps: int, min_lr_ratio: float, **_: Any) -> Callable[[int], float]:
    return f.constant(warmup_steps, max_steps, min_lr_ratio)


def build_wsd(options: WsdOptions, *, warmup_steps: int, max_steps: int, min_lr_ratio: float, **_: Any) -> Callable[[int], float]:
    return f.wsd(warmup_steps, max_steps, min_lr_ratio, options.decay_fraction, options.decay_shape)


def build_rewarm(options: RewarmOptions, *, warmup_steps: int, max_steps: int, min_lr_ratio: float, **_: Any) -> Callable[[int], float]:
    return f.rewarm(warmup_steps, max_steps, min_lr_ratio, options.start_ratio, options.decay_shape)


@hookimpl
def cpt_register_schedules():
    return [
        ScheduleSpec(name="cosine", build=build_cosine,
                     description="linear warm-up, then cosine decay to min_lr_ratio (SGDR without restarts)"),
        ScheduleSpec(name="constant", build=build_constant, description="linear warm-up, then the peak LR"),
        ScheduleSpec(name="wsd", build=build_wsd, options=WsdOptions, aliases=("warmup_stable_decay",),
                     description="warm-up, stable at the peak, decay over the last decay_fraction of the steps "
                                 "(MiniCPM; Hägele et al. 2024)"),
        ScheduleSpec(name="rewarm", build=build_rewarm, options=RewarmOptions,
                     description="re-warm from min_lr_ratio to the peak, then decay to it again, per stage "
                                 "(Gupta et al. 2023; Ibrahim et al. 2024)"),
    ]
