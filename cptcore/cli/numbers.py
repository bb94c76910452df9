"""Checks shared by the commands' number options."""

from __future__ import annotations

import math

import typer


def finite(value: float | None) -> float | None:
    """Typer callback of every float option: ``nan``, ``inf`` and ``-inf`` are usage errors
    (exit 2, one line). click parses them as floats and its ranges (``min=``) compare
    False with NaN, so without this they reach the run.

    Raises:
        typer.BadParameter: ``value`` is not finite.
    """
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value
