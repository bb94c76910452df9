"""How long a run is: ``training.max_steps``, ``training.epochs`` or ``training.max_tokens``
(at most one; none set = 100 steps), resolved to optimizer steps by the precheck.

* ``max_steps``: that many optimizer steps.
* ``epochs = E``: ``ceil(E * B / A)`` steps, with ``B`` the micro-batches per rank in one
  epoch of the mixture (:meth:`cptcore.train.data.MixedSampler.plan`: source ``i`` gives
  ``round(total_rows * w_i / sum(w))`` rows of its manifest's ``packs``, cut to whole
  global micro-batches of ``micro_batch_size x dp``) and ``A`` the micro-batches per step.
  Rounded up, so the run covers at least ``E`` epochs; the last step may read into the
  next epoch. ``E`` may be fractional (``0.5``).
* ``max_tokens = T``: ``ceil(T / (max_length x micro_batch_size x A x dp))`` steps, with
  ``max_length`` the longest row the training manifests name: tokens are row positions
  (packed rows are full but for the last of each folder; padding counts), rounded up so
  at least ``T`` positions are trained. The non-pad ``tokens_seen`` the run logs can be
  slightly lower.

The schedule's length (``max_steps`` of ``ScheduleSpec.build``) is the resolved count.
Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..errors import ConfigError

DEFAULT_STEPS = 100
LENGTH_KEYS = ("max_steps", "epochs", "max_tokens")


@dataclass(frozen=True)
class RunLength:
    """The resolved length: ``steps``, which key decided (``"default"`` when none was
    set), and ``tokens_per_step`` (row positions per optimizer step; ``None`` when the row
    length is unknown)."""

    steps: int
    decided_by: str
    tokens_per_step: int | None = None
    value: float | int | None = None  # the deciding key's value (epochs, tokens or steps)

    def describe(self) -> str:
        """``T tokens, t per step; length from KEY=VALUE`` (tokens left out when unknown)."""
        if self.decided_by == "epochs":
            why = f"training.epochs={self.value:g}"
        elif self.decided_by == "max_tokens":
            why = f"training.max_tokens={self.value:,}"
        elif self.decided_by == "max_steps":
            why = "training.max_steps"
        else:
            why = "default (no max_steps, epochs or max_tokens set)"
        tokens = f"{self.steps * self.tokens_per_step:,} tokens, {self.tokens_per_step:,} per step; " \
            if self.tokens_per_step else ""
        return f"{tokens}length from {why}"


def check_length_keys(config: Any) -> str:
    """The key that decides the run's length (``"default"`` when none is set).

    Raises:
        ConfigError: two keys set (one line naming both and where each came from), or a
            value < 1 (epochs: not > 0 and finite).
    """
    t = config.training
    given = [k for k in LENGTH_KEYS if getattr(t, k) is not None]
    if len(given) > 1:
        a, b = given[:2]
        raise ConfigError(f"training.{a} ({config.source(f'training.{a}')}) and training.{b} "
                          f"({config.source(f'training.{b}')}) both set the run's length: keep one "
                          f"(--set training.{a}=null clears the first)")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"training.max_steps must be >= 1, got {t.max_steps}")
    if t.epochs is not None and not (t.epochs > 0 and math.isfinite(t.epochs)):
        raise ConfigError(f"training.epochs must be a positive number, got {t.epochs}")
    if t.max_tokens is not None and t.max_tokens < 1:
        raise ConfigError(f"training.max_tokens must be >= 1, got {t.max_tokens}")
    return given[0] if given else "default"


MAX_STEPS = 10**12  # optimizer steps; any run length past it is a typo (a step a microsecond is 11 days)


def resolve_length(config: Any, *, batches_per_epoch: int | None, accumulation: int, seq_len: int | None,
                   dp: int) -> RunLength:
    """Resolve the run's length to optimizer steps (see the module docstring).

    Args:
        batches_per_epoch: micro-batches per rank per epoch
            (:func:`cptcore.train.plan.check_batches`), ``None`` when a manifest lacks its
            row count or there is no data.
        accumulation: micro-batches per optimizer step; ``seq_len``: the manifests'
            ``max_length`` (``None``: unknown); ``dp``: data-parallel ranks.

    Raises:
        ConfigError: :func:`check_length_keys`; ``epochs`` without row counts, ``max_tokens``
            without a row length, a length of more than ``MAX_STEPS`` steps (one line each).
    """
    length = _resolve(config, batches_per_epoch, accumulation, seq_len, dp)
    if length.steps > MAX_STEPS:  # --epochs 1e308 resolved to a 300-digit step count
        key = "max_steps" if length.decided_by == "default" else length.decided_by
        raise ConfigError(f"training.{key}={length.value} resolves to more than {MAX_STEPS:.0e} optimizer steps "
                          f"({len(str(length.steps))} digits): check the value and its unit")
    return length


def _resolve(config: Any, batches_per_epoch: int | None, accumulation: int, seq_len: int | None, dp: int) -> RunLength:
    key = check_length_keys(config)
    t = config.training
    per_step = seq_len * t.micro_batch_size * accumulation * dp if seq_len else None
    if key == "default":
        return RunLength(DEFAULT_STEPS, key, per_step)
    if key == "max_steps":
        return RunLength(int(t.max_steps), key, per_step, int(t.max_steps))
    if key == "epochs":
        if not batches_per_epoch:
            raise ConfigError("training.epochs needs the row count ('packs') of every training folder's manifest "
                              "(and --data for a dry run); use training.max_steps instead")
        steps = math.ceil(Decimal(repr(float(t.epochs))) * batches_per_epoch / accumulation)
        return RunLength(max(1, int(steps)), key, per_step, float(t.epochs))
    if not per_step:
        raise ConfigError("training.max_tokens needs max_length in the training data's manifests "
                          "(and --data for a dry run); use training.max_steps instead")
    return RunLength(max(1, -(-int(t.max_tokens) // per_step)), key, per_step, int(t.max_tokens))
